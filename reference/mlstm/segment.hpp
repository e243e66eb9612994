// Internal: the parallel form of one segment of a sequence, entered with a state. The parallel form
// is one segment covering the whole sequence; the chunkwise form is a sequence of segments of
// length L, each handing its final state to the next (the TFLA chunkwise algorithm).
#pragma once

#include "reference/mlstm/common.hpp"

namespace flashlstm::mlstm::detail {

// Gradient outputs of one head, already offset to the segment's first token.
template <class T>
struct HeadGrad {
  T *dq, *dk, *dv, *digate, *dfgate;
};

// Tokens [t0, t0 + L) of head `x`, entered with state `in`: writes h for those tokens (h points at
// token t0) and returns the state after the segment. `operands`: the arithmetic of the matrix products.
template <class T>
HeadState<T> segment_forward(const HeadInputs<T>& x, index_t t0, index_t L, const HeadState<T>& in, T* h,
                             const Options& o, Operands operands);

// Reverse of segment_forward: `dh` points at token t0, `adj` holds the gradient with respect to the
// segment's final state on entry (C, n and m) and with respect to `in` on exit.
template <class T>
void segment_backward(const HeadInputs<T>& x, index_t t0, index_t L, const HeadState<T>& in, const T* dh,
                      HeadState<T>& adj, const HeadGrad<T>& grad, const Options& o, Operands operands);

}  // namespace flashlstm::mlstm::detail
