// The mLSTM's chunkwise algorithm in the order of a state-resident GPU kernel: a CPU transcription
// (docs/mlstm.md, "The fused order") that computes the same function as every other form, through
// the intermediates such a kernel keeps, so that a kernel can be compared with it stage by stage.
//
// Forward: per chunk of L tokens, first the gate scalars alone (prefix sums b of log f, u = log i - b,
// the running maximum U and its argmax, the row stabilisers m_r = b_r + max(m_k, U_r), the weights
// w0_r of the entering state, a_s of each token in the exiting state, the state's decay ḡ), then the
// products: P = (Q̂ Kᵀ) ∘ W, h = (w0 ∘ Q̂ C_k + P V) / dhat, C_{k+1} = ḡ C_k + Kᵀ diag(a) V. Nothing but h
// and the final state leaves a chunk.
//
// Backward, in three passes that never hold a state C_k and its adjoint dC_{k+1} at once, and never
// an L × L gradient matrix of the log weights:
//   forward direction (with C_k): X1 = dH C_kᵀ, G0 = dH Vᵀ, and from them s_r = dh_r·num_r =
//     w0_r q̂_r·X1_r + Σ_s P_rs G0_rs without replaying num; the readout's gradients δ_r (to den) and
//     the stabiliser's; dq; and per token the state column D0_r and the row and column sums of P ∘ G;
//   reverse direction (with dC_{k+1}): dk, dv, the exiting state's weights' gradients e_s =
//     a_s (k_s·dC v_s + k_s·dn), and dC_k, dn_k;
//   scalars per head, in double: ψ_k = <dC_k, C_k> + <dn_k, n_k> from ψ_{k+1} = ψ_k − σ_k + τ_k
//     (τ_k = Σ e_s, σ_k = Σ D0_r), scanned from both ends (ψ_nc from the final state, ψ_0 from the
//     initial state and dC_0), which gives ḡ <dC_{k+1}, C_k> = ψ_{k+1} − τ_k = ψ_k − σ_k; then the
//     stabiliser's routing and the gate gradients from row and column sums alone.
#pragma once

#include "reference/mlstm/mlstm.hpp"

namespace flashlstm::mlstm {

// What the fused backward computed on the way, for stage-by-stage comparisons (per token (B, NH, S),
// per chunk (B, NH, number of chunks)).
template <class T>
struct FusedTrace {
  xt::xtensor<T, 3> dh_dot_num;  // s_r = dh_r·num_r, from X1 and G0
  xt::xtensor<T, 3> dhat;        // the readout's denominator
  xt::xtensor<T, 3> dden;        // δ_r, the gradient reaching den_r
  xt::xtensor<T, 3> D0;          // the entering state's column of the log weights' gradient, row r
  xt::xtensor<T, 3> psi;         // ψ_k = <dC_k, C_k> + <dn_k, n_k>, the state entering chunk k
  xt::xtensor<T, 3> sigma, tau;  // σ_k = Σ_r D0_r, τ_k = Σ_s e_s
};

template <class T>
Output<T> forward_fused(const Inputs<T>& x, const OptionalState<T>& initial, index_t chunk_size,
                        const Options& options);

template <class T>
InputGrad<T> backward_fused(const Inputs<T>& x, const OptionalState<T>& initial, const OutputGrad<T>& grad,
                            index_t chunk_size, const Options& options, FusedTrace<T>* trace = nullptr);

}  // namespace flashlstm::mlstm
