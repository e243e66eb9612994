// The dataset writers (molecules.hpp): SMILES lines, the TU text format in PyG's folder layout, and one
// JSON document. Each builds its files in memory and writes them whole, so a failed write names the
// file instead of leaving a silently truncated dataset.
#include "datasets/molecules/molecules.hpp"

#include "core/error.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>

namespace flashlstm::datasets::molecules {

namespace {

void write_file(const std::filesystem::path& file, std::string_view content) {
  std::ofstream out(file, std::ios::binary);
  require(out.good(), "out", "cannot open {} for writing", file.string());
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  out.close();
  require(!out.fail(), "out", "writing {} failed", file.string());
}

void make_folder(const std::filesystem::path& folder) {
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  require(!error, "out", "cannot create the folder {}: {}", folder.string(), error.message());
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

}  // namespace

void write_smiles(const std::filesystem::path& file, std::span<const Molecule> molecules) {
  std::string text;
  for (const Molecule& m : molecules) text += fmt::format("{} {}\n", to_smiles(m), m.label);
  if (file.has_parent_path()) make_folder(file.parent_path());
  write_file(file, text);
}

std::filesystem::path write_tu(const std::filesystem::path& root, std::string_view name,
                               std::span<const Molecule> molecules) {
  require(!name.empty() && name.find_first_of("/\\") == std::string_view::npos && name != "." && name != "..", "name",
          "must be a plain file name, got '{}'", name);
  const auto raw = root / std::string(name) / "raw";
  make_folder(raw);
  fmt::memory_buffer a, indicator, node_labels, edge_labels, graph_labels;
  long long offset = 1;  // TU node ids are 1-based and run over the whole dataset
  for (std::size_t g = 0; g < molecules.size(); ++g) {
    const GraphArrays arrays = to_arrays(molecules[g]);
    for (int label : arrays.node_labels) {
      fmt::format_to(std::back_inserter(node_labels), "{}\n", label);
      fmt::format_to(std::back_inserter(indicator), "{}\n", g + 1);
    }
    for (std::size_t e = 0; e < arrays.edges.size(); ++e) {
      const long long u = offset + arrays.edges[e].first, v = offset + arrays.edges[e].second;
      fmt::format_to(std::back_inserter(a), "{}, {}\n{}, {}\n", u, v, v, u);
      fmt::format_to(std::back_inserter(edge_labels), "{}\n{}\n", arrays.edge_labels[e], arrays.edge_labels[e]);
    }
    fmt::format_to(std::back_inserter(graph_labels), "{}\n", molecules[g].label);
    offset += static_cast<long long>(arrays.node_labels.size());
  }
  const std::string prefix(name);
  write_file(raw / (prefix + "_A.txt"), fmt::to_string(a));
  write_file(raw / (prefix + "_graph_indicator.txt"), fmt::to_string(indicator));
  write_file(raw / (prefix + "_node_labels.txt"), fmt::to_string(node_labels));
  write_file(raw / (prefix + "_edge_labels.txt"), fmt::to_string(edge_labels));
  write_file(raw / (prefix + "_graph_labels.txt"), fmt::to_string(graph_labels));

  std::string readme = fmt::format("{}: {} molecular graphs made by flashlstm (datasets/molecules).\n\nNode labels:\n",
                                   name, molecules.size());
  for (int e = 0; e < num_elements; ++e)
    readme += fmt::format("  {}  {}\n", e, element_symbol(static_cast<Element>(e)));
  readme += "\nEdge labels:\n";
  for (int t = 0; t < num_bond_types; ++t)
    readme += fmt::format("  {}  {}\n", t, bond_type_name(static_cast<BondType>(t)));
  readme += "\nGraph labels: 0 or 1 (see the task in the generator's summary or JSON output).\n";
  write_file(raw / "README.txt", readme);
  return raw;
}

void write_json(const std::filesystem::path& file, std::string_view name, const Params& params,
                std::span<const Molecule> molecules) {
  nlohmann::json list = nlohmann::json::array();
  for (const Molecule& m : molecules) {
    const GraphArrays arrays = to_arrays(m);
    std::vector<int> charges, aromatic, hydrogens, orders;
    for (const Atom& a : m.atoms) {
      charges.push_back(a.charge);
      aromatic.push_back(a.aromatic ? 1 : 0);
      hydrogens.push_back(a.hydrogens);
    }
    for (const Bond& b : m.bonds) orders.push_back(b.order);
    list.push_back({{"smiles", to_smiles(m)},
                    {"label", m.label},
                    {"rings", m.rings},
                    {"aromatic_rings", m.aromatic_rings},
                    {"node_labels", arrays.node_labels},
                    {"charges", charges},
                    {"aromatic", aromatic},
                    {"hydrogens", hydrogens},
                    {"edges", arrays.edges},
                    {"edge_labels", arrays.edge_labels},
                    {"kekule_orders", orders}});
  }
  const nlohmann::json doc = {{"name", name},
                              {"task", task_name(params.task)},
                              {"label_meaning", task_description(params.task, params.distance)},
                              {"parameters", params_json(params)},
                              {"node_label_names", element_names()},
                              {"edge_label_names", bond_names()},
                              {"molecules", list}};
  if (file.has_parent_path()) make_folder(file.parent_path());
  write_file(file, doc.dump() + "\n");
}

}  // namespace flashlstm::datasets::molecules
