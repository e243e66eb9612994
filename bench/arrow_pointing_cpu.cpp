// CPU benchmark of the arrow-pointing generator's batch API: images/s at 192 x 192 (train, val, test)
// and 384 x 384 (the extrapolation splits), one channel, on 1 and 2 threads. A batch of 1,024 images
// goes into one preallocated buffer, as in a training loop that generates on the fly; the target is
// >= 20,000 images/s at 192 on two cores. The sample index advances from batch to batch, so every
// iteration makes new images.
#include "datasets/arrow_pointing/arrow_pointing.hpp"

#include <benchmark/benchmark.h>

#include <vector>

using namespace flashlstm;
namespace arrows = flashlstm::datasets::arrows;

namespace {

constexpr index_t batch = 1024;

void BM_generate(benchmark::State& state) {
  arrows::Params params;
  params.size = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  std::vector<std::uint8_t> images(batch * params.image_bytes()), labels(batch);
  index_t first = 0;
  for (auto _ : state) {
    arrows::generate_into(params, first, batch, images, labels, threads);
    benchmark::DoNotOptimize(images.data());
    benchmark::ClobberMemory();
    first += batch;
  }
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB/s"] =
      benchmark::Counter(double(batch * params.image_bytes()) * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_generate)
    ->ArgNames({"size", "threads"})
    ->ArgsProduct({{192, 384}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();

BENCHMARK_MAIN();
