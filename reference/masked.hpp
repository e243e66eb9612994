// Products that respect a structural mask, so that NaN and infinities propagate causally.
//
// The parallel and chunkwise forms multiply dense matrices whose masked entries (a later token, a
// node with no path to this one) are zero; in IEEE arithmetic 0 × NaN = NaN, so a NaN in a later
// token's k or v would reach every earlier output through those zeros, while the recurrent form
// keeps them finite. Every such product goes through these helpers: `masked` sets the masked
// entries to exactly 0 whatever the product gave there (a select, not a multiply), and
// `masked_product` combines rows of B only where the mask allows. When B is finite the plain
// product is already right and is what runs; the masked loop runs only on non-finite inputs.
//
// mask(i, j) says whether output row i may depend on input row j (token j <= i, node j reaches i).
#pragma once

#include <Eigen/Dense>

namespace flashlstm {

// M with every entry where !mask(i, j) set to 0.
template <class Derived, class Mask>
typename Derived::PlainObject masked(const Eigen::MatrixBase<Derived>& M, Mask&& mask) {
  typename Derived::PlainObject out = M;
  for (Eigen::Index i = 0; i < out.rows(); ++i)
    for (Eigen::Index j = 0; j < out.cols(); ++j)
      if (!mask(i, j)) out(i, j) = 0;
  return out;
}

// Σ_{j : mask(i, j)} M(i, j) B(j, :) for every row i. M's masked entries must be 0 (`masked`).
template <class DerivedM, class DerivedB, class Mask>
auto masked_product(const Eigen::MatrixBase<DerivedM>& M, const Eigen::MatrixBase<DerivedB>& B, Mask&& mask) {
  using Result = Eigen::Matrix<typename DerivedM::Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  if (B.allFinite()) return Result(M * B);
  Result out = Result::Zero(M.rows(), B.cols());
  for (Eigen::Index i = 0; i < M.rows(); ++i)
    for (Eigen::Index j = 0; j < M.cols(); ++j)
      if (mask(i, j)) out.row(i) += M(i, j) * B.row(j);
  return out;
}

// The masks of sequences: output token i depends on input tokens j <= i (causal), and its gradient
// on tokens j >= i (anti-causal).
inline bool causal(Eigen::Index i, Eigen::Index j) { return j <= i; }
inline bool anticausal(Eigen::Index i, Eigen::Index j) { return j >= i; }

}  // namespace flashlstm
