// What cannot fit is refused up front, with the argument and the memory it would need; an
// exception thrown inside a parallel loop reaches the caller instead of terminating the process.
#include "core/parallel.hpp"
#include "reference/mlstm/check.hpp"
#include "reference/plstm/check.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <new>

using namespace flashlstm;
using Catch::Contains;

TEST_CASE("an exception in a parallel loop is rethrown after it", "[core][limits]") {
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(parallel_for(1000, [&](std::ptrdiff_t i) {
                    ++ran;
                    if (i == 37) throw std::bad_alloc();
                  }),
                  std::bad_alloc);
  CHECK(ran >= 1);
  CHECK_THROWS_WITH(parallel_for(8, [](std::ptrdiff_t i) { require(i != 5, "x", "item {} failed", i); }),
                    "x: item 5 failed");
  std::atomic<int> all{0};
  parallel_for(100, [&](std::ptrdiff_t) { ++all; });
  CHECK(all == 100);
}

TEST_CASE("quadratic forms refuse lengths whose L x L intermediates cannot fit", "[limits]") {
  const index_t S = 400000;  // L x L doubles: 1.3 TB per matrix
  const auto p = mlstm::random_problem<double>({1, 1, S, 1, 1, false}, 1);
  const mlstm::Options o;
  CHECK_THROWS_WITH(mlstm::forward_parallel(p.inputs(), std::nullopt, o),
                    Contains("S: a chunk of 400000 tokens") && Contains("GiB, more than this machine's"));
  CHECK_THROWS_WITH(mlstm::backward_chunkwise(p.inputs(), std::nullopt, p.output_grad(), S / 2, o),
                    Contains("chunk_size: a chunk of 200000 tokens"));
  CHECK_NOTHROW(mlstm::forward_chunkwise(p.inputs(), std::nullopt, 64, o));  // small chunks fit

  const auto sp = plstm::random_problem(plstm::SequenceShape{1, 1, S, 1, 1}, 2);
  CHECK_THROWS_WITH(plstm::sequence_forward(sp.inputs(), {plstm::SequenceForm::parallel}, {}),
                    Contains("S: the parallel form at S = 400000"));
  const auto dag = plstm::chain(S);
  const auto on_dag = sp.on_chain();
  CHECK_THROWS_WITH(plstm::dag_forward(dag, on_dag.inputs(), plstm::DagForm::parallel, {}),
                    Contains("N: the parallel form at N = 400000"));
  CHECK_THROWS_WITH(plstm::dag_gating(dag, on_dag.inputs()), Contains("N: the gating output"));
  CHECK_NOTHROW(plstm::dag_forward(dag, on_dag.inputs(), plstm::DagForm::recurrent, {}));
}
