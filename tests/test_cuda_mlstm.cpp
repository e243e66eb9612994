// The CUDA mLSTM kernels against the CPU reference (cuda/mlstm/check.hpp states the criterion) on odd
// and large shapes, every variant, both dtypes. Tagged [cuda]: without a visible GPU every case
// returns early with a warning, so CPU-only builds pass.
#include "cuda/mlstm/check.hpp"
#include "cuda/mlstm/rows.cuh"
#include "tests/check_catch.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <future>
#include <vector>

using namespace flashlstm::cuda::mlstm;
using flashlstm::mlstm::ProblemShape;

namespace {

bool have_gpu() {
  if (device_available()) return true;
  WARN("no CUDA device: skipped");
  return false;
}

const auto& kVariants = flashlstm::mlstm::variants;
const DType kDtypes[] = {DType::float32, DType::bfloat16};

void require_passes(const KernelCheck& c) {
  INFO(c.name << " (baseline: " << c.baseline << ")");
  CHECK_THAT(c.report, flashlstm::check::passes());
}

// Runs the checks at once, each on a thread and a stream of its own (at large shapes the CPU
// reference of a single head takes most of a check's time), and asserts on this thread in order.
std::vector<KernelCheck> run_concurrently(const std::vector<std::function<KernelCheck()>>& checks) {
  std::vector<std::future<KernelCheck>> runs;
  for (const auto& check : checks) runs.push_back(std::async(std::launch::async, check));
  std::vector<KernelCheck> done;
  for (auto& run : runs) done.push_back(run.get());
  return done;
}

}  // namespace

TEST_CASE("chunkwise kernels agree with the reference on odd shapes, every variant and dtype", "[cuda]") {
  if (!have_gpu()) return;
  struct Case {
    ProblemShape shape;
    int L;
  };
  const Case cases[] = {
      {{1, 2, 1, 48, 96, true}, 64},     {{2, 1, 63, 48, 96, false}, 64},    {{1, 2, 64, 128, 256, true}, 128},
      {{1, 2, 1000, 48, 96, true}, 64},  {{1, 1, 1000, 48, 96, false}, 128}, {{1, 1, 1000, 48, 96, true}, 256},
      {{1, 1, 1000, 128, 256, true}, 512}, {{1, 1, 1000, 48, 96, true}, 1024}, {{1, 1, 1000, 17, 24, true}, 64},
      {{1, 1, 130, 256, 512, true}, 128},
  };
  std::uint64_t seed = 100;
  for (const Case& c : cases)
    for (const Options& o : kVariants)
      for (DType t : kDtypes) require_passes(check_chunkwise(c.shape, c.L, o, t, ++seed));
}

TEST_CASE("chunkwise kernels agree with the reference at S = 8192 and large heads", "[cuda]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 200;
  std::vector<std::function<KernelCheck()>> checks;
  for (const Options& o : kVariants)
    for (DType t : kDtypes) {
      const std::uint64_t s = seed += 2;
      checks.push_back([=] { return check_chunkwise({1, 1, 8192, 256, 512, true}, 256, o, t, s - 1); });
      checks.push_back([=] { return check_chunkwise({1, 1, 8192, 128, 256, false}, 1024, o, t, s); });
    }
  for (const KernelCheck& c : run_concurrently(checks)) require_passes(c);
}

// With the exp input gate the readout's floor exp(-m) lets |nᵀq̂| come close to zero, which makes the
// bf16 baseline loose on random problems (its gradient errors reach tens of percent; the float32
// checks above hold the same algebra tightly). With eps = 1 the denominator stays >= 1 and, at the
// benchmark's head dimensions, the baseline is tight: a bf16 kernel is held to under 1e-2 on h and
// every gradient but dm0 (a per-head scalar, a sum with much cancellation, as for the float32 checks).
TEST_CASE("bf16 kernels with a well-conditioned exp readout meet a tight bound", "[cuda]") {
  if (!have_gpu()) return;
  const Options o{InputGate::exp, true, 1.0};
  std::uint64_t seed = 500;
  std::vector<std::function<KernelCheck()>> checks;
  for (const auto& [shape, L] : {std::pair{ProblemShape{1, 2, 2048, 256, 512, true}, 128},
                                 std::pair{ProblemShape{1, 1, 8192, 256, 512, true}, 256}}) {
    const std::uint64_t s = ++seed;
    checks.push_back([=, shape = shape, L = L] { return check_chunkwise(shape, L, o, DType::bfloat16, s); });
  }
  for (const KernelCheck& c : run_concurrently(checks)) {
    require_passes(c);
    for (const auto& t : c.report.tensors()) {
      INFO(t.name);
      if (t.name != "m" && t.name != "dm0") CHECK(t.bound < 3e-2);
    }
  }
}

TEST_CASE("a NaN in q, k or v reaches no earlier token, and the kernels put NaN where the reference does",
          "[cuda]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 600;
  for (const char which : {'q', 'k', 'v'})
    for (const Options& o : kVariants)
      for (DType t : kDtypes) {
        INFO("NaN in " << which << ", " << flashlstm::mlstm::variant_name(o) << ", " << flashlstm::to_string(t));
        // token 100 lies in the second 64-token tile of the first chunk: rows 64-99 of that tile come first
        CHECK_THAT(check_nonfinite({1, 2, 300, 48, 96, true}, 128, o, t, ++seed, which, 100), flashlstm::check::passes());
      }
}

// Packed sequences: each equals the reference on that sequence alone. The lengths straddle the
// chunk and tile sizes, include an empty sequence, and are not sorted (the kernels take the longest
// rows first).
TEST_CASE("packed sequences of different lengths agree with the reference run on each alone", "[cuda]") {
  if (!have_gpu()) return;
  const std::vector<flashlstm::index_t> lengths{63, 1, 1000, 0, 64, 65};
  std::uint64_t seed = 700;
  for (const bool with_state : {false, true})
    for (const Options& o : kVariants)
      for (DType t : kDtypes) {
        require_passes(check_varlen({1, 2, 1, 48, 96, with_state}, lengths, 128, o, t, ++seed));
        require_passes(check_varlen({1, 1, 1, 17, 24, with_state}, {130, 1, 64}, 64, o, t, ++seed));
      }
  for (DType t : kDtypes) require_passes(check_varlen({1, 2, 1, 256, 512, true}, {200, 63, 1}, 64, kVariants[0], t, ++seed));
}

// Users keep the gate pre-activations in float32 while q, k, v are bf16: the gates and their
// gradients stay float32 through every kernel.
TEST_CASE("bf16 inputs with float32 gates agree with the reference", "[cuda]") {
  if (!have_gpu()) return;
  const KernelTypes types{DType::bfloat16, true};
  std::uint64_t seed = 800;
  for (const Options& o : kVariants) {
    require_passes(check_chunkwise({1, 2, 130, 48, 96, true}, 64, o, types, ++seed));
    require_passes(check_chunkwise({1, 1, 200, 17, 24, true}, 128, o, types, ++seed));  // the two-pass forward
    require_passes(check_varlen({1, 2, 1, 48, 96, true}, {70, 0, 65}, 64, o, types, ++seed));
    require_passes(check_step({2, 2, 1, 48, 96, true}, o, types, ++seed));
  }
}

// A small scratch budget splits the backward into passes of a few rows (one batch) or sequences
// (packed); the results stay those of one pass.
TEST_CASE("the backward in passes agrees with the reference", "[cuda]") {
  if (!have_gpu()) return;
  ::setenv("FLASHLSTM_BACKWARD_SCRATCH_MIB", "1", 1);
  std::uint64_t seed = 900;
  for (const Options& o : kVariants)
    for (DType t : kDtypes) {
      // A pass keeps a whole wave of rows (at 48 x 96 about 200 on an H100): 512 rows make several.
      require_passes(check_chunkwise({256, 2, 70, 48, 96, true}, 64, o, t, ++seed));
      require_passes(check_varlen({1, 2, 1, 48, 96, true}, {130, 0, 1, 200, 64}, 64, o, t, ++seed));
    }
  ::unsetenv("FLASHLSTM_BACKWARD_SCRATCH_MIB");
}

TEST_CASE("the step kernel and the sequence wrapper agree with the reference", "[cuda]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 300;
  for (const Options& o : kVariants)
    for (DType t : kDtypes) {
      require_passes(check_step({2, 3, 1, 48, 96, true}, o, t, ++seed));
      require_passes(check_step({2, 2, 1, 256, 512, true}, o, t, ++seed));
      require_passes(check_sequence({1, 2, 200, 48, 96, true}, 64, o, t, ++seed));
    }
}

namespace {

// Every row's tokens, chunks and chunk states have workspace entries of their own, which cover the
// workspace; the maps from an entry back to its row (token_at, chunk_at) find it; the rows' inputs
// start where the layout says; the row order runs from the longest row down.
void check_layout(detail::Params p, const detail::Packing* packing, int L) {
  INFO("L = " << L << (packing ? ", packed" : ", one batch"));
  std::vector<std::int64_t> tables = detail::set_chunk_size(p, L, packing);
  if (packing) detail::place_tables(p, tables.data());
  std::vector<int> token_owner(p.tokens, -1), chunk_owner(p.chunks, -1), state_owner(p.states, -1);
  std::int64_t clashes = 0, wrong_way_back = 0;
  for (int bh = 0; bh < p.BH; ++bh) {
    const auto own = [&](std::vector<int>& owner, std::int64_t entry) {  // one row per workspace entry
      clashes += owner.at(entry) != -1;
      owner.at(entry) = bh;
    };
    const detail::Row r = detail::row_of(p, bh);
    const int i = bh / p.NH, h = bh % p.NH;
    CHECK(r.S == (packing ? packing->length(i) : p.S));
    CHECK(r.nc == (r.S + L - 1) / L);
    CHECK(r.in0 == (packing ? h * p.seq_stride + packing->cu_seqlens[i] : bh * p.seq_stride));
    for (int t = 0; t < r.S; ++t) {
      own(token_owner, r.tb0 + t);
      int back, t_back;
      detail::token_at(p, r.tb0 + t, back, t_back);
      wrong_way_back += back != bh || t_back != t;
    }
    for (int k = 0; k < r.nc; ++k) {
      own(chunk_owner, r.chunk0 + k);
      int back, k_back;
      detail::chunk_at(p, r.chunk0 + k, back, k_back);
      wrong_way_back += back != bh || k_back != k;
    }
    for (int k = 0; r.nc > 0 && k <= r.nc; ++k) own(state_owner, r.state0 + k);
  }
  CHECK(clashes == 0);
  CHECK(wrong_way_back == 0);
  CHECK(std::count(token_owner.begin(), token_owner.end(), -1) == 0);
  CHECK(std::count(chunk_owner.begin(), chunk_owner.end(), -1) == 0);
  // The chunk-parallel grids: every slot in a plane, planes within the grid's limits.
  CHECK(std::int64_t(p.chunk_stride) * p.chunk_planes >= p.chunks);
  CHECK(std::int64_t(p.chunk_stride) * (p.chunk_planes - 1) < p.chunks);
  CHECK(p.chunk_stride * (1024 / 64) <= 65535);
  std::vector<int> order;
  for (int z = 0; z < p.BH; ++z) order.push_back(detail::ordered_row(p, z));
  for (std::size_t z = 1; z < order.size(); ++z) CHECK(detail::row_of(p, order[z - 1]).S >= detail::row_of(p, order[z]).S);
  std::sort(order.begin(), order.end());
  for (int z = 0; z < p.BH; ++z) CHECK(order[z] == z);
}

}  // namespace

TEST_CASE("rows lie apart in the inputs and the workspace, one batch or packed", "[cuda]") {
  Inputs x;
  x.dims = {3, 2, 130, 16, 16};
  const detail::Params batch = detail::make_params(x, nullptr, 64, Options{});
  for (int L : {64, 128}) check_layout(batch, nullptr, L);
  // lengths 63, 1, 0, 1000, 65, 0: empty sequences, in the middle and last, and not sorted
  const detail::Packing packing{{0, 63, 64, 64, 1064, 1129, 1129}};
  x.dims = {1, 3, 1129, 16, 16};
  const detail::Params packed = detail::make_params(x, nullptr, 64, Options{});
  for (int L : {64, 128, 1024}) check_layout(packed, &packing, L);
}

namespace {

std::int64_t backward_scratch(detail::Params p, const detail::Packing* packing) {
  flashlstm::cuda::Scratch s(nullptr);  // sizes only
  detail::PackedTables tables(p, p.L, packing);
  tables.add_to(s);
  detail::add_backward_scratch(s, p);
  return s.bytes();
}

const char* moved(const void* base, std::int64_t bytes) { return static_cast<const char*>(base) + bytes; }

}  // namespace

TEST_CASE("the backward's passes cover every row once and keep their scratch within the budget", "[cuda]") {
  // Stand-in addresses: the plan only moves pointers.
  std::vector<char> memory(16);
  void* base = memory.data();
  const auto f = static_cast<float*>(base);
  Inputs x{base, base, base, base, base, {8, 8, 8192, 256, 512}, DType::bfloat16, true};
  detail::Params p = detail::make_params(x, nullptr, 128, Options{});
  p.dh = p.dq = p.dk = p.dv = p.digate = p.dfgate = base;
  p.C0 = p.n0 = p.m0 = p.dC_last = p.dn_last = p.dm_last = f;
  p.dC0 = p.dn0 = p.dm0 = f;
  SECTION("one batch: the benchmark shape, about 5 GB in one pass") {
    CHECK(backward_scratch(p, nullptr) > (std::int64_t{4} << 30));
    const auto passes = detail::plan_backward(p, nullptr, 2);
    CHECK(passes.size() > 1);
    int r0 = 0;
    for (const auto& pass : passes) {
      const detail::Params& q = pass.params;
      CHECK(backward_scratch(q, nullptr) <= detail::kBackwardScratch);
      CHECK(q.q == moved(base, std::int64_t(r0) * 8192 * 256 * 2));
      CHECK(q.dv == moved(base, std::int64_t(r0) * 8192 * 512 * 2));
      CHECK(q.dfgate == moved(base, std::int64_t(r0) * 8192 * 4));  // float32 gates
      CHECK(q.dC0 == f + std::int64_t(r0) * 256 * 512);
      CHECK(q.dm_last == f + r0);
      r0 += q.BH;
    }
    CHECK(r0 == p.BH);
    // Whole waves of 12 rows (13 fit the budget).
    const auto waves = detail::plan_backward(p, nullptr, 2, detail::kBackwardScratch, 12);
    REQUIRE(waves.size() == 6);
    CHECK(waves.front().params.BH == 12);
    CHECK(waves.back().params.BH == 4);
    CHECK(passes.front().params.BH == 13);
  }
  SECTION("one batch, long rows: a pass keeps a whole wave where the budget holds fewer rows") {
    x.dims = {2, 8, 32768, 256, 512};  // about 320 MB a row: 3 rows in 1 GiB
    detail::Params q = detail::make_params(x, nullptr, 128, Options{});
    q.dh = q.dq = q.dk = q.dv = q.digate = q.dfgate = base;
    const auto three = detail::plan_backward(q, nullptr, 2);
    CHECK(three.front().params.BH == 3);
    const auto waves = detail::plan_backward(q, nullptr, 2, detail::kBackwardScratch, 12);
    REQUIRE(waves.size() == 2);
    CHECK(waves.front().params.BH == 12);
    CHECK(waves.back().params.BH == 4);
    CHECK(waves.back().params.q == moved(base, std::int64_t(12) * 32768 * 256 * 2));
    const auto all = detail::plan_backward(q, nullptr, 2, detail::kBackwardScratch, 20);  // a wave beyond the rows
    REQUIRE(all.size() == 1);
    CHECK(all.front().params.BH == 16);
  }
  SECTION("packed: whole sequences a pass, in order; a pass of empty sequences is left out") {
    const detail::Packing packing{{0, 3000, 3000, 3000, 9000, 9001, 12000}};  // 3000, 0, 0, 6000, 1, 2999
    x.dims = {1, 8, 12000, 256, 512};
    detail::Params q = detail::make_params(x, nullptr, 128, Options{});
    q.C0 = q.dC0 = f;
    const std::int64_t budget = 300 << 20;
    const auto passes = detail::plan_backward(q, &packing, 2, budget);
    std::int64_t next = 0;  // the next sequence's offset
    for (const auto& pass : passes) {
      REQUIRE(pass.packing);
      const auto& cu = pass.packing->cu_seqlens;
      // The pass's first sequence, from where its states start; its offsets are the packing's from there.
      const std::int64_t i0 = (pass.params.C0 - f) / (8 * 256 * 512);
      CHECK(pass.params.C0 == f + i0 * 8 * 256 * 512);
      CHECK(std::equal(cu.begin(), cu.end(), packing.cu_seqlens.begin() + i0));
      CHECK(pass.params.dC0 == pass.params.C0);
      CHECK(cu.front() >= next);
      next = cu.back();
      CHECK(pass.params.S == cu.back() - cu.front());
      CHECK(pass.params.q == q.q);  // packed inputs stay: the offsets place the rows
      CHECK((cu.size() == 2 || backward_scratch(pass.params, &*pass.packing) <= budget));
      check_layout(pass.params, &*pass.packing, 128);
    }
    CHECK(next == 12000);
  }
}

TEST_CASE("the forward names the chunk size it computes with", "[cuda]") {
  Inputs x;
  x.dims = {1, 1, 8, 256, 512};
  x.dtype = DType::bfloat16;
  CHECK(forward_chunk_size(x, 256) == 64);  // the fused forward: 64-token chunks
  x.dims.DQK = 24;
  CHECK(forward_chunk_size(x, 128) == 64);
  x.dims.DQK = 17;  // rows that are not whole 16-byte pieces: the two-pass kernels
  CHECK(forward_chunk_size(x, 128) == 128);
  x.dims = {1, 1, 8, 512, 512};
  CHECK(forward_chunk_size(x, 256) == 256);
  x.dims = {1, 1, 8, 256, 512};
  x.dtype = DType::float32;
  CHECK(forward_chunk_size(x, 1024) == 1024);
}

TEST_CASE("the kernels' host API rejects bad arguments by name", "[cuda]") {
  const Options o;
  Inputs x;
  x.dims = {1, 1, 8, 16, 16};
  CHECK_THROWS_WITH(forward_chunkwise(x, nullptr, nullptr, State{}, 64, o, nullptr), Catch::StartsWith("q: "));
  // Packed sequences: the offsets are checked before the pointers.
  const auto varlen = [&](const Inputs& in, const std::vector<std::int64_t>& cu) {
    forward_varlen(in, cu, nullptr, nullptr, State{}, 64, o, nullptr);
  };
  CHECK_THROWS_WITH(varlen(x, {0, 4}), Catch::StartsWith("cu_seqlens: must end at the number of tokens 8"));
  CHECK_THROWS_WITH(varlen(x, {0, 5, 3, 8}), Catch::StartsWith("cu_seqlens: must not decrease"));
  CHECK_THROWS_WITH(varlen(x, {1, 8}), Catch::StartsWith("cu_seqlens: must start at 0"));
  CHECK_THROWS_WITH(varlen(x, {8}), Catch::StartsWith("cu_seqlens: expected N + 1 >= 2 offsets"));
  CHECK_THROWS_WITH(varlen(x, {0, 8}), Catch::StartsWith("q: "));  // good offsets: on to the pointers
  Inputs two = x;
  two.dims.B = 2;
  CHECK_THROWS_WITH(varlen(two, {0, 8}), Catch::StartsWith("B: packed sequences take B = 1"));
  ::setenv("FLASHLSTM_BACKWARD_SCRATCH_MIB", "lots", 1);
  CHECK_THROWS_WITH(detail::backward_scratch_budget(), Catch::StartsWith("FLASHLSTM_BACKWARD_SCRATCH_MIB: must be"));
  ::unsetenv("FLASHLSTM_BACKWARD_SCRATCH_MIB");
  CHECK(detail::backward_scratch_budget() == detail::kBackwardScratch);
  if (!have_gpu()) return;
  void* buffer = nullptr;
  REQUIRE(cudaMalloc(&buffer, 1 << 16) == cudaSuccess);
  x = Inputs{buffer, buffer, buffer, buffer, buffer, {1, 1, 8, 16, 16}, DType::float32};
  CHECK_THROWS_WITH(forward_chunkwise(x, nullptr, buffer, State{}, 100, o, nullptr), Catch::StartsWith("chunk_size: "));
  CHECK_THROWS_WITH(forward_chunkwise(x, nullptr, buffer, State{static_cast<float*>(buffer), nullptr, nullptr}, 64, o,
                                      nullptr),
                    Catch::StartsWith("last: "));
  float host[16];
  x.k = host;
  CHECK_THROWS_WITH(forward_chunkwise(x, nullptr, buffer, State{}, 64, o, nullptr), Catch::StartsWith("k: "));
  x.k = buffer;
  x.dims.DQK = 0;
  CHECK_THROWS_WITH(forward_chunkwise(x, nullptr, buffer, State{}, 64, o, nullptr), Catch::StartsWith("DQK: "));
  x.dims.DQK = 16;
  CHECK_THROWS_WITH(step(x, State{}, buffer, o, nullptr), Catch::StartsWith("state: "));
  const Options bad_eps{InputGate::exp, true, -1.0};
  CHECK_THROWS_WITH(forward_chunkwise(x, nullptr, buffer, State{}, 64, bad_eps, nullptr), Catch::StartsWith("eps: "));
  cudaFree(buffer);
}

// Small odd shapes for `compute-sanitizer --tool memcheck` (tools/gpu_check.sh runs this case
// under it): partial tiles in every dimension, S shorter than a chunk, a partial last chunk, packed
// sequences with an empty one.
TEST_CASE("odd shapes for the memory checker", "[cuda][sanitize]") {
  if (!have_gpu()) return;
  std::uint64_t seed = 400;
  for (const Options& o : kVariants)
    for (DType t : kDtypes) {
      require_passes(check_chunkwise({1, 2, 1, 17, 24, true}, 64, o, t, ++seed));
      require_passes(check_chunkwise({2, 1, 130, 48, 96, true}, 128, o, t, ++seed));
      require_passes(check_step({1, 2, 1, 17, 24, true}, o, t, ++seed));
      require_passes(check_sequence({1, 1, 70, 48, 96, true}, 64, o, t, ++seed));
      require_passes(check_varlen({1, 2, 1, 48, 96, true}, {70, 0, 1, 65}, 64, o, t, ++seed));
    }
}
