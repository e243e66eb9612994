// The CUDA pLSTM kernels against the CPU reference (cuda/plstm/check.hpp states the criterion): 2-D
// grids of odd sizes, forward and backward, one and four orientations, raw, P-mode and D-mode gates,
// both dtypes; argument checks. Tagged [cuda]: without a visible GPU every case returns early with a warning, so CPU-only
// builds pass.
#include "cuda/plstm/check.hpp"
#include "datasets/molecules/molecules.hpp"
#include "reference/plstm/grid.hpp"
#include "reference/plstm/sequence.hpp"
#include "tests/check_catch.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

using namespace flashlstm::cuda::plstm;
using flashlstm::plstm::GateMode;
using flashlstm::plstm::GridShape;

namespace {

bool have_gpu() {
  if (device_available()) return true;
  WARN("no CUDA device: skipped");
  return false;
}

const DType kDtypes[] = {DType::float32, DType::bfloat16};

void require_passes(const KernelCheck& c) {
  INFO(c.name << " (baseline: " << c.baseline << ")");
  CHECK_THAT(c.report, flashlstm::check::passes());
}

}  // namespace

TEST_CASE("pLSTM grid forward: odd grids, one and four orientations, both dtypes", "[cuda][plstm]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4100;
  // (B, NH, X, Y, DQK, DV): a single node, grids smaller and larger than a 64-node tile, columns
  // longer than a tile (Y > 64), head dims not multiples of 16 and v wider than one 64-column tile;
  // DQK = 256 in float32, where the chunk-map kernel's blocks do not fit and the per-tile programme runs.
  const GridShape shapes[] = {{1, 1, 1, 1, 8, 8},     {2, 1, 5, 7, 8, 6},     {1, 2, 9, 4, 20, 130},
                              {1, 1, 33, 17, 64, 64}, {1, 1, 32, 32, 64, 64}, {1, 1, 3, 150, 16, 24},
                              {1, 1, 6, 9, 256, 32}};
  for (const auto& shape : shapes)
    for (const int orientations : {1, 4})
      for (const DType dtype : kDtypes) require_passes(check_grid(shape, orientations, GateMode::raw, dtype, ++seed));
}

TEST_CASE("pLSTM grid forward: P-mode and D-mode gates", "[cuda][plstm]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4200;
  for (const GateMode mode : {GateMode::p_mode, GateMode::d_mode})
    for (const DType dtype : kDtypes) {
      require_passes(check_grid({2, 3, 16, 16, 32, 32}, 4, mode, dtype, ++seed));
      require_passes(check_grid({1, 2, 7, 13, 48, 40}, 1, mode, dtype, ++seed));
    }
}

TEST_CASE("pLSTM grid backward: odd grids, one and four orientations, both dtypes", "[cuda][plstm]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4400;
  // As the forward's (with a column of 100 nodes), plus a grid of many chunks in both directions
  // (70 x 40), 64 x 64, a grid of 49 x 2 chunks (390 x 9), too many for the chunk level to keep a
  // cone's E in shared memory, and DQK = 256 in float32, where the chunk-map kernels' blocks do not
  // fit and the per-tile programmes run.
  const GridShape shapes[] = {{1, 1, 1, 1, 8, 8},     {2, 1, 5, 7, 8, 6},     {1, 2, 9, 4, 20, 130},
                              {1, 1, 33, 17, 64, 64}, {1, 1, 32, 32, 64, 64}, {1, 1, 3, 100, 16, 24},
                              {1, 1, 70, 40, 16, 16}, {1, 1, 64, 64, 64, 64}, {1, 1, 390, 9, 16, 16},
                              {1, 1, 6, 9, 256, 32}};
  for (const auto& shape : shapes)
    for (const int orientations : {1, 4})
      for (const DType dtype : kDtypes)
        require_passes(check_grid_backward(shape, orientations, GateMode::raw, dtype, ++seed));
}

TEST_CASE("pLSTM grid backward: P-mode and D-mode gates", "[cuda][plstm]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4500;
  for (const GateMode mode : {GateMode::p_mode, GateMode::d_mode})
    for (const DType dtype : kDtypes) {
      require_passes(check_grid_backward({2, 3, 16, 16, 32, 32}, 4, mode, dtype, ++seed));
      require_passes(check_grid_backward({1, 2, 7, 13, 48, 40}, 1, mode, dtype, ++seed));
    }
}

TEST_CASE("pLSTM sequences on the GPU (chunkwise): forward and backward", "[cuda][plstm][sequence]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4600;
  using flashlstm::plstm::SequenceShape;
  // A single token, sequences shorter and longer than a chunk of 64, head dims not multiples of 16,
  // head dims over several 64-wide pieces (DQK 130, DV 200), a long sequence of many chunks. The
  // transitions include 0, 1, -1 and 1e-35 (check.cpp's SequenceCase).
  const SequenceShape shapes[] = {{1, 1, 1, 8, 8},     {2, 1, 7, 8, 6},       {1, 2, 64, 32, 32},   {2, 2, 65, 20, 70},
                                  {1, 3, 300, 64, 64}, {1, 1, 129, 130, 200}, {2, 2, 2000, 64, 64}};
  for (const auto& shape : shapes)
    for (const DType dtype : kDtypes) {
      require_passes(check_sequence(shape, dtype, ++seed));
      require_passes(check_sequence_backward(shape, dtype, ++seed));
    }
}

TEST_CASE("pLSTM DAG kernels: random DAGs, parallel edges, chains, grids, molecules, a 100,000-node DAG", "[cuda][plstm][dag]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4700;
  using flashlstm::plstm::DagShape;
  namespace graph = flashlstm::graph;
  // Parallel edges (0 -> 1 twice), a node without in-edges besides the source, in/out degree 3.
  const graph::Dag parallel(5, {{0, 1}, {0, 1}, {1, 2}, {1, 3}, {2, 3}, {0, 3}, {3, 4}, {1, 4}, {2, 4}});
  const graph::Dag small = graph::random_dag(40, 1.8, 11);
  const graph::Dag chain = flashlstm::plstm::chain(70);
  const graph::Dag grid = flashlstm::plstm::grid_dag(9, 7);
  for (const graph::Dag* dag : {&parallel, &small, &chain, &grid})
    for (const DType dtype : kDtypes)
      for (const GateMode mode : {GateMode::raw, GateMode::p_mode}) {
        const DagShape shape{2, 2, 20, 40};
        require_passes(check_dag(*dag, shape, mode, dtype, ++seed));
        require_passes(check_dag_backward(*dag, shape, mode, dtype, ++seed));
      }
  // 40 generated molecules as one DAG: their bonds oriented breadth-first, molecule by molecule.
  std::vector<graph::Edge> bonds;
  flashlstm::index_t atoms = 0;
  for (const auto& m : flashlstm::datasets::molecules::generate({}, 0, 40, 1)) {
    for (const auto& b : m.bonds) bonds.push_back({atoms + b.a, atoms + b.b});
    atoms += static_cast<flashlstm::index_t>(m.atoms.size());
  }
  const graph::Dag molecules = graph::dagify(atoms, bonds, {graph::NodeOrder::bfs});
  for (const DType dtype : kDtypes) {
    require_passes(check_dag(molecules, DagShape{2, 2, 24, 16}, GateMode::p_mode, dtype, ++seed));
    require_passes(check_dag_backward(molecules, DagShape{2, 2, 24, 16}, GateMode::p_mode, dtype, ++seed));
  }
  const graph::Dag large = graph::random_dag(100000, 2.0, 12, 1000);
  require_passes(check_dag(large, DagShape{1, 1, 16, 16}, GateMode::p_mode, DType::float32, ++seed));
  require_passes(check_dag_backward(large, DagShape{1, 1, 16, 16}, GateMode::p_mode, DType::float32, ++seed));
}

TEST_CASE("the pLSTM kernels' host API rejects bad arguments by name", "[cuda][plstm]") {
  {  // A DAG's arrays, checked before anything is uploaded: a chain 0 -> 1 -> 2 with one bad entry each.
    std::vector<std::int32_t> in_offsets{0, 0, 1, 2}, in_edges{0, 1}, out_offsets{0, 1, 2, 2}, out_edges{0, 1};
    std::vector<std::int32_t> level_offsets{0, 1, 2, 3}, level_nodes{0, 1, 2};
    const auto graph = [&] {
      return DagGraph{in_offsets.data(), in_edges.data(), out_offsets.data(), out_edges.data(), level_offsets.data(),
                      level_nodes.data(), 3, 2, 3};
    };
    in_edges[1] = 7;
    CHECK_THROWS_WITH(DagPlan(graph()), Catch::StartsWith("in_edges: "));
    in_edges[1] = 1;
    out_offsets[2] = 0;
    CHECK_THROWS_WITH(DagPlan(graph()), Catch::StartsWith("out_offsets: "));
    out_offsets[2] = 2;
    level_nodes[2] = -1;
    CHECK_THROWS_WITH(DagPlan(graph()), Catch::StartsWith("level_nodes: "));
  }
  GridInputs x;
  x.dims = {1, 1, 4, 4, 8, 8};
  CHECK_THROWS_WITH(grid_forward(x, nullptr, {}, nullptr), Catch::StartsWith("q: "));
  x.dims.DQK = 300;
  CHECK_THROWS_WITH(grid_forward(x, nullptr, {}, nullptr), Catch::StartsWith("DQK: "));
  x.dims.DQK = 8;
  x.orientations = 2;
  CHECK_THROWS_WITH(grid_forward(x, nullptr, {}, nullptr), Catch::StartsWith("orientations: "));
  x.orientations = 4;
  x.dims.Y = 100000;
  CHECK_THROWS_WITH(grid_forward(x, nullptr, {}, nullptr), Catch::StartsWith("Y: "));
  x.dims.Y = 4;
  x.dims.X = 0;
  CHECK_THROWS_WITH(grid_forward(x, nullptr, {}, nullptr), Catch::StartsWith("q: "));
  x.dims.X = 4;
  if (!have_gpu()) return;
  void* buffer = nullptr;
  REQUIRE(cudaMalloc(&buffer, 1 << 20) == cudaSuccess);
  const float* f = static_cast<const float*>(buffer);
  x.q = x.k = x.v = buffer;
  x.gates = GridGates{f, f, f, f, f, f, f, f, f};
  float host[16];
  x.gates.Tdl = host;
  CHECK_THROWS_WITH(grid_forward(x, buffer, {}, nullptr), Catch::StartsWith("Tdl: "));
  x.gates.Tdl = f;
  CHECK_THROWS_WITH(grid_forward(x, nullptr, {}, nullptr), Catch::StartsWith("h: "));
  float* g = static_cast<float*>(buffer);
  GridGradients grad{buffer, buffer, buffer, g, g, g, g, g, g, g, g, g};
  CHECK_THROWS_WITH(grid_backward(x, nullptr, grad, {}, nullptr), Catch::StartsWith("dh: "));
  grad.dTru = host;
  CHECK_THROWS_WITH(grid_backward(x, buffer, grad, {}, nullptr), Catch::StartsWith("dTru: "));
  grad.dTru = g;
  grad.dk = nullptr;
  CHECK_THROWS_WITH(grid_backward(x, buffer, grad, {}, nullptr), Catch::StartsWith("dk: "));
  x.dims.DQK = x.dims.DV = 256;
  x.dims.Y = 200;
  x.dtype = DType::float32;
  CHECK_THROWS_WITH(grid_backward(x, buffer, grad, {}, nullptr), Catch::StartsWith("Y: "));
  SequenceInputs sx{buffer, buffer, buffer, f, f, host, f, SequenceDims{1, 1, 16, 8, 8}, DType::float32};
  CHECK_THROWS_WITH(sequence_forward(sx, buffer, {}, nullptr), Catch::StartsWith("M: "));
  sx.M = f;
  sx.dims.S = 0;
  CHECK_THROWS_WITH(sequence_forward(sx, buffer, {}, nullptr), Catch::StartsWith("q: "));
  sx.dims.S = 16;
  CHECK_THROWS_WITH(sequence_backward(sx, buffer, SequenceGradients{buffer, buffer, buffer, g, nullptr, g, g}, {}, nullptr),
                    Catch::StartsWith("dT: "));
  cudaFree(buffer);
}

// Small odd shapes for `compute-sanitizer` (tools/gpu_check.sh runs this case under memcheck and
// racecheck): partial tiles of targets, sources and v columns; a sequence of three chunks, the last
// partial, with head dims over two pieces.
TEST_CASE("pLSTM: odd grids and sequences for the memory checker", "[cuda][plstm][sanitize]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 4300;
  for (const DType dtype : kDtypes) {
    for (const int orientations : {1, 4}) {
      require_passes(check_grid({1, 2, 5, 13, 12, 70}, orientations, GateMode::raw, dtype, ++seed));
      require_passes(check_grid_backward({1, 2, 5, 13, 12, 70}, orientations, GateMode::raw, dtype, ++seed));
    }
    require_passes(check_sequence({1, 2, 150, 70, 66}, dtype, ++seed));
    require_passes(check_sequence_backward({1, 2, 150, 70, 66}, dtype, ++seed));
  }
}
