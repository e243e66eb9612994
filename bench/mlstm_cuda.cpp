// Times the CUDA mLSTM kernels at the benchmark shape (bf16, 65,536 tokens, NH = 8, DQK = 256,
// DV = 512) by the GPU protocol of bench/README.md: CUDA events around each call, the median of
// >= 30 repetitions after warm-up, L2 flushed before each, random inputs. Prints ms, TFLOP/s, GB/s
// and the ratio to the floor (max of FLOPs / 789 TFLOP/s and bytes / 3.0 TB/s, the ceilings measured
// on the H100), and writes the rows as JSON. With --peers (the JSON bench/peers_h100.py wrote in the
// same session) each row also gets the fastest peer of the same variant and length, and the speedup.
//
// FLOPs counted (docs/mlstm.md): per token and head, the inter-chunk work 4·DQK·DV and the causal
// intra-chunk work L·(DQK + DV); forward + backward counts three forwards. Bytes: q, k, v, gates read
// and h written once (+ dh read, dq, dk, dv, gate gradients written for the backward); the step:
// the float32 state read and written once.
//
// Packed sequences: the same 65,536 tokens as 64 sequences of lengths drawn log-uniformly from
// [128, 4096] (fixed seed, adjusted to the total) in one (1, NH, 65536, D) batch, through
// forward_varlen / backward_varlen; the rows name them "packed" (S = 0, sequences = 64).
#include "bench/cuda_timing.hpp"
#include "bench/fill.hpp"
#include "cuda/mlstm/mlstm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

using namespace flashlstm::cuda::mlstm;
using flashlstm::bench::g_once;
using flashlstm::bench::median_ms;
using flashlstm::cuda::check_cuda;
using Buffer = flashlstm::cuda::DeviceBuffer;

constexpr double kPeakFlops = 789e12, kPeakBytes = 3.0e12;

struct Row {
  std::string kernel, variant;  // variant: "sig-nonorm", "exp" (mlstm::variant_name)
  bool backward = false;        // forward + backward
  std::int64_t S = 0, L = 0, B = 0;
  std::int64_t sequences = 0;  // packed sequences (S = 0)
  double ms = 0, flops = 0, bytes = 0;
  std::optional<double> peer_ms;
  std::string peer;
  std::size_t scratch_bytes = 0;

  double floor_ms() const { return 1e3 * std::max(flops / kPeakFlops, bytes / kPeakBytes); }
  nlohmann::json json() const {
    nlohmann::json j{{"kernel", kernel}, {"S", S}, {"L", L}, {"B", B}, {"ms", ms}, {"tflops", flops / ms / 1e9},
                     {"gbs", bytes / ms / 1e6}, {"floor_ms", floor_ms()}, {"ratio_to_floor", ms / floor_ms()},
                     {"scratch_bytes", scratch_bytes}};
    if (sequences > 0) j["sequences"] = sequences;
    if (peer_ms) j["peer"] = peer, j["peer_ms"] = *peer_ms, j["speedup_over_peer"] = *peer_ms / ms;
    return j;
  }
};

// The stream-ordered pool's high-water mark since the last reset (the kernels' scratch).
std::size_t pool_peak_and_reset() {
  cudaMemPool_t pool;
  int device = 0;
  cudaGetDevice(&device);
  check_cuda(cudaDeviceGetDefaultMemPool(&pool, device), "pool");
  std::uint64_t peak = 0, zero = 0;
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &peak);
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero);
  return peak;
}

// The fastest peer with a time for this row's variant, length and pass, from bench/peers_h100.py's JSON.
void attach_peer(Row& row, const nlohmann::json& peers) {
  for (const auto& p : peers.at("results")) {
    const char* key = row.backward ? "fwbw_ms" : "fw_ms";
    if (row.sequences > 0 || p.value("variant", "") != row.variant || p.at("S").get<std::int64_t>() != row.S ||
        !p.contains(key))
      continue;
    const double ms = p.at(key).get<double>();
    if (!row.peer_ms || ms < *row.peer_ms) row.peer_ms = ms, row.peer = p.at("peer").get<std::string>();
  }
}

// 64 lengths in [128, 4096], log-uniform, adjusted to sum to `total` (65,536).
std::vector<std::int64_t> packed_lengths(std::int64_t total) {
  constexpr int kSequences = 64;
  constexpr std::int64_t kShortest = 128, kLongest = 4096;
  std::mt19937_64 rng(2026);
  std::uniform_real_distribution<double> log_length(std::log(double(kShortest)), std::log(double(kLongest)));
  std::vector<double> drawn(kSequences);
  for (double& x : drawn) x = std::exp(log_length(rng));
  const double scale = double(total) / std::accumulate(drawn.begin(), drawn.end(), 0.0);
  std::vector<std::int64_t> n;
  for (double x : drawn) n.push_back(std::clamp<std::int64_t>(std::llround(x * scale), kShortest, kLongest));
  std::int64_t missing = total - std::accumulate(n.begin(), n.end(), std::int64_t{0});
  for (std::size_t i = 0; missing != 0; i = (i + 1) % n.size()) {  // the rounding's remainder
    if (missing > 0 && n[i] < kLongest) ++n[i], --missing;
    else if (missing < 0 && n[i] > kShortest) --n[i], ++missing;
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Time the CUDA mLSTM kernels"};
  std::string json_path, peers_path, revision = "unknown";
  int reps = 30;
  bool once = false;
  std::vector<int> chunk_sizes{128, 256};
  std::vector<std::int64_t> lengths{8192, 32768};
  app.add_option("--json", json_path, "write the rows here");
  app.add_option("--peers", peers_path, "the peers' times from bench/peers_h100.py in this session (JSON)")
      ->check(CLI::ExistingFile);
  app.add_option("--revision", revision, "git revision recorded with the rows");
  app.add_option("--reps", reps, "timed repetitions (median reported)")->check(CLI::Range(30, 10000));
  app.add_option("--chunk-sizes", chunk_sizes, "chunk sizes L to time");
  app.add_option("--lengths", lengths, "sequence lengths S (B = 65536 / S)");
  app.add_flag("--once", once, "run each case once, untimed (for a profiler such as ncu)");
  CLI11_PARSE(app, argc, argv);

  g_once = once;
  try {
    constexpr std::int64_t kTokens = 65536, NH = 8, DQK = 256, DV = 512;
    cudaStream_t stream;
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "properties");
    const std::size_t e = 2;  // bf16
    const std::size_t qk_bytes = kTokens * NH * DQK * e, v_bytes = kTokens * NH * DV * e, g_bytes = kTokens * NH * e;
    Buffer q(qk_bytes), k(qk_bytes), v(v_bytes), ig(g_bytes), fg(g_bytes), h(v_bytes), dh(v_bytes);
    Buffer dq(qk_bytes), dk(qk_bytes), dv(v_bytes), dig(g_bytes), dfg(g_bytes);
    flashlstm::bench::fill_normal(q.get(), kTokens * NH * DQK, true, 0.f, 1.f, 1, stream);
    flashlstm::bench::fill_normal(k.get(), kTokens * NH * DQK, true, 0.f, 1.f, 2, stream);
    flashlstm::bench::fill_normal(v.get(), kTokens * NH * DV, true, 0.f, 1.f, 3, stream);
    flashlstm::bench::fill_normal(ig.get(), kTokens * NH, true, 0.f, 1.f, 4, stream);
    flashlstm::bench::fill_normal(fg.get(), kTokens * NH, true, 3.f, 1.f, 5, stream);
    flashlstm::bench::fill_normal(dh.get(), kTokens * NH * DV, true, 0.f, 1.f, 6, stream);

    const Options sig_nonorm{InputGate::sig, false, 1e-6}, exp_gate{InputGate::exp, true, 1e-6};
    std::vector<Row> rows;
    const double io_fw = 2.0 * qk_bytes + 2.0 * v_bytes + 2.0 * g_bytes;
    const double io_bw = io_fw + 2.0 * qk_bytes + 2.0 * v_bytes + 2.0 * g_bytes;
    const InputGrad grads{dq.get(), dk.get(), dv.get(), dig.get(), dfg.get(), State{}};
    // Forward and forward + backward rows of both variants at every chunk size; `forward` and
    // `backward` launch one call at chunk size L.
    using Launch = std::function<void(int L, const Options&)>;
    const auto time_chunkwise = [&](const char* suffix, std::int64_t S, std::int64_t B, std::int64_t sequences,
                                    const Launch& forward, const Launch& backward) {
      for (int L : chunk_sizes) {
        const double fw_flops = static_cast<double>(kTokens) * NH * (4.0 * DQK * DV + L * (DQK + DV));
        for (const auto& [name, o] : {std::pair{"mLSTMsig (normalize off)", sig_nonorm}, std::pair{"mLSTMexp", exp_gate}}) {
          pool_peak_and_reset();
          Row fw{fmt::format("{} fw{}", name, suffix), flashlstm::mlstm::variant_name(o), false, S, L, B, sequences};
          fw.ms = median_ms([&] { forward(L, o); }, stream, 3, reps);
          fw.flops = fw_flops, fw.bytes = io_fw;
          fw.scratch_bytes = pool_peak_and_reset();
          rows.push_back(fw);

          Row fwbw{fmt::format("{} fw+bw{}", name, suffix), flashlstm::mlstm::variant_name(o), true, S, L, B, sequences};
          fwbw.ms = median_ms([&] { forward(L, o), backward(L, o); }, stream, 2, reps);
          fwbw.flops = 3 * fw_flops, fwbw.bytes = io_bw;
          fwbw.scratch_bytes = pool_peak_and_reset();
          rows.push_back(fwbw);
        }
      }
    };
    for (std::int64_t S : lengths) {
      const std::int64_t B = kTokens / S;
      const Inputs x{q.get(), k.get(), v.get(), ig.get(), fg.get(), Dims{B, NH, S, DQK, DV}, DType::bfloat16};
      time_chunkwise(
          "", S, B, 0, [&](int L, const Options& o) { forward_chunkwise(x, nullptr, h.get(), State{}, L, o, stream); },
          [&](int L, const Options& o) { backward_chunkwise(x, nullptr, OutputGrad{dh.get()}, grads, L, o, stream); });
    }
    {  // packed sequences: the same tokens, 64 sequences of different lengths
      std::vector<std::int64_t> cu{0};
      for (std::int64_t n : packed_lengths(kTokens)) cu.push_back(cu.back() + n);
      const Inputs x{q.get(), k.get(), v.get(), ig.get(), fg.get(), Dims{1, NH, kTokens, DQK, DV}, DType::bfloat16};
      time_chunkwise(
          " packed", 0, 1, 64,
          [&](int L, const Options& o) { forward_varlen(x, cu, nullptr, h.get(), State{}, L, o, stream); },
          [&](int L, const Options& o) {
            backward_varlen(x, cu, nullptr, OutputGrad{dh.get()}, grads, L, o, stream);
          });
    }
    {  // the generation step, B = 16
      const std::int64_t B = 16;
      const std::size_t C_bytes = B * NH * DQK * DV * 4;
      Buffer C(C_bytes), n(B * NH * DQK * 4), m(B * NH * 4), hs(B * NH * DV * e);
      check_cuda(cudaMemsetAsync(C.get(), 0, C_bytes, stream), "memset");
      check_cuda(cudaMemsetAsync(n.get(), 0, B * NH * DQK * 4, stream), "memset");
      check_cuda(cudaMemsetAsync(m.get(), 0, B * NH * 4, stream), "memset");
      const Inputs x{q.get(), k.get(), v.get(), ig.get(), fg.get(), Dims{B, NH, 1, DQK, DV}, DType::bfloat16};
      for (const auto& [name, o] : {std::pair{"mLSTMexp step B=16", exp_gate}, std::pair{"mLSTMsig step B=16", sig_nonorm}}) {
        Row r{name, flashlstm::mlstm::variant_name(o), false, 1, 0, B};
        r.ms = median_ms([&] { step(x, State{C.get<float>(), n.get<float>(), m.get<float>()}, hs.get(), o, stream); },
                         stream, 5, std::max(reps, 100));
        r.flops = 4.0 * B * NH * DQK * DV;
        r.bytes = 2.0 * C_bytes;
        rows.push_back(r);
      }
    }

    if (!peers_path.empty()) {
      const auto peers = nlohmann::json::parse(std::ifstream(peers_path));
      for (Row& r : rows) attach_peer(r, peers);
    }
    nlohmann::json out{{"revision", revision}, {"device", prop.name}, {"dtype", "bf16"}, {"tokens", kTokens},
                       {"NH", NH}, {"DQK", DQK}, {"DV", DV}, {"results", nlohmann::json::array()}};
    for (const Row& r : rows) out["results"].push_back(r.json());
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";

    fmt::print("{:<34} {:>6} {:>5} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9}\n", "kernel (bf16, NH8, 256x512)", "S", "L",
               "ms", "TFLOP/s", "GB/s", "floor ms", "/floor", "vs peer");
    for (const Row& r : rows) {
      fmt::print("{:<34} {:>6} {:>5} {:>9.3f} {:>8.1f} {:>8.0f} {:>9.3f} {:>7.2f} {:>9}\n", r.kernel, r.S, r.L, r.ms,
                 r.flops / r.ms / 1e9, r.bytes / r.ms / 1e6, r.floor_ms(), r.ms / r.floor_ms(),
                 r.peer_ms ? fmt::format("{:.2f}x", *r.peer_ms / r.ms) : "-");
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
