// `flashlstm plstm`: pLSTM on the user's own graph, for prototyping. Reads a DOT, GraphML or
// edge-list file (the format from --format, else from the extension: .dot/.gv, .graphml/.xml, else an
// edge list) and builds the DAG: with --undirected, graph::dagify orients every edge along a node
// order (the file's; BFS from --root, a node name or number; or a permutation seeded by --seed);
// otherwise the edges are taken as directed, and a cycle is the library's error naming an edge on it.
// From --seed it draws q, k, v ~ N(0, 1) and raw gate pre-activations ~ N(0, 1) and turns them into
// gates with the P-mode or D-mode parameterisation (reference/plstm/modes.hpp: the bounds that keep
// states finite however many paths the graph has). Then it times each DAG form: recurrent (the
// oracle), levels (OpenMP over the nodes of each level) and parallel (an N x N gating matrix, so
// skipped above 20,000 nodes). Prints the graph's sizes, the mode's gate statistic, each form's best
// time and its relative L2 disagreement with the recurrent form; exits 1 when a disagreement exceeds
// the dtype's tolerance (1e-10 in float64, 1e-4 in float32, as in `flashlstm validate`). Heads and head
// dimensions are bounded, and what the forms would hold in memory is computed from the graph before
// anything is drawn, so that a size that cannot fit is refused with the number it would need.
#include "apps/plstm.hpp"

#include "core/memory.hpp"
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "reference/plstm/modes.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace flashlstm::apps {

namespace {

constexpr index_t parallel_max_nodes = 20000;
// Each form runs until it has taken 200 ms (at most 20 runs, at least one) and its best time is
// shown, so that small graphs are not timed on a cold thread pool.
constexpr double min_total_ms = 200;
constexpr int max_runs = 20;
// D-mode's multitree pruning keeps one bit per pair of line-graph vertices (= edges): 512 MiB here.
constexpr index_t d_mode_max_edges = 65536;
// --heads, --dqk and --dv: far beyond any model, and small enough that no product of them with the
// graph's sizes overflows before the memory check sees it.
constexpr index_t max_heads = 65536, max_dimension = 65536;

struct Args {
  std::string graph, format, order = "given", mode = "P", dtype = "float64";
  bool undirected = false;
  std::string root;
  index_t heads = 1, dqk = 16, dv = 16;
  std::uint64_t seed = 0;
  CLI::Option* root_option = nullptr;
};

graph::Format format_of(const Args& a) {
  if (!a.format.empty()) return graph::parse_format(a.format);
  const std::string ext = std::filesystem::path(a.graph).extension().string();
  if (ext == ".dot" || ext == ".gv") return graph::Format::dot;
  if (ext == ".graphml" || ext == ".xml") return graph::Format::graphml;
  return graph::Format::edges;
}

std::string_view format_name(graph::Format f) {
  switch (f) {
    case graph::Format::dot:
      return "DOT";
    case graph::Format::graphml:
      return "GraphML";
    case graph::Format::edges:
      return "edge list";
  }
  return "?";
}

// --root: a node's name in the file, else its number; empty is node 0.
index_t root_node(const std::string& root, const graph::EdgeList& list) {
  if (root.empty()) return 0;
  const auto named = std::find(list.node_names.begin(), list.node_names.end(), root);
  if (named != list.node_names.end()) return named - list.node_names.begin();
  index_t number = -1;
  const auto [end, error] = std::from_chars(root.data(), root.data() + root.size(), number);
  require(error == std::errc() && end == root.data() + root.size() && number >= 0 && number < list.num_nodes, "root",
          "expected a node name from the file or a number in [0, {}), got '{}'", list.num_nodes, root);
  return number;
}

int threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The most edge states the DAG forms hold at once: a state lives from its source's visit to its
// target's, and nodes are visited in topological order (recurrent) or a level at a time (levels).
index_t peak_edge_states(const graph::Dag& dag) {
  const graph::Csr &in = dag.in_edges(), &out = dag.out_edges(), &levels = dag.levels();
  index_t alive = 0, peak = 0;
  for (index_t n : dag.topological_order()) {
    alive += out.size(n);
    peak = std::max(peak, alive);
    alive -= in.size(n);
  }
  for (index_t l = 0; l < levels.rows(); ++l) {
    index_t created = 0, released = 0;
    for (index_t i = 0; i < levels.size(l); ++i) {
      created += out.size(levels.begin(l)[i]);
      released += in.size(levels.begin(l)[i]);
    }
    peak = std::max(peak, alive + created);
    alive += created - released;
  }
  return peak;
}

// Bytes the run needs at most: q, k, v and two outputs (the oracle's and a form's), the raw and the
// parameterised gates, and the edge states of the heads that run at once (DQK x DV each).
double problem_bytes(const graph::Dag& dag, index_t arcs, const Args& a, double element) {
  const double H = static_cast<double>(a.heads), N = static_cast<double>(dag.num_nodes()),
               E = static_cast<double>(dag.num_edges()), A = static_cast<double>(arcs),
               dqk = static_cast<double>(a.dqk), dv = static_cast<double>(a.dv);
  const double heads_at_once = std::min(H, static_cast<double>(threads()));
  return element * (H * N * (2 * dqk + 3 * dv) + 2 * H * (3 * E + A + N) +
                    heads_at_once * static_cast<double>(peak_edge_states(dag)) * dqk * dv);
}

template <class F>
struct Problem {
  xt::xtensor<F, 4> q, k, v;
  plstm::DagGateTensors<F> gates;
  plstm::DagInputs<F> inputs() const { return {q, k, v, gates.S, gates.T, gates.M, gates.D}; }
};

template <class F>
Problem<F> random_problem(const graph::Dag& dag, index_t arcs, const Args& a, bool p_mode) {
  Rng rng(a.seed);
  const index_t N = dag.num_nodes(), E = dag.num_edges(), H = a.heads;
  Problem<F> p{rng.normal<F>(Shape<4>{1, H, N, a.dqk}),
               rng.normal<F>(Shape<4>{1, H, N, a.dqk}),
               rng.normal<F>(Shape<4>{1, H, N, a.dv}),
               {}};
  const auto S = rng.normal<F>(Shape<3>{1, H, E}), T = rng.normal<F>(Shape<3>{1, H, arcs}),
             M = rng.normal<F>(Shape<3>{1, H, E}), D = rng.normal<F>(Shape<3>{1, H, N});
  p.gates = p_mode ? plstm::dag_gates_p_mode<F>(dag, S, T, rng.normal<F>(Shape<3>{1, H, E}), M, D)
                   : plstm::dag_gates_d_mode<F>(dag, S, T, M, D);
  return p;
}

// Runs the forms, prints their table; returns the exit status.
template <class F>
int run_forms(const graph::Dag& dag, index_t arcs, const Args& a, bool p_mode) {
  const auto p = random_problem<F>(dag, arcs, a, p_mode);
  if (p_mode) {
    fmt::print("{:<9} max over nodes and incoming edges of sum |T| over outgoing edges: {:.4f} (bound 1)\n", "P-mode",
               plstm::max_transition_column_norm<F>(dag, p.gates.T));
  }
  const index_t N = dag.num_nodes();
  const double tolerance = sizeof(F) == sizeof(double) ? 1e-10 : 1e-4;
  fmt::print("\n{:<10} {:>13} {:>6}  {}\n", "form", "best time", "runs", "rel. L2 vs recurrent");
  xt::xtensor<F, 4> oracle;
  double worst = 0;
  std::string worst_form;
  for (const plstm::DagForm form : {plstm::DagForm::recurrent, plstm::DagForm::levels, plstm::DagForm::parallel}) {
    const std::string name = plstm::to_string(form);
    if (form == plstm::DagForm::parallel && N > parallel_max_nodes) {
      fmt::print("{:<10} skipped: {} nodes > {}; its N x N gating matrix alone would take {:.1f} GiB per head\n", name,
                 N, parallel_max_nodes, double(N) * double(N) * sizeof(F) / double(1 << 30));
      continue;
    }
    xt::xtensor<F, 4> h;
    double ms = std::numeric_limits<double>::infinity(), total = 0;
    int runs = 0;
    while (runs == 0 || (total < min_total_ms && runs < max_runs)) {
      const auto start = std::chrono::steady_clock::now();
      h = plstm::dag_forward(dag, p.inputs(), form, {});
      const double run_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      ms = std::min(ms, run_ms);
      total += run_ms;
      ++runs;
    }
    if (form == plstm::DagForm::recurrent) {
      fmt::print("{:<10} {:>10.3f} ms {:>6}  -  (the oracle; max |h| = {:.3g})\n", name, ms, runs,
                 double(xt::amax(xt::abs(h))()));
      oracle = std::move(h);
      continue;
    }
    const double e = rel_l2(h, oracle);
    fmt::print("{:<10} {:>10.3f} ms {:>6}  {:.2e}\n", name, ms, runs, e);
    if (worst_form.empty() || std::isnan(e) || e > worst) {
      worst = e;
      worst_form = name;
    }
  }
  const bool ok = worst <= tolerance;  // false for NaN
  fmt::print("largest disagreement between forms: {:.2e} ({} against recurrent), tolerance {:.0e}: {}\n", worst,
             worst_form, tolerance, ok ? "pass" : "FAIL");
  return ok ? 0 : 1;
}

void run(const Args& a) {
  require(a.heads >= 1 && a.heads <= max_heads, "heads", "expected in [1, {}], got {}", max_heads, a.heads);
  require(a.dqk >= 1 && a.dqk <= max_dimension, "dqk", "expected in [1, {}], got {}", max_dimension, a.dqk);
  require(a.dv >= 1 && a.dv <= max_dimension, "dv", "expected in [1, {}], got {}", max_dimension, a.dv);
  require(a.mode == "P" || a.mode == "D", "mode", "expected P or D, got '{}'", a.mode);
  require(a.dtype == "float32" || a.dtype == "float64", "dtype", "expected float32 or float64, got '{}'", a.dtype);
  const bool p_mode = a.mode == "P";
  graph::NodeOrder order = graph::NodeOrder::parse(a.order);
  require(a.root_option->count() == 0 || order.kind == graph::NodeOrder::bfs, "root",
          "applies to --order bfs only (the order is '{}')", a.order);

  const graph::Format format = format_of(a);
  const graph::EdgeList list = graph::read_graph_file(a.graph, format);
  require(list.num_nodes >= 1, "graph", "'{}' has no nodes", a.graph);
  std::string orientation = "directed";
  graph::Dag dag = [&] {
    if (!a.undirected) {
      try {
        return graph::Dag(list.num_nodes, list.edges);
      } catch (const Error& e) {
        throw Error(fmt::format("{} (for an undirected graph, pass --undirected)", e.what()));
      }
    }
    if (order.kind == graph::NodeOrder::bfs) order.root = root_node(a.root, list);
    order.seed = a.seed;
    switch (order.kind) {
      case graph::NodeOrder::given:
        orientation = "undirected, oriented along the file's node order";
        break;
      case graph::NodeOrder::bfs:
        orientation =
            fmt::format("undirected, oriented by BFS from node {} ({})", order.root, list.node_names[order.root]);
        break;
      case graph::NodeOrder::random:
        orientation = fmt::format("undirected, oriented along a random node order (seed {})", a.seed);
        break;
    }
    return graph::dagify(list.num_nodes, list.edges, order);
  }();

  const graph::LineGraph lg = graph::line_graph(dag);
  const auto arcs = static_cast<index_t>(lg.arcs.size());
  require_memory("heads/dqk/dv", problem_bytes(dag, arcs, a, a.dtype == "float64" ? 8 : 4),
                 fmt::format("heads {}, DQK {}, DV {} on {} nodes and {} edges", a.heads, a.dqk, a.dv,
                             dag.num_nodes(), dag.num_edges()));
  const graph::Csr& levels = dag.levels();
  index_t widest = 0;
  for (index_t l = 0; l < levels.rows(); ++l) widest = std::max(widest, levels.size(l));

  fmt::print("{:<9} {} ({}), {}\n", "graph", a.graph, format_name(format), orientation);
  fmt::print("{:<9} {}\n{:<9} {}\n{:<9} {} (of the line graph: one per node and pair of incoming, outgoing edge)\n",
             "nodes", dag.num_nodes(), "edges", dag.num_edges(), "arcs", arcs);
  fmt::print("{:<9} {} (longest path + 1; widest level {} nodes)\n", "levels", levels.rows(), widest);
  if (!p_mode) {
    require(dag.num_edges() <= d_mode_max_edges, "mode",
            "D-mode's multitree pruning needs one bit per pair of edges; {} edges is more than the {} supported here",
            dag.num_edges(), d_mode_max_edges);
    fmt::print("{:<9} {} of {} arcs kept by the multitree pruning (T = 0 on the others)\n", "D-mode",
               graph::multitree_arcs(lg).size(), arcs);
  }
  fmt::print(
      "{:<9} 1 item x {} heads, DQK {}, DV {}, {}, seed {}; {}-mode gates; q, k, v and gate "
      "pre-activations ~ N(0, 1)\n",
      "inputs", a.heads, a.dqk, a.dv, a.dtype, a.seed, a.mode);
  fmt::print("{:<9} {} (OpenMP threads of the levels form)\n", "threads", threads());

  const int status =
      a.dtype == "float64" ? run_forms<double>(dag, arcs, a, p_mode) : run_forms<float>(dag, arcs, a, p_mode);
  if (status != 0) throw CLI::RuntimeError(status);
}

}  // namespace

void add_plstm_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("plstm", "Run every pLSTM DAG form on a graph from a file; time and compare them");
  auto args = std::make_shared<Args>();
  cmd->add_option("--graph", args->graph, "Graph file: DOT, GraphML or an edge list ('u v' per line)")->required();
  cmd->add_option("--format", args->format, "dot, graphml or edges (default: from the extension; else edges)");
  auto* undirected = cmd->add_flag("--undirected", args->undirected,
                                   "The edges are undirected (e.g. a DOT 'graph'): orient them along --order");
  cmd->add_option("--order", args->order,
                  "Node order that orients undirected edges: given, bfs or random (default given)")
      ->needs(undirected);
  args->root_option = cmd->add_option("--root", args->root,
                                      "Start node of --order bfs: a node name from the file or a number (default 0)")
                          ->needs(undirected);
  cmd->add_option("--heads", args->heads, "Number of heads (default 1)");
  cmd->add_option("--dqk", args->dqk, "Query/key dimension DQK (default 16)");
  cmd->add_option("--dv", args->dv, "Value dimension DV (default 16)");
  cmd->add_option("--mode", args->mode, "Gate parameterisation: P (directed propagation) or D (diffusive) (default P)");
  cmd->add_option("--dtype", args->dtype, "float32 or float64 (default float64)");
  cmd->add_option("--seed", args->seed, "Seed of the random inputs and of --order random (default 0)");
  cmd->callback([args] { run(*args); });
}

}  // namespace flashlstm::apps
