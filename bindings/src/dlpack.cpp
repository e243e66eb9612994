// DLPack consumer (Array) and producer (DeviceArray) for the GPU entry points (dlpack.hpp).
#include "bindings/src/dlpack.hpp"

#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <utility>

#ifdef FLASHLSTM_HAVE_CUDA
#include "cuda/common.hpp"
#endif

namespace flashlstm::bindings::dlpack {
namespace {

std::string describe_device(std::int32_t type, std::int32_t id) {
  switch (type) {
    case kDLCPU: return "is on the CPU";
    case kDLCUDAHost: return "is in pinned host memory";
    case kDLCUDA: return fmt::format("is on cuda:{}", id);
    case kDLCUDAManaged: return fmt::format("is in CUDA managed memory (cuda:{})", id);
    default: return fmt::format("is on DLPack device type {} (id {})", type, id);
  }
}

bool on_cuda(std::int32_t type) { return type == kDLCUDA || type == kDLCUDAManaged; }

std::string shape_text(const std::int64_t* shape, std::int32_t ndim) {
  std::string s = "(";
  for (std::int32_t d = 0; d < ndim; ++d) s += fmt::format("{}{}", d ? ", " : "", shape[d]);
  return s + ")";
}

}  // namespace

std::string dtype_name(DataType t) {
  std::string base;
  switch (t.code) {
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    default: base = fmt::format("type{}_", t.code);
  }
  return t.lanes == 1 ? fmt::format("{}{}", base, t.bits) : fmt::format("{}{}x{}", base, t.bits, t.lanes);
}

DataType to_dl(DType t) { return t == DType::float32 ? DataType{kDLFloat, 32, 1} : DataType{kDLBfloat, 16, 1}; }

std::int64_t protocol_stream(std::optional<std::int64_t> stream) {
  if (!stream || *stream == 0) return 1;
  require(*stream > 0, "stream", "expected a CUDA stream handle (an integer >= 0) or None, got {}", *stream);
  return *stream;
}

std::int64_t CallArrays::export_stream(py::handle object) {
  const auto module = py::type::handle_of(object).attr("__module__").cast<std::string>();
  if ((module != "torch" && !module.starts_with("torch.")) || !py::hasattr(object, "device")) return stream_;
  const py::object device = object.attr("device");
  if (device.attr("type").cast<std::string>() != "cuda") return stream_;
  const int index = device.attr("index").cast<int>();
  if (index != torch_device_) {
    const py::object cuda = py::module_::import("torch.cuda");
    torch_current_ = protocol_stream(cuda.attr("current_stream")(device).attr("cuda_stream").cast<std::int64_t>());
    torch_device_ = index;
  }
  return torch_current_ == stream_ ? -1 : stream_;
}

Array::Array(py::handle object, std::string_view name, std::int64_t stream) : name_(name) {
  flashlstm::require(py::hasattr(object, "__dlpack__") && py::hasattr(object, "__dlpack_device__"), name,
          "expected an array with __dlpack__ and __dlpack_device__ (torch, CuPy, JAX), got {}",
          py::str(py::type::handle_of(object).attr("__name__")).cast<std::string>());
  const auto [type, id] = object.attr("__dlpack_device__")().cast<std::pair<std::int32_t, std::int32_t>>();
  flashlstm::require(on_cuda(type), name, "{}; the CUDA kernels need an array on a CUDA device", describe_device(type, id));

  py::object capsule;
  try {
    capsule = object.attr("__dlpack__")(py::arg("stream") = stream, py::arg("max_version") = py::make_tuple(1, 0));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;  // a producer from before DLPack 1.0: no max_version
    capsule = object.attr("__dlpack__")(py::arg("stream") = stream);
  }
  if (PyCapsule_IsValid(capsule.ptr(), "dltensor_versioned")) {
    auto* m = static_cast<ManagedTensorVersioned*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor_versioned"));
    // Not consumed when refused: the capsule's destructor frees it.
    flashlstm::require(m->version.major == 1, name, "DLPack version {} is not supported (1.x is)", m->version.major);
    PyCapsule_SetName(capsule.ptr(), "used_dltensor_versioned");
    managed_ = m, versioned_ = true, tensor_ = &m->dl_tensor;
  } else if (PyCapsule_IsValid(capsule.ptr(), "dltensor")) {
    auto* m = static_cast<ManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    managed_ = m, tensor_ = &m->dl_tensor;
  } else {
    throw Error(fmt::format("{}: __dlpack__ did not return a DLPack capsule", name));
  }
}

Array::Array(Array&& other) noexcept
    : name_(std::move(other.name_)), tensor_(other.tensor_), managed_(other.managed_), versioned_(other.versioned_) {
  other.managed_ = nullptr;
  other.tensor_ = nullptr;
}

Array::~Array() {
  if (!managed_) return;
  if (versioned_) {
    auto* m = static_cast<ManagedTensorVersioned*>(managed_);
    if (m->deleter) m->deleter(m);
  } else {
    auto* m = static_cast<ManagedTensor*>(managed_);
    if (m->deleter) m->deleter(m);
  }
  managed_ = nullptr;
}

void Array::require(const std::vector<std::int64_t>& shape, std::string_view shape_names, DataType dtype, int device,
                    bool writable) const {
  const Tensor& t = *tensor_;
  flashlstm::require(on_cuda(t.device.device_type), name_, "{} (the DLPack capsule), expected a CUDA device",
                     describe_device(t.device.device_type, t.device.device_id));
  flashlstm::require(t.device.device_id == device, name_, "{}, expected cuda:{} (where q is)",
                     describe_device(t.device.device_type, t.device.device_id), device);
  flashlstm::require(t.dtype == dtype, name_, "expected dtype {}, got {}", dtype_name(dtype), dtype_name(t.dtype));
  const auto ndim = static_cast<std::int32_t>(shape.size());
  flashlstm::require(t.ndim == ndim && std::equal(shape.begin(), shape.end(), t.shape), name_,
                     "expected shape {} = {}, got {}", shape_names, shape_text(shape.data(), ndim),
                     shape_text(t.shape, t.ndim));
  if (t.strides) {
    std::int64_t expected = 1;
    for (std::int32_t d = ndim; d-- > 0;) {
      flashlstm::require(t.shape[d] <= 1 || t.strides[d] == expected, name_,
                         "expected a C-contiguous array, got strides {} (in elements) for shape {}",
                         shape_text(t.strides, ndim), shape_text(t.shape, ndim));
      expected *= t.shape[d];
    }
  }
  flashlstm::require(!writable || !versioned_ || !(static_cast<const ManagedTensorVersioned*>(managed_)->flags & kFlagReadOnly),
                     name_, "is read-only, but is an output");
}

void no_cuda() {
  throw std::runtime_error(
      "flashlstm was built without CUDA: the GPU entry points need a build with nvcc (cmake -DFLASHLSTM_CUDA=ON)");
}

#ifdef FLASHLSTM_HAVE_CUDA

namespace {

using flashlstm::cuda::check_cuda;
using flashlstm::cuda::DeviceGuard;
// Device memory owned by the DeviceArrays and DLPack exports that share it.
using Buffer = flashlstm::cuda::DeviceBuffer;

cudaStream_t to_stream(std::int64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<std::intptr_t>(s)); }

// Memory allocated here (cudaMalloc), handed to any framework through __dlpack__. `stream` is the stream
// of the last work that writes it; an export to another stream waits for that work with an event.
struct DeviceArray {
  std::shared_ptr<Buffer> buffer;
  std::vector<std::int64_t> shape;
  DataType dtype;
  std::int64_t stream = 1;

  template <class Managed>
  struct Export {
    Managed managed{};
    std::shared_ptr<Buffer> buffer;
    std::vector<std::int64_t> shape;
  };

  template <class Managed>
  Managed* export_tensor() const {
    auto* e = new Export<Managed>{{}, buffer, shape};
    Tensor& t = e->managed.dl_tensor;
    t = Tensor{buffer->get(), {kDLCUDA, buffer->device()}, static_cast<std::int32_t>(shape.size()), dtype, e->shape.data(),
               nullptr, 0};
    e->managed.manager_ctx = e;
    e->managed.deleter = [](Managed* self) { delete static_cast<Export<Managed>*>(self->manager_ctx); };
    return &e->managed;
  }

  py::object dlpack(std::optional<std::int64_t> consumer, std::optional<std::pair<int, int>> max_version) const {
    if (consumer && *consumer != -1) {
      const std::int64_t target = protocol_stream(consumer);
      if (target != stream) {
        DeviceGuard guard(buffer->device());
        cudaEvent_t event;
        check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
        check_cuda(cudaEventRecord(event, to_stream(stream)), "cudaEventRecord");
        check_cuda(cudaStreamWaitEvent(to_stream(target), event, 0), "cudaStreamWaitEvent");
        cudaEventDestroy(event);
      }
    }
    PyObject* capsule = nullptr;
    if (max_version && max_version->first >= 1) {
      auto* m = export_tensor<ManagedTensorVersioned>();
      m->version = {1, 0};
      m->flags = 0;
      capsule = PyCapsule_New(m, "dltensor_versioned", [](PyObject* c) {
        if (PyCapsule_IsValid(c, "dltensor_versioned")) {
          auto* t = static_cast<ManagedTensorVersioned*>(PyCapsule_GetPointer(c, "dltensor_versioned"));
          t->deleter(t);
        }
      });
    } else {
      auto* m = export_tensor<ManagedTensor>();
      capsule = PyCapsule_New(m, "dltensor", [](PyObject* c) {
        if (PyCapsule_IsValid(c, "dltensor")) {
          auto* t = static_cast<ManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
          t->deleter(t);
        }
      });
    }
    if (!capsule) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(capsule);
  }
};

std::size_t element_bytes(DataType t) { return t.bits / 8 * t.lanes; }

}  // namespace

void register_device_array(py::module_& m) {
  py::class_<DeviceArray>(m, "DeviceArray",
                          "CUDA memory allocated by flashlstm; any framework takes it without a copy through "
                          "__dlpack__ (torch.from_dlpack, cupy.from_dlpack, jax.dlpack.from_dlpack).")
      .def("__dlpack__",
           [](const DeviceArray& a, std::optional<std::int64_t> stream, std::optional<std::pair<int, int>> max_version,
              const py::kwargs&) { return a.dlpack(stream, max_version); },
           py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(int(kDLCUDA), a.buffer->device()); })
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return dtype_name(a.dtype); })
      .def_property_readonly("device", [](const DeviceArray& a) { return a.buffer->device(); })
      .def("__repr__", [](const DeviceArray& a) {
        return fmt::format("flashlstm.DeviceArray(shape={}, dtype={}, device=cuda:{})",
                           shape_text(a.shape.data(), static_cast<std::int32_t>(a.shape.size())), dtype_name(a.dtype),
                           a.buffer->device());
      });

  m.def(
      "empty",
      [](const std::vector<std::int64_t>& shape, const std::string& dtype, int device, std::optional<std::int64_t> stream) {
        require(dtype == "float32" || dtype == "bfloat16", "dtype", "expected 'float32' or 'bfloat16', got '{}'", dtype);
        const DataType t = to_dl(dtype == "float32" ? DType::float32 : DType::bfloat16);
        std::size_t n = 1;
        for (auto e : shape) {
          require(e >= 0, "shape", "expected extents >= 0, got {}", shape_text(shape.data(), std::int32_t(shape.size())));
          n *= static_cast<std::size_t>(e);
        }
        return DeviceArray{std::make_shared<Buffer>(n * element_bytes(t), device), shape, t, protocol_stream(stream)};
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device"), py::arg("stream") = py::none(),
      "Uninitialised CUDA memory, to be written on `stream`.");
  m.def(
      "copy_",
      [](py::handle dst, py::handle src, std::optional<std::int64_t> stream) {
        const std::int64_t s = protocol_stream(stream);
        const Array from(src, "src", s), to(dst, "dst", s);
        const Tensor& t = from.tensor();
        from.require({t.shape, t.shape + t.ndim}, "(as src)", t.dtype, from.device(), false);
        to.require({t.shape, t.shape + t.ndim}, "(as src)", t.dtype, from.device(), true);
        std::size_t n = element_bytes(t.dtype);
        for (std::int32_t d = 0; d < t.ndim; ++d) n *= static_cast<std::size_t>(t.shape[d]);
        DeviceGuard guard(from.device());
        check_cuda(cudaMemcpyAsync(to.data(), from.data(), n, cudaMemcpyDeviceToDevice, to_stream(s)), "cudaMemcpyAsync");
      },
      py::arg("dst"), py::arg("src"), py::arg("stream") = py::none(), "dst[...] = src on `stream` (both CUDA arrays).");
}

#else

void register_device_array(py::module_& m) {
  m.def("empty", [](const py::args&, const py::kwargs&) { no_cuda(); });
  m.def("copy_", [](const py::args&, const py::kwargs&) { no_cuda(); });
}

#endif

}  // namespace flashlstm::bindings::dlpack
