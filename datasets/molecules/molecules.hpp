// The molecular-graph generator (docs/datasets.md): heavy-atom graphs of small organic molecules with
// the character of the TU molecule sets (MUTAG, PTC: ~18 atoms, aromatic and saturated 5- and 6-rings,
// fused ring systems, chains, branches, nitro/amino/hydroxyl/carbonyl/halogen substituents), each
// labelled by a task that needs long-range structure.
//
// Molecules are built from fragments, not sampled and filtered: ring systems first (rings fused onto a
// free bond of an earlier ring, or linked to the molecule by a bond or a short chain), then chains and
// substituents on atoms that still have a free valence. Every step checks the free valence (C 4, N 3,
// nitro N+ 4, O 2, its O- 1, S 2, halogens 1) and the degree (<= 4), so every molecule is valid by
// construction. Aromatic rings are built with one Kekulé structure (stored in Bond::order), so each is
// kekulizable; the rules that keep RDKit's aromaticity perception equal to our aromatic flags are in
// molecules.cpp.
//
// Tasks (the label is drawn first, with P(1) = positive_fraction, and the molecule is built to match):
//   distance      exactly one nitro group and one amino group (NH2); 1 iff the graph distance between
//                 the nitro N and the amino N is >= Params::distance
//   ring_parity   1 iff the number of rings (bonds - atoms + 1) is odd
//   substitution  exactly one nitro and one amino group, both on the same benzene ring; 1 iff they are
//                 ortho or para to each other, 0 iff meta
//
// Every molecule draws from its own random stream, keyed by (seed, task, index): molecule i is the
// same whatever the count, the first index or the number of threads. The stream is std::mt19937_64 seeded
// by std::seed_seq, both specified bit for bit by the standard, with our own distributions on top (the
// standard library's differ between implementations), so a seed gives the same molecules everywhere.
#pragma once

#include "core/view.hpp"

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flashlstm::datasets::molecules {

// Node labels: MUTAG's (0 C, 1 N, 2 O, 3 F, 4 I, 5 Cl, 6 Br), then 7 S.
enum class Element : std::uint8_t { C, N, O, F, I, Cl, Br, S };
inline constexpr int num_elements = 8;
std::string_view element_symbol(Element element);
// The valence every atom keeps (bond orders + implicit hydrogens): C 4, N 3 (N+ 4), O 2 (O- 1), S 2,
// halogens 1.
int valence(Element element, int charge);

// Edge labels: MUTAG's (0 aromatic, 1 single, 2 double, 3 triple).
enum class BondType : std::uint8_t { aromatic, single, double_bond, triple_bond };
inline constexpr int num_bond_types = 4;
std::string_view bond_type_name(BondType type);

struct Atom {
  Element element = Element::C;
  int charge = 0;         // formal charge: +1 on a nitro N, -1 on its single-bonded O, else 0
  bool aromatic = false;  // in an aromatic ring
  int hydrogens = 0;      // implicit hydrogens: valence - sum of the Kekulé orders of its bonds
};

struct Bond {
  int a = 0, b = 0;  // atom indices, a < b
  BondType type = BondType::single;
  int order = 1;  // Kekulé order 1-3; aromatic bonds carry 1 or 2 from one Kekulé structure
};

// A connected heavy-atom graph. The atoms are numbered in the order in which to_smiles writes them,
// so atom i of an RDKit molecule parsed from the SMILES is atom i here.
struct Molecule {
  std::vector<Atom> atoms;
  std::vector<Bond> bonds;
  int rings = 0;           // bonds - atoms + 1
  int aromatic_rings = 0;  // rings built aromatic (each is aromatic for RDKit too)
  int label = 0;           // 0 or 1, by Params::task
};

// The molecule as plain arrays, the form the TU and JSON writers and the graph code take.
struct GraphArrays {
  std::vector<int> node_labels;            // (V): Element
  std::vector<std::pair<int, int>> edges;  // (E): (a, b), a < b, each bond once
  std::vector<int> edge_labels;            // (E): BondType
};
GraphArrays to_arrays(const Molecule& molecule);

enum class Task { distance, ring_parity, substitution };
Task parse_task(std::string_view name);  // "distance", "ring_parity", "substitution"
std::string_view task_name(Task task);
std::string task_description(Task task, int distance);  // one line: what label 1 means

// Relative weights of the pieces added after the ring systems, one per step. alkyl adds one carbon
// (chains and branches; a double or triple bond with the probabilities in Params), ether adds X-CH3
// with X in {N, O, S} (ethers, thioethers, secondary amines). The distance and substitution tasks place
// their one nitro and one amino group themselves and never add others.
struct Substituents {
  double nitro = 0.16, amino = 0.05, hydroxyl = 0.08, carbonyl = 0.08, halogen = 0.05, alkyl = 0.50, ether = 0.08;
};

struct Params {
  std::uint64_t seed = 42;  // molecule i draws from the stream (seed, task, i)
  Task task = Task::distance;
  double positive_fraction = 0.5;  // P(label = 1)
  int distance = 7;                // distance task: label 1 iff d(nitro N, amino N) >= distance

  // Heavy atoms per molecule: a normal(mean, stddev) draw rounded and redrawn until in [min, max]
  // (MUTAG: 10-28, mean 17.9).
  int min_atoms = 10, max_atoms = 28;
  double mean_atoms = 18, stddev_atoms = 4.5;
  int min_rings = 1, max_rings = 4;  // ring count, uniform in [min, max] (by parity for ring_parity)

  double six_ring_fraction = 0.75;           // P(a ring has 6 atoms), else 5
  double aromatic_fraction = 0.8;            // P(a ring is aromatic)
  double fused_fraction = 0.5;               // P(a ring after the first is fused onto an earlier ring)
  double ring_heteroatom_probability = 0.1;  // per free ring position (aromatic 5-rings always have one)
  double double_bond_probability = 0.1;      // P(an alkyl step on a chain carbon makes C=C)
  double triple_bond_probability = 0.02;     // P(an alkyl step on a chain end makes C#C)

  // Relative element weights, indexed by Element, wherever more than one element fits: ring
  // heteroatoms (N, O, S), chain links (C, N, O, S), halogens (F, I, Cl, Br). The overall composition
  // also depends on the substituents; summarize() reports it.
  std::array<double, num_elements> atom_mix = {0.70, 0.11, 0.15, 0.005, 0.005, 0.01, 0.005, 0.015};
  Substituents substituents;
};

// Throws Error naming the first parameter out of range, or a combination the task cannot meet.
void validate(const Params& params);

// Molecule `index` (>= 0) of the dataset `params` describes.
Molecule generate_molecule(const Params& params, index_t index);

// Molecules first, ..., first + count - 1 on `threads` OpenMP threads (0: the default number; at
// most datasets::max_threads()). `progress`, when given, is called with 1 after each molecule, from
// the worker threads. A count whose molecules would not fit in the machine's memory
// (molecule_bytes() each) is refused before anything is allocated.
std::vector<Molecule> generate(const Params& params, index_t first, index_t count, int threads = 0,
                               const std::function<void(index_t)>& progress = {});

// An upper bound on the memory one generated molecule takes: the Molecule with max_atoms atoms and
// up to 2 max_atoms bonds (no atom has more than 4).
double molecule_bytes(const Params& params);

struct Range {
  double min = 0, mean = 0, max = 0;
};

struct Statistics {
  index_t count = 0, positives = 0;
  Range atoms, bonds, rings, aromatic_rings;
  double mean_atoms_positive = 0, mean_atoms_negative = 0;  // 0 where the class is empty
  std::array<index_t, num_elements> elements{};             // atom counts by Element
  std::array<index_t, num_bond_types> bond_types{};         // bond counts by BondType
};
Statistics summarize(std::span<const Molecule> molecules);

// Writers. Each writes every file under a temporary name in its folder and renames it once complete
// (core/output_file.hpp); a failed write throws Error naming the file. SMILES: a depth-first walk from atom 0 (then from the lowest atom not yet reached), neighbours
// in ascending order; aromatic atoms lowercase, [nH] for pyrrole-type N-H, nitro as [N+](=O)[O-], '-'
// for a single bond between aromatic atoms.
std::string to_smiles(const Molecule& molecule);
// A copy renumbered in the order to_smiles writes its atoms when the walk starts at `start`; to_smiles
// then writes atom i as the i-th atom. generate() returns molecules in this order.
Molecule in_smiles_order(const Molecule& molecule, int start = 0);
// One "<SMILES> <label>" line per molecule (RDKit: SmilesMolSupplier(path, titleLine=False)).
void write_smiles(const std::filesystem::path& file, std::span<const Molecule> molecules);
// The TU dataset text format in PyG's layout, so that TUDataset(root, name) loads it: writes
// root/name/raw/name_{A, graph_indicator, node_labels, edge_labels, graph_labels}.txt (1-based node
// ids, both directions of each bond in A and edge_labels) and a README.txt with the label meanings;
// returns the raw folder.
std::filesystem::path write_tu(const std::filesystem::path& root, std::string_view name,
                               std::span<const Molecule> molecules);
// One JSON document: the parameters, the label names, and per molecule its SMILES, label, node labels,
// charges, aromatic flags, hydrogens, edges, edge labels and Kekulé orders.
void write_json(const std::filesystem::path& file, std::string_view name, const Params& params,
                std::span<const Molecule> molecules);

}  // namespace flashlstm::datasets::molecules
