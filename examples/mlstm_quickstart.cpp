// The C++ quick start of the README: run the mLSTM chunkwise form, check it against the recurrent
// oracle, and take its gradients. Built and run by ctest so that the README stays true.
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/mlstm/mlstm.hpp"

#include <fmt/format.h>

int main() {
  using namespace flashlstm;
  const index_t B = 2, NH = 4, S = 300, DQK = 64, DV = 128;
  Rng rng(0);
  auto q = rng.normal<float>(Shape<4>{B, NH, S, DQK});
  auto k = rng.normal<float>(Shape<4>{B, NH, S, DQK});
  auto v = rng.normal<float>(Shape<4>{B, NH, S, DV});
  auto igate = rng.normal<float>(Shape<3>{B, NH, S});
  auto fgate = rng.normal<float>(Shape<3>{B, NH, S}, 3.0);

  const mlstm::Inputs<float> x{q, k, v, igate, fgate};
  const mlstm::Options options{.input_gate = mlstm::InputGate::exp, .eps = 1e-6};
  const auto out = mlstm::forward_chunkwise(x, std::nullopt, /*chunk_size=*/64, options);     // h, (C, n, m)
  const auto oracle = mlstm::forward_recurrent(x, std::nullopt, options);

  // Continue from the final state, then backpropagate a loss <dh, h> through both calls' inputs.
  const auto next = mlstm::forward_chunkwise(x, out.last, 64, options);
  const auto dh = rng.normal<float>(Shape<4>{B, NH, S, DV});
  const auto grad = mlstm::backward_chunkwise(x, out.last, {.dh = dh}, 64, options);  // dq, dk, dv, digate, dfgate, dinitial

  fmt::print("chunkwise vs recurrent: relative L2 error of h {:.2e}\n", rel_l2(out.h, oracle.h));
  fmt::print("h of the continuation: {} values, dq: {} values, dC0: {} values\n", next.h.size(), grad.dq.size(),
             grad.dinitial->C.size());
  return rel_l2(out.h, oracle.h) < 1e-5 ? 0 : 1;
}
