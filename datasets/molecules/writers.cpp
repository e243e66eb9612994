// The dataset writers (molecules.hpp): SMILES lines, the TU text format in PyG's folder layout, and one
// JSON document. Each streams molecule by molecule into OutputFiles (core/output_file.hpp): a
// temporary name, every write and the close checked, renamed at the end, so memory does not grow
// with the text and a failed write is an error naming the file, never a silently truncated dataset.
#include "datasets/molecules/molecules.hpp"

#include "core/error.hpp"
#include "core/output_file.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace flashlstm::datasets::molecules {

namespace {

void make_folder(const std::filesystem::path& folder, std::string_view argument) {
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  require(!error, argument, "cannot create the folder '{}': {}", folder.string(), error.message());
}

nlohmann::json params_json(const Params& p) {
  nlohmann::json mix;
  for (int e = 0; e < num_elements; ++e) mix[std::string(element_symbol(static_cast<Element>(e)))] = p.atom_mix[e];
  const Substituents& s = p.substituents;
  return {{"seed", p.seed},
          {"task", task_name(p.task)},
          {"positive_fraction", p.positive_fraction},
          {"distance", p.distance},
          {"min_atoms", p.min_atoms},
          {"max_atoms", p.max_atoms},
          {"mean_atoms", p.mean_atoms},
          {"stddev_atoms", p.stddev_atoms},
          {"min_rings", p.min_rings},
          {"max_rings", p.max_rings},
          {"six_ring_fraction", p.six_ring_fraction},
          {"aromatic_fraction", p.aromatic_fraction},
          {"fused_fraction", p.fused_fraction},
          {"ring_heteroatom_probability", p.ring_heteroatom_probability},
          {"double_bond_probability", p.double_bond_probability},
          {"triple_bond_probability", p.triple_bond_probability},
          {"atom_mix", mix},
          {"substituents",
           {{"nitro", s.nitro},
            {"amino", s.amino},
            {"hydroxyl", s.hydroxyl},
            {"carbonyl", s.carbonyl},
            {"halogen", s.halogen},
            {"alkyl", s.alkyl},
            {"ether", s.ether}}}};
}

std::vector<std::string> label_names(auto name_of, int count) {
  std::vector<std::string> names;
  for (int i = 0; i < count; ++i) names.emplace_back(name_of(i));
  return names;
}

std::vector<std::string> element_names() {
  return label_names([](int i) { return element_symbol(static_cast<Element>(i)); }, num_elements);
}

std::vector<std::string> bond_names() {
  return label_names([](int i) { return bond_type_name(static_cast<BondType>(i)); }, num_bond_types);
}

nlohmann::json molecule_json(const Molecule& m) {
  const GraphArrays arrays = to_arrays(m);
  std::vector<int> charges, aromatic, hydrogens, orders;
  for (const Atom& a : m.atoms) {
    charges.push_back(a.charge);
    aromatic.push_back(a.aromatic ? 1 : 0);
    hydrogens.push_back(a.hydrogens);
  }
  for (const Bond& b : m.bonds) orders.push_back(b.order);
  return {{"smiles", to_smiles(m)},
          {"label", m.label},
          {"rings", m.rings},
          {"aromatic_rings", m.aromatic_rings},
          {"node_labels", arrays.node_labels},
          {"charges", charges},
          {"aromatic", aromatic},
          {"hydrogens", hydrogens},
          {"edges", arrays.edges},
          {"edge_labels", arrays.edge_labels},
          {"kekule_orders", orders}};
}

}  // namespace

void write_smiles(const std::filesystem::path& file, std::span<const Molecule> molecules) {
  if (file.has_parent_path()) make_folder(file.parent_path(), "file");
  OutputFile out(file, "file");
  for (const Molecule& m : molecules) out.write(fmt::format("{} {}\n", to_smiles(m), m.label));
  out.commit();
}

std::filesystem::path write_tu(const std::filesystem::path& root, std::string_view name,
                               std::span<const Molecule> molecules) {
  require(!name.empty() && name.find_first_of("/\\") == std::string_view::npos && name != "." && name != "..", "name",
          "must be a plain file name, got '{}'", name);
  const auto raw = root / std::string(name) / "raw";
  make_folder(raw, "root");
  const std::string prefix(name);
  auto file = [&](std::string_view what) { return raw / fmt::format("{}_{}.txt", prefix, what); };
  OutputFile a(file("A"), "root"), indicator(file("graph_indicator"), "root"),
      node_labels(file("node_labels"), "root"), edge_labels(file("edge_labels"), "root"),
      graph_labels(file("graph_labels"), "root");
  long long offset = 1;  // TU node ids are 1-based and run over the whole dataset
  for (std::size_t g = 0; g < molecules.size(); ++g) {
    const GraphArrays arrays = to_arrays(molecules[g]);
    std::string nodes, graph_ids, pairs, bond_labels;
    for (int label : arrays.node_labels) {
      nodes += fmt::format("{}\n", label);
      graph_ids += fmt::format("{}\n", g + 1);
    }
    for (std::size_t e = 0; e < arrays.edges.size(); ++e) {
      const long long u = offset + arrays.edges[e].first, v = offset + arrays.edges[e].second;
      pairs += fmt::format("{}, {}\n{}, {}\n", u, v, v, u);
      bond_labels += fmt::format("{}\n{}\n", arrays.edge_labels[e], arrays.edge_labels[e]);
    }
    a.write(pairs);
    indicator.write(graph_ids);
    node_labels.write(nodes);
    edge_labels.write(bond_labels);
    graph_labels.write(fmt::format("{}\n", molecules[g].label));
    offset += static_cast<long long>(arrays.node_labels.size());
  }
  const auto files = {&a, &indicator, &node_labels, &edge_labels, &graph_labels};
  for (OutputFile* f : files) f->close();
  for (OutputFile* f : files) f->commit();

  std::string readme = fmt::format("{}: {} molecular graphs made by flashlstm (datasets/molecules).\n\nNode labels:\n",
                                   name, molecules.size());
  for (int e = 0; e < num_elements; ++e)
    readme += fmt::format("  {}  {}\n", e, element_symbol(static_cast<Element>(e)));
  readme += "\nEdge labels:\n";
  for (int t = 0; t < num_bond_types; ++t)
    readme += fmt::format("  {}  {}\n", t, bond_type_name(static_cast<BondType>(t)));
  readme += "\nGraph labels: 0 or 1 (see the task in the generator's summary or JSON output).\n";
  write_file(raw / "README.txt", readme, "root");
  return raw;
}

void write_json(const std::filesystem::path& file, std::string_view name, const Params& params,
                std::span<const Molecule> molecules) {
  const nlohmann::json head = {{"name", name},
                               {"task", task_name(params.task)},
                               {"label_meaning", task_description(params.task, params.distance)},
                               {"parameters", params_json(params)},
                               {"node_label_names", element_names()},
                               {"edge_label_names", bond_names()}};
  if (file.has_parent_path()) make_folder(file.parent_path(), "file");
  OutputFile out(file, "file");
  std::string text = head.dump();
  text.back() = ',';  // the head's closing brace: "molecules" follows as its last key
  out.write(text + "\"molecules\":[");
  for (std::size_t i = 0; i < molecules.size(); ++i) out.write((i > 0 ? "," : "") + molecule_json(molecules[i]).dump());
  out.write("]}\n");
  out.commit();
}

}  // namespace flashlstm::datasets::molecules
