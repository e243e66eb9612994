// The pLSTM rows of `flashlstm validate`. The oracle is the DAG recurrent form in float64; every
// other form is held to it on the graph it computes on:
//   - a random DAG (graph::random_dag, 40 nodes, ids not in topological order) with P-mode and with
//     D-mode gates: the levels and parallel forms against the oracle, the DAG backward against
//     finite differences, float32 against float64;
//   - a chain: each 1-D form (recurrent, parallel, chunkwise L = 4 and 16) against the DAG form on the
//     chain, its backward against the DAG backward on the chain and against finite differences;
//   - 5 x 7 and 8 x 8 grids: each 2-D form (recurrent, chunkwise L = 2 and 4, parallel) against the
//     DAG form on the grid graph, the chunkwise backward against finite differences; and the sum of
//     the four orientations against four DAG runs with edges along each orientation.
// Chains and grids take raw random gates (negative ones too, so every sign path runs); the modes'
// bounds are for graphs with many paths. Inputs are float-representable, so that the float32 rows
// measure the float32 arithmetic alone.
#include "apps/validate.hpp"
#include "reference/plstm/check.hpp"

namespace flashlstm::apps {

namespace {

using namespace flashlstm::plstm;

template <class P>
P float_representable(const P& p) {
  return p.template cast<float>().template cast<double>();
}

void dag_rows(std::vector<ValidationRow>& rows) {
  const graph::Dag dag = graph::random_dag(40, 2.0, 3);
  const DagShape shape{2, 2, 8, 12};
  std::uint64_t seed = 300;
  for (const GateMode mode : {GateMode::p_mode, GateMode::d_mode}) {
    const auto p = float_representable(random_problem(dag, shape, mode, seed++));
    const auto oracle = dag_forward(dag, p.inputs(), DagForm::recurrent, {});

    ValidationRow recurrent{"pLSTM", "recurrent", to_string(mode), "float64", shape.name(dag), "-"};
    recurrent.report = gradcheck(dag, p, seed++);
    rows.push_back(std::move(recurrent));

    for (const DagForm form : {DagForm::levels, DagForm::parallel}) {
      ValidationRow row{"pLSTM", to_string(form), to_string(mode), "float64", shape.name(dag), "oracle"};
      row.report.add(check::compare("h", dag_forward(dag, p.inputs(), form, {}), oracle, check::float64_tolerance,
                                    p.scale()));
      rows.push_back(std::move(row));
    }

    const auto p32 = p.cast<float>();
    ValidationRow row32{"pLSTM", "recurrent", to_string(mode), "float32", shape.name(dag), "oracle"};
    row32.report.add(check::compare("h", dag_forward(dag, p32.inputs(), DagForm::recurrent, {}), oracle,
                                    check::float32_tolerance, p.scale()));
    rows.push_back(std::move(row32));
  }
}

void chain_rows(std::vector<ValidationRow>& rows) {
  const SequenceShape shape{2, 2, 65, 8, 12};
  const auto p = float_representable(random_problem(shape, 400));
  const graph::Dag dag = chain(shape.S);
  const auto on_dag = p.on_chain();
  const auto oracle = dag_forward(dag, on_dag.inputs(), DagForm::recurrent, {});
  const auto oracle_grad = dag_backward(dag, on_dag.inputs(), ConstView<double, 4>(on_dag.dh), {});

  const std::vector<SequenceForm> forms = {{SequenceForm::recurrent},
                                           {SequenceForm::parallel},
                                           {SequenceForm::chunkwise, 4},
                                           {SequenceForm::chunkwise, 16},
                                           {SequenceForm::chunkwise, 16, Aggregates::prefix}};
  for (const auto& form : forms) {
    ValidationRow row{"pLSTM", form.name(), to_string(GateMode::raw), "float64", shape.name(), "DAG on chain"};
    row.report.add(check::compare("h", sequence_forward(p.inputs(), form, {}), oracle, check::float64_tolerance,
                                  p.scale()));
    // The backward's chunk size: 1 steps token by token, S is the parallel form.
    const index_t L = form.kind == SequenceForm::recurrent  ? 1
                      : form.kind == SequenceForm::parallel ? shape.S
                                                            : form.chunk_size;
    const auto grad = sequence_backward(p.inputs(), ConstView<double, 4>(p.dh), L, {}, form.aggregates);
    row.report.add(check::compare(on_chain(grad), oracle_grad, check::float64_tolerance, p.scale()));
    if (form.aggregates == Aggregates::pairwise) row.report.add(gradcheck(p, L, static_cast<std::uint64_t>(L)));
    rows.push_back(std::move(row));
  }

  const SequenceForm form32{SequenceForm::chunkwise, 16};
  ValidationRow row32{"pLSTM", form32.name(), to_string(GateMode::raw), "float32", shape.name(), "DAG on chain"};
  row32.report.add(check::compare("h", sequence_forward(p.cast<float>().inputs(), form32, {}), oracle,
                                  check::float32_tolerance, p.scale()));
  rows.push_back(std::move(row32));
}

void grid_rows(std::vector<ValidationRow>& rows) {
  std::uint64_t seed = 500;
  for (const auto [X, Y] : {std::pair<index_t, index_t>{5, 7}, {8, 8}}) {
    const GridShape shape{1, 2, X, Y, 8, 6};
    const auto p = float_representable(random_problem(shape, 0.7, seed++));
    const auto oracle = dag_oracle(p);
    const std::vector<GridForm> forms = {
        {GridForm::recurrent}, {GridForm::chunkwise, 2}, {GridForm::chunkwise, 4}, {GridForm::parallel}};
    for (const auto& form : forms) {
      ValidationRow row{"pLSTM", form.name(), to_string(GateMode::raw), "float64", shape.name(), "DAG on grid"};
      row.report.add(check::compare("h", grid_forward(p.inputs(), form, {}), oracle, check::float64_tolerance,
                                    p.scale()));
      if (form.kind == GridForm::chunkwise) row.report.add(gradcheck(p, form.chunk_size, seed++));
      rows.push_back(std::move(row));
    }

    const GridForm form32{GridForm::chunkwise, 4};
    ValidationRow row32{"pLSTM", form32.name(), to_string(GateMode::raw), "float32", shape.name(), "DAG on grid"};
    row32.report.add(check::compare("h", grid_forward(p.cast<float>().inputs(), form32, {}), oracle,
                                    check::float32_tolerance, p.scale()));
    rows.push_back(std::move(row32));
  }
}

void orientation_row(std::vector<ValidationRow>& rows) {
  const GridShape shape{1, 2, 5, 7, 8, 6};
  const auto p = random_oriented_problem(shape, 0.7, 600);
  const GridForm form{GridForm::chunkwise, 2};
  ValidationRow row{"pLSTM", fmt::format("oriented(L={})", form.chunk_size), to_string(GateMode::raw), "float64",
                    shape.name() + " x4", "4 DAGs on grid"};
  row.report.add(check::compare("h", grid_forward_oriented<double>(p.q, p.k, p.v, p.oriented_gates(), form, {}),
                                oriented_dag_oracle(p), check::float64_tolerance, check::rms(p.q, p.k, p.v)));
  rows.push_back(std::move(row));
}

}  // namespace

std::vector<ValidationRow> validate_plstm() {
  std::vector<ValidationRow> rows;
  dag_rows(rows);
  chain_rows(rows);
  grid_rows(rows);
  orientation_row(rows);
  return rows;
}

}  // namespace flashlstm::apps
