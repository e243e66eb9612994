// CPU benchmarks of the pLSTM reference, float32, forward.
//
// (a) DAG forms, 1 item x 1 head, DQK = DV = 16: recurrent (one thread walks the topological order)
//     against levels (OpenMP over the nodes of each level of the level schedule) on
//       - a random DAG of 100,000 nodes where each node takes 2 distinct sources among the 1,000
//         nodes before it: about 500 levels of about 200 nodes, many levels but wide ones;
//       - the 512 x 512 grid graph (grid_dag): 1,023 anti-diagonal levels of up to 512 nodes;
//     each also with its nodes renumbered level-major (graph::level_major), which is what the levels
//     form needs to stream through memory. Reported: nodes/s, the level count, and the speedup over
//     the recurrent form on the graph in its generated numbering (the row that runs first).
// (b) 2-D forms on 32 x 32 and 64 x 64 grids, 128 images x 3 heads (B = 128, NH = 3), DQK = DV = 64,
//     P-mode gates: recurrent, chunkwise with L = 4 and 8, and parallel (the N x N gating matrix per
//     item, items spread over the OpenMP threads). Reported: time, images/s and peak memory.
//
// Peak memory: the growth of the process's resident high-water mark over the benchmark's loop. Linux
// keeps that mark as VmHWM in /proc/self/status, and writing "5" to /proc/self/clear_refs resets it to
// the current resident size (Linux >= 4.0); so before each benchmark's loop (after its inputs are
// built) we reset it and note VmRSS, and after the loop report VmHWM - that VmRSS as peak_MiB: every
// page the forward touched on top of what was resident, its output included (out_MiB says how much of
// it that is; in_MiB is the inputs' size, not counted). glibc keeps freed heap memory resident and
// would reuse it unseen, so the reset first runs malloc_trim(0), which hands the free pages of every
// arena back to the kernel. (Forking a child per configuration and reading its ru_maxrss would be the
// other way, but only async-signal-safe calls are allowed in the child of a multithreaded process,
// and libgomp's thread pool does not come along.) Where clear_refs cannot be written the memory
// counters are left out (see the context line).
//
// On a shared machine, other processes on its cores hit the levels form hardest: it has a barrier per
// level, and each waits for a descheduled thread.
#include "core/random.hpp"
#include "reference/plstm/modes.hpp"

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>

using namespace flashlstm;
using namespace flashlstm::plstm;

namespace {

// ---- peak memory (see the file comment) ----

// A field of /proc/self/status in kB (VmRSS, VmHWM), or -1.
long status_kb(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  long value = -1;
  while (status >> key) {
    if (key == field + ":") {
      status >> value;
      return value;
    }
    status.ignore(1 << 10, '\n');
  }
  return -1;
}

bool reset_high_water_mark() {
  malloc_trim(0);
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.close();
  return !clear.fail();
}

bool peak_memory_supported = false;  // decided in main()

class PeakMemory {
 public:
  PeakMemory() {
    if (peak_memory_supported) {
      reset_high_water_mark();
      base_kb_ = status_kb("VmRSS");
    }
  }
  // Sets peak_MiB on the state (nothing when unsupported).
  void report(benchmark::State& state) const {
    if (peak_memory_supported) state.counters["peak_MiB"] = double(status_kb("VmHWM") - base_kb_) / 1024.0;
  }

 private:
  long base_kb_ = 0;
};

double mib(index_t floats) { return double(floats) * sizeof(float) / double(1 << 20); }

// ---- (a) DAG forms ----

constexpr index_t dag_DK = 16, dag_DV = 16;

// Node v takes `degree` distinct sources among the `window` nodes before it (all of them near the start).
graph::Dag windowed_dag(index_t n, index_t degree, index_t window, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<graph::Edge> edges;
  for (index_t v = 1; v < n; ++v) {
    const index_t first = std::max<index_t>(0, v - window);
    std::set<index_t> sources;
    while (static_cast<index_t>(sources.size()) < std::min(degree, v - first))
      sources.insert(rng.integer(first, v - 1));
    for (index_t u : sources) edges.push_back({u, v});
  }
  return graph::Dag(n, edges);
}

struct DagProblem {
  graph::Dag dag;
  index_t levels;
  xt::xtensor<float, 4> q, k, v;
  DagGateTensors<float> gates;
  DagInputs<float> inputs() const { return {q, k, v, gates.S, gates.T, gates.M, gates.D}; }
};

std::unique_ptr<DagProblem> dag_problem(graph::Dag dag) {
  Rng rng(7);
  const index_t N = dag.num_nodes(), E = dag.num_edges(), A = static_cast<index_t>(graph::line_graph(dag).arcs.size());
  const index_t levels = dag.levels().rows();
  auto p = std::make_unique<DagProblem>(DagProblem{std::move(dag),
                                                   levels,
                                                   rng.normal<float>(Shape<4>{1, 1, N, dag_DK}),
                                                   rng.normal<float>(Shape<4>{1, 1, N, dag_DK}),
                                                   rng.normal<float>(Shape<4>{1, 1, N, dag_DV}),
                                                   {}});
  const auto S = rng.normal<float>(Shape<3>{1, 1, E}), T = rng.normal<float>(Shape<3>{1, 1, A}),
             gamma = rng.normal<float>(Shape<3>{1, 1, E}), M = rng.normal<float>(Shape<3>{1, 1, E}),
             D = rng.normal<float>(Shape<3>{1, 1, N});
  p->gates = dag_gates_p_mode<float>(p->dag, S, T, gamma, M, D);
  return p;
}

// The same graph with its nodes renumbered level by level (the nodes of a level get consecutive ids,
// in the order of the level schedule) and its edges ordered by new source: the levels form then
// streams through q, k, v, h and the gates instead of jumping (on the grid, a level's ids are 511
// apart).
// Built on first use and kept: the recurrent and levels rows of a graph share it.
const DagProblem& dag_case(const std::string& graph_name, bool renumbered) {
  static std::map<std::pair<std::string, bool>, std::unique_ptr<DagProblem>> cache;
  auto& p = cache[{graph_name, renumbered}];
  if (!p) {
    graph::Dag dag = graph_name == "random_100k" ? windowed_dag(100000, 2, 1000, 1) : grid_dag(512, 512);
    p = dag_problem(renumbered ? graph::level_major(dag).dag : std::move(dag));
  }
  return *p;
}

std::map<std::string, double> recurrent_seconds;  // per graph in its own numbering, per iteration

// speedup: against the recurrent form on the graph in its own numbering (the row registered first).
void run_dag(benchmark::State& state, const std::string& graph_name, bool renumbered, DagForm form) {
  const DagProblem& p = dag_case(graph_name, renumbered);
  const auto x = p.inputs();
  const PeakMemory memory;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(dag_forward(p.dag, x, form, {}).data());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / double(state.iterations());
  memory.report(state);
  state.counters["nodes/s"] =
      benchmark::Counter(double(p.dag.num_nodes()), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["levels"] = double(p.levels);
  if (form == DagForm::recurrent && !renumbered) recurrent_seconds[graph_name] = seconds;
  if (recurrent_seconds.contains(graph_name)) state.counters["speedup"] = recurrent_seconds[graph_name] / seconds;
}

// ---- (b) 2-D forms ----

constexpr index_t grid_B = 128, grid_NH = 3, grid_DK = 64, grid_DV = 64;

struct GridProblem {
  xt::xtensor<float, 5> q, k, v;
  GridGateTensors<float> gates;
  GridInputs<float> inputs() const { return {q, k, v, gates.view()}; }
};

// Built on first use and kept for every form of that size.
const GridProblem& grid_case(index_t side) {
  static std::map<index_t, std::unique_ptr<GridProblem>> cache;
  auto& p = cache[side];
  if (!p) {
    Rng rng(side);
    const Shape<4> g{grid_B, grid_NH, side, side};
    p = std::make_unique<GridProblem>(GridProblem{rng.normal<float>(Shape<5>{grid_B, grid_NH, side, side, grid_DK}),
                                                  rng.normal<float>(Shape<5>{grid_B, grid_NH, side, side, grid_DK}),
                                                  rng.normal<float>(Shape<5>{grid_B, grid_NH, side, side, grid_DV}),
                                                  {}});
    const auto Sr = rng.normal<float>(g), Sd = rng.normal<float>(g), alpha = rng.normal<float>(g),
               gamma = rng.normal<float>(g), Ml = rng.normal<float>(g), Mu = rng.normal<float>(g),
               D = rng.normal<float>(g);
    p->gates = grid_gates_p_mode<float>(Sr, Sd, alpha, gamma, Ml, Mu, D);
  }
  return *p;
}

// The first `images` images of a problem (views into it).
GridInputs<float> first_images(const GridProblem& p, index_t images) {
  const index_t X = p.q.shape()[2], Y = p.q.shape()[3];
  auto cut5 = [&](const xt::xtensor<float, 5>& t, index_t D) {
    return ConstView<float, 5>(t.data(), {images, grid_NH, X, Y, D});
  };
  auto cut4 = [&](const ConstView<float, 4>& t) { return ConstView<float, 4>(t.data(), {images, grid_NH, X, Y}); };
  const GridGates<float> g = p.gates.view();
  return {
      cut5(p.q, grid_DK),
      cut5(p.k, grid_DK),
      cut5(p.v, grid_DV),
      {cut4(g.Sr), cut4(g.Sd), cut4(g.Trl), cut4(g.Tru), cut4(g.Tdu), cut4(g.Tdl), cut4(g.Ml), cut4(g.Mu), cut4(g.D)}};
}

void run_grid(benchmark::State& state, index_t side, GridForm form, index_t images) {
  const auto x = first_images(grid_case(side), images);
  const PeakMemory memory;
  for (auto _ : state) benchmark::DoNotOptimize(grid_forward(x, form, {}).data());
  memory.report(state);
  const index_t nodes = side * side;
  state.counters["images/s"] = benchmark::Counter(double(images), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["out_MiB"] = mib(images * grid_NH * nodes * grid_DV);
  state.counters["in_MiB"] = mib(images * grid_NH * nodes * (2 * grid_DK + grid_DV + 9));
}

// The parallel form at 64 x 64 takes about 1 s per (image, head) on one thread here, so 128 images
// would take over 3 minutes: it runs on 16 images, and its name says so.
constexpr index_t parallel_64_images = 16;

void register_all() {
  for (const std::string graph_name : {"random_100k", "grid_512x512"}) {
    for (const bool renumbered : {false, true}) {
      for (const DagForm form : {DagForm::recurrent, DagForm::levels}) {
        const std::string name =
            fmt::format("dag_fw/{}{}/{}", graph_name, renumbered ? "_level_major" : "", to_string(form));
        benchmark::RegisterBenchmark(
            name.c_str(),
            [graph_name, renumbered, form](benchmark::State& s) { run_dag(s, graph_name, renumbered, form); })
            ->Unit(benchmark::kMillisecond)
            ->MinTime(2.0)
            ->UseRealTime();
      }
    }
  }
  for (const index_t side : {32, 64}) {
    for (const GridForm form : {GridForm{GridForm::recurrent}, GridForm{GridForm::chunkwise, 4},
                                GridForm{GridForm::chunkwise, 8}, GridForm{GridForm::parallel}}) {
      const index_t images = form.kind == GridForm::parallel && side == 64 ? parallel_64_images : grid_B;
      const std::string name = fmt::format("grid_fw/{}x{}/B{}xNH{}/{}", side, side, images, grid_NH, form.name());
      benchmark::RegisterBenchmark(name.c_str(),
                                   [side, form, images](benchmark::State& s) { run_grid(s, side, form, images); })
          ->Unit(benchmark::kMillisecond)
          ->MinTime(1.0)
          ->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  peak_memory_supported = reset_high_water_mark() && status_kb("VmHWM") >= 0;
  benchmark::AddCustomContext("peak_memory", peak_memory_supported
                                                 ? "peak_MiB = VmHWM growth over the loop after a clear_refs reset"
                                                 : "unavailable (/proc/self/clear_refs not writable)");
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
