// NaN and infinities propagate causally, and the same way in every form: a non-finite q, k or v at
// token (node) t leaves every output that does not depend on it — the tokens before t, the nodes t has
// no path to — unchanged, and the parallel and chunkwise forms put NaN exactly where the recurrent
// form does, in the outputs and in the gradients.
#include "reference/mlstm/check.hpp"
#include "reference/plstm/check.hpp"

#include <catch2/catch.hpp>

#include <limits>

using namespace flashlstm;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN(), kInf = std::numeric_limits<double>::infinity();

// a and b are NaN at the same positions and agree to 1e-10 (relative) where both are finite.
void same_nan_pattern(const double* a, const double* b, std::size_t n) {
  std::size_t nan_mismatch = 0, value_mismatch = 0, nans = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double x = a[i], y = b[i];
    nans += std::isnan(y) ? 1 : 0;
    if (std::isnan(x) != std::isnan(y)) ++nan_mismatch;
    else if (std::isfinite(x) && std::isfinite(y) && std::abs(x - y) > 1e-10 * (1 + std::abs(y))) ++value_mismatch;
  }
  INFO(nans << " NaN in the reference");
  CHECK(nan_mismatch == 0);
  CHECK(value_mismatch == 0);
}

// Two tensors of the same elements in the same order (their ranks may differ: a grid against its DAG).
template <class A, class B>
void same_nan_pattern(const A& a, const B& b) {
  REQUIRE(a.size() == b.size());
  same_nan_pattern(a.data(), b.data(), a.size());
}

// Every tensor of two gradients (their tensors(), by name), as above.
template <class Grad>
void same_nan_patterns(const Grad& a, const Grad& b) {
  const auto ta = tensors(a), tb = tensors(b);
  REQUIRE(ta.size() == tb.size());
  for (std::size_t i = 0; i < ta.size(); ++i) {
    INFO(ta[i].name);
    REQUIRE(ta[i].size == tb[i].size);
    same_nan_pattern(ta[i].data, tb[i].data, static_cast<std::size_t>(ta[i].size));
  }
}

}  // namespace

TEST_CASE("mLSTM: a non-finite q, k or v at token t reaches no earlier token, in every form", "[nonfinite][mlstm]") {
  const index_t t = 30;
  const auto clean = mlstm::random_problem<double>({1, 2, 65, 8, 6, true}, 3);
  for (const double bad : {kNaN, kInf, -kInf})
    for (const char which : {'q', 'k', 'v'})
      for (const auto& o : mlstm::variants) {
        auto p = clean;
        (which == 'q' ? p.q : which == 'k' ? p.k : p.v)(0, 1, t, 2) = bad;
        const auto oracle = mlstm::forward_recurrent(p.inputs(), p.initial_view(), o);
        const auto oracle_grad = mlstm::backward_recurrent(p.inputs(), p.initial_view(), p.output_grad(), o);
        const auto before = mlstm::forward_recurrent(clean.inputs(), clean.initial_view(), o);
        for (const mlstm::Form form : {mlstm::Form{mlstm::Form::parallel}, mlstm::Form{mlstm::Form::chunkwise, 16},
                                       mlstm::Form{mlstm::Form::chunkwise, 7}}) {
          INFO(bad << " in " << which << ", " << mlstm::variant_name(o) << ", " << form.name());
          const auto out = mlstm::forward(p.inputs(), p.initial_view(), form, o);
          const auto earlier = xt::view(out.h, xt::all(), xt::all(), xt::range(0, t));
          CHECK(xt::all(xt::isfinite(earlier)));
          CHECK(xt::allclose(earlier, xt::view(before.h, xt::all(), xt::all(), xt::range(0, t)), 1e-10, 1e-12));
          if (std::isnan(bad)) {  // infinities meet in other orders (∞ - ∞), so only NaN patterns are comparable
            const auto grad = mlstm::backward(p.inputs(), p.initial_view(), p.output_grad(), form, o);
            same_nan_pattern(out.h, oracle.h);
            same_nan_patterns(grad, oracle_grad);
          }
        }
      }
}

TEST_CASE("pLSTM sequences: a NaN at token t reaches no earlier token, in every form", "[nonfinite][plstm]") {
  for (const char which : {'q', 'k', 'v'}) {
    auto p = plstm::random_problem(plstm::SequenceShape{1, 2, 40, 4, 3}, 5);
    (which == 'q' ? p.q : which == 'k' ? p.k : p.v)(0, 1, 17, 1) = kNaN;
    const auto oracle = plstm::sequence_forward(p.inputs(), {plstm::SequenceForm::recurrent}, {});
    const auto oracle_grad = plstm::sequence_backward(p.inputs(), ConstView<double, 4>(p.dh), 1, {});  // token by token
    for (const index_t L : {3, 8, 40})
      for (const auto aggregates : {plstm::Aggregates::pairwise, plstm::Aggregates::prefix}) {
        INFO("NaN in " << which << ", L = " << L << (aggregates == plstm::Aggregates::prefix ? ", prefix" : ""));
        same_nan_pattern(plstm::sequence_forward(p.inputs(), {plstm::SequenceForm::chunkwise, L, aggregates}, {}), oracle);
        same_nan_patterns(plstm::sequence_backward(p.inputs(), ConstView<double, 4>(p.dh), L, {}, aggregates), oracle_grad);
      }
  }
}

TEST_CASE("pLSTM grids and DAGs: a NaN at a node reaches only the nodes it has a path to, in every form",
          "[nonfinite][plstm]") {
  for (const char which : {'q', 'k', 'v'}) {
    INFO("NaN in " << which);
    auto p = plstm::random_problem(plstm::GridShape{1, 2, 7, 6, 4, 3}, 0.7, 6);
    (which == 'q' ? p.q : which == 'k' ? p.k : p.v)(0, 1, 3, 2, 1) = kNaN;
    const auto oracle = plstm::dag_oracle(p);  // the DAG recurrent form on the grid graph
    const auto on_dag = p.on_dag();
    const auto oracle_grad = plstm::dag_backward(plstm::grid_dag(7, 6), on_dag.inputs(), ConstView<double, 4>(on_dag.dh), {});
    for (const plstm::GridForm form : {plstm::GridForm{plstm::GridForm::recurrent}, plstm::GridForm{plstm::GridForm::parallel},
                                       plstm::GridForm{plstm::GridForm::chunkwise, 2}, plstm::GridForm{plstm::GridForm::chunkwise, 4}}) {
      INFO(form.name());
      same_nan_pattern(plstm::grid_forward(p.inputs(), form, {}), oracle);
      if (form.kind != plstm::GridForm::chunkwise) continue;
      const auto g = plstm::grid_backward(p.inputs(), ConstView<double, 5>(p.dh), form.chunk_size, {});
      same_nan_pattern(g.dq, oracle_grad.dq);
      same_nan_pattern(g.dk, oracle_grad.dk);
      same_nan_pattern(g.dv, oracle_grad.dv);
      same_nan_pattern(g.dD, oracle_grad.dD);
    }

    const graph::Dag dag = graph::random_dag(50, 2.0, 9);
    auto d = plstm::random_problem(dag, plstm::DagShape{1, 2, 4, 3}, plstm::GateMode::raw, 10);
    (which == 'q' ? d.q : which == 'k' ? d.k : d.v)(0, 1, 20, 1) = kNaN;
    const auto dag_oracle = plstm::dag_forward(dag, d.inputs(), plstm::DagForm::recurrent, {});
    for (const plstm::DagForm form : {plstm::DagForm::levels, plstm::DagForm::parallel}) {
      INFO(plstm::to_string(form));
      same_nan_pattern(plstm::dag_forward(dag, d.inputs(), form, {}), dag_oracle);
    }
  }
}
