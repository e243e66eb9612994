// flashlstm._core.datasets: the arrow-pointing image generator (batches as uint8 numpy arrays,
// zero-copy) and the molecular-graph generator (molecules with their graph as numpy arrays, SMILES,
// and the TU / SMILES / JSON writers). Parameter structs are bound field by field under the C++
// names, so every range of the generators can be set from Python. The generators and writers release
// the GIL once their arguments are converted, so other Python threads run meanwhile.
#include "bindings/src/arrays.hpp"
#include "datasets/arrow_pointing/arrow_pointing.hpp"
#include "datasets/molecules/molecules.hpp"

namespace flashlstm::bindings {
namespace {

namespace arrows = datasets::arrows;
namespace molecules = datasets::molecules;

void register_arrows(py::module_& parent) {
  auto m = parent.def_submodule("arrows", "The arrow-pointing extrapolation generator.");
  py::class_<arrows::Params>(m, "Params", "Every range of the generator (datasets/arrow_pointing/arrow_pointing.hpp).")
      .def(py::init<>())
      .def_readwrite("size", &arrows::Params::size)
      .def_readwrite("channels", &arrows::Params::channels)
      .def_readwrite("seed", &arrows::Params::seed)
      .def_readwrite("positive_fraction", &arrows::Params::positive_fraction)
      .def_readwrite("length_min", &arrows::Params::length_min)
      .def_readwrite("length_max", &arrows::Params::length_max)
      .def_readwrite("width_min", &arrows::Params::width_min)
      .def_readwrite("width_max", &arrows::Params::width_max)
      .def_readwrite("radius_min", &arrows::Params::radius_min)
      .def_readwrite("radius_max", &arrows::Params::radius_max)
      .def_readwrite("padding", &arrows::Params::padding)
      .def_readwrite("margin", &arrows::Params::margin)
      .def_readwrite("head_angle", &arrows::Params::head_angle)
      .def_readwrite("head_ratio", &arrows::Params::head_ratio);

  py::class_<arrows::Geometry>(m, "Geometry", "What one sample is made of.")
      .def_readonly("arrow_x", &arrows::Geometry::arrow_x)
      .def_readonly("arrow_y", &arrows::Geometry::arrow_y)
      .def_readonly("direction", &arrows::Geometry::direction)
      .def_readonly("length", &arrows::Geometry::length)
      .def_readonly("width", &arrows::Geometry::width)
      .def_readonly("circle_x", &arrows::Geometry::circle_x)
      .def_readonly("circle_y", &arrows::Geometry::circle_y)
      .def_readonly("radius", &arrows::Geometry::radius)
      .def_readonly("label", &arrows::Geometry::label);

  m.def("validate", &arrows::validate, py::arg("params"));
  m.def(
      "generate",
      [](const arrows::Params& params, index_t first, index_t count, int threads) {
        auto batch = [&] {
          py::gil_scoped_release release;
          return arrows::generate(params, first, count, threads);
        }();
        return py::make_tuple(to_numpy(std::move(batch.images)), to_numpy(std::move(batch.labels)));
      },
      py::arg("params"), py::arg("first"), py::arg("count"), py::arg("threads") = 0,
      "(images uint8 (count, size, size, channels), labels uint8 (count))");
  m.def(
      "split_preset",
      [](const std::string& split, std::uint64_t train_seed) {
        const auto preset = arrows::split_preset(arrows::parse_split(split), train_seed);
        return py::make_tuple(preset.params, preset.count);
      },
      py::arg("split"), py::arg("train_seed") = 42, "(params, count) of a split: train, val, val_ext, test, test_ext, custom");
  m.def("sample_geometry", &arrows::sample_geometry, py::arg("params"), py::arg("index"));
  m.def(
      "write_png",
      [](const std::string& path, const InputArray& image) {
        const auto img = view<std::uint8_t, 3>("image", image);
        require(img.shape(0) == img.shape(1), "image", "expected a square image (size, size, channels), got {}",
                shape_string(img.shape()));
        py::gil_scoped_release release;
        arrows::write_png(path, {img.data(), static_cast<std::size_t>(img.size())}, img.shape(0), img.shape(2));
      },
      py::arg("path"), py::arg("image"));
  m.def("write_contact_sheet", &arrows::write_contact_sheet, py::arg("path"), py::arg("params"), py::arg("first"),
        py::arg("count"), py::arg("columns") = 0, py::call_guard<py::gil_scoped_release>());
}

py::dict statistics(const molecules::Statistics& s) {
  auto range = [](const molecules::Range& r) { return py::make_tuple(r.min, r.mean, r.max); };
  py::dict out, elements, bonds;
  for (int e = 0; e < molecules::num_elements; ++e)
    elements[py::str(std::string(molecules::element_symbol(static_cast<molecules::Element>(e))))] = s.elements[e];
  for (int b = 0; b < molecules::num_bond_types; ++b)
    bonds[py::str(std::string(molecules::bond_type_name(static_cast<molecules::BondType>(b))))] = s.bond_types[b];
  out["count"] = s.count, out["positives"] = s.positives;
  out["atoms"] = range(s.atoms), out["bonds"] = range(s.bonds), out["rings"] = range(s.rings);
  out["aromatic_rings"] = range(s.aromatic_rings);
  out["mean_atoms_positive"] = s.mean_atoms_positive, out["mean_atoms_negative"] = s.mean_atoms_negative;
  out["elements"] = elements, out["bond_types"] = bonds;
  return out;
}

template <class Field>
py::array_t<int> atom_field(const molecules::Molecule& mol, Field field) {
  py::array_t<int> out(static_cast<py::ssize_t>(mol.atoms.size()));
  for (std::size_t i = 0; i < mol.atoms.size(); ++i) out.mutable_data()[i] = static_cast<int>(field(mol.atoms[i]));
  return out;
}

void register_molecules(py::module_& parent) {
  auto m = parent.def_submodule("molecules", "The molecular-graph generator.");
  py::class_<molecules::Substituents>(m, "Substituents", "Relative weights of the pieces added after the ring systems.")
      .def(py::init<>())
      .def_readwrite("nitro", &molecules::Substituents::nitro)
      .def_readwrite("amino", &molecules::Substituents::amino)
      .def_readwrite("hydroxyl", &molecules::Substituents::hydroxyl)
      .def_readwrite("carbonyl", &molecules::Substituents::carbonyl)
      .def_readwrite("halogen", &molecules::Substituents::halogen)
      .def_readwrite("alkyl", &molecules::Substituents::alkyl)
      .def_readwrite("ether", &molecules::Substituents::ether);

  py::class_<molecules::Params>(m, "Params", "Every parameter of the generator (datasets/molecules/molecules.hpp).")
      .def(py::init<>())
      .def_readwrite("seed", &molecules::Params::seed)
      .def_property(
          "task", [](const molecules::Params& p) { return std::string(molecules::task_name(p.task)); },
          [](molecules::Params& p, const std::string& name) { p.task = molecules::parse_task(name); },
          "distance, ring_parity or substitution")
      .def_readwrite("positive_fraction", &molecules::Params::positive_fraction)
      .def_readwrite("distance", &molecules::Params::distance)
      .def_readwrite("min_atoms", &molecules::Params::min_atoms)
      .def_readwrite("max_atoms", &molecules::Params::max_atoms)
      .def_readwrite("mean_atoms", &molecules::Params::mean_atoms)
      .def_readwrite("stddev_atoms", &molecules::Params::stddev_atoms)
      .def_readwrite("min_rings", &molecules::Params::min_rings)
      .def_readwrite("max_rings", &molecules::Params::max_rings)
      .def_readwrite("six_ring_fraction", &molecules::Params::six_ring_fraction)
      .def_readwrite("aromatic_fraction", &molecules::Params::aromatic_fraction)
      .def_readwrite("fused_fraction", &molecules::Params::fused_fraction)
      .def_readwrite("ring_heteroatom_probability", &molecules::Params::ring_heteroatom_probability)
      .def_readwrite("double_bond_probability", &molecules::Params::double_bond_probability)
      .def_readwrite("triple_bond_probability", &molecules::Params::triple_bond_probability)
      .def_readwrite("atom_mix", &molecules::Params::atom_mix, "relative element weights, indexed C N O F I Cl Br S")
      .def_readwrite("substituents", &molecules::Params::substituents);

  py::class_<molecules::Molecule>(m, "Molecule", "A heavy-atom graph; atom i is the i-th atom of its SMILES.")
      .def_readonly("rings", &molecules::Molecule::rings)
      .def_readonly("aromatic_rings", &molecules::Molecule::aromatic_rings)
      .def_readonly("label", &molecules::Molecule::label)
      .def_property_readonly("num_atoms", [](const molecules::Molecule& mol) { return mol.atoms.size(); })
      .def_property_readonly("num_bonds", [](const molecules::Molecule& mol) { return mol.bonds.size(); })
      .def_property_readonly("node_labels",
                             [](const molecules::Molecule& mol) { return atom_field(mol, [](const auto& a) { return a.element; }); },
                             "element per atom: 0 C, 1 N, 2 O, 3 F, 4 I, 5 Cl, 6 Br, 7 S")
      .def_property_readonly("charges",
                             [](const molecules::Molecule& mol) { return atom_field(mol, [](const auto& a) { return a.charge; }); })
      .def_property_readonly(
          "aromatic", [](const molecules::Molecule& mol) { return atom_field(mol, [](const auto& a) { return a.aromatic; }); })
      .def_property_readonly(
          "hydrogens", [](const molecules::Molecule& mol) { return atom_field(mol, [](const auto& a) { return a.hydrogens; }); })
      .def_property_readonly(
          "edges",
          [](const molecules::Molecule& mol) {
            py::array_t<std::int64_t> out({static_cast<py::ssize_t>(mol.bonds.size()), py::ssize_t{2}});
            auto w = out.mutable_unchecked<2>();
            for (std::size_t e = 0; e < mol.bonds.size(); ++e) w(e, 0) = mol.bonds[e].a, w(e, 1) = mol.bonds[e].b;
            return out;
          },
          "(E, 2) int64: each bond once, a < b")
      .def_property_readonly("edge_labels",
                             [](const molecules::Molecule& mol) {
                               std::vector<int> labels;
                               for (const auto& b : mol.bonds) labels.push_back(static_cast<int>(b.type));
                               return to_numpy(labels);
                             },
                             "bond type per edge: 0 aromatic, 1 single, 2 double, 3 triple")
      .def_property_readonly("bond_orders",
                             [](const molecules::Molecule& mol) {
                               std::vector<int> orders;
                               for (const auto& b : mol.bonds) orders.push_back(b.order);
                               return to_numpy(orders);
                             },
                             "Kekulé order per edge")
      .def_property_readonly("smiles", &molecules::to_smiles)
      .def("__repr__", [](const molecules::Molecule& mol) {
        return fmt::format("flashlstm.datasets.Molecule('{}', label={})", molecules::to_smiles(mol), mol.label);
      });

  m.def("validate", &molecules::validate, py::arg("params"));
  m.def("generate_molecule", &molecules::generate_molecule, py::arg("params"), py::arg("index"));
  m.def(
      "generate",
      [](const molecules::Params& params, index_t first, index_t count, int threads) {
        py::gil_scoped_release release;
        return molecules::generate(params, first, count, threads);
      },
      py::arg("params"), py::arg("first"), py::arg("count"), py::arg("threads") = 0);
  m.def("summarize", [](const std::vector<molecules::Molecule>& mols) { return statistics(molecules::summarize(mols)); },
        py::arg("molecules"));
  m.def("task_description", [](const std::string& task, int distance) {
    return molecules::task_description(molecules::parse_task(task), distance);
  }, py::arg("task"), py::arg("distance") = 7);
  m.def("element_symbols", [] {
    std::vector<std::string> out;
    for (int e = 0; e < molecules::num_elements; ++e)
      out.emplace_back(molecules::element_symbol(static_cast<molecules::Element>(e)));
    return out;
  });
  m.def("bond_type_names", [] {
    std::vector<std::string> out;
    for (int b = 0; b < molecules::num_bond_types; ++b)
      out.emplace_back(molecules::bond_type_name(static_cast<molecules::BondType>(b)));
    return out;
  });
  m.def("write_smiles", [](const std::string& file, const std::vector<molecules::Molecule>& mols) {
    molecules::write_smiles(file, mols);
  }, py::arg("file"), py::arg("molecules"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "write_tu",
      [](const std::string& root, const std::string& name, const std::vector<molecules::Molecule>& mols) {
        return molecules::write_tu(root, name, mols).string();
      },
      py::arg("root"), py::arg("name"), py::arg("molecules"), py::call_guard<py::gil_scoped_release>());
  m.def("write_json", [](const std::string& file, const std::string& name, const molecules::Params& params,
                         const std::vector<molecules::Molecule>& mols) { molecules::write_json(file, name, params, mols); },
        py::arg("file"), py::arg("name"), py::arg("params"), py::arg("molecules"),
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace

void register_datasets(py::module_& parent) {
  auto m = parent.def_submodule("datasets", "Dataset generators: arrow-pointing images, molecular graphs.");
  register_arrows(m);
  register_molecules(m);
}

}  // namespace flashlstm::bindings
