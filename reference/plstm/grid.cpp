// pLSTM on 2-D grids: recurrent, chunkwise and parallel forms, orientations (grid.hpp).
//
// Chunkwise: a chunk is a rectangle of nodes described by the linear map it applies,
//   out-border states = Tb · in-border states + Σ_nodes Sb k v^T
//   node readouts     = Mb · in-border states + Σ_nodes Gb k v^T  (plus the direct term)
// with in-border = [left edges by y, top edges by x] and out-border = [right edges by y, bottom edges
// by x]. A single node is the 2 x 2 map of its gates; four quadrants merge into their parent by
// composing their maps in dependency order (top-left, top-right, bottom-left, bottom-right), level
// by level up to the chunk side. The chunks are then visited in raster order, carrying only border
// states, so memory grows linearly with the number of nodes.
#include "reference/plstm/grid.hpp"

#include "core/error.hpp"
#include "reference/masked.hpp"
#include "reference/plstm/detail.hpp"

#include <array>
#include <cmath>
#include <utility>
#include <vector>

namespace flashlstm::plstm {
namespace {

using detail::Mat;
using detail::Vec;

struct Dims {
  index_t B, NH, X, Y, DQK, DV;
  index_t nodes() const { return X * Y; }
};

template <class F>
Dims check_inputs(const GridInputs<F>& x) {
  require(!x.q.empty(), "q", "is null");
  const Dims d{x.q.shape(0), x.q.shape(1), x.q.shape(2), x.q.shape(3), x.q.shape(4), x.v.shape(4)};
  require(d.B >= 1 && d.NH >= 1 && d.X >= 1 && d.Y >= 1 && d.DQK >= 1, "q",
          "expected shape (B, NH, X, Y, DQK) with every extent >= 1, got {}", shape_string(x.q.shape()));
  require(d.DV >= 1, "v", "expected DV >= 1, got shape {}", shape_string(x.v.shape()));
  check_shape("k", x.k, {d.B, d.NH, d.X, d.Y, d.DQK});
  check_shape("v", x.v, {d.B, d.NH, d.X, d.Y, d.DV});
  const auto& g = x.gates;
  for (const auto& [name, gate] : {std::pair{"Sr", g.Sr}, {"Sd", g.Sd}, {"Trl", g.Trl}, {"Tru", g.Tru},
                                   {"Tdu", g.Tdu}, {"Tdl", g.Tdl}, {"Ml", g.Ml}, {"Mu", g.Mu}, {"D", g.D}})
    check_shape(name, gate, {d.B, d.NH, d.X, d.Y});
  return d;
}

inline void check_chunk_size(index_t L) {
  require(L >= 1 && (L & (L - 1)) == 0, "chunk_size", "expected a power of two >= 1, got {}", L);
}

// Pointers to one (batch, head); gate(p, x, y) reads gate p at node (x, y).
template <class F>
struct Head {
  const F *q, *k, *v;
  const F *Sr, *Sd, *Trl, *Tru, *Tdu, *Tdl, *Ml, *Mu, *D;
  index_t Y, DQK, DV;
  F scale;
  Head(const GridInputs<F>& x, const Dims& d, index_t bh, const Options& o)
      : q(x.q.data() + bh * d.nodes() * d.DQK),
        k(x.k.data() + bh * d.nodes() * d.DQK),
        v(x.v.data() + bh * d.nodes() * d.DV),
        Sr(x.gates.Sr.data() + bh * d.nodes()),
        Sd(x.gates.Sd.data() + bh * d.nodes()),
        Trl(x.gates.Trl.data() + bh * d.nodes()),
        Tru(x.gates.Tru.data() + bh * d.nodes()),
        Tdu(x.gates.Tdu.data() + bh * d.nodes()),
        Tdl(x.gates.Tdl.data() + bh * d.nodes()),
        Ml(x.gates.Ml.data() + bh * d.nodes()),
        Mu(x.gates.Mu.data() + bh * d.nodes()),
        D(x.gates.D.data() + bh * d.nodes()),
        Y(d.Y),
        DQK(d.DQK),
        DV(d.DV),
        scale(detail::qk_scale<F>(o, d.DQK)) {}
  index_t node(index_t x, index_t y) const { return x * Y + y; }
  Eigen::Map<const Vec<F>> q_at(index_t n) const { return {q + n * DQK, DQK}; }
  Eigen::Map<const Vec<F>> k_at(index_t n) const { return {k + n * DQK, DQK}; }
  Eigen::Map<const Vec<F>> v_at(index_t n) const { return {v + n * DV, DV}; }
};

// Anti-diagonal wavefront: the nodes with x + y = s depend only on diagonal s - 1 and not on each
// other. Node (x, y) reads the right state of (x-1, y), kept per row in `right[y]`, and the down
// state of (x, y-1), kept per column in `down[x]`; on one diagonal no two nodes share a row or a
// column, so they could run in any order or in parallel.
template <class F>
void recurrent(const Head<F>& g, const Dims& d, F* h) {
  std::vector<Mat<F>> right(d.Y, Mat<F>::Zero(d.DQK, d.DV)), down(d.X, Mat<F>::Zero(d.DQK, d.DV));
  Mat<F> new_right(d.DQK, d.DV), new_down(d.DQK, d.DV), kv(d.DQK, d.DV);
  for (index_t s = 0; s < d.X + d.Y - 1; ++s) {
    for (index_t x = std::max<index_t>(0, s - d.Y + 1); x <= std::min(s, d.X - 1); ++x) {
      const index_t y = s - x, n = g.node(x, y);
      const auto q = g.q_at(n), k = g.k_at(n), v = g.v_at(n);
      const Mat<F>& left_in = right[y];  // zero on the left boundary
      const Mat<F>& top_in = down[x];    // zero on the top boundary
      Eigen::Map<Vec<F>>(h + n * d.DV, d.DV) =
          g.scale * (left_in.transpose() * (g.Ml[n] * q) + top_in.transpose() * (g.Mu[n] * q) + (g.D[n] * q.dot(k)) * v);
      kv.noalias() = k * v.transpose();
      new_right = g.Trl[n] * left_in + g.Tru[n] * top_in + g.Sr[n] * kv;
      new_down = g.Tdu[n] * top_in + g.Tdl[n] * left_in + g.Sd[n] * kv;
      right[y].swap(new_right);
      down[x].swap(new_down);
    }
  }
}

// The linear map of a rectangle [x0, x1) x [y0, y1) (see the file comment).
template <class F>
struct Block {
  index_t x0, x1, y0, y1;
  Mat<F> Tb, Sb, Mb, Gb;
  index_t width() const { return x1 - x0; }
  index_t height() const { return y1 - y0; }
  index_t borders() const { return width() + height(); }
  index_t nodes() const { return width() * height(); }
  index_t local(index_t x, index_t y) const { return (x - x0) * height() + (y - y0); }

  // Which entries of the map a path of the grid connects (right and down edges), whatever the gates:
  // a NaN or an infinity travels exactly along these (reference/masked.hpp). Nodes by local index;
  // in-border j: the left edge of row y0 + j (j < height), else the top edge of column x0 + j - height;
  // out-border i: the right edge of row y0 + i (i < height), else the bottom edge of column x0 + i - height.
  index_t x_of(index_t n) const { return x0 + n / height(); }
  index_t y_of(index_t n) const { return y0 + n % height(); }
  bool node_to_node(index_t i, index_t j) const { return x_of(j) <= x_of(i) && y_of(j) <= y_of(i); }  // j reaches i
  bool border_to_node(index_t i, index_t j) const {  // in-border j reaches node i
    return j < height() ? y_of(i) >= y0 + j : x_of(i) >= x0 + j - height();
  }
  bool node_to_border(index_t i, index_t n) const {  // node n reaches out-border i
    return i < height() ? y_of(n) <= y0 + i : x_of(n) <= x0 + i - height();
  }
  bool border_to_border(index_t i, index_t j) const {  // in-border j reaches out-border i
    if (j < height()) return i >= height() || i >= j;  // left-in: any bottom-out, right-out below it
    return i < height() || i >= j;                      // top-in: any right-out, bottom-out right of it
  }
};

template <class F>
Block<F> single_node(const Head<F>& g, index_t x, index_t y) {
  const index_t n = g.node(x, y);
  Block<F> b{x, x + 1, y, y + 1, Mat<F>(2, 2), Mat<F>(2, 1), Mat<F>(1, 2), Mat<F>::Zero(1, 1)};
  b.Tb << g.Trl[n], g.Tru[n], g.Tdl[n], g.Tdu[n];  // rows: right, down; columns: left-in, top-in
  b.Sb << g.Sr[n], g.Sd[n];
  b.Mb << g.Ml[n], g.Mu[n];
  return b;
}

// A quadrant's in-border rows (left by y, top by x) over the parent's sources.
template <class F>
Mat<F> quadrant_in(const Block<F>& q, const Block<F>& p, const std::vector<Vec<F>>& right_of_row,
                   const std::vector<Vec<F>>& bottom_of_col) {
  Mat<F> in(q.borders(), p.borders() + p.nodes());
  for (index_t y = q.y0; y < q.y1; ++y) in.row(y - q.y0) = right_of_row[y - p.y0].transpose();
  for (index_t x = q.x0; x < q.x1; ++x) in.row(q.height() + x - q.x0) = bottom_of_col[x - p.x0].transpose();
  return in;
}

// A quadrant's nodes as parent sources: row q.local(x, y) selects column nin + p.local(x, y).
template <class F>
Mat<F> node_sources(const Block<F>& q, const Block<F>& p) {
  Mat<F> src = Mat<F>::Zero(q.nodes(), p.borders() + p.nodes());
  for (index_t x = q.x0; x < q.x1; ++x)
    for (index_t y = q.y0; y < q.y1; ++y) src(q.local(x, y), p.borders() + p.local(x, y)) = 1;
  return src;
}

// Composes the quadrants (top-left a, top-right b, bottom-left c, bottom-right d; b, c, d may be
// empty) of a rectangle. Every quantity is a row of coefficients over the parent's sources:
// [in-border (left by y, top by x), nodes]. `ins`, when given, receives each quadrant's in-border
// rows (what the backward needs).
template <class F>
Block<F> merge(const std::vector<Block<F>>& quads, index_t x0, index_t x1, index_t y0, index_t y1,
               std::vector<Mat<F>>* ins = nullptr) {
  Block<F> p{x0, x1, y0, y1, {}, {}, {}, {}};
  const index_t nin = p.borders(), nn = p.nodes(), H = p.height();
  // Coefficient rows of the states on the right edge of each row y and the bottom edge of each
  // column x, as they become known; first the parent's own in-border.
  std::vector<Vec<F>> right_of_row(H), bottom_of_col(p.width());
  for (index_t y = 0; y < H; ++y) right_of_row[y] = Vec<F>::Unit(nin + nn, y);
  for (index_t x = 0; x < p.width(); ++x) bottom_of_col[x] = Vec<F>::Unit(nin + nn, H + x);
  Mat<F> readout = Mat<F>::Zero(nn, nin + nn);
  for (const Block<F>& q : quads) {  // in dependency order
    const Mat<F> in = quadrant_in(q, p, right_of_row, bottom_of_col);
    const Mat<F> node_src = node_sources(q, p);
    const Mat<F> out = q.Tb * in + q.Sb * node_src;
    const Mat<F> reads = q.Mb * in + q.Gb * node_src;
    for (index_t x = q.x0; x < q.x1; ++x)
      for (index_t y = q.y0; y < q.y1; ++y) readout.row(p.local(x, y)) = reads.row(q.local(x, y));
    for (index_t y = q.y0; y < q.y1; ++y) right_of_row[y - y0] = out.row(y - q.y0).transpose();
    for (index_t x = q.x0; x < q.x1; ++x) bottom_of_col[x - x0] = out.row(q.height() + x - q.x0).transpose();
    if (ins) ins->push_back(in);
  }
  Mat<F> out(nin, nin + nn);
  for (index_t y = 0; y < H; ++y) out.row(y) = right_of_row[y].transpose();
  for (index_t x = 0; x < p.width(); ++x) out.row(H + x) = bottom_of_col[x].transpose();
  p.Tb = out.leftCols(nin);
  p.Sb = out.rightCols(nn);
  p.Mb = readout.leftCols(nin);
  p.Gb = readout.rightCols(nn);
  return p;
}

// The quadrants of the square [x0, x0 + side) x [y0, y0 + side) that lie in the grid, as
// (x, y) origins in dependency order.
inline std::vector<std::pair<index_t, index_t>> quadrants(const Dims& d, index_t x0, index_t y0, index_t side) {
  const index_t half = side / 2;
  std::vector<std::pair<index_t, index_t>> out;
  for (const auto [qx, qy] : {std::pair{x0, y0}, {x0 + half, y0}, {x0, y0 + half}, {x0 + half, y0 + half}})
    if (qx < d.X && qy < d.Y) out.emplace_back(qx, qy);
  return out;
}

// The map of [x0, x0 + side) x [y0, y0 + side) clipped to the grid, by 2 x 2 merges.
template <class F>
Block<F> build_block(const Head<F>& g, const Dims& d, index_t x0, index_t y0, index_t side) {
  if (side == 1) return single_node(g, x0, y0);
  std::vector<Block<F>> quads;
  for (const auto [qx, qy] : quadrants(d, x0, y0, side)) quads.push_back(build_block(g, d, qx, qy, side / 2));
  return merge(quads, x0, std::min(x0 + side, d.X), y0, std::min(y0 + side, d.Y));
}

// Per (batch, head) pointers into the gate gradients.
template <class F>
struct GateGrads {
  F *Sr, *Sd, *Trl, *Tru, *Tdu, *Tdl, *Ml, *Mu;
};

// Reverse of build_block: given the gradient of a block's map (Tb, Sb, Mb, Gb), accumulates the
// gradients of the gates of its nodes, recomputing the quadrants' maps on the way down.
template <class F>
void build_block_backward(const Head<F>& g, const Dims& d, index_t x0, index_t y0, index_t side, const Block<F>& grad,
                          const GateGrads<F>& out) {
  if (side == 1) {
    const index_t n = g.node(x0, y0);
    out.Trl[n] += grad.Tb(0, 0), out.Tru[n] += grad.Tb(0, 1), out.Tdl[n] += grad.Tb(1, 0), out.Tdu[n] += grad.Tb(1, 1);
    out.Sr[n] += grad.Sb(0, 0), out.Sd[n] += grad.Sb(1, 0);
    out.Ml[n] += grad.Mb(0, 0), out.Mu[n] += grad.Mb(0, 1);
    return;
  }
  std::vector<Block<F>> quads;
  const auto origins = quadrants(d, x0, y0, side);
  for (const auto [qx, qy] : origins) quads.push_back(build_block(g, d, qx, qy, side / 2));
  std::vector<Mat<F>> ins;
  const Block<F> p = merge(quads, x0, std::min(x0 + side, d.X), y0, std::min(y0 + side, d.Y), &ins);
  const index_t nin = p.borders(), nn = p.nodes(), H = p.height();
  // Gradients of the coefficient rows, starting from the parent's outputs.
  std::vector<Vec<F>> d_right(H), d_bottom(p.width());
  Mat<F> d_out(nin, nin + nn), d_readout(nn, nin + nn);
  d_out << grad.Tb, grad.Sb;
  d_readout << grad.Mb, grad.Gb;
  for (index_t y = 0; y < H; ++y) d_right[y] = d_out.row(y).transpose();
  for (index_t x = 0; x < p.width(); ++x) d_bottom[x] = d_out.row(H + x).transpose();
  for (index_t i = static_cast<index_t>(quads.size()) - 1; i >= 0; --i) {
    const Block<F>& q = quads[i];
    Mat<F> dq_out(q.borders(), nin + nn), dq_reads(q.nodes(), nin + nn);
    for (index_t y = q.y0; y < q.y1; ++y) dq_out.row(y - q.y0) = d_right[y - y0].transpose();
    for (index_t x = q.x0; x < q.x1; ++x) dq_out.row(q.height() + x - q.x0) = d_bottom[x - x0].transpose();
    for (index_t x = q.x0; x < q.x1; ++x)
      for (index_t y = q.y0; y < q.y1; ++y) dq_reads.row(q.local(x, y)) = d_readout.row(p.local(x, y));
    const Mat<F> node_src = node_sources(q, p);
    // out = Tb in + Sb node_src, reads = Mb in + Gb node_src
    const Block<F> dq{q.x0, q.x1, q.y0, q.y1, dq_out * ins[i].transpose(), dq_out * node_src.transpose(),
                      dq_reads * ins[i].transpose(), dq_reads * node_src.transpose()};
    const Mat<F> d_in = q.Tb.transpose() * dq_out + q.Mb.transpose() * dq_reads;
    for (index_t y = q.y0; y < q.y1; ++y) d_right[y - y0] = d_in.row(y - q.y0).transpose();
    for (index_t x = q.x0; x < q.x1; ++x) d_bottom[x - x0] = d_in.row(q.height() + x - q.x0).transpose();
    build_block_backward(g, d, origins[i].first, origins[i].second, side / 2, dq, out);
  }
}

// Queries, keys, values and direct gates of a block's nodes, in local order.
template <class F>
struct BlockData {
  Mat<F> Q, K, V;
  Vec<F> D;
  BlockData(const Head<F>& g, const Block<F>& b) : Q(b.nodes(), g.DQK), K(b.nodes(), g.DQK), V(b.nodes(), g.DV), D(b.nodes()) {
    for (index_t x = b.x0; x < b.x1; ++x)
      for (index_t y = b.y0; y < b.y1; ++y) {
        const index_t n = g.node(x, y), i = b.local(x, y);
        Q.row(i) = g.q_at(n).transpose();
        K.row(i) = g.k_at(n).transpose();
        V.row(i) = g.v_at(n).transpose();
        D(i) = g.D[n];
      }
  }
  // P = Gb ∘ (Q K^T) plus the direct term on the diagonal.
  Mat<F> P(const Block<F>& b, const Mat<F>& A) const {
    Mat<F> P = b.Gb.cwiseProduct(A);
    P.diagonal() += D.cwiseProduct(A.diagonal());
    return P;
  }
};

// Σ_n mask(n) w(n) a_n b_nᵀ over the rows of A and B: the sum of outer products a block's readouts and
// states are made of, over the nodes a path connects (masked.hpp; the plain product when finite).
template <class F, class Mask>
Mat<F> masked_outer_sum(const Mat<F>& A, const Vec<F>& w, const Mat<F>& B, Mask&& mask) {
  if (A.allFinite() && B.allFinite()) return A.transpose() * (w.asDiagonal() * B);
  Mat<F> out = Mat<F>::Zero(A.cols(), B.cols());
  for (index_t n = 0; n < A.rows(); ++n)
    if (mask(n)) out.noalias() += (w(n) * A.row(n).transpose()) * B.row(n);
  return out;
}

// One chunk: h of its nodes and its out-border states from its in-border states.
template <class F>
std::vector<Mat<F>> chunk_forward(const Head<F>& g, const Block<F>& b, const std::vector<Mat<F>>& in, F* h) {
  const BlockData<F> x(g, b);
  const auto nodes = [&](index_t i, index_t j) { return b.node_to_node(i, j); };
  const Mat<F> A = x.Q * x.K.transpose();
  Mat<F> H = masked_product(masked(x.P(b, A), nodes), x.V, nodes);
  for (index_t j = 0; j < b.borders(); ++j) {
    const Mat<F> Q_in = masked(x.Q * in[j], [&](index_t i, index_t) { return b.border_to_node(i, j); });
    H.noalias() += b.Mb.col(j).asDiagonal() * Q_in;
  }
  for (index_t xx = b.x0; xx < b.x1; ++xx)
    for (index_t y = b.y0; y < b.y1; ++y)
      Eigen::Map<Vec<F>>(h + g.node(xx, y) * g.DV, g.DV) = g.scale * H.row(b.local(xx, y)).transpose();
  std::vector<Mat<F>> out(b.borders());
  for (index_t i = 0; i < b.borders(); ++i) {
    out[i] = masked_outer_sum<F>(x.K, b.Sb.row(i).transpose(), x.V, [&](index_t n) { return b.node_to_border(i, n); });
    for (index_t j = 0; j < b.borders(); ++j)
      if (b.border_to_border(i, j)) out[i] += b.Tb(i, j) * in[j];
  }
  return out;
}

// The in-border states of the block at (cx, cy) (left by y, top by x) from the carried borders.
template <class F>
std::vector<Mat<F>> in_border(const Block<F>& b, const std::vector<Mat<F>>& right, const std::vector<Mat<F>>& down) {
  std::vector<Mat<F>> in;
  for (index_t y = b.y0; y < b.y1; ++y) in.push_back(right[y]);
  for (index_t x = b.x0; x < b.x1; ++x) in.push_back(down[x]);
  return in;
}

template <class F>
void store_border(const Block<F>& b, std::vector<Mat<F>>&& out, std::vector<Mat<F>>& right, std::vector<Mat<F>>& down) {
  for (index_t y = b.y0; y < b.y1; ++y) right[y] = std::move(out[y - b.y0]);
  for (index_t x = b.x0; x < b.x1; ++x) down[x] = std::move(out[b.height() + x - b.x0]);
}

// Chunks in raster order, carrying the right states of the last chunk column (`right`, by y) and
// the down states of the last chunk row (`down`, by x).
template <class F>
void chunkwise(const Head<F>& g, const Dims& d, index_t side, F* h) {
  std::vector<Mat<F>> right(d.Y, Mat<F>::Zero(d.DQK, d.DV)), down(d.X, Mat<F>::Zero(d.DQK, d.DV));
  for (index_t cx = 0; cx < d.X; cx += side)
    for (index_t cy = 0; cy < d.Y; cy += side) {
      const Block<F> b = build_block(g, d, cx, cy, side);
      store_border(b, chunk_forward(g, b, in_border(b, right, down), h), right, down);
    }
}

// Reverse of chunk_forward: from dh and the gradients of the out-border states, writes dq, dk, dv,
// dD of the block's nodes, returns the gradients of the in-border states and fills the gradient of
// the block's map.
template <class F>
std::vector<Mat<F>> chunk_backward(const Head<F>& g, const Block<F>& b, const std::vector<Mat<F>>& in, const F* dh,
                                   const std::vector<Mat<F>>& d_out, Block<F>& d_map, F* dq, F* dk, F* dv, F* dD) {
  const BlockData<F> x(g, b);
  Mat<F> dH(b.nodes(), g.DV);
  for (index_t xx = b.x0; xx < b.x1; ++xx)
    for (index_t y = b.y0; y < b.y1; ++y)
      dH.row(b.local(xx, y)) = g.scale * Eigen::Map<const Vec<F>>(dh + g.node(xx, y) * g.DV, g.DV).transpose();
  // Every product below follows a path of the grid (masked.hpp): node to node, in-border to node,
  // node to out-border, in-border to out-border; the transposes go against it.
  const auto nodes = [&](index_t i, index_t j) { return b.node_to_node(i, j); };
  const auto nodes_back = [&](index_t i, index_t j) { return b.node_to_node(j, i); };
  const Mat<F> A = x.Q * x.K.transpose();
  const Mat<F> P = masked(x.P(b, A), nodes);
  // H = s (P V + Σ_j diag(Mb_j) Q C_j),  C_out_i = Σ_j Tb_ij C_j + K^T diag(Sb_i) V
  const Mat<F> dP = masked(dH * x.V.transpose(), nodes);
  Mat<F> dA = dP.cwiseProduct(b.Gb);
  dA.diagonal() += dP.diagonal().cwiseProduct(x.D);
  Mat<F> dQ = masked_product(dA, x.K, nodes), dK = masked_product(dA.transpose(), x.Q, nodes_back),
         dV = masked_product(P.transpose(), dH, nodes_back);
  d_map = {b.x0, b.x1, b.y0, b.y1, Mat<F>(b.borders(), b.borders()), Mat<F>(b.borders(), b.nodes()),
           Mat<F>(b.nodes(), b.borders()), masked(dP.cwiseProduct(A), nodes)};
  std::vector<Mat<F>> d_in(b.borders(), Mat<F>::Zero(g.DQK, g.DV));
  for (index_t j = 0; j < b.borders(); ++j) {
    const auto reached = [&](index_t i, index_t) { return b.border_to_node(i, j); };
    d_map.Mb.col(j) = masked(dH.cwiseProduct(x.Q * in[j]), reached).rowwise().sum();
    dQ.noalias() += b.Mb.col(j).asDiagonal() * masked(dH * in[j].transpose(), reached);
    d_in[j] += masked_outer_sum<F>(x.Q, b.Mb.col(j), dH, [&](index_t n) { return b.border_to_node(n, j); });
  }
  for (index_t i = 0; i < b.borders(); ++i) {
    const auto reaches = [&](index_t n, index_t) { return b.node_to_border(i, n); };
    const Mat<F> K_dC = masked(x.K * d_out[i], reaches);
    d_map.Sb.row(i) = masked(K_dC.cwiseProduct(x.V), reaches).rowwise().sum().transpose();
    dK.noalias() += b.Sb.row(i).transpose().asDiagonal() * masked(x.V * d_out[i].transpose(), reaches);
    dV.noalias() += b.Sb.row(i).transpose().asDiagonal() * K_dC;
    for (index_t j = 0; j < b.borders(); ++j) {
      if (!b.border_to_border(i, j)) {
        d_map.Tb(i, j) = 0;
        continue;
      }
      d_map.Tb(i, j) = (d_out[i].array() * in[j].array()).sum();
      d_in[j] += b.Tb(i, j) * d_out[i];
    }
  }
  for (index_t xx = b.x0; xx < b.x1; ++xx)
    for (index_t y = b.y0; y < b.y1; ++y) {
      const index_t n = g.node(xx, y), i = b.local(xx, y);
      Eigen::Map<Vec<F>>(dq + n * g.DQK, g.DQK) = dQ.row(i).transpose();
      Eigen::Map<Vec<F>>(dk + n * g.DQK, g.DQK) = dK.row(i).transpose();
      Eigen::Map<Vec<F>>(dv + n * g.DV, g.DV) = dV.row(i).transpose();
      dD[n] = dP(i, i) * A(i, i);
    }
  return d_in;
}

// ---------------------------------------------------------------------------------------------
// The chunk-map form, the form of the CUDA kernels (docs/cuda_plstm.md). The grid is cut into chunks
// of side L, each described by its map (build_block). The gating between a target chunk B and a
// source chunk A above and to the left of it (A ≠ B) is a product of small matrices,
//     G[B, A] = Mb_B X_A[B] Sb_A,
// where X_A[B] (B's in-borders x A's out-borders) holds the weights with which A's out-border states
// reach B's in-borders (reach, below); G[B, B] is B's own Gb with D on its diagonal. Then
//     h_B = s Σ_A (Q_B K_Aᵀ ∘ G[B, A]) V_A:
// the parallel form a block at a time, with memory linear in the number of nodes.
//
// With Operands::bf16 every product that makes or takes a node-by-node block rounds its operands to
// bf16: Q Kᵀ, P V and G = Mb W in the forward; dH Vᵀ, dS K, dSᵀ Q, Pᵀ dH, U = dG Sb_Aᵀ and
// U' = dGᵀ Mb_B in the backward. That is a plain bf16 computation of the form, the baseline of the
// bf16 kernels. The maps and the algebra between borders (X, W = X Sb, Mb_Bᵀ U, the chunk level)
// stay in F, like the states of a chunkwise form. A non-finite input reaches every node of the blocks
// it enters, as in the kernels.

// The chunks' maps, and their q, k, v as the products take them (rounded once for Operands::bf16).
template <class F>
struct ChunkGrid {
  index_t CX, CY;
  std::vector<Block<F>> blocks;  // chunk (cx, cy) at cx·CY + cy
  std::vector<BlockData<F>> data;
  ChunkGrid(const Head<F>& g, const Dims& d, index_t L, Operands ops) : CX((d.X + L - 1) / L), CY((d.Y + L - 1) / L) {
    for (index_t cx = 0; cx < CX; ++cx)
      for (index_t cy = 0; cy < CY; ++cy) {
        blocks.push_back(build_block(g, d, cx * L, cy * L, L));
        BlockData<F>& x = data.emplace_back(g, blocks.back());
        x.Q = operand(x.Q, ops), x.K = operand(x.K, ops), x.V = operand(x.V, ops);
      }
  }
  index_t count() const { return CX * CY; }
  // Whether chunk a is in the cone of b (above and to the left of it, or b itself).
  bool reaches(index_t a, index_t b) const { return a / CY <= b / CY && a % CY <= b % CY; }
};

// X_A[B] for every chunk B in A's cone other than A (empty elsewhere), in raster order: B's left
// in-borders (by row) are its left neighbour's right out-borders and its top in-borders (by column)
// its upper neighbour's bottom out-borders, where A's own out-borders are I and another chunk P's are
// Tb_P X_A[P].
template <class F>
std::vector<Mat<F>> reach(const ChunkGrid<F>& c, index_t a) {
  std::vector<Mat<F>> X(c.count()), out(c.count());
  out[a] = Mat<F>::Identity(c.blocks[a].borders(), c.blocks[a].borders());
  for (index_t b = a + 1; b < c.count(); ++b) {
    if (!c.reaches(a, b)) continue;
    const Block<F>& B = c.blocks[b];
    X[b] = Mat<F>::Zero(B.borders(), out[a].cols());
    if (b >= c.CY && c.reaches(a, b - c.CY)) X[b].topRows(B.height()) = out[b - c.CY].topRows(B.height());
    if (b % c.CY > 0 && c.reaches(a, b - 1)) X[b].bottomRows(B.width()) = out[b - 1].bottomRows(B.width());
    out[b] = B.Tb * X[b];
  }
  return X;
}

// Reverse of reach: from dX_A[B] (by chunk, the shapes of X), adds to every chunk's dTb.
template <class F>
void reach_backward(const ChunkGrid<F>& c, index_t a, const std::vector<Mat<F>>& X, const std::vector<Mat<F>>& dX,
                    std::vector<Block<F>>& d_maps) {
  std::vector<Mat<F>> d_out(c.count());  // the gradient of each chunk's out-borders, Tb_P X_A[P]
  for (index_t b = c.count() - 1; b > a; --b) {
    if (!c.reaches(a, b)) continue;
    const Block<F>& B = c.blocks[b];
    Mat<F> dXb = dX[b];
    if (d_out[b].size()) {
      d_maps[b].Tb += d_out[b] * X[b].transpose();
      dXb += B.Tb.transpose() * d_out[b];
    }
    const auto send = [&](index_t to, bool top_rows) {
      if (to == a || !c.reaches(a, to)) return;  // A's out-borders are the constant I
      if (!d_out[to].size()) d_out[to] = Mat<F>::Zero(c.blocks[to].borders(), dXb.cols());
      if (top_rows) d_out[to].topRows(B.height()) += dXb.topRows(B.height());
      else d_out[to].bottomRows(B.width()) += dXb.bottomRows(B.width());
    };
    if (b >= c.CY) send(b - c.CY, true);
    if (b % c.CY > 0) send(b - 1, false);
  }
}

// The gating G[B, A] in the arithmetic `ops` (D on the diagonal of G[B, B]).
template <class F>
Mat<F> chunk_gating(const ChunkGrid<F>& c, const std::vector<std::vector<Mat<F>>>& X, index_t b, index_t a,
                    Operands ops) {
  if (a == b) {
    Mat<F> G = c.blocks[b].Gb;
    G.diagonal() += c.data[b].D;
    return G;
  }
  return operand(c.blocks[b].Mb, ops) * operand(Mat<F>(X[a][b] * c.blocks[a].Sb), ops);
}

template <class F>
std::vector<std::vector<Mat<F>>> all_reach(const ChunkGrid<F>& c) {
  std::vector<std::vector<Mat<F>>> X;
  for (index_t a = 0; a < c.count(); ++a) X.push_back(reach(c, a));
  return X;
}

template <class F>
void maps_forward(const Head<F>& g, const Dims& d, index_t L, Operands ops, F* h) {
  const ChunkGrid<F> c(g, d, L, ops);
  const auto X = all_reach(c);
  for (index_t b = 0; b < c.count(); ++b) {
    const Block<F>& B = c.blocks[b];
    Mat<F> H = Mat<F>::Zero(B.nodes(), g.DV);
    for (index_t a = 0; a <= b; ++a) {
      if (!c.reaches(a, b)) continue;
      const Mat<F> S = c.data[b].Q * c.data[a].K.transpose();
      const Mat<F> P = g.scale * S.cwiseProduct(chunk_gating(c, X, b, a, ops));
      H.noalias() += operand(P, ops) * c.data[a].V;
    }
    for (index_t x = B.x0; x < B.x1; ++x)
      for (index_t y = B.y0; y < B.y1; ++y)
        Eigen::Map<Vec<F>>(h + g.node(x, y) * g.DV, g.DV) = H.row(B.local(x, y)).transpose();
  }
}

// The exact gradients of maps_forward: per pair (B, A), dP = dH_B V_Aᵀ, dS = s dP ∘ G and dG = s dP ∘ S
// give dq, dk, dv and (diagonal) dGb and dD; off the diagonal dMb_B += U X_A[B]ᵀ and dX_A[B] = Mb_Bᵀ U
// with U = dG Sb_Aᵀ, and dSb_A += X_A[B]ᵀ U'ᵀ with U' = dGᵀ Mb_B. Then the chunk level (reach_backward)
// gives dTb, and each chunk's map goes back to its gates (build_block_backward).
template <class F>
void maps_backward(const Head<F>& g, const Dims& d, index_t L, Operands ops, const F* dh, const GateGrads<F>& gates,
                   F* dq, F* dk, F* dv, F* dD) {
  const ChunkGrid<F> c(g, d, L, ops);
  const auto X = all_reach(c);
  const index_t n = c.count();
  std::vector<Mat<F>> dH(n), dQ(n), dK(n), dV(n);
  std::vector<Block<F>> d_maps;
  for (index_t b = 0; b < n; ++b) {
    const Block<F>& B = c.blocks[b];
    dH[b] = Mat<F>(B.nodes(), g.DV);
    for (index_t x = B.x0; x < B.x1; ++x)
      for (index_t y = B.y0; y < B.y1; ++y)
        dH[b].row(B.local(x, y)) = Eigen::Map<const Vec<F>>(dh + g.node(x, y) * g.DV, g.DV).transpose();
    dH[b] = operand(dH[b], ops);
    dQ[b] = dK[b] = Mat<F>::Zero(B.nodes(), g.DQK);
    dV[b] = Mat<F>::Zero(B.nodes(), g.DV);
    d_maps.push_back({B.x0, B.x1, B.y0, B.y1, Mat<F>::Zero(B.borders(), B.borders()),
                      Mat<F>::Zero(B.borders(), B.nodes()), Mat<F>::Zero(B.nodes(), B.borders()),
                      Mat<F>::Zero(B.nodes(), B.nodes())});
  }
  std::vector<std::vector<Mat<F>>> dX(n, std::vector<Mat<F>>(n));
  for (index_t b = 0; b < n; ++b)
    for (index_t a = 0; a <= b; ++a) {
      if (!c.reaches(a, b)) continue;
      const BlockData<F>&xb = c.data[b], &xa = c.data[a];
      const Mat<F> G = chunk_gating(c, X, b, a, ops);
      const Mat<F> S = xb.Q * xa.K.transpose(), dP = dH[b] * xa.V.transpose();
      const Mat<F> P = g.scale * S.cwiseProduct(G), dG = g.scale * dP.cwiseProduct(S);
      const Mat<F> dS = operand(Mat<F>(g.scale * dP.cwiseProduct(G)), ops);
      dV[a].noalias() += operand(P, ops).transpose() * dH[b];
      dQ[b].noalias() += dS * xa.K;
      dK[a].noalias() += dS.transpose() * xb.Q;
      if (a == b) {
        d_maps[b].Gb += dG;
        for (index_t x = c.blocks[b].x0; x < c.blocks[b].x1; ++x)
          for (index_t y = c.blocks[b].y0; y < c.blocks[b].y1; ++y) {
            const index_t i = c.blocks[b].local(x, y);
            dD[g.node(x, y)] = dG(i, i);
          }
        continue;
      }
      const Mat<F> dG_operand = operand(dG, ops);
      const Mat<F> U = dG_operand * operand(c.blocks[a].Sb, ops).transpose();
      const Mat<F> U2 = dG_operand.transpose() * operand(c.blocks[b].Mb, ops);
      d_maps[b].Mb.noalias() += U * X[a][b].transpose();
      dX[a][b] = c.blocks[b].Mb.transpose() * U;
      d_maps[a].Sb.noalias() += X[a][b].transpose() * U2.transpose();
    }
  for (index_t a = 0; a < n; ++a) reach_backward(c, a, X[a], dX[a], d_maps);
  for (index_t b = 0; b < n; ++b) {
    const Block<F>& B = c.blocks[b];
    build_block_backward(g, d, B.x0, B.y0, L, d_maps[b], gates);
    for (index_t x = B.x0; x < B.x1; ++x)
      for (index_t y = B.y0; y < B.y1; ++y) {
        const index_t node = g.node(x, y), i = B.local(x, y);
        Eigen::Map<Vec<F>>(dq + node * g.DQK, g.DQK) = dQ[b].row(i).transpose();
        Eigen::Map<Vec<F>>(dk + node * g.DQK, g.DQK) = dK[b].row(i).transpose();
        Eigen::Map<Vec<F>>(dv + node * g.DV, g.DV) = dV[b].row(i).transpose();
      }
  }
}

}  // namespace

std::string GridForm::name() const {
  switch (kind) {
    case recurrent: return "recurrent";
    case chunkwise: return fmt::format("chunkwise(L={})", chunk_size);
    case parallel: return operands == Operands::bf16 ? "parallel, bf16 operands" : "parallel";
    case maps: return fmt::format("maps(L={}){}", chunk_size, operands == Operands::bf16 ? ", bf16 operands" : "");
  }
  return "?";
}

template <class F>
GridGrad<F> grid_backward(const GridInputs<F>& x, ConstView<F, 5> dh, const GridForm& form, const Options& o) {
  const Dims d = check_inputs(x);
  check_shape("dh", dh, {d.B, d.NH, d.X, d.Y, d.DV});
  require(form.kind == GridForm::chunkwise || form.kind == GridForm::maps, "form",
          "the backward has the chunkwise and maps forms, got {}", form.name());
  check_chunk_size(form.chunk_size);
  const Shape<4> gate_shape{d.B, d.NH, d.X, d.Y};
  GridGrad<F> out{uninitialized<F>(Shape<5>{d.B, d.NH, d.X, d.Y, d.DQK}), uninitialized<F>(Shape<5>{d.B, d.NH, d.X, d.Y, d.DQK}),
                  uninitialized<F>(Shape<5>{d.B, d.NH, d.X, d.Y, d.DV}), zeros<F>(gate_shape), zeros<F>(gate_shape),
                  zeros<F>(gate_shape), zeros<F>(gate_shape), zeros<F>(gate_shape), zeros<F>(gate_shape),
                  zeros<F>(gate_shape), zeros<F>(gate_shape), uninitialized<F>(gate_shape)};
  const index_t side = form.chunk_size;
  parallel_for(d.B * d.NH, [&](index_t bh) {
    const Head<F> g(x, d, bh, o);
    const index_t node0 = bh * d.nodes();
    const GateGrads<F> gates{out.dSr.data() + node0,  out.dSd.data() + node0,  out.dTrl.data() + node0,
                             out.dTru.data() + node0, out.dTdu.data() + node0, out.dTdl.data() + node0,
                             out.dMl.data() + node0,  out.dMu.data() + node0};
    if (form.kind == GridForm::maps) {
      maps_backward(g, d, side, form.operands, dh.data() + node0 * d.DV, gates, out.dq.data() + node0 * d.DQK,
                    out.dk.data() + node0 * d.DQK, out.dv.data() + node0 * d.DV, out.dD.data() + node0);
      return;
    }
    // Forward, keeping the in-border states of every chunk (linear in the number of nodes).
    std::vector<std::pair<index_t, index_t>> chunks;
    std::vector<std::vector<Mat<F>>> ins;
    std::vector<Mat<F>> right(d.Y, Mat<F>::Zero(d.DQK, d.DV)), down(d.X, Mat<F>::Zero(d.DQK, d.DV));
    std::vector<F> h_scratch(d.nodes() * d.DV);
    for (index_t cx = 0; cx < d.X; cx += side)
      for (index_t cy = 0; cy < d.Y; cy += side) {
        const Block<F> b = build_block(g, d, cx, cy, side);
        chunks.emplace_back(cx, cy);
        ins.push_back(in_border(b, right, down));
        store_border(b, chunk_forward(g, b, ins.back(), h_scratch.data()), right, down);
      }
    // Reverse: d_right / d_down hold the gradients of the carried border states.
    std::vector<Mat<F>> d_right(d.Y, Mat<F>::Zero(d.DQK, d.DV)), d_down(d.X, Mat<F>::Zero(d.DQK, d.DV));
    for (index_t c = static_cast<index_t>(chunks.size()) - 1; c >= 0; --c) {
      const auto [cx, cy] = chunks[c];
      const Block<F> b = build_block(g, d, cx, cy, side);
      Block<F> d_map;
      auto d_in = chunk_backward(g, b, ins[c], dh.data() + node0 * d.DV, in_border(b, d_right, d_down), d_map,
                                 out.dq.data() + node0 * d.DQK, out.dk.data() + node0 * d.DQK,
                                 out.dv.data() + node0 * d.DV, out.dD.data() + node0);
      store_border(b, std::move(d_in), d_right, d_down);
      build_block_backward(g, d, cx, cy, side, d_map, gates);
    }
  });
  return out;
}

template <class F>
GridGrad<F> grid_backward(const GridInputs<F>& x, ConstView<F, 5> dh, index_t chunk_size, const Options& o) {
  return grid_backward(x, dh, GridForm{GridForm::chunkwise, chunk_size}, o);
}

graph::Dag grid_dag(index_t X, index_t Y) {
  std::vector<graph::Edge> edges;
  for (index_t x = 0; x < X; ++x)
    for (index_t y = 0; y < Y; ++y) {
      if (x + 1 < X) edges.push_back({x * Y + y, (x + 1) * Y + y});
      if (y + 1 < Y) edges.push_back({x * Y + y, x * Y + y + 1});
    }
  return graph::Dag(X * Y, edges);
}

template <class F>
DagGates<F> grid_dag_gates(const GridInputs<F>& x) {
  const Dims d = check_inputs(x);
  const graph::Dag dag = grid_dag(d.X, d.Y);
  const graph::LineGraph lg = graph::line_graph(dag);
  const index_t N = d.nodes(), E = dag.num_edges(), A = static_cast<index_t>(lg.arcs.size());
  DagGates<F> out{zeros<F>(Shape<3>{d.B, d.NH, E}), zeros<F>(Shape<3>{d.B, d.NH, A}), zeros<F>(Shape<3>{d.B, d.NH, E}),
                  copy(ConstView<F, 3>(x.gates.D.data(), {d.B, d.NH, N}))};
  auto is_right = [&](index_t e) { return dag.edges()[e].dst == dag.edges()[e].src + d.Y; };
  const auto& g = x.gates;
  for (index_t bh = 0; bh < d.B * d.NH; ++bh) {
    const index_t node0 = bh * N;
    for (index_t e = 0; e < E; ++e) {
      const index_t src = dag.edges()[e].src, dst = dag.edges()[e].dst;
      out.S.data()[bh * E + e] = (is_right(e) ? g.Sr : g.Sd).data()[node0 + src];
      out.M.data()[bh * E + e] = (is_right(e) ? g.Ml : g.Mu).data()[node0 + dst];
    }
    for (index_t a = 0; a < A; ++a) {
      const auto& arc = lg.arcs[a];
      const bool from_left = is_right(arc.from), to_right = is_right(arc.to);
      const auto& gate = from_left ? (to_right ? g.Trl : g.Tdl) : (to_right ? g.Tru : g.Tdu);
      out.T.data()[bh * A + a] = gate.data()[node0 + arc.node];
    }
  }
  return out;
}

template <class F>
xt::xtensor<F, 5> grid_forward(const GridInputs<F>& x, const GridForm& form, const Options& o) {
  const Dims d = check_inputs(x);
  if (form.kind == GridForm::parallel) {  // the DAG parallel form on the grid graph
    const auto gates = grid_dag_gates(x);
    const auto h = dag_forward(grid_dag(d.X, d.Y),
                               DagInputs<F>{ConstView<F, 4>(x.q.data(), {d.B, d.NH, d.nodes(), d.DQK}),
                                            ConstView<F, 4>(x.k.data(), {d.B, d.NH, d.nodes(), d.DQK}),
                                            ConstView<F, 4>(x.v.data(), {d.B, d.NH, d.nodes(), d.DV}), gates.S,
                                            gates.T, gates.M, gates.D},
                               DagForm::parallel, o, form.operands);
    auto out = uninitialized<F>(Shape<5>{d.B, d.NH, d.X, d.Y, d.DV});
    std::copy(h.begin(), h.end(), out.begin());
    return out;
  }
  if (form.kind != GridForm::recurrent) check_chunk_size(form.chunk_size);
  auto h = uninitialized<F>(Shape<5>{d.B, d.NH, d.X, d.Y, d.DV});
  parallel_for(d.B * d.NH, [&](index_t bh) {
    const Head<F> head(x, d, bh, o);
    F* out = h.data() + bh * d.nodes() * d.DV;
    if (form.kind == GridForm::recurrent) recurrent(head, d, out);
    else if (form.kind == GridForm::chunkwise) chunkwise(head, d, form.chunk_size, out);
    else maps_forward(head, d, form.chunk_size, form.operands, out);
  });
  return h;
}

namespace {

// t flipped along x (axis 2) and/or y (axis 3) of a (B, NH, X, Y, ...) tensor.
template <class E>
auto flipped(const E& t, int orientation) {
  xt::xtensor<typename E::value_type, E::rank> out = t;
  if (orientation & 1) out = xt::flip(out, 2);
  if (orientation & 2) out = xt::flip(out, 3);
  return out;
}

// The grid padded at its far ends (x >= X, y >= Y of axes 2 and 3) to multiples of `multiple` with
// zeros, and back. Padding nodes whose q, k, v and gates are 0 changes no output or gradient of the
// grid's own nodes (no path crosses them); the oriented maps form pads to whole chunks so that in every
// orientation its chunks are cut from the grid's top-left corner, as the CUDA kernels cut them.
template <class F, std::size_t N>
xt::xtensor<F, N> padded(xt::xtensor<F, N> t, index_t multiple) {
  const auto X = static_cast<index_t>(t.shape(2)), Y = static_cast<index_t>(t.shape(3));
  const index_t PX = (X + multiple - 1) / multiple * multiple, PY = (Y + multiple - 1) / multiple * multiple;
  if (PX == X && PY == Y) return t;
  auto shape = t.shape();
  shape[2] = static_cast<std::size_t>(PX), shape[3] = static_cast<std::size_t>(PY);
  xt::xtensor<F, N> out = xt::zeros<F>(shape);
  xt::view(out, xt::all(), xt::all(), xt::range(0, X), xt::range(0, Y)) = t;
  return out;
}
template <class F, std::size_t N>
xt::xtensor<F, N> cropped(xt::xtensor<F, N> t, index_t X, index_t Y) {
  if (static_cast<index_t>(t.shape(2)) == X && static_cast<index_t>(t.shape(3)) == Y) return t;
  return xt::view(t, xt::all(), xt::all(), xt::range(0, X), xt::range(0, Y));
}

// The grid's padding multiple in `form`: whole chunks for the maps form, else none.
inline index_t padding(const GridForm& form) {
  if (form.kind != GridForm::maps) return 1;
  check_chunk_size(form.chunk_size);
  return form.chunk_size;
}

// Orientation o's problem: the inputs and that orientation's gates, padded to `multiple` and flipped by o.
template <class F>
struct Oriented {
  xt::xtensor<F, 5> q, k, v;
  std::array<xt::xtensor<F, 4>, 9> g;  // Sr, Sd, Trl, Tru, Tdu, Tdl, Ml, Mu, D
  GridInputs<F> inputs() const { return {q, k, v, {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]}}; }
};

template <class F>
Oriented<F> oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v, const OrientedGates<F>& gates, int o,
                     index_t multiple) {
  require(!q.empty() && !v.empty(), "q", "is null");
  const Shape<5> gate_shape{4, q.shape(0), q.shape(1), q.shape(2), q.shape(3)};
  const std::array<std::pair<const char*, ConstView<F, 5>>, 9> named{
      {{"Sr", gates.Sr}, {"Sd", gates.Sd}, {"Trl", gates.Trl}, {"Tru", gates.Tru}, {"Tdu", gates.Tdu},
       {"Tdl", gates.Tdl}, {"Ml", gates.Ml}, {"Mu", gates.Mu}, {"D", gates.D}}};
  Oriented<F> x{flipped(padded(copy(q), multiple), o), flipped(padded(copy(k), multiple), o),
                flipped(padded(copy(v), multiple), o), {}};
  for (std::size_t i = 0; i < named.size(); ++i) {
    check_shape(named[i].first, named[i].second, gate_shape);
    x.g[i] = flipped(padded(xt::xtensor<F, 4>(xt::view(copy(named[i].second), o)), multiple), o);
  }
  return x;
}

}  // namespace

template <class F>
xt::xtensor<F, 5> grid_forward_oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v,
                                        const OrientedGates<F>& gates, const GridForm& form, const Options& options) {
  xt::xtensor<F, 5> sum;
  const index_t multiple = padding(form), X = q.shape(2), Y = q.shape(3);
  for (int o = 0; o < 4; ++o) {
    const Oriented<F> x = oriented(q, k, v, gates, o, multiple);
    const xt::xtensor<F, 5> h = cropped(flipped(grid_forward(x.inputs(), form, options), o), X, Y);
    if (o == 0) sum = h;
    else sum += h;
  }
  return sum;
}

template <class F>
OrientedGridGrad<F> grid_backward_oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v,
                                           const OrientedGates<F>& gates, ConstView<F, 5> dh, index_t chunk_size,
                                           const Options& options) {
  return grid_backward_oriented(q, k, v, gates, dh, GridForm{GridForm::chunkwise, chunk_size}, options);
}

template <class F>
OrientedGridGrad<F> grid_backward_oriented(ConstView<F, 5> q, ConstView<F, 5> k, ConstView<F, 5> v,
                                           const OrientedGates<F>& gates, ConstView<F, 5> dh, const GridForm& form,
                                           const Options& options) {
  check_shape("dh", dh, Shape<5>{q.shape(0), q.shape(1), q.shape(2), q.shape(3), v.shape(4)});
  const Shape<5> gate_shape{4, q.shape(0), q.shape(1), q.shape(2), q.shape(3)};
  OrientedGridGrad<F> out;
  for (auto* g : {&out.dSr, &out.dSd, &out.dTrl, &out.dTru, &out.dTdu, &out.dTdl, &out.dMl, &out.dMu, &out.dD})
    *g = zeros<F>(gate_shape);
  const index_t multiple = padding(form), X = q.shape(2), Y = q.shape(3);
  for (int o = 0; o < 4; ++o) {
    const Oriented<F> x = oriented(q, k, v, gates, o, multiple);
    const xt::xtensor<F, 5> dh_o = flipped(padded(copy(dh), multiple), o);
    const GridGrad<F> g = grid_backward<F>(x.inputs(), dh_o, form, options);
    const auto back = [&](const auto& t) { return cropped(flipped(t, o), X, Y); };
    if (o == 0) out.dq = back(g.dq), out.dk = back(g.dk), out.dv = back(g.dv);
    else out.dq += back(g.dq), out.dk += back(g.dk), out.dv += back(g.dv);
    const std::array<std::pair<xt::xtensor<F, 5>*, const xt::xtensor<F, 4>*>, 9> pairs{
        {{&out.dSr, &g.dSr}, {&out.dSd, &g.dSd}, {&out.dTrl, &g.dTrl}, {&out.dTru, &g.dTru}, {&out.dTdu, &g.dTdu},
         {&out.dTdl, &g.dTdl}, {&out.dMl, &g.dMl}, {&out.dMu, &g.dMu}, {&out.dD, &g.dD}}};
    for (const auto& [to, from] : pairs) xt::view(*to, o) = back(*from);
  }
  return out;
}

#define FLASHLSTM_INSTANTIATE(F)                                                                           \
  template xt::xtensor<F, 5> grid_forward(const GridInputs<F>&, const GridForm&, const Options&);         \
  template DagGates<F> grid_dag_gates(const GridInputs<F>&);                                               \
  template GridGrad<F> grid_backward(const GridInputs<F>&, ConstView<F, 5>, index_t, const Options&);       \
  template GridGrad<F> grid_backward(const GridInputs<F>&, ConstView<F, 5>, const GridForm&, const Options&); \
  template xt::xtensor<F, 5> grid_forward_oriented(ConstView<F, 5>, ConstView<F, 5>, ConstView<F, 5>,     \
                                                   const OrientedGates<F>&, const GridForm&, const Options&);  \
  template OrientedGridGrad<F> grid_backward_oriented(ConstView<F, 5>, ConstView<F, 5>, ConstView<F, 5>,   \
                                                      const OrientedGates<F>&, ConstView<F, 5>, index_t,   \
                                                      const Options&);                                      \
  template OrientedGridGrad<F> grid_backward_oriented(ConstView<F, 5>, ConstView<F, 5>, ConstView<F, 5>,   \
                                                      const OrientedGates<F>&, ConstView<F, 5>,             \
                                                      const GridForm&, const Options&);
FLASHLSTM_INSTANTIATE(float)
FLASHLSTM_INSTANTIATE(double)
#undef FLASHLSTM_INSTANTIATE

}  // namespace flashlstm::plstm
