// CPU benchmark of the mLSTM reference: recurrent, parallel and chunkwise, forward and backward,
// float32, NH = 8, DQK = 256, DV = 512, S from 256 to 16384. Each result carries its GFLOP/s (the
// matrix arithmetic the form performs, counted below) and the ratio to an Eigen sgemm of the
// chunkwise form's main product, (L x DQK)(DQK x DV) per head, measured in the same run with the
// same threads. The recurrent rows also report the time per token, which must not grow with S.
#include "bench/sgemm.hpp"
#include "reference/mlstm/check.hpp"

#include <benchmark/benchmark.h>

using namespace flashlstm;
using namespace flashlstm::mlstm;

namespace {

constexpr index_t NH = 8, DQK = 256, DV = 512, L = 256;
double sgemm_gflops = 0;  // measured in main() before the benchmarks run

// FLOPs per head and token of what each form computes (multiply-add = 2).
double flops_per_token(Form::Kind kind, index_t S, bool backward) {
  const double dd = double(DQK) * DV;
  switch (kind) {
    case Form::recurrent:  // update + readout: 4 DQK DV; backward: two recomputations + 12 DQK DV
      return backward ? 20 * dd : 4 * dd;
    case Form::parallel:  // Q K^T and P V over the full S x S, plus the final state
      return backward ? 8.0 * S * (DQK + DV) + 14 * dd : 2.0 * S * (DQK + DV) + 4 * dd;
    case Form::chunkwise:  // per chunk: L x L intra part, L x DQK x DV inter part
      return backward ? 8.0 * L * (DQK + DV) + 14 * dd : 2.0 * L * (DQK + DV) + 4 * dd;
  }
  return 0;
}

void run(benchmark::State& state, Form form, bool backward) {
  const index_t S = state.range(0);
  const auto p = random_problem<float>({1, NH, S, DQK, DV, true}, 42);
  const Options o;
  for (auto _ : state) {
    if (backward) {
      benchmark::DoNotOptimize(mlstm::backward(p.inputs(), p.initial_view(), p.output_grad(), form, o).dq.data());
    } else {
      benchmark::DoNotOptimize(forward(p.inputs(), p.initial_view(), form, o).h.data());
    }
  }
  const double flops = flops_per_token(form.kind, S, backward) * S * NH;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["vs_sgemm"] =
      benchmark::Counter(flops * 1e-9 / sgemm_gflops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["time/token"] =
      benchmark::Counter(double(S), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["tokens/s"] = benchmark::Counter(double(S), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_sgemm(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(sgemm_gflops);
  state.counters["GFLOP/s"] = sgemm_gflops;
}

void register_all() {
  benchmark::RegisterBenchmark("sgemm_eigen/L256xDQK256xDV512x8", BM_sgemm)->Iterations(1);
  const std::vector<int64_t> all_S = {256, 1024, 4096, 8192, 16384}, parallel_S = {256, 1024, 4096, 8192};
  for (bool bw : {false, true}) {
    const std::string dir = bw ? "bw" : "fw";
    struct Entry {
      Form form;
      const std::vector<int64_t>* sizes;
    };
    for (const auto& [form, sizes] : {Entry{{Form::recurrent}, &all_S}, Entry{{Form::parallel}, &parallel_S},
                                      Entry{{Form::chunkwise, L}, &all_S}}) {
      auto* b = benchmark::RegisterBenchmark(("mlstm_" + dir + "/" + form.name()).c_str(),
                                             [form = form, bw](benchmark::State& s) { run(s, form, bw); });
      for (auto S : *sizes) b->Arg(S);
      b->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  sgemm_gflops = bench::sgemm_gflops(L, DQK, DV, NH, 10);  // the chunkwise form's (L x DQK)(DQK x DV)
  benchmark::AddCustomContext("sgemm_gflops", std::to_string(sgemm_gflops));
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
