// The chunkwise form (TFLA, Beck et al. 2025, without its second tiling level): the sequence is cut
// into chunks of L tokens (the last may be shorter); each chunk is computed in parallel form from
// the state the previous chunk left, and hands its final state on. Between chunks only the state
// (C, n, m) travels, so memory is O(S/L · DQK·DV) for the backward's stored chunk states plus
// O(L²) inside a chunk.
#include "reference/mlstm/segment.hpp"

#include <vector>

namespace flashlstm::mlstm {

using namespace detail;

template <class T>
Output<T> forward_chunkwise(const Inputs<T>& x, const OptionalState<T>& initial, index_t chunk_size,
                            const Options& o, Operands operands) {
  const Dims d = check_inputs(x, initial, o);
  check_chunk_size(chunk_size, d, sizeof(T), false);
  Output<T> out = allocate_output<T>(d);
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    HeadState<T> s = load_state<T>(initial, d, bh);
    T* h = out.h.data() + bh * d.S * d.DV;
    for (index_t t0 = 0; t0 < d.S; t0 += chunk_size) {
      s = segment_forward(hx, t0, std::min(chunk_size, d.S - t0), s, h + t0 * d.DV, o, operands);
    }
    store_state(s, out.last, bh);
  });
  return out;
}

template <class T>
InputGrad<T> backward_chunkwise(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                                index_t chunk_size, const Options& o, Operands operands) {
  const Dims d = check_inputs(x, initial, o);
  check_output_grad(d, grad);
  check_chunk_size(chunk_size, d, sizeof(T), true);
  InputGrad<T> out = allocate_input_grad<T>(d, initial.has_value());
  parallel_for(d.heads(), [&](index_t bh) {
    const HeadInputs<T> hx(x, d, bh);
    std::vector<T> h_scratch(std::min(chunk_size, d.S) * d.DV);
    std::vector<HeadState<T>> entering{load_state<T>(initial, d, bh)};  // the state entering each chunk
    for (index_t t0 = 0; t0 + chunk_size < d.S; t0 += chunk_size) {
      entering.push_back(segment_forward(hx, t0, chunk_size, entering.back(), h_scratch.data(), o, operands));
    }

    HeadState<T> adj = load_last_state_grad(grad, d, bh);
    for (index_t c = static_cast<index_t>(entering.size()) - 1; c >= 0; --c) {
      const index_t t0 = c * chunk_size, L = std::min(chunk_size, d.S - t0);
      const HeadGrad<T> g{out.dq.data() + (bh * d.S + t0) * d.DQK, out.dk.data() + (bh * d.S + t0) * d.DQK,
                          out.dv.data() + (bh * d.S + t0) * d.DV, out.digate.data() + bh * d.S + t0,
                          out.dfgate.data() + bh * d.S + t0};
      segment_backward(hx, t0, L, entering[c], grad.dh.data() + (bh * d.S + t0) * d.DV, adj, g, o, operands);
    }
    if (out.dinitial) store_state(adj, *out.dinitial, bh);
  });
  return out;
}

#define FLASHLSTM_INSTANTIATE(T)                                                                          \
  template Output<T> forward_chunkwise(const Inputs<T>&, const OptionalState<T>&, index_t, const Options&, \
                                       Operands);                                                           \
  template InputGrad<T> backward_chunkwise(const Inputs<T>&, const OptionalState<T>&, const OutputGrad<T>&, \
                                           index_t, const Options&, Operands);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::mlstm
