// Argument checks, state slicing and the run-time form dispatch shared by every mLSTM form.
#include "reference/mlstm/common.hpp"

#include "core/memory.hpp"

namespace flashlstm::mlstm {

std::string Form::name() const {
  switch (kind) {
    case recurrent: return "recurrent";
    case parallel: return "parallel";
    case chunkwise:
      return fmt::format("chunkwise(L={}{})", chunk_size, operands == Operands::bf16 ? ", bf16 operands" : "");
  }
  return "?";
}

template <class T>
Output<T> forward(const Inputs<T>& x, const OptionalState<T>& initial, const Form& form, const Options& options) {
  switch (form.kind) {
    case Form::recurrent: return forward_recurrent(x, initial, options);
    case Form::parallel: return forward_parallel(x, initial, options);
    case Form::chunkwise: return forward_chunkwise(x, initial, form.chunk_size, options, form.operands);
  }
  throw Error("form: unknown kind");
}

template <class T>
InputGrad<T> backward(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                      const Form& form, const Options& options) {
  switch (form.kind) {
    case Form::recurrent: return backward_recurrent(x, initial, grad, options);
    case Form::parallel: return backward_parallel(x, initial, grad, options);
    case Form::chunkwise: return backward_chunkwise(x, initial, grad, form.chunk_size, options, form.operands);
  }
  throw Error("form: unknown kind");
}

template <class T>
State<T> zero_state(index_t B, index_t NH, index_t DQK, index_t DV) {
  return {zeros<T>(Shape<4>{B, NH, DQK, DV}), zeros<T>(Shape<3>{B, NH, DQK}), zeros<T>(Shape<2>{B, NH})};
}

namespace detail {

template <class T>
Dims check_inputs(const Inputs<T>& x, const OptionalState<T>& initial, const Options& o, std::string_view state_name) {
  require(std::isfinite(o.eps) && o.eps >= 0, "eps", "expected a finite value >= 0, got {}", o.eps);
  require(o.input_gate == InputGate::sig || o.normalize, "normalize",
          "the exp input gate always normalises; normalize=false needs input_gate=sig");
  require(!x.q.empty(), "q", "is null");
  Dims d{x.q.shape(0), x.q.shape(1), x.q.shape(2), x.q.shape(3), x.v.shape(3)};
  require(d.B >= 1 && d.NH >= 1 && d.S >= 1 && d.DQK >= 1, "q",
          "expected shape (B, NH, S, DQK) with every extent >= 1, got {}", shape_string(x.q.shape()));
  require(d.DV >= 1, "v", "expected DV >= 1, got shape {}", shape_string(x.v.shape()));
  check_shape("k", x.k, {d.B, d.NH, d.S, d.DQK});
  check_shape("v", x.v, {d.B, d.NH, d.S, d.DV});
  check_shape("igate", x.igate, {d.B, d.NH, d.S});
  check_shape("fgate", x.fgate, {d.B, d.NH, d.S});
  if (initial) {
    check_shape(fmt::format("{}.C", state_name), initial->C, {d.B, d.NH, d.DQK, d.DV});
    check_shape(fmt::format("{}.n", state_name), initial->n, {d.B, d.NH, d.DQK});
    check_shape(fmt::format("{}.m", state_name), initial->m, {d.B, d.NH});
  }
  return d;
}

template <class T>
void check_output_grad(const Dims& d, const OutputGrad<T>& grad) {
  check_shape("dh", grad.dh, {d.B, d.NH, d.S, d.DV});
  if (grad.dC_last) check_shape("dC_last", *grad.dC_last, {d.B, d.NH, d.DQK, d.DV});
  if (grad.dn_last) check_shape("dn_last", *grad.dn_last, {d.B, d.NH, d.DQK});
  if (grad.dm_last) check_shape("dm_last", *grad.dm_last, {d.B, d.NH});
}

void check_chunk_size(index_t chunk_size, const Dims& d, std::size_t element_bytes, bool backward) {
  require(chunk_size >= 1, "chunk_size", "expected >= 1, got {}", chunk_size);
  const double L = static_cast<double>(std::min(chunk_size, d.S));
  const double matrices = backward ? 10 : 4;  // L x L matrices alive at once in one segment (parallel.cpp)
  const double threads = std::min<double>(max_threads(), static_cast<double>(d.heads()));
  require_memory(chunk_size >= d.S ? "S" : "chunk_size", threads * matrices * L * L * static_cast<double>(element_bytes),
                 fmt::format("a chunk of {} tokens ({} L x L matrices on {} threads)", L, matrices, threads));
}

template <class T>
HeadState<T> load_state(const OptionalState<T>& state, const Dims& d, index_t bh) {
  HeadState<T> s{Mat<T>::Zero(d.DQK, d.DV), Vec<T>::Zero(d.DQK), T(0)};
  if (state) {
    s.C = ConstMatMap<T>(state->C.data() + bh * d.DQK * d.DV, d.DQK, d.DV);
    s.n = ConstVecMap<T>(state->n.data() + bh * d.DQK, d.DQK);
    s.m = state->m.data()[bh];
  }
  return s;
}

template <class T>
HeadState<T> load_last_state_grad(const OutputGrad<T>& grad, const Dims& d, index_t bh) {
  HeadState<T> s{Mat<T>::Zero(d.DQK, d.DV), Vec<T>::Zero(d.DQK), T(0)};
  if (grad.dC_last) s.C = ConstMatMap<T>(grad.dC_last->data() + bh * d.DQK * d.DV, d.DQK, d.DV);
  if (grad.dn_last) s.n = ConstVecMap<T>(grad.dn_last->data() + bh * d.DQK, d.DQK);
  if (grad.dm_last) s.m = grad.dm_last->data()[bh];
  return s;
}

template <class T>
HeadState<T> head_state(const State<T>& s, index_t bh) {
  Dims d{1, 1, 1, static_cast<index_t>(s.C.shape()[2]), static_cast<index_t>(s.C.shape()[3])};
  return load_state<T>(StateView<T>(s), d, bh);
}

template <class T>
void store_state(const HeadState<T>& s, State<T>& out, index_t bh) {
  index_t DQK = s.C.rows(), DV = s.C.cols();
  MatMap<T>(out.C.data() + bh * DQK * DV, DQK, DV) = s.C;
  VecMap<T>(out.n.data() + bh * DQK, DQK) = s.n;
  out.m.data()[bh] = s.m;
}

template <class T>
Output<T> allocate_output(const Dims& d) {
  return {zeros<T>(Shape<4>{d.B, d.NH, d.S, d.DV}), zero_state<T>(d.B, d.NH, d.DQK, d.DV)};
}

template <class T>
InputGrad<T> allocate_input_grad(const Dims& d, bool with_initial_state) {
  InputGrad<T> g{zeros<T>(Shape<4>{d.B, d.NH, d.S, d.DQK}), zeros<T>(Shape<4>{d.B, d.NH, d.S, d.DQK}),
                 zeros<T>(Shape<4>{d.B, d.NH, d.S, d.DV}),  zeros<T>(Shape<3>{d.B, d.NH, d.S}),
                 zeros<T>(Shape<3>{d.B, d.NH, d.S}),        std::nullopt};
  if (with_initial_state) g.dinitial = zero_state<T>(d.B, d.NH, d.DQK, d.DV);
  return g;
}

}  // namespace detail

#define FLASHLSTM_INSTANTIATE(T)                                                                            \
  template Output<T> forward(const Inputs<T>&, const OptionalState<T>&, const Form&, const Options&);      \
  template InputGrad<T> backward(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&, const Form&, \
                                 const Options&);                                                           \
  template State<T> zero_state<T>(index_t, index_t, index_t, index_t);                                              \
  template detail::Dims detail::check_inputs(const Inputs<T>&, const OptionalState<T>&, const Options&,           \
                                            std::string_view);                                            \
  template void detail::check_output_grad(const detail::Dims&, const OutputGrad<T>&);                       \
  template detail::HeadState<T> detail::load_state(const OptionalState<T>&, const detail::Dims&, index_t);    \
  template detail::HeadState<T> detail::head_state(const State<T>&, index_t);                                 \
  template detail::HeadState<T> detail::load_last_state_grad(const OutputGrad<T>&, const detail::Dims&, index_t); \
  template void detail::store_state(const detail::HeadState<T>&, State<T>&, index_t);                         \
  template Output<T> detail::allocate_output<T>(const detail::Dims&);                                       \
  template InputGrad<T> detail::allocate_input_grad<T>(const detail::Dims&, bool);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::mlstm
