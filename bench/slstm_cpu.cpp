// CPU benchmark of the sLSTM reference at FlashRNN's benchmark shape: B = 16, T = 1024, NH = 12,
// DH = 64, float32, forward and backward. Reports tokens/s (B·T per second) and the GFLOP/s of the
// recurrent GEMMs (forward: h R^T, one (B x DH)(DH x 4DH) per step and head; backward: two of that
// size), as a ratio to an Eigen sgemm of the same per-step product measured in the same run with
// the same threads. The pointwise cell and the memory traffic are what the ratio loses.
//
// Runs per cell: the forward alone (`fw`), the forward that also keeps the pre-activations for the
// backward (`fw_keep`, as a training step runs it), the backward from those (`bw`: two products per
// step, dh_{t-1} = dg̃_t R, and dR) and the backward that runs the forward again itself
// (`bw_rerun`, three products, credited two). These write into arrays allocated once, as a training
// loop that reuses its buffers would; `fw_alloc` and `bw_alloc` are `fw` and `bw` through the calls
// that return fresh arrays (200 MB of states or dWx here), whose first writes fault in new pages on
// every call.
#include "bench/sgemm.hpp"
#include "reference/slstm/check.hpp"

#include <benchmark/benchmark.h>

#include <map>
#include <optional>
#include <string>

using namespace flashlstm;
using namespace flashlstm::slstm;

namespace {

constexpr index_t B = 16, T = 1024, NH = 12, DH = 64;
double sgemm_gflops = 0;

enum class Run { fw, fw_keep, bw, bw_rerun, fw_alloc, bw_alloc };
constexpr const char* run_names[] = {"fw", "fw_keep", "bw", "bw_rerun", "fw_alloc", "bw_alloc"};

// The inputs of a variant, drawn once (Google Benchmark calls a benchmark several times).
const Problem<float>& problem(const Options& o) {
  static std::map<std::string, Problem<float>> problems;
  auto [it, fresh] = problems.try_emplace(variant_name(o));
  if (fresh) it->second = random_problem<float>({B, T, NH, DH, false}, o, 42);
  return it->second;
}

void run(benchmark::State& state, Options o, Run r) {
  const auto& p = problem(o);
  const bool backward = r == Run::bw || r == Run::bw_rerun || r == Run::bw_alloc;
  // The forward's results (with the gates, which the backward reads unless it reruns the forward)
  // and the arrays for the gradients, made by one untimed call each.
  Output<float> out = forward(p.inputs(), std::nullopt, o, /*keep_gates=*/r != Run::fw);
  const auto saved = r == Run::bw || r == Run::bw_alloc ? std::optional(Saved<float>::from(out)) : std::nullopt;
  InputGrad<float> grad;
  if (backward) grad = slstm::backward(p.inputs(), std::nullopt, p.output_grad(), o, saved);
  const OutputView<float> out_view{out.states, out.last,
                                   r == Run::fw_keep ? View<float, 5>(*out.gates) : View<float, 5>()};
  for (auto _ : state) {
    switch (r) {
      case Run::fw:
      case Run::fw_keep:
        forward(p.inputs(), std::nullopt, o, out_view);
        break;
      case Run::bw:
      case Run::bw_rerun:
        slstm::backward(p.inputs(), std::nullopt, p.output_grad(), o, saved, {grad.dWx, grad.dR, grad.db, {}});
        break;
      case Run::fw_alloc:
        benchmark::DoNotOptimize(forward(p.inputs(), std::nullopt, o).states.data());
        break;
      case Run::bw_alloc:
        benchmark::DoNotOptimize(slstm::backward(p.inputs(), std::nullopt, p.output_grad(), o, saved).dR.data());
        break;
    }
    benchmark::ClobberMemory();
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
    for (Run r : {Run::fw, Run::fw_keep, Run::bw, Run::bw_rerun, Run::fw_alloc, Run::bw_alloc}) {
      benchmark::RegisterBenchmark(("slstm_" + std::string(run_names[int(r)]) + "/" + variant_name(o)).c_str(),
                                   [o, r](benchmark::State& s) { run(s, o, r); })
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
