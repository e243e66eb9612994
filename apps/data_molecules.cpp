// `flashlstm data molecules`: generates a molecular-graph dataset (datasets/molecules) and writes it
// in the chosen formats to a folder:
//   tu      OUT/NAME/raw/NAME_{A, graph_indicator, node_labels, edge_labels, graph_labels}.txt, so that
//           torch_geometric.datasets.TUDataset(root=OUT, name=NAME) loads it
//   smiles  OUT/NAME.smi, one "<SMILES> <label>" line per molecule
//   json    OUT/NAME.json, parameters, label names and every molecule's graph and SMILES
// Prints the dataset statistics and a one-line summary: count, class balance, time. The molecules are
// held in memory until written, so a count that would not fit (molecule_bytes() each) is refused
// before generating; every file is written under a temporary name and renamed once complete.
#include "apps/data.hpp"
#include "apps/progress.hpp"
#include "core/memory.hpp"
#include "datasets/arguments.hpp"
#include "datasets/molecules/molecules.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace flashlstm::apps {

namespace {

namespace mol = datasets::molecules;

constexpr std::string_view formats[] = {"tu", "json", "smiles"};

struct Args {
  mol::Params params;
  index_t n = 1000;
  std::string task = "distance", out, name = "FLASHLSTM_MOLS";
  std::vector<std::string> formats = {"tu"};
  std::vector<std::string> atom_mix;  // "El=weight" entries
  int threads = 0;
};

void apply_atom_mix(const std::vector<std::string>& entries, mol::Params& params) {
  for (const std::string& entry : entries) {
    const auto eq = entry.find('=');
    require(eq != std::string::npos, "atom-mix", "expected ELEMENT=WEIGHT, got '{}'", entry);
    const std::string symbol = entry.substr(0, eq), value = entry.substr(eq + 1);
    int element = -1;
    for (int e = 0; e < mol::num_elements; ++e) {
      if (mol::element_symbol(static_cast<mol::Element>(e)) == symbol) element = e;
    }
    require(element >= 0, "atom-mix", "unknown element '{}' (expected C, N, O, F, I, Cl, Br or S)", symbol);
    std::size_t used = 0;
    double weight = 0;
    try {
      weight = std::stod(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(used == value.size() && !value.empty(), "atom-mix", "weight of {} must be a number, got '{}'", symbol,
            value);
    params.atom_mix[element] = weight;
  }
}

std::string percent(index_t part, index_t whole) {
  return fmt::format("{:.1f}%", whole > 0 ? 100.0 * double(part) / double(whole) : 0.0);
}

void print_statistics(const mol::Params& params, const mol::Statistics& s) {
  auto row = [](std::string_view what, const mol::Range& r) {
    fmt::print("  {:<15} min {:g}  mean {:.2f}  max {:g}\n", what, r.min, r.mean, r.max);
  };
  fmt::print("task {}: {}\n", mol::task_name(params.task), mol::task_description(params.task, params.distance));
  row("atoms", s.atoms);
  fmt::print("  {:<15} mean {:.2f} with label 1, {:.2f} with label 0\n", "", s.mean_atoms_positive,
             s.mean_atoms_negative);
  row("bonds", s.bonds);
  row("rings", s.rings);
  row("aromatic rings", s.aromatic_rings);
  index_t atoms = 0, bonds = 0;
  for (index_t c : s.elements) atoms += c;
  for (index_t c : s.bond_types) bonds += c;
  std::vector<std::string> elements, bond_types;
  for (int e = 0; e < mol::num_elements; ++e) {
    elements.push_back(
        fmt::format("{} {}", mol::element_symbol(static_cast<mol::Element>(e)), percent(s.elements[e], atoms)));
  }
  for (int t = 0; t < mol::num_bond_types; ++t) {
    bond_types.push_back(
        fmt::format("{} {}", mol::bond_type_name(static_cast<mol::BondType>(t)), percent(s.bond_types[t], bonds)));
  }
  fmt::print("  {:<15} {}\n  {:<15} {}\n", "elements", fmt::join(elements, "  "), "bond types",
             fmt::join(bond_types, "  "));
}

void run(Args& args) {
  require(args.n >= 0, "n", "must be >= 0, got {}", args.n);
  datasets::thread_count(args.threads);  // checked before the long part
  for (const std::string& f : args.formats) {
    require(std::ranges::find(formats, f) != std::end(formats), "format",
            "unknown format '{}' (expected tu, json or smiles)", f);
  }
  require(!args.name.empty() && args.name.find_first_of("/\\") == std::string::npos, "name",
          "must be a plain file name, got '{}'", args.name);
  mol::Params& params = args.params;
  params.task = mol::parse_task(args.task);
  apply_atom_mix(args.atom_mix, params);
  mol::validate(params);
  // The molecules are held in memory until written.
  require_memory("n", static_cast<double>(args.n) * mol::molecule_bytes(params),
                 fmt::format("{} molecules of up to {} atoms", args.n, params.max_atoms));

  std::vector<mol::Molecule> molecules;
  double generate_seconds = 0;
  {
    ProgressBar bar("molecules", args.n);
    molecules = mol::generate(params, 0, args.n, args.threads, [&bar](index_t done) { bar.advance(done); });
    bar.finish();
    generate_seconds = bar.seconds();
  }

  const auto start = std::chrono::steady_clock::now();
  const std::filesystem::path out = args.out;
  std::vector<std::string> written;
  for (const std::string& f : args.formats) {
    if (f == "tu") {
      written.push_back(mol::write_tu(out, args.name, molecules).string());
    } else if (f == "smiles") {
      written.push_back((out / (args.name + ".smi")).string());
      mol::write_smiles(written.back(), molecules);
    } else {
      written.push_back((out / (args.name + ".json")).string());
      mol::write_json(written.back(), args.name, params, molecules);
    }
  }
  const double write_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const mol::Statistics stats = mol::summarize(molecules);
  print_statistics(params, stats);
  fmt::print(
      "molecules: {} generated (task {}, seed {}), {} positive ({}), {} negative; {:.2f} s ({:.0f} molecules/s), "
      "written in {:.2f} s to {}\n",
      stats.count, mol::task_name(params.task), params.seed, stats.positives, percent(stats.positives, stats.count),
      stats.count - stats.positives, generate_seconds,
      generate_seconds > 0 ? double(stats.count) / generate_seconds : 0.0, write_seconds, fmt::join(written, ", "));
}

}  // namespace

void add_data_molecules_command(CLI::App& data) {
  auto* cmd =
      data.add_subcommand("molecules", "Molecular graphs (MUTAG-like) with labels that need long-range structure");
  auto args = std::make_shared<Args>();
  mol::Params& p = args->params;
  cmd->add_option("--n", args->n, "Number of molecules (default 1000)");
  cmd->add_option("--task", args->task, "distance, ring_parity or substitution (default distance)");
  cmd->add_option("--seed", p.seed, "Dataset seed; molecule i comes from (seed, i) (default 42)");
  cmd->add_option("--out", args->out, "Output folder")->required();
  cmd->add_option("--format", args->formats, "tu, json, smiles; several comma-separated (default tu)")->delimiter(',');
  cmd->add_option("--name", args->name, "Dataset name, the file prefix (default FLASHLSTM_MOLS)");
  cmd->add_option("--positive-fraction", p.positive_fraction, "P(label = 1) (default 0.5)");
  cmd->add_option("--distance", p.distance, "distance task: label 1 iff d(nitro N, amino N) >= this (default 7)");
  cmd->add_option("--min-atoms", p.min_atoms, "Fewest heavy atoms (default 10)");
  cmd->add_option("--max-atoms", p.max_atoms, "Most heavy atoms (default 28)");
  cmd->add_option("--mean-atoms", p.mean_atoms, "Mean of the size distribution (default 18)");
  cmd->add_option("--stddev-atoms", p.stddev_atoms, "Its standard deviation before truncation (default 4.5)");
  cmd->add_option("--min-rings", p.min_rings, "Fewest rings (default 1)");
  cmd->add_option("--max-rings", p.max_rings, "Most rings (default 4)");
  cmd->add_option("--aromatic-fraction", p.aromatic_fraction, "P(a ring is aromatic) (default 0.8)");
  cmd->add_option("--fused-fraction", p.fused_fraction, "P(a further ring is fused, not linked) (default 0.5)");
  cmd->add_option("--atom-mix", args->atom_mix,
                  "Element weights where several fit, e.g. S=0.05,Cl=0.02 (defaults C 0.70 N 0.11 O 0.15 F 0.005 "
                  "I 0.005 Cl 0.01 Br 0.005 S 0.015)")
      ->delimiter(',');
  cmd->add_option("--threads", args->threads, "OpenMP threads (default 0: all)");
  cmd->callback([args] { run(*args); });
}

}  // namespace flashlstm::apps
