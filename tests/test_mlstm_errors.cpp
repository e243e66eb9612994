// Bad input to the mLSTM reference throws flashlstm::Error naming the argument.
#include "reference/mlstm/check.hpp"

#include <catch2/catch.hpp>

using namespace flashlstm;
using namespace flashlstm::mlstm;
using Catch::Contains;

TEST_CASE("bad input gives a clear error naming the argument", "[mlstm][errors]") {
  const auto p = random_problem<double>({2, 3, 5, 4, 6, true}, 1);
  const Options o;
  const auto wrong4 = zeros<double>(Shape<4>{2, 3, 5, 7});
  const auto wrong3 = zeros<double>(Shape<3>{2, 3, 9});
  const auto wrong2 = zeros<double>(Shape<2>{3, 2});

  auto x = p.inputs();
  SECTION("inputs") {
    for (const Form& form : {Form{Form::recurrent}, Form{Form::parallel}, Form{Form::chunkwise, 2}}) {
      auto bad = x;
      bad.k = wrong4;
      CHECK_THROWS_WITH(forward(bad, p.initial_view(), form, o), "k: expected shape (2, 3, 5, 4), got (2, 3, 5, 7)");
      bad = x;
      bad.v = zeros<double>(Shape<4>{2, 3, 4, 6});
      CHECK_THROWS_WITH(forward(bad, p.initial_view(), form, o), Contains("v: expected shape (2, 3, 5, 6)"));
      bad = x;
      bad.igate = wrong3;
      CHECK_THROWS_WITH(forward(bad, p.initial_view(), form, o), "igate: expected shape (2, 3, 5), got (2, 3, 9)");
      bad = x;
      bad.fgate = wrong3;
      CHECK_THROWS_WITH(backward(bad, p.initial_view(), p.output_grad(), form, o), Contains("fgate:"));
      bad = x;
      bad.q = zeros<double>(Shape<4>{2, 3, 0, 4});
      CHECK_THROWS_WITH(forward(bad, p.initial_view(), form, o), Contains("q: "));
      bad = x;
      bad.q = ConstView<double, 4>();
      CHECK_THROWS_WITH(forward(bad, p.initial_view(), form, o), "q: is null");
    }
  }
  SECTION("initial state") {
    CHECK_THROWS_WITH(forward_recurrent(x, StateView<double>(wrong4, p.initial->n, p.initial->m), o),
                      Contains("initial.C: expected shape (2, 3, 4, 6)"));
    CHECK_THROWS_WITH(forward_parallel(x, StateView<double>(p.initial->C, wrong3, p.initial->m), o),
                      Contains("initial.n:"));
    CHECK_THROWS_WITH(forward_chunkwise(x, StateView<double>(p.initial->C, p.initial->n, wrong2), 2, o),
                      Contains("initial.m: expected shape (2, 3)"));
  }
  SECTION("upstream gradients") {
    auto g = p.output_grad();
    g.dh = wrong4;
    CHECK_THROWS_WITH(backward_recurrent(x, p.initial_view(), g, o), Contains("dh: expected shape (2, 3, 5, 6)"));
    g = p.output_grad();
    g.dC_last = wrong4;
    CHECK_THROWS_WITH(backward_parallel(x, p.initial_view(), g, o), Contains("dC_last:"));
    g = p.output_grad();
    g.dn_last = wrong3;
    CHECK_THROWS_WITH(backward_chunkwise(x, p.initial_view(), g, 3, o), Contains("dn_last:"));
    g = p.output_grad();
    g.dm_last = wrong2;
    CHECK_THROWS_WITH(backward_chunkwise(x, p.initial_view(), g, 3, o), Contains("dm_last:"));
  }
  SECTION("options") {
    CHECK_THROWS_WITH(forward_chunkwise(x, p.initial_view(), 0, o), "chunk_size: expected >= 1, got 0");
    CHECK_THROWS_WITH(backward_chunkwise(x, p.initial_view(), p.output_grad(), -3, o), Contains("chunk_size:"));
    CHECK_THROWS_WITH(forward_recurrent(x, p.initial_view(), Options{InputGate::exp, true, -1.0}),
                      Contains("eps: expected a finite value >= 0"));
    CHECK_THROWS_WITH(forward_parallel(x, p.initial_view(), Options{InputGate::exp, true, std::nan("")}),
                      Contains("eps:"));
    CHECK_THROWS_WITH(forward_parallel(x, p.initial_view(), Options{InputGate::exp, false}), Contains("normalize:"));
  }
  SECTION("step") {
    State<double> state = *p.initial;
    const auto q = zeros<double>(Shape<3>{2, 3, 4}), v = zeros<double>(Shape<3>{2, 3, 6});
    const auto g = zeros<double>(Shape<2>{2, 3});
    CHECK_NOTHROW(step<double>(q, q, v, g, g, state, o));
    CHECK_THROWS_WITH(step<double>(q, v, v, g, g, state, o), Contains("k: expected shape (2, 3, 4)"));
    CHECK_THROWS_WITH(step<double>(q, q, zeros<double>(Shape<3>{3, 3, 6}), g, g, state, o), Contains("v:"));
    CHECK_THROWS_WITH(step<double>(q, q, v, wrong2, g, state, o), Contains("igate:"));
    CHECK_THROWS_WITH(step<double>(q, q, v, g, wrong2, state, o), Contains("fgate:"));
    State<double> bad = zero_state<double>(2, 3, 4, 7);
    CHECK_THROWS_WITH(step<double>(q, q, v, g, g, bad, o), Contains("state.C: expected shape (2, 3, 4, 6)"));
  }
  SECTION("strided memory") {
    CHECK_THROWS_WITH((ConstView<double, 4>::strided("q", p.q.data(), {2, 3, 5, 4}, {60, 20, 1, 5})),
                      Contains("q: expected a C-contiguous array"));
  }
}
