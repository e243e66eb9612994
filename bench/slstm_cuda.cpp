// Times the fused CUDA sLSTM / LSTM kernels at the benchmark shape (T = 1024, NH = 12, DH = 64,
// B = 16 and 64; bf16 and float32 inputs) by the GPU protocol of bench/README.md (bench/cuda_timing.hpp).
// Prints ms, µs per step and the ratio to the throughput floor, and writes the rows as JSON. With
// --peers (the JSON bench/peers_slstm_h100.py wrote in the same session) each row also gets the
// fastest peer of the same cell and batch, and the speedup.
//
// Counted per pass: the recurrent products 2·B·T·NH·4·DH² FLOPs (forward + backward: three passes —
// the forward, Rᵀ dg̃ and dR); bytes: Wx read and the states written (forward), plus the gates
// written and read, the states and dh read and dWx written (backward). The floor is the larger of
// FLOPs / 789 TFLOP/s and bytes / 3.0 TB/s; it ignores that the T steps form a dependent chain.
#include "bench/cuda_timing.hpp"
#include "bench/fill.hpp"
#include "cuda/slstm/slstm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <vector>

namespace {

using namespace flashlstm::cuda::slstm;
using flashlstm::bench::median_ms;
using flashlstm::cuda::check_cuda;
using Buffer = flashlstm::cuda::DeviceBuffer;

constexpr double kPeakFlops = 789e12, kPeakBytes = 3.0e12;

struct Row {
  std::string variant;  // "slstm", "lstm"
  DType dtype = DType::bfloat16;
  bool backward = false;  // forward + backward
  std::int64_t B = 0, T = 0;
  double ms = 0, flops = 0, bytes = 0;
  std::optional<double> peer_ms;
  std::string peer;

  double floor_ms() const { return 1e3 * std::max(flops / kPeakFlops, bytes / kPeakBytes); }
  nlohmann::json json() const {
    nlohmann::json j{{"kernel", backward ? "fwbw" : "fw"}, {"variant", variant}, {"dtype", to_string(dtype)},
                     {"B", B}, {"T", T}, {"ms", ms}, {"us_per_step", 1e3 * ms / T}, {"floor_ms", floor_ms()},
                     {"ratio_to_floor", ms / floor_ms()}};
    if (peer_ms) j["peer"] = peer, j["peer_ms"] = *peer_ms, j["speedup"] = *peer_ms / ms;
    return j;
  }
};

// The fastest peer per (variant, B, "fw_ms" | "fwbw_ms").
std::map<std::tuple<std::string, std::int64_t, std::string>, std::pair<double, std::string>> read_peers(
    const std::string& path) {
  std::map<std::tuple<std::string, std::int64_t, std::string>, std::pair<double, std::string>> best;
  if (path.empty()) return best;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--peers: cannot open " + path);
  const auto json = nlohmann::json::parse(in);
  for (const auto& r : json.at("results")) {
    for (const char* key : {"fw_ms", "fwbw_ms"}) {
      if (!r.contains(key) || !r.contains("variant") || !r.contains("B")) continue;
      const auto k = std::tuple{r["variant"].get<std::string>(), r["B"].get<std::int64_t>(), std::string(key)};
      const double ms = r[key].get<double>();
      if (!best.count(k) || ms < best[k].first) best[k] = {ms, r["peer"].get<std::string>()};
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Time the CUDA sLSTM / LSTM kernels"};
  std::string json_path, peers_path, revision;
  int reps = 30;
  std::int64_t T = 1024, NH = 12, DH = 64;
  std::vector<std::int64_t> batches{16, 64};
  bool once = false;
  app.add_option("--json", json_path, "write the rows here");
  app.add_option("--peers", peers_path, "the peers' times from bench/peers_slstm_h100.py in this session (JSON)");
  app.add_option("--revision", revision, "git revision recorded with the rows");
  app.add_option("--reps", reps, "timed repetitions (median reported)")->check(CLI::Range(30, 10000));
  app.add_option("--batches", batches, "batch sizes B");
  app.add_option("--T", T, "sequence length")->check(CLI::Range(1, 1 << 20));
  app.add_option("--heads", NH, "heads NH")->check(CLI::Range(1, 1024));
  app.add_option("--head-dim", DH, "head dimension DH (16, 32, 64, 128)")->check(CLI::IsMember({16, 32, 64, 128}));
  app.add_flag("--once", once, "run each case once, untimed (for a profiler such as ncu)");
  CLI11_PARSE(app, argc, argv);
  flashlstm::bench::g_once = once;

  try {
    const auto peers = read_peers(peers_path);
    cudaStream_t stream = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    std::vector<Row> rows;
    for (const DType dtype : {DType::bfloat16, DType::float32})
      for (const Options o : {Options{Cell::slstm}, Options{Cell::lstm}})
        for (const std::int64_t B : batches) {
          const std::int64_t NS = flashlstm::slstm::num_states(o.cell), es = element_size(dtype);
          const std::int64_t n_wx = B * T * 4 * NH * DH, n_R = 4 * NH * DH * DH, n_b = 4 * NH * DH,
                             n_h = B * T * NH * DH;
          Buffer Wx(n_wx * es), R(n_R * es), b(n_b * es), states(NS * n_h * 4), gates(n_wx * 4), dh(n_h * 4),
              dWx(n_wx * es), dR(n_R * es), db(n_b * es);
          const bool bf16 = dtype == DType::bfloat16;
          flashlstm::bench::fill_normal(Wx.get(), n_wx, bf16, 0.f, 1.f, 1, stream);
          flashlstm::bench::fill_normal(R.get(), n_R, bf16, 0.f, 1.f / std::sqrt(float(DH)), 2, stream);
          flashlstm::bench::fill_normal(b.get(), n_b, bf16, 0.f, 0.5f, 3, stream);
          flashlstm::bench::fill_normal(dh.get(), n_h, false, 0.f, 1.f, 4, stream);
          const Inputs x{Wx.get(), R.get(), b.get(), Dims{B, T, NH, DH}, dtype};
          const double flops = 2.0 * B * T * NH * 4 * DH * DH;
          Row fw{variant_name(o), dtype, false, B, T};
          fw.flops = flops;
          fw.bytes = double(n_wx * es + NS * n_h * 4 + n_R * es);
          fw.ms = median_ms([&] { forward(x, nullptr, {states.get<float>(), nullptr, nullptr}, o, stream); }, stream, 3,
                            reps);
          Row fwbw{variant_name(o), dtype, true, B, T};
          fwbw.flops = 3 * flops;
          fwbw.bytes = fw.bytes + double(2 * n_wx * 4 + NS * n_h * 4 + n_h * 4 + n_wx * es + n_R * es);
          fwbw.ms = median_ms(
              [&] {
                forward(x, nullptr, {states.get<float>(), nullptr, gates.get<float>()}, o, stream);
                backward(x, nullptr, {states.get<float>(), gates.get<float>()}, {dh.get<float>(), nullptr},
                         {dWx.get(), dR.get(), db.get(), nullptr}, o, stream);
              },
              stream, 3, reps);
          for (Row* r : {&fw, &fwbw}) {
            const auto it = peers.find({r->variant, B, r->backward ? "fwbw_ms" : "fw_ms"});
            if (it != peers.end() && dtype == DType::bfloat16) r->peer_ms = it->second.first, r->peer = it->second.second;
            rows.push_back(*r);
          }
        }
    check_cuda(cudaStreamDestroy(stream), "stream");

    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "device properties");
    if (!json_path.empty()) {
      nlohmann::json out{{"device", prop.name}, {"revision", revision}, {"T", T}, {"NH", NH}, {"DH", DH},
                         {"results", nlohmann::json::array()}};
      for (const Row& r : rows) out["results"].push_back(r.json());
      std::ofstream(json_path) << out.dump(1) << "\n";
    }
    fmt::print("{:<6} {:<9} {:<5} {:>4} {:>9} {:>8} {:>9} {:>8}  {}\n", "cell", "dtype", "pass", "B", "ms",
               "us/step", "x floor", "speedup", "peer");
    for (const Row& r : rows)
      fmt::print("{:<6} {:<9} {:<5} {:>4} {:>9.3f} {:>8.3f} {:>9.1f} {:>8}  {}\n", r.variant, to_string(r.dtype),
                 r.backward ? "fw+bw" : "fw", r.B, r.ms, 1e3 * r.ms / r.T, r.ms / r.floor_ms(),
                 r.peer_ms ? fmt::format("{:.2f}x", *r.peer_ms / r.ms) : "-",
                 r.peer_ms ? fmt::format("{} {:.3f} ms", r.peer, *r.peer_ms) : "");
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  }
}
