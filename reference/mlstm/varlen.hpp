// Packed variable-length batches of the mLSTM (docs/mlstm.md, "Packed sequences"): N sequences of
// different lengths in one (1, NH, total, D) tensor, sequence i being tokens
// [cu_seqlens[i], cu_seqlens[i + 1]) — the layout FlashAttention and flash-linear-attention take
// (N + 1 offsets, 0 first, total last, non-decreasing; a sequence may be empty). Each sequence runs
// in the given form from its own initial state (batch entry i of `initial`, (N, NH, ...)) to its own
// final state (batch entry i of `last`); no token sees another sequence.
#pragma once

#include "reference/mlstm/mlstm.hpp"

#include <vector>

namespace flashlstm::mlstm {

template <class T>
Output<T> forward_varlen(const Inputs<T>& x, const std::vector<index_t>& cu_seqlens, const OptionalState<T>& initial,
                         const Form& form, const Options& options);

// grad.dh as h; grad.dC_last, dn_last, dm_last (if given) with batch N, as the final states.
template <class T>
InputGrad<T> backward_varlen(const Inputs<T>& x, const std::vector<index_t>& cu_seqlens,
                             const OptionalState<T>& initial, const OutputGrad<T>& grad, const Form& form,
                             const Options& options);

}  // namespace flashlstm::mlstm
