// pLSTM on 1-D sequences (docs/plstm.md), scalar gates, per (batch, head):
//
//   C_t = T_t C_{t-1} + S_t k_t v_t^T          (the state on the edge t -> t+1)
//   h_t = s (M_t q_t^T C_{t-1} + D_t (q_t·k_t) v_t)
//
// Forms: recurrent (the loop above), parallel (h = s ((G ∘ Q K^T) V + D ∘ diag(Q K^T) V) with
// G_ts = M_t T_{t-1} ... T_{s+1} S_s for s < t) and chunkwise(L): each chunk's aggregates — total
// transition, per-token source into the chunk's final state, per-token mark of the entering state,
// and the chunk's own G — are built by pairwise-doubling merges of adjacent blocks (log2 L levels),
// and the state is carried across chunks. L = 1 is the recurrent form, L = S the parallel one.
//
// Layout: q, k (B, NH, S, DQK); v, h (B, NH, S, DV); S, T, M, D (B, NH, S). The chain is the DAG
// t -> t+1 (graph edge t), so node t's source is S_t, its mark M_t, its transition T_t; T_0 and
// M_0 act on the initial state, which is zero here.
#pragma once

#include "core/bf16.hpp"
#include "core/view.hpp"
#include "reference/plstm/plstm.hpp"

namespace flashlstm::plstm {

template <class F>
struct SequenceInputs {
  ConstView<F, 4> q, k;  // (B, NH, S, DQK)
  ConstView<F, 4> v;     // (B, NH, S, DV)
  ConstView<F, 3> S, T, M, D;  // (B, NH, S)
};

// How the chunkwise form builds a chunk's aggregates (transition, sources, marks, G): by pairwise
// doubling of adjacent blocks (the reference's), or from per-token prefix sums of log|T| with counts
// of negative and zero transitions (the order of a GPU kernel: every token in parallel, the backward's
// dT through prefix and suffix sums, exact where a transition is 0 or tiny; finite gates only).
enum class Aggregates { pairwise, prefix };

struct SequenceForm {
  enum Kind { recurrent, parallel, chunkwise } kind = recurrent;
  index_t chunk_size = 0;  // chunkwise only
  Aggregates aggregates = Aggregates::pairwise;  // chunkwise only
  // The matrix products' operands (core/bf16.hpp), parallel and chunkwise: Operands::bf16 rounds each
  // to bfloat16 — a plain bf16 computation, the baseline of the bf16 kernels.
  Operands operands = Operands::exact;
  std::string name() const;
};

template <class F>
xt::xtensor<F, 4> sequence_forward(const SequenceInputs<F>& x, const SequenceForm& form, const Options& options);

template <class F>
struct SequenceGrad {
  xt::xtensor<F, 4> dq, dk, dv;
  xt::xtensor<F, 3> dS, dT, dM, dD;
};

// Exact gradients of every input from dh (B, NH, S, DV), through the chunkwise form with chunk size
// L (L = 1 steps token by token, L >= S is the parallel form): a forward pass keeps the state
// entering each chunk, then the chunks are reversed, each chunk's aggregates are differentiated and
// the gradient is taken back through the pairwise-doubling merges to the gates.
template <class F>
SequenceGrad<F> sequence_backward(const SequenceInputs<F>& x, ConstView<F, 4> dh, index_t chunk_size,
                                  const Options& options, Aggregates aggregates = Aggregates::pairwise,
                                  Operands operands = Operands::exact);

// The same problem as a DAG (the chain) and its gate tensors in DAG layout, for cross-checks.
graph::Dag chain(index_t S);
template <class F>
struct ChainGates {
  xt::xtensor<F, 3> S, T, M;  // (B, NH, E = S-1), (B, NH, A = S-2), (B, NH, E)
};
template <class F>
ChainGates<F> chain_gates(const SequenceInputs<F>& x);

}  // namespace flashlstm::plstm
