// The sLSTM quick start of the README: a forward over a sequence in FlashRNN's layout, its
// backward, and generation step by step. Built and run by ctest so that the README stays true.
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/slstm/slstm.hpp"

#include <fmt/format.h>

int main() {
  using namespace flashlstm;
  const index_t B = 4, T = 100, NH = 2, DH = 32;
  Rng rng(0);
  const auto Wx = rng.normal<float>(Shape<5>{B, T, 4, NH, DH});  // W x_t, computed outside (gates i, f, z, o)
  const auto R = rng.normal<float>(Shape<4>{4, NH, DH, DH}, 0.0, 0.1);
  const auto b = rng.normal<float>(Shape<3>{4, NH, DH});

  const slstm::Options options{.cell = slstm::Cell::slstm, .forget_gate = slstm::ForgetGate::sigmoid};
  const slstm::Inputs<float> x{Wx, R, b};
  const auto out = slstm::forward(x, std::nullopt, options);  // states (4, B, T, NH, DH), last (4, B, NH, DH)
  const auto dh = rng.normal<float>(Shape<4>{B, T, NH, DH});
  const auto grad = slstm::backward(x, std::nullopt, {.dh = dh}, options);  // dWx, dR, db

  auto state = zeros<float>(Shape<4>{4, B, NH, DH});  // (h, c, n, m), zeros
  for (index_t t = 0; t < T; ++t) {
    const xt::xtensor<float, 4> Wx_t = xt::view(Wx, xt::all(), t);  // (B, 4, NH, DH)
    slstm::step<float>(Wx_t, R, b, state, options);
  }
  fmt::print("step by step vs sequence: relative L2 error of the final state {:.2e}; |dR| = {:.3f}\n",
             rel_l2(state, out.last), std::sqrt(xt::sum(grad.dR * grad.dR)()));
  return rel_l2(state, out.last) < 1e-6 ? 0 : 1;
}
