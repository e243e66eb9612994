// The [cuda] rows of `flashlstm validate`, present when the tool is built with CUDA and a GPU is
// visible: the mLSTM and sLSTM/LSTM kernels against the CPU reference on the same inputs, every
// tensor held to its kernel bound (cuda/mlstm/check.hpp, cuda/slstm/check.hpp, docs/validation.md).
#include "apps/validate.hpp"
#include "cuda/mlstm/check.hpp"
#include "cuda/plstm/check.hpp"
#include "cuda/slstm/check.hpp"

#include <fmt/ranges.h>

#include <vector>

namespace flashlstm::apps {

std::vector<ValidationRow> validate_mlstm_cuda() {
  namespace k = flashlstm::cuda::mlstm;
  using flashlstm::mlstm::ProblemShape;
  std::vector<ValidationRow> rows;
  if (!flashlstm::cuda::device_available()) return rows;

  auto row_of = [](const std::string& form, k::KernelCheck&& c, const ProblemShape& shape, const k::Options& o,
                   DType dtype) {
    return ValidationRow{"mLSTM",       form, flashlstm::mlstm::variant_name(o), std::string(to_string(dtype)) + " [cuda]",
                         shape.name(), "CPU float64", std::move(c.report)};
  };
  const ProblemShape shapes[] = {{1, 2, 1000, 48, 96, true}, {1, 1, 2048, 256, 512, false}};
  const int chunk_sizes[] = {128, 512};
  std::uint64_t seed = 7000;
  for (int s = 0; s < 2; ++s)
    for (const auto& o : flashlstm::mlstm::variants)
      for (DType dtype : {DType::bfloat16, DType::float32})
        rows.push_back(row_of(fmt::format("chunkwise(L={})", chunk_sizes[s]),
                              k::check_chunkwise(shapes[s], chunk_sizes[s], o, dtype, ++seed), shapes[s], o, dtype));
  // Packed sequences of different lengths (one empty), each against the reference on it alone.
  const ProblemShape packed{1, 2, 1, 48, 96, true};
  const std::vector<flashlstm::index_t> lengths{1000, 63, 1, 0, 130};
  for (const auto& o : flashlstm::mlstm::variants)
    for (DType dtype : {DType::bfloat16, DType::float32})
      rows.push_back(ValidationRow{"mLSTM", "chunkwise(L=128), packed", flashlstm::mlstm::variant_name(o),
                                   std::string(to_string(dtype)) + " [cuda]",
                                   fmt::format("lengths {} NH2 DQK48 DV96 +state", fmt::join(lengths, ",")),
                                   "CPU float64 per sequence",
                                   k::check_varlen(packed, lengths, 128, o, dtype, ++seed).report});
  // bf16 q, k, v with float32 gates (and gate gradients).
  for (const auto& o : flashlstm::mlstm::variants) {
    const k::KernelTypes types{DType::bfloat16, true};
    rows.push_back(ValidationRow{"mLSTM", "chunkwise(L=128)", flashlstm::mlstm::variant_name(o), types.name() + " [cuda]",
                                 shapes[0].name(), "CPU float64",
                                 k::check_chunkwise(shapes[0], 128, o, types, ++seed).report});
  }
  const ProblemShape step_shape{16, 8, 1, 256, 512, true};
  for (const auto& o : flashlstm::mlstm::variants)
    for (DType dtype : {DType::bfloat16, DType::float32})
      rows.push_back(row_of("step", k::check_step(step_shape, o, dtype, ++seed), step_shape, o, dtype));
  return rows;
}

std::vector<ValidationRow> validate_slstm_cuda() {
  namespace k = flashlstm::cuda::slstm;
  using flashlstm::slstm::ProblemShape;
  std::vector<ValidationRow> rows;
  if (!flashlstm::cuda::device_available()) return rows;
  const ProblemShape shapes[] = {{3, 200, 2, 32, true}, {16, 256, 12, 64, false}};
  std::uint64_t seed = 7500;
  for (const ProblemShape& shape : shapes)
    for (const auto& o : flashlstm::slstm::variants)
      for (DType dtype : {DType::bfloat16, DType::float32}) {
        auto c = k::check_sequence(shape, o, dtype, ++seed);
        rows.push_back({o.cell == flashlstm::slstm::Cell::lstm ? "LSTM" : "sLSTM", "fused", flashlstm::slstm::variant_name(o), std::string(to_string(dtype)) + " [cuda]",
                        shape.name(), "CPU float64", std::move(c.report)});
      }
  return rows;
}

std::vector<ValidationRow> validate_plstm_cuda() {
  namespace k = flashlstm::cuda::plstm;
  using flashlstm::plstm::GateMode;
  using flashlstm::plstm::GridShape;
  std::vector<ValidationRow> rows;
  if (!flashlstm::cuda::device_available()) return rows;
  std::uint64_t seed = 7700;
  const GridShape shape{2, 3, 16, 16, 64, 64};
  for (const int orientations : {1, 4})
    for (const GateMode mode : {GateMode::raw, GateMode::p_mode, GateMode::d_mode})
      for (DType dtype : {DType::bfloat16, DType::float32}) {
        for (const bool backward : {false, true}) {
          auto c = backward ? k::check_grid_backward(shape, orientations, mode, dtype, ++seed)
                            : k::check_grid(shape, orientations, mode, dtype, ++seed);
          rows.push_back({"pLSTM", std::string(orientations == 4 ? "grid x4" : "grid") + (backward ? " backward" : ""),
                          to_string(mode), std::string(to_string(dtype)) + " [cuda]", shape.name(), "CPU float64",
                          std::move(c.report)});
        }
      }
  const flashlstm::plstm::SequenceShape sequence{2, 3, 256, 64, 64};
  for (DType dtype : {DType::bfloat16, DType::float32})
    for (const bool backward : {false, true}) {
      auto c = backward ? k::check_sequence_backward(sequence, dtype, ++seed) : k::check_sequence(sequence, dtype, ++seed);
      rows.push_back({"pLSTM", backward ? "sequence backward" : "sequence", "raw", std::string(to_string(dtype)) + " [cuda]",
                      sequence.name(), "CPU float64", std::move(c.report)});
    }
  const flashlstm::graph::Dag dag = flashlstm::graph::random_dag(200, 1.8, 5);
  const flashlstm::plstm::DagShape dag_shape{2, 3, 32, 32};
  for (DType dtype : {DType::bfloat16, DType::float32})
    for (const bool backward : {false, true}) {
      auto c = backward ? k::check_dag_backward(dag, dag_shape, GateMode::p_mode, dtype, ++seed)
                        : k::check_dag(dag, dag_shape, GateMode::p_mode, dtype, ++seed);
      rows.push_back({"pLSTM", backward ? "dag backward" : "dag", "P-mode", std::string(to_string(dtype)) + " [cuda]",
                      dag_shape.name(dag), "CPU float64", std::move(c.report)});
    }
  return rows;
}

}  // namespace flashlstm::apps
