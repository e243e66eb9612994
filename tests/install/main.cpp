// Uses one piece of each installed library: the mLSTM chunkwise form against the recurrent oracle
// (reference, check), a DAG and its line graph (graph), a generated molecule (datasets) and, when
// installed, the CUDA kernels' device query. Exits non-zero if the forms disagree.
#include "datasets/molecules/molecules.hpp"
#include "graph/graph.hpp"
#include "reference/mlstm/check.hpp"
#ifdef CONSUMER_HAVE_CUDA
#include "cuda/mlstm/mlstm.hpp"
#endif

#include <fmt/format.h>

using namespace flashlstm;

int main() {
  const auto p = mlstm::random_problem<double>({1, 2, 50, 16, 24, true}, 1);
  const mlstm::Options options;
  const auto report = check::compare(mlstm::forward_chunkwise(p.inputs(), p.initial_view(), 16, options),
                                     mlstm::forward_recurrent(p.inputs(), p.initial_view(), options),
                                     check::float64_tolerance, p.scale());
  const graph::Dag dag(4, {{0, 1}, {1, 2}, {1, 3}});
  const auto molecule = datasets::molecules::generate_molecule(datasets::molecules::Params{}, 0);
  fmt::print("mLSTM chunkwise vs recurrent: worst {} {:.2e}; line graph arcs {}; molecule {}\n", report.worst().name,
             report.worst().error, graph::line_graph(dag).arcs.size(), datasets::molecules::to_smiles(molecule));
#ifdef CONSUMER_HAVE_CUDA
  fmt::print("CUDA device visible: {}\n", cuda::device_available());
#endif
  return report.passed() ? 0 : 1;
}
