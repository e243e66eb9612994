// flashlstm._core: the compiled half of the Python package (bindings/flashlstm). One submodule per
// part of the library; flashlstm::Error (bad input, naming the argument) becomes ValueError.
#include "bindings/src/arrays.hpp"

namespace flashlstm::bindings {
// Each source file defines one submodule.
void register_mlstm(py::module_& m);
void register_slstm(py::module_& m);
void register_graph(py::module_& m);
void register_plstm(py::module_& m);
void register_datasets(py::module_& m);
void register_cuda(py::module_& m);
}  // namespace flashlstm::bindings

PYBIND11_MODULE(_core, m) {
  using namespace flashlstm::bindings;
  m.doc() = "flashlstm's C++ library: the CPU reference, graphs, datasets and the CUDA kernels.";
  m.attr("__version__") = FLASHLSTM_VERSION;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const flashlstm::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
#ifdef FLASHLSTM_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  register_mlstm(m);
  register_slstm(m);
  register_graph(m);
  register_plstm(m);
  register_datasets(m);
  register_cuda(m);
}
