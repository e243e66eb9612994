// CPU benchmark of the sLSTM reference at FlashRNN's benchmark shape: B = 16, T = 1024, NH = 12,
// DH = 64, float32, forward and backward. Reports tokens/s (B·T per second) and the GFLOP/s of the
// recurrent GEMMs (forward: h R^T, one (B x DH)(DH x 4DH) per step and head; backward: two of that
// size), as a ratio to an Eigen sgemm of the same per-step product measured in the same run with
// the same threads. The pointwise cell and the memory traffic are what the ratio loses. The
// backward is credited two products per step, though it does three: it reruns the forward (the
// API does not hand it the forward's states), then dh_{t-1} = dg̃_t R per step and dR once over all
// steps. Each call allocates its outputs (200 MB of states or dWx here), so the first writes to
// fresh pages are part of what is timed, as they are for a caller.
#include "bench/sgemm.hpp"
#include "reference/slstm/check.hpp"

#include <benchmark/benchmark.h>

using namespace flashlstm;
using namespace flashlstm::slstm;

namespace {

constexpr index_t B = 16, T = 1024, NH = 12, DH = 64;
double sgemm_gflops = 0;

void run(benchmark::State& state, Options o, bool backward) {
  const auto p = random_problem<float>({B, T, NH, DH, false}, o, 42);
  for (auto _ : state) {
    if (backward) {
      benchmark::DoNotOptimize(slstm::backward(p.inputs(), std::nullopt, p.output_grad(), o).dR.data());
    } else {
      benchmark::DoNotOptimize(forward(p.inputs(), std::nullopt, o).states.data());
    }
  }
  const double gemm_flops = (backward ? 2 : 1) * 2.0 * B * DH * 4 * DH * T * NH;
  state.counters["GFLOP/s"] = benchmark::Counter(gemm_flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["vs_sgemm"] =
      benchmark::Counter(gemm_flops * 1e-9 / sgemm_gflops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = benchmark::Counter(double(B * T), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_sgemm(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(sgemm_gflops);
  state.counters["GFLOP/s"] = sgemm_gflops;
}

}  // namespace

int main(int argc, char** argv) {
  sgemm_gflops = bench::sgemm_gflops(B, DH, 4 * DH, NH, T);
  benchmark::AddCustomContext("sgemm_gflops", std::to_string(sgemm_gflops));
  benchmark::RegisterBenchmark("sgemm_eigen/B16xDH64x4DH256xNH12xT1024", BM_sgemm)->Iterations(1);
  for (const Options& o : {Options{Cell::slstm, ForgetGate::sigmoid}, Options{Cell::slstm, ForgetGate::exp},
                           Options{Cell::lstm}}) {
    for (bool bw : {false, true}) {
      benchmark::RegisterBenchmark(((bw ? "slstm_bw/" : "slstm_fw/") + variant_name(o)).c_str(),
                                   [o, bw](benchmark::State& s) { run(s, o, bw); })
          ->Unit(benchmark::kMillisecond)
          ->MinTime(1.0)
          ->UseRealTime();
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
