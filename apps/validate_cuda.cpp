// The [cuda] rows of `flashlstm validate`, present when the tool is built with CUDA and a GPU is
// visible: the mLSTM kernels against the CPU reference on the same inputs, judged by DESIGN.md's
// criterion (cuda/mlstm/check.hpp): each tensor's error at most twice the reference's in the
// kernel's precision plus rounding slack. The error columns show the kernel's largest error.
#include "apps/validate.hpp"
#include "cuda/mlstm/check.hpp"

#include <limits>

namespace flashlstm::apps {

std::vector<ValidationRow> validate_mlstm_cuda() {
  namespace k = flashlstm::cuda::mlstm;
  using flashlstm::mlstm::ProblemShape;
  std::vector<ValidationRow> rows;
  if (!k::device_available()) return rows;

  auto row_of = [](const std::string& form, const k::KernelCheck& c, const ProblemShape& shape,
                   const k::Options& o, k::DType dtype) {
    ValidationRow row{"mLSTM", form, flashlstm::mlstm::variant_name(o), k::to_string(dtype) + " [cuda]",
                      shape.name()};
    double out = 0, grad = 0;
    for (const auto& [tensor, e] : c.kernel) {
      double& into = tensor.front() == 'd' ? grad : out;  // dq, dk, ... are gradients
      into = std::isnan(e) || std::isnan(into) ? std::numeric_limits<double>::quiet_NaN() : std::max(into, e);
    }
    row.out_error = out;
    if (c.kernel.count("dq")) row.grad_error = grad;
    row.tolerance = std::numeric_limits<double>::infinity();  // judged per tensor: kernel_criterion
    row.kernel_criterion = c.passed();
    return row;
  };

  const k::Options variants[] = {{k::InputGate::exp, true, 1e-6}, {k::InputGate::sig, true, 1e-6},
                                 {k::InputGate::sig, false, 1e-6}};
  const ProblemShape shapes[] = {{1, 2, 1000, 48, 96, true}, {1, 1, 2048, 256, 512, false}};
  const int chunk_sizes[] = {128, 512};
  std::uint64_t seed = 7000;
  for (int s = 0; s < 2; ++s)
    for (const auto& o : variants)
      for (k::DType dtype : {k::DType::bfloat16, k::DType::float32}) {
        const auto c = k::check_chunkwise(shapes[s], chunk_sizes[s], o, dtype, ++seed);
        rows.push_back(row_of(fmt::format("chunkwise(L={})", chunk_sizes[s]), c, shapes[s], o, dtype));
      }
  const ProblemShape step_shape{16, 8, 1, 256, 512, true};
  for (const auto& o : variants)
    for (k::DType dtype : {k::DType::bfloat16, k::DType::float32})
      rows.push_back(row_of("step", k::check_step(step_shape, o, dtype, ++seed), step_shape, o, dtype));
  return rows;
}

}  // namespace flashlstm::apps
