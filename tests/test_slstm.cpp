// sLSTM and LSTM reference: finite differences, state passing, the stabiliser's invariants, long
// sequences at saturating pre-activations, a hand-computed LSTM example, and bad input.
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/slstm/check.hpp"
#include "tests/check_catch.hpp"

using namespace flashlstm;
using namespace flashlstm::slstm;
using Catch::Contains;
using check::passes;

TEST_CASE("sLSTM/LSTM gradients match finite differences to 1e-6", "[slstm][gradients]") {
  const auto shape = GENERATE(ProblemShape{1, 1, 1, 3, true}, ProblemShape{2, 9, 2, 5, false},
                              ProblemShape{3, 17, 2, 8, true});
  for (const auto& o : variants) {
    const auto p = random_problem<double>(shape, o, 31 + shape.T);
    INFO(shape.name() << " " << variant_name(o));
    CHECK_THAT(gradcheck(p, o, 5), passes());
  }
}

TEST_CASE("sLSTM/LSTM run in pieces with the state handed on equals the whole run", "[slstm]") {
  for (const auto& o : variants) {
    for (bool with_state : {false, true}) {
      INFO(variant_name(o) << (with_state ? " +state" : ""));
      CHECK_THAT(state_passing(random_problem<double>({2, 30, 3, 6, with_state}, o, 7), 11, o, 1e-12), passes());
    }
  }
}

TEST_CASE("sLSTM from a zero state keeps n >= 1", "[slstm]") {
  for (const auto& f : {ForgetGate::sigmoid, ForgetGate::exp}) {
    const Options o{Cell::slstm, f};
    auto p = random_problem<double>({4, 200, 2, 8, false}, o, 3);
    p.Wx *= 5.0;
    const auto out = forward(p.inputs(), std::nullopt, o);
    CHECK(xt::amin(xt::view(out.states, 2))() >= 1.0);
  }
}

TEST_CASE("sLSTM h is unchanged when m is shifted with c and n rescaled", "[slstm]") {
  for (const auto& f : {ForgetGate::sigmoid, ForgetGate::exp}) {
    const Options o{Cell::slstm, f};
    const auto p = random_problem<double>({2, 40, 2, 6, true}, o, 13);
    for (double shift : {-30.0, -1.5, 2.0, 25.0}) {
      auto shifted = *p.initial;
      xt::view(shifted, 1) *= std::exp(-shift);
      xt::view(shifted, 2) *= std::exp(-shift);
      xt::view(shifted, 3) += shift;
      const auto a = forward(p.inputs(), p.initial_view(), o), b = forward(p.inputs(), ConstView<double, 4>(shifted), o);
      INFO("shift " << shift);
      CHECK(rel_l2(xt::eval(xt::view(b.states, 0)), xt::eval(xt::view(a.states, 0))) <= 1e-13);
    }
  }
}

TEST_CASE("100,000 steps at pre-activations up to +-50 stay finite", "[slstm]") {
  for (const auto& o : variants) {
    INFO(variant_name(o));
    auto p = random_problem<double>({1, 100000, 1, 4, false}, o, 17);
    Rng rng(18);
    p.Wx = rng.uniform<double>(shape_of(p.Wx), -50, 50);
    p.R *= 10.0;
    const auto p32 = cast_problem<float>(p);
    const auto out = forward(p.inputs(), std::nullopt, o);
    const auto grad = backward(p.inputs(), std::nullopt, p.output_grad(), o);
    const auto out32 = forward(p32.inputs(), std::nullopt, o);
    const auto grad32 = backward(p32.inputs(), std::nullopt, p32.output_grad(), o);
    CHECK(all_finite(out.states));
    CHECK(all_finite(grad.dWx));
    CHECK(all_finite(grad.dR));
    CHECK(all_finite(out32.states));
    CHECK(all_finite(grad32.dWx));
    CHECK(all_finite(grad32.dR));
  }
}

TEST_CASE("the LSTM cell matches a hand-computed two-step example", "[slstm][lstm]") {
  // DH = 1, R = (0.5, -0.5, 1, 0.25), b = (0.1, -0.2, 0.05, 0), zero initial state; values from
  // i = σ, f = σ, z = tanh, o = σ, c' = f c + i z, h' = o tanh(c') evaluated by hand (Python's math).
  xt::xtensor<double, 5> Wx = zeros<double>(Shape<5>{1, 2, 4, 1, 1});
  const double w1[4] = {0.1, 0.2, 0.3, 0.4}, w2[4] = {-0.3, 0.5, -0.2, 0.1};
  for (int g = 0; g < 4; ++g) Wx(0, 0, g, 0, 0) = w1[g], Wx(0, 1, g, 0, 0) = w2[g];
  xt::xtensor<double, 4> R = zeros<double>(Shape<4>{4, 1, 1, 1});
  xt::xtensor<double, 3> b = zeros<double>(Shape<3>{4, 1, 1});
  const double r[4] = {0.5, -0.5, 1.0, 0.25}, bias[4] = {0.1, -0.2, 0.05, 0.0};
  for (int g = 0; g < 4; ++g) R(g, 0, 0, 0) = r[g], b(g, 0, 0) = bias[g];
  const auto out = forward(Inputs<double>{Wx, R, b}, std::nullopt, Options{Cell::lstm});
  CHECK(out.states(0, 0, 0, 0, 0) == Approx(0.10948220144939724).epsilon(1e-14));  // h_1
  CHECK(out.states(1, 0, 0, 0, 0) == Approx(0.18495071014060618).epsilon(1e-14));  // c_1
  CHECK(out.states(0, 0, 1, 0, 0) == Approx(0.04508345983952107).epsilon(1e-14));  // h_2
  CHECK(out.states(1, 0, 1, 0, 0) == Approx(0.0849792396709551).epsilon(1e-14));   // c_2
}

TEST_CASE("the single step reproduces the sequence", "[slstm]") {
  for (const auto& o : variants) {
    const auto p = random_problem<double>({2, 6, 3, 4, true}, o, 23);
    const auto whole = forward(p.inputs(), p.initial_view(), o);
    auto state = *p.initial;
    for (index_t t = 0; t < 6; ++t) {
      const xt::xtensor<double, 4> Wx_t = xt::view(p.Wx, xt::all(), t);
      step<double>(Wx_t, p.R, p.b, state, o);
      const xt::xtensor<double, 4> expected = xt::view(whole.states, xt::all(), xt::all(), t);
      CHECK(rel_l2(state, expected) <= 1e-15);
    }
  }
}

TEST_CASE("bf16 operands: the recurrent products multiply bf16-rounded R, h and dg, and nothing else changes",
          "[slstm]") {
  for (const auto& o : variants) {
    INFO(variant_name(o));
    const auto p = random_problem<double>({2, 9, 2, 8, true}, o, 31);
    const auto R16 = round_to_bf16(p.R);
    const auto fw = forward(p.inputs(), p.initial_view(), o, true, Operands::bf16);
    // Forward: the steps with h rounded to bf16 before each step (R rounded once) give every state.
    auto state = *p.initial;
    for (index_t t = 0; t < 9; ++t) {
      xt::view(state, 0) = round_to_bf16(xt::xtensor<double, 3>(xt::view(state, 0)));
      const xt::xtensor<double, 4> Wx_t = xt::view(p.Wx, xt::all(), t);
      step<double>(Wx_t, R16, p.b, state, o);
      const xt::xtensor<double, 4> expected = xt::view(fw.states, xt::all(), xt::all(), t);
      CHECK(rel_l2(state, expected) <= 1e-15);
    }
    const auto exact = forward(p.inputs(), p.initial_view(), o);
    const double fw_diff = rel_l2(fw.states, exact.states);
    CHECK(fw_diff > 1e-6);  // the rounding is applied ...
    CHECK(fw_diff < 1e-2);  // ... and is bf16's

    // Backward: dR = Σ bf16(dg̃_t)ᵀ bf16(h_{t-1}) over batch and time, db = Σ dg̃_t (not rounded).
    const auto g = backward(p.inputs(), p.initial_view(), p.output_grad(), o, Saved<double>::from(fw), Operands::bf16);
    const auto dg = round_to_bf16(g.dWx);
    xt::xtensor<double, 4> dR = xt::zeros<double>(p.R.shape());
    xt::xtensor<double, 3> db = xt::zeros<double>(p.b.shape());
    for (index_t b = 0; b < 2; ++b)
      for (index_t t = 0; t < 9; ++t)
        for (index_t gate = 0; gate < 4; ++gate)
          for (index_t head = 0; head < 2; ++head)
            for (index_t d = 0; d < 8; ++d) {
              db(gate, head, d) += g.dWx(b, t, gate, head, d);
              for (index_t k = 0; k < 8; ++k) {
                const double h = t > 0 ? fw.states(0, b, t - 1, head, k) : (*p.initial)(0, b, head, k);
                dR(gate, head, d, k) += dg(b, t, gate, head, d) * round_to_bf16(h);
              }
            }
    CHECK(rel_l2(g.dR, dR) <= 1e-14);
    CHECK(rel_l2(g.db, db) <= 1e-14);
    const auto g_exact = backward(p.inputs(), p.initial_view(), p.output_grad(), o);
    CHECK(rel_l2(g.dWx, g_exact.dWx) > 1e-6);
    CHECK(rel_l2(g.dWx, g_exact.dWx) < 1e-2);
  }
  // One step: the initial h's gradient is Σ_gate R_gateᵀ bf16(dg̃_gate) (h reaches nothing else).
  for (const auto& o : variants) {
    INFO(variant_name(o) << " T1");
    auto p = random_problem<double>({2, 1, 2, 8, true}, o, 37);
    const auto g = backward(p.inputs(), p.initial_view(), p.output_grad(), o, std::nullopt, Operands::bf16);
    const auto R16 = round_to_bf16(p.R);
    const auto dg = round_to_bf16(g.dWx);
    xt::xtensor<double, 3> dh0 = xt::zeros<double>({2, 2, 8});
    for (index_t b = 0; b < 2; ++b)
      for (index_t gate = 0; gate < 4; ++gate)
        for (index_t head = 0; head < 2; ++head)
          for (index_t d = 0; d < 8; ++d)
            for (index_t k = 0; k < 8; ++k) dh0(b, head, k) += R16(gate, head, d, k) * dg(b, 0, gate, head, d);
    CHECK(rel_l2(xt::xtensor<double, 3>(xt::view(*g.dinitial, 0)), dh0) <= 1e-14);
  }
}

TEST_CASE("the backward from the forward's saved states and gates equals the one that reruns the forward",
          "[slstm]") {
  // T around the backward's ring of 16 steps (saved mode): shorter, a multiple, and across.
  for (const index_t T : {1, 16, 25, 33}) {
    for (const auto& o : variants) {
      for (bool with_state : {false, true}) {
        INFO("T " << T << " " << variant_name(o) << (with_state ? " +state" : ""));
        const auto p = random_problem<double>({3, T, 2, 7, with_state}, o, 41);
        const auto out = forward(p.inputs(), p.initial_view(), o, /*keep_gates=*/true);
        REQUIRE(out.gates.has_value());
        // The kept pre-activations are g̃_t = Wx_t + b + R h_{t-1}: zero recurrent weights leave Wx + b.
        auto no_R = p;
        no_R.R.fill(0.0);
        const auto plain = forward(no_R.inputs(), p.initial_view(), o, true);
        const xt::xtensor<double, 5> Wx_plus_b = p.Wx + xt::view(p.b, xt::newaxis(), xt::newaxis());
        CHECK(rel_l2(*plain.gates, Wx_plus_b) <= 1e-15);
        CHECK(rel_l2(out.states, forward(p.inputs(), p.initial_view(), o).states) == 0.0);  // keeping changes nothing
        const auto rerun = backward(p.inputs(), p.initial_view(), p.output_grad(), o);
        const auto from_saved = backward(p.inputs(), p.initial_view(), p.output_grad(), o, Saved<double>::from(out));
        CHECK_THAT(check::compare(from_saved, rerun, 1e-14, p.scale()), passes());
      }
    }
  }
}

TEST_CASE("forward and backward into the caller's arrays equal the ones that return fresh arrays", "[slstm]") {
  for (const auto& o : variants) {
    INFO(variant_name(o));
    const auto p = random_problem<double>({2, 12, 3, 5, true}, o, 43);
    const auto fresh = forward(p.inputs(), p.initial_view(), o, true);
    // Arrays of the right shapes, full of NaN: every element must be overwritten.
    auto out = fresh;
    for (auto* a : {&out.states, &*out.gates}) a->fill(std::nan(""));
    out.last.fill(std::nan(""));
    forward(p.inputs(), p.initial_view(), o, {out.states, out.last, *out.gates});
    CHECK(rel_l2(out.states, fresh.states) == 0.0);
    CHECK(rel_l2(out.last, fresh.last) == 0.0);
    CHECK(rel_l2(*out.gates, *fresh.gates) == 0.0);
    const auto fresh_grad = backward(p.inputs(), p.initial_view(), p.output_grad(), o, Saved<double>::from(fresh));
    auto grad = fresh_grad;
    grad.dWx.fill(std::nan(""));
    grad.dR.fill(std::nan(""));
    grad.db.fill(std::nan(""));
    grad.dinitial->fill(std::nan(""));
    backward(p.inputs(), p.initial_view(), p.output_grad(), o, Saved<double>::from(fresh),
             {grad.dWx, grad.dR, grad.db, *grad.dinitial});
    CHECK(rel_l2(grad.dWx, fresh_grad.dWx) == 0.0);
    CHECK(rel_l2(grad.dR, fresh_grad.dR) == 0.0);
    CHECK(rel_l2(grad.db, fresh_grad.db) == 0.0);
    CHECK(rel_l2(*grad.dinitial, *fresh_grad.dinitial) == 0.0);
  }
}

TEST_CASE("bad sLSTM input gives a clear error naming the argument", "[slstm][errors]") {
  const Options o;
  const auto p = random_problem<double>({2, 5, 3, 4, true}, o, 1);
  auto x = p.inputs();
  auto bad = x;
  const auto Wx3 = zeros<double>(Shape<5>{2, 5, 3, 3, 4});
  bad.Wx = Wx3;
  CHECK_THROWS_WITH(forward(bad, std::nullopt, o), Contains("Wx: expected shape (B, T, 4, NH, DH)"));
  bad = x;
  const auto R = zeros<double>(Shape<4>{4, 3, 4, 5});
  bad.R = R;
  CHECK_THROWS_WITH(forward(bad, std::nullopt, o), "R: expected shape (4, 3, 4, 4), got (4, 3, 4, 5)");
  bad = x;
  const auto b = zeros<double>(Shape<3>{4, 2, 4});
  bad.b = b;
  CHECK_THROWS_WITH(forward(bad, std::nullopt, o), Contains("b: expected shape (4, 3, 4)"));
  const auto lstm_state = zeros<double>(Shape<4>{2, 2, 3, 4});
  CHECK_THROWS_WITH(forward(x, ConstView<double, 4>(lstm_state), o), Contains("initial: expected shape (4, 2, 3, 4)"));
  auto g = p.output_grad();
  const auto dh = zeros<double>(Shape<4>{2, 4, 3, 4});
  g.dh = dh;
  CHECK_THROWS_WITH(backward(x, p.initial_view(), g, o), Contains("dh: expected shape (2, 5, 3, 4)"));
  g = p.output_grad();
  g.dlast = lstm_state;
  CHECK_THROWS_WITH(backward(x, p.initial_view(), g, o), Contains("dlast:"));
  CHECK_THROWS_WITH(Saved<double>::from(forward(x, p.initial_view(), o)),
                    Contains("saved: the forward output has no gates"));
  auto out = forward(x, p.initial_view(), o, true);
  const auto short_states = zeros<double>(Shape<5>{4, 2, 4, 3, 4});
  CHECK_THROWS_WITH(backward(x, p.initial_view(), p.output_grad(), o, Saved<double>{short_states, *out.gates}),
                    Contains("saved.states: expected shape (4, 2, 5, 3, 4), got (4, 2, 4, 3, 4)"));
  CHECK_THROWS_WITH(backward(x, p.initial_view(), p.output_grad(), o, Saved<double>{out.states, Wx3}),
                    Contains("saved.gates: expected shape (2, 5, 4, 3, 4)"));
  auto short_out = zeros<double>(Shape<5>{4, 2, 4, 3, 4});
  CHECK_THROWS_WITH(forward(x, p.initial_view(), o, {short_out, out.last, {}}), Contains("out.states: expected shape"));
  auto grad = backward(x, p.initial_view(), p.output_grad(), o);
  CHECK_THROWS_WITH(backward(x, p.initial_view(), p.output_grad(), o, std::nullopt, {grad.dWx, grad.dR, grad.db, {}}),
                    Contains("out.dinitial: expected shape (4, 2, 3, 4)"));
  CHECK_THROWS_WITH(backward(x, std::nullopt, p.output_grad(), o, std::nullopt,
                             {grad.dWx, grad.dR, grad.db, *grad.dinitial}),
                    Contains("out.dinitial: given without an initial state"));
  auto state = zeros<double>(Shape<4>{4, 2, 3, 4});
  const auto Wx_t = zeros<double>(Shape<4>{2, 3, 3, 4});
  CHECK_THROWS_WITH(step<double>(Wx_t, p.R, p.b, state, o), Contains("Wx_t: expected shape (B, 4, NH, DH)"));
  auto wrong_state = zeros<double>(Shape<4>{2, 2, 3, 4});
  const auto Wx_ok = zeros<double>(Shape<4>{2, 4, 3, 4});
  CHECK_THROWS_WITH(step<double>(Wx_ok, p.R, p.b, wrong_state, o), Contains("state: expected shape (4, 2, 3, 4)"));
}
