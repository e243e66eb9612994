// DLPack for the GPU entry points: taking any Python object with __dlpack__ / __dlpack_device__
// (torch, CuPy, JAX, ...) as a device pointer without a copy, and giving device memory back the same
// way (DeviceArray). The structs are DLPack's ABI (dlpack.h, v1.0: DLManagedTensor for unversioned
// capsules, DLManagedTensorVersioned for "dltensor_versioned"), written out here so that this file
// needs neither the DLPack header nor CUDA: the checks run, and are tested, in every build.
//
// Streams follow the Python array API: the caller's stream is passed to __dlpack__(stream=...) so that
// the producer orders its pending work before ours, and the kernels are queued on that stream. As a
// Python integer: 1 is the legacy default stream, 2 the per-thread default stream, anything larger a
// cudaStream_t; 0 (what torch and CuPy report for the default stream) is taken as 1.
#pragma once

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/view.hpp"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace flashlstm::bindings::dlpack {

namespace py = pybind11;

enum DeviceType : std::int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum TypeCode : std::uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };

struct Device {
  std::int32_t device_type;
  std::int32_t device_id;
};
struct DataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
  bool operator==(const DataType&) const = default;
};
struct Tensor {
  void* data;
  Device device;
  std::int32_t ndim;
  DataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // in elements; null means C-contiguous
  std::uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};
struct Version {
  std::uint32_t major, minor;
};
struct ManagedTensorVersioned {
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  std::uint64_t flags;
  Tensor dl_tensor;
};
constexpr std::uint64_t kFlagReadOnly = 1;

// The two element types the CUDA kernels take.
using flashlstm::DType;
std::string dtype_name(DataType t);
DataType to_dl(DType t);

// The stream as the protocol spells it (None -> 1, 0 -> 1).
std::int64_t protocol_stream(std::optional<std::int64_t> stream);

// A CUDA array taken from a Python object for the duration of a call: the DLPack capsule is consumed
// (renamed "used_dltensor[_versioned]") and its deleter runs when this is destroyed. Construction
// checks the device (kDLCUDA); shape, dtype and layout are checked by `require`.
class Array {
 public:
  Array(py::handle object, std::string_view name, std::int64_t stream);
  Array(Array&& other) noexcept;
  Array& operator=(Array&&) = delete;
  Array(const Array&) = delete;
  ~Array();

  const std::string& name() const { return name_; }
  const Tensor& tensor() const { return *tensor_; }
  int device() const { return tensor_->device.device_id; }
  DataType dtype() const { return tensor_->dtype; }
  void* data() const { return static_cast<char*>(tensor_->data) + tensor_->byte_offset; }

  // Throws Error naming the array unless it has `shape`, element type `dtype`, is C-contiguous, is on
  // `device`, and (for outputs) is writable.
  void require(const std::vector<std::int64_t>& shape, std::string_view shape_names, DataType dtype, int device,
               bool writable) const;

 private:
  std::string name_;
  const Tensor* tensor_ = nullptr;
  void* managed_ = nullptr;  // ManagedTensor* or ManagedTensorVersioned*
  bool versioned_ = false;
};

// The arrays of one call, taken (consumed) from their Python objects for the call's duration, with
// the stream they are taken for.
class CallArrays {
 public:
  explicit CallArrays(std::optional<std::int64_t> stream) : stream_(protocol_stream(stream)) {}
  const Array& take(py::handle object, std::string_view name) {
    return arrays_.emplace_back(object, name, export_stream(object));
  }
  std::int64_t stream() const { return stream_; }

 private:
  // The stream an array's __dlpack__ is asked for: -1 (DLPack's "no synchronisation") for a torch
  // tensor when the call's stream is torch's current stream on its device — the work that wrote the
  // tensor is then already queued ahead of the kernels —, else the call's stream, for the producer to
  // order its work before (torch does so with an event and a wait per array).
  std::int64_t export_stream(py::handle object);

  std::int64_t stream_;
  std::deque<Array> arrays_;
  int torch_device_ = -1;          // the device whose current torch stream was looked up, and
  std::int64_t torch_current_ = 0;  // that stream, as protocol_stream spells it
};

// Thrown by everything that needs the CUDA runtime in a build without it (RuntimeError in Python).
[[noreturn]] void no_cuda();

// Registers DeviceArray (memory allocated here, handed out through __dlpack__) and the helpers
// empty / copy_ on `m`; without CUDA they raise.
void register_device_array(py::module_& m);

}  // namespace flashlstm::bindings::dlpack
