// datasets/molecules: every generated molecule keeps valences and degrees, each task's label equals an
// independent recomputation from the bare graph (all-pairs distances by Floyd-Warshall, ring count by
// union-find, benzene relation by enumerating 6-cycles), statistics and class balance stay in the
// configured ranges, bad parameters throw Error naming the argument, a seed gives the same molecules
// whatever the threads or the slice, and the SMILES/TU writers keep the atom numbering and the counts.
// Failures are carried out of the OpenMP loop whatever their type, counts that cannot fit are refused,
// and writers that cannot write say so, naming the file, and leave no partial file behind.
#include "datasets/molecules/molecules.hpp"

#include "datasets/arguments.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>

using namespace flashlstm;
using namespace flashlstm::datasets::molecules;
using Catch::StartsWith;

namespace {

constexpr Task tasks[] = {Task::distance, Task::ring_parity, Task::substitution};

Params params_for(Task task, std::uint64_t seed = 7) {
  Params p;
  p.task = task;
  p.seed = seed;
  return p;
}

// Our own table, not the library's valence(): what each atom must hold.
int expected_valence(const Atom& a) {
  switch (a.element) {
    case Element::C:
      return 4;
    case Element::N:
      return a.charge == 1 ? 4 : 3;
    case Element::O:
      return a.charge == -1 ? 1 : 2;
    case Element::S:
      return 2;
    default:
      return 1;
  }
}

std::vector<std::vector<int>> neighbours(const Molecule& m) {
  std::vector<std::vector<int>> adj(m.atoms.size());
  for (const Bond& b : m.bonds) {
    adj[b.a].push_back(b.b);
    adj[b.b].push_back(b.a);
  }
  return adj;
}

const Bond* find_bond(const Molecule& m, int a, int b) {
  for (const Bond& bond : m.bonds) {
    if ((bond.a == a && bond.b == b) || (bond.a == b && bond.b == a)) return &bond;
  }
  return nullptr;
}

std::vector<std::vector<int>> floyd_warshall(const Molecule& m) {
  const int n = static_cast<int>(m.atoms.size()), inf = std::numeric_limits<int>::max() / 4;
  std::vector<std::vector<int>> d(n, std::vector<int>(n, inf));
  for (int i = 0; i < n; ++i) d[i][i] = 0;
  for (const Bond& b : m.bonds) d[b.a][b.b] = d[b.b][b.a] = 1;
  for (int k = 0; k < n; ++k) {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) d[i][j] = std::min(d[i][j], d[i][k] + d[k][j]);
    }
  }
  return d;
}

// Bonds that close a cycle when added one by one to a union-find forest: the number of independent rings.
int ring_count(const Molecule& m) {
  std::vector<int> parent(m.atoms.size());
  std::iota(parent.begin(), parent.end(), 0);
  auto root = [&](int x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  int cycles = 0;
  for (const Bond& b : m.bonds) {
    const int ra = root(b.a), rb = root(b.b);
    if (ra == rb)
      ++cycles;
    else
      parent[ra] = rb;
  }
  return cycles;
}

// The task groups found by pattern: nitro N (N+ with two O) and amino N (neutral N, one single bond).
struct Groups {
  std::vector<int> nitro, amino;
};

Groups find_groups(const Molecule& m) {
  const auto adj = neighbours(m);
  Groups g;
  for (int i = 0; i < static_cast<int>(m.atoms.size()); ++i) {
    const Atom& a = m.atoms[i];
    if (a.element != Element::N) continue;
    if (a.charge == 1) g.nitro.push_back(i);
    if (a.charge == 0 && adj[i].size() == 1 && find_bond(m, i, adj[i][0])->type == BondType::single)
      g.amino.push_back(i);
  }
  return g;
}

int carbon_neighbour(const Molecule& m, int atom) {
  const auto adj = neighbours(m);
  for (int w : adj[atom]) {
    if (m.atoms[w].element == Element::C) return w;
  }
  return -1;
}

// Positions of a and b around every 6-cycle of aromatic C-C bonds through both; returns the cyclic
// offsets found (1 ortho, 2 meta, 3 para).
std::set<int> benzene_offsets(const Molecule& m, int a, int b) {
  const auto adj = neighbours(m);
  std::set<int> offsets;
  std::vector<int> path{a};
  auto aromatic_cc = [&](int x, int y) {
    return m.atoms[y].element == Element::C && find_bond(m, x, y)->type == BondType::aromatic;
  };
  auto extend = [&](auto&& self) -> void {
    const int last = path.back();
    for (int w : adj[last]) {
      if (!aromatic_cc(last, w)) continue;
      if (path.size() == 6) {
        if (w == a) {
          const auto pb = std::find(path.begin(), path.end(), b);
          if (pb != path.end()) {
            const int k = static_cast<int>(pb - path.begin());
            offsets.insert(std::min(k, 6 - k));
          }
        }
        continue;
      }
      if (std::find(path.begin(), path.end(), w) != path.end()) continue;
      path.push_back(w);
      self(self);
      path.pop_back();
    }
  };
  if (m.atoms[a].element == Element::C) extend(extend);
  return offsets;
}

void check_invariants(const Molecule& m, const Params& p) {
  const int n = static_cast<int>(m.atoms.size());
  REQUIRE(n >= p.min_atoms);
  REQUIRE(n <= p.max_atoms);
  const auto adj = neighbours(m);
  std::vector<int> bond_sum(n, 0);
  std::set<std::pair<int, int>> seen;
  for (const Bond& b : m.bonds) {
    REQUIRE(b.a < b.b);
    REQUIRE(b.b < n);
    REQUIRE(seen.insert({b.a, b.b}).second);  // no multi-edges
    REQUIRE(b.order >= 1);
    REQUIRE(b.order <= 3);
    bond_sum[b.a] += b.order;
    bond_sum[b.b] += b.order;
    const Atom &x = m.atoms[b.a], &y = m.atoms[b.b];
    if (b.type == BondType::aromatic) {
      REQUIRE(x.aromatic);
      REQUIRE(y.aromatic);
      REQUIRE(b.order <= 2);
    } else {
      REQUIRE(static_cast<int>(b.type) == b.order);
    }
    // Heteroatoms bond only to carbon, except N-O in a nitro group.
    const bool nitro_no = (x.charge == 1 && y.element == Element::O) || (y.charge == 1 && x.element == Element::O);
    REQUIRE((x.element == Element::C || y.element == Element::C || nitro_no));
  }
  for (int i = 0; i < n; ++i) {
    const Atom& a = m.atoms[i];
    INFO("atom " << i << " " << element_symbol(a.element) << " in " << to_smiles(m));
    REQUIRE(a.hydrogens >= 0);
    REQUIRE(bond_sum[i] + a.hydrogens == expected_valence(a));
    REQUIRE(adj[i].size() <= 4);
    int aromatic_bonds = 0, aromatic_doubles = 0;
    for (int w : adj[i]) {
      const Bond* b = find_bond(m, i, w);
      if (b->type == BondType::aromatic) {
        ++aromatic_bonds;
        aromatic_doubles += b->order == 2 ? 1 : 0;
      } else if (a.aromatic) {
        REQUIRE(b->order == 1);  // substituents on aromatic atoms are single-bonded
      }
    }
    if (a.aromatic) {
      REQUIRE(aromatic_bonds >= 2);
      // Kekulé structure: one double bond per aromatic atom, none on a donor (NH, O, S with two single bonds).
      const bool donor = a.element != Element::C && aromatic_doubles == 0;
      REQUIRE((aromatic_doubles == 1 || donor));
      if (donor && a.element == Element::N) REQUIRE(a.hydrogens + static_cast<int>(adj[i].size()) == 3);
    } else {
      REQUIRE(aromatic_bonds == 0);
    }
    if (a.charge != 0) {  // only nitro: N+(=O)O- on a carbon
      if (a.element == Element::N) {
        REQUIRE(a.charge == 1);
        REQUIRE(adj[i].size() == 3);
      } else {
        REQUIRE(a.element == Element::O);
        REQUIRE(a.charge == -1);
        REQUIRE(adj[i].size() == 1);
        REQUIRE(m.atoms[adj[i][0]].charge == 1);
      }
    }
  }
  // Connected: one component.
  std::vector<bool> reached(n, false);
  std::vector<int> stack{0};
  reached[0] = true;
  while (!stack.empty()) {
    const int v = stack.back();
    stack.pop_back();
    for (int w : adj[v]) {
      if (!reached[w]) reached[w] = true, stack.push_back(w);
    }
  }
  REQUIRE(std::count(reached.begin(), reached.end(), true) == n);
  REQUIRE(m.rings == ring_count(m));
  REQUIRE(m.rings == static_cast<int>(m.bonds.size()) - n + 1);
  REQUIRE(m.rings >= p.min_rings);
  REQUIRE(m.rings <= p.max_rings);
  REQUIRE(m.aromatic_rings <= m.rings);
}

// The label recomputed from the graph alone.
int recomputed_label(const Molecule& m, const Params& p) {
  if (p.task == Task::ring_parity) return ring_count(m) % 2;
  const Groups g = find_groups(m);
  REQUIRE(g.nitro.size() == 1);
  REQUIRE(g.amino.size() == 1);
  if (p.task == Task::distance) return floyd_warshall(m)[g.nitro[0]][g.amino[0]] >= p.distance ? 1 : 0;
  const int a = carbon_neighbour(m, g.nitro[0]), b = carbon_neighbour(m, g.amino[0]);
  const std::set<int> offsets = benzene_offsets(m, a, b);
  REQUIRE(offsets.size() == 1);
  const int offset = *offsets.begin();
  REQUIRE(offset >= 1);
  return offset == 2 ? 0 : 1;
}

// The element symbols of a SMILES string in the order its atoms appear.
std::vector<std::string> smiles_atoms(const std::string& s) {
  std::vector<std::string> atoms;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '[') {
      std::size_t j = i + 1;
      std::string symbol(1, s[j]);
      if (j + 1 < s.size() && std::islower(static_cast<unsigned char>(s[j + 1])) &&
          std::isupper(static_cast<unsigned char>(s[j])))
        symbol += s[j + 1];
      atoms.push_back(symbol);
      i = s.find(']', i);
    } else if (c == 'C' && i + 1 < s.size() && s[i + 1] == 'l') {
      atoms.emplace_back("Cl");
      ++i;
    } else if (c == 'B' && i + 1 < s.size() && s[i + 1] == 'r') {
      atoms.emplace_back("Br");
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c))) {
      atoms.emplace_back(1, c);
    }
  }
  return atoms;
}

std::vector<std::string> read_lines(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("every molecule keeps valences, degrees, charges and a Kekulé structure", "[molecules]") {
  for (Task task : tasks) {
    const Params p = params_for(task);
    for (const Molecule& m : generate(p, 0, 1500)) check_invariants(m, p);
  }
  Params wide = params_for(Task::ring_parity, 3);  // large molecules, many fused aromatic rings, heteroatoms
  wide.max_atoms = 60;
  wide.mean_atoms = 40;
  wide.max_rings = 9;
  wide.aromatic_fraction = 1;
  wide.fused_fraction = 0.9;
  wide.ring_heteroatom_probability = 0.6;
  wide.double_bond_probability = 0.5;
  wide.triple_bond_probability = 0.3;
  wide.atom_mix = {1, 1, 1, 1, 1, 1, 1, 1};
  for (const Molecule& m : generate(wide, 0, 500)) check_invariants(m, wide);
}

TEST_CASE("each task's label equals an independent recomputation from the graph", "[molecules]") {
  for (Task task : tasks) {
    for (int distance : {5, 7, 9}) {
      Params p = params_for(task, 11);
      p.distance = distance;
      if (task != Task::distance && distance != 7) continue;
      const auto molecules = generate(p, 0, 1000);
      for (std::size_t i = 0; i < molecules.size(); ++i) {
        INFO(task_name(task) << " distance " << distance << " molecule " << i << ": " << to_smiles(molecules[i]));
        REQUIRE(recomputed_label(molecules[i], p) == molecules[i].label);
      }
    }
  }
  SECTION("the substitution task makes ortho, meta and para") {
    std::set<int> offsets;
    for (const Molecule& m : generate(params_for(Task::substitution), 0, 300)) {
      const Groups g = find_groups(m);
      offsets.merge(benzene_offsets(m, carbon_neighbour(m, g.nitro[0]), carbon_neighbour(m, g.amino[0])));
    }
    CHECK(offsets == std::set<int>{1, 2, 3});
  }
}

TEST_CASE("statistics and class balance stay in the configured ranges", "[molecules]") {
  for (Task task : tasks) {
    for (double fraction : {0.5, 0.2, 0.9}) {
      Params p = params_for(task, 5);
      p.positive_fraction = fraction;
      const index_t n = 2000;
      const auto molecules = generate(p, 0, n);
      const Statistics s = summarize(molecules);
      INFO(task_name(task) << " positive_fraction " << fraction);
      REQUIRE(s.count == n);
      const auto positives =
          std::count_if(molecules.begin(), molecules.end(), [](const Molecule& m) { return m.label == 1; });
      CHECK(s.positives == positives);
      // Bernoulli labels: within 4 standard deviations of the requested fraction.
      CHECK(std::abs(double(s.positives) / double(n) - fraction) <=
            4 * std::sqrt(fraction * (1 - fraction) / double(n)));
      CHECK(s.atoms.min >= p.min_atoms);
      CHECK(s.atoms.max <= p.max_atoms);
      CHECK(s.atoms.mean == Approx(p.mean_atoms).margin(1.0));  // truncation and infeasible sizes shift it a little
      CHECK(s.rings.min >= p.min_rings);
      CHECK(s.rings.max <= p.max_rings);
      CHECK(s.aromatic_rings.mean > 0.5);
      CHECK(s.bonds.mean == Approx(s.atoms.mean + s.rings.mean - 1).epsilon(1e-9));
      const index_t atoms = std::accumulate(s.elements.begin(), s.elements.end(), index_t{0});
      CHECK(atoms == static_cast<index_t>(std::llround(s.atoms.mean * double(n))));
      CHECK(double(s.elements[static_cast<int>(Element::C)]) / double(atoms) > 0.55);
      for (int e = 0; e < num_elements; ++e) CHECK(s.elements[e] > 0);  // every element of the mix appears
    }
  }
  SECTION("a narrow size range and a fixed ring count are met exactly") {
    Params p = params_for(Task::ring_parity);
    p.min_atoms = p.max_atoms = 20;
    p.mean_atoms = 20;
    p.min_rings = p.max_rings = 3;
    p.positive_fraction = 1;
    const Statistics s = summarize(generate(p, 0, 300));
    CHECK(s.atoms.min == 20);
    CHECK(s.atoms.max == 20);
    CHECK(s.rings.min == 3);
    CHECK(s.rings.max == 3);
    CHECK(s.positives == 300);
  }
}

TEST_CASE("bad parameters throw Error naming the argument", "[molecules][errors]") {
  auto fails = [](auto change, const std::string& argument) {
    Params p;
    change(p);
    CHECK_THROWS_AS(validate(p), flashlstm::Error);
    CHECK_THROWS_WITH(generate(p, 0, 1), StartsWith(argument + ":"));
  };
  fails([](Params& p) { p.positive_fraction = 1.5; }, "positive_fraction");
  fails([](Params& p) { p.positive_fraction = -0.1; }, "positive_fraction");
  fails([](Params& p) { p.positive_fraction = std::nan(""); }, "positive_fraction");
  fails([](Params& p) { p.min_atoms = -3; }, "min_atoms");
  fails([](Params& p) { p.min_atoms = 30; }, "max_atoms");
  fails([](Params& p) { p.max_atoms = 100000; }, "max_atoms");
  fails([](Params& p) { p.mean_atoms = 40; }, "mean_atoms");
  fails([](Params& p) { p.stddev_atoms = -1; }, "stddev_atoms");
  fails([](Params& p) { p.min_rings = -1; }, "min_rings");
  fails([](Params& p) { p.max_rings = 0; }, "max_rings");
  fails([](Params& p) { p.min_rings = p.max_rings = 9; }, "min_rings");
  fails([](Params& p) { p.max_rings = std::numeric_limits<int>::max(); }, "max_rings");  // the draw would overflow
  fails([](Params& p) { p.min_rings = p.max_rings = std::numeric_limits<int>::max(); }, "max_rings");
  fails([](Params& p) { p.aromatic_fraction = 2; }, "aromatic_fraction");
  fails([](Params& p) { p.atom_mix[0] = 0; }, "atom_mix");
  fails([](Params& p) { p.atom_mix[3] = -1; }, "atom_mix");
  fails([](Params& p) { p.substituents = {1, 1, 0, 0, 0, 0, 0}; }, "substituents");
  fails([](Params& p) { p.distance = 3; }, "distance");
  fails([](Params& p) { p.distance = 26; }, "distance");
  fails([](Params& p) { p.task = static_cast<Task>(7); }, "task");
  fails([](Params& p) { p.task = Task::substitution, p.min_rings = 0; }, "min_rings");
  fails([](Params& p) { p.task = Task::ring_parity, p.min_rings = p.max_rings = 2; }, "max_rings");
  CHECK_THROWS_WITH(parse_task("rings"), StartsWith("task: must be one of distance, ring_parity, substitution"));
  CHECK(parse_task("substitution") == Task::substitution);
  CHECK_THROWS_WITH(generate(Params{}, 0, -1), StartsWith("count:"));
  CHECK_THROWS_WITH(generate(Params{}, -1, 1), StartsWith("first:"));
  CHECK_THROWS_WITH(generate_molecule(Params{}, -2), StartsWith("index:"));
  CHECK_THROWS_WITH(generate(Params{}, 0, 1, -1), StartsWith("threads:"));
  Params parity = params_for(Task::ring_parity);  // only even counts are possible, so only label 0
  parity.min_rings = parity.max_rings = 2;
  parity.positive_fraction = 0;
  CHECK_NOTHROW(generate(parity, 0, 10));
  Params tight;  // valid ranges that leave no room: 4 rings and both groups never fit in 12 atoms
  tight.min_atoms = tight.max_atoms = 12;
  tight.mean_atoms = 12;
  tight.min_rings = tight.max_rings = 3;
  tight.distance = 9;
  tight.positive_fraction = 1;
  CHECK_THROWS_WITH(generate(tight, 0, 4), Catch::Contains("could not be built"));
}

TEST_CASE("a seed gives the same molecules whatever the threads and the slice", "[molecules]") {
  const Params p = params_for(Task::distance, 2024);
  auto smiles = [](const std::vector<Molecule>& ms) {
    std::vector<std::string> out;
    for (const Molecule& m : ms) out.push_back(to_smiles(m) + " " + std::to_string(m.label));
    return out;
  };
  const auto all = smiles(generate(p, 0, 400, 1));
  CHECK(smiles(generate(p, 0, 400, 2)) == all);
  CHECK(smiles(generate(p, 0, 400, 0)) == all);
  const auto slice = smiles(generate(p, 150, 100, 2));
  CHECK(std::equal(slice.begin(), slice.end(), all.begin() + 150));
  CHECK(to_smiles(generate_molecule(p, 399)) + " " + std::to_string(generate_molecule(p, 399).label) == all[399]);
  Params other = p;
  other.seed = 2025;
  const auto different = smiles(generate(other, 0, 400));
  int same = 0;
  for (std::size_t i = 0; i < all.size(); ++i) same += different[i] == all[i] ? 1 : 0;
  CHECK(same < 40);
  CHECK(std::set<std::string>(all.begin(), all.end()).size() > 390);  // nearly all distinct
}

TEST_CASE("SMILES writes atom i as its i-th atom, with brackets, branches and ring digits", "[molecules][io]") {
  auto atom = [](Element e, int h, bool aromatic = false, int charge = 0) {
    return Atom{.element = e, .charge = charge, .aromatic = aromatic, .hydrogens = h};
  };
  auto bond = [](int a, int b, BondType t, int order) { return Bond{.a = a, .b = b, .type = t, .order = order}; };
  Molecule ethanol{{atom(Element::C, 3), atom(Element::C, 2), atom(Element::O, 1)},
                   {bond(0, 1, BondType::single, 1), bond(1, 2, BondType::single, 1)}};
  CHECK(to_smiles(ethanol) == "CCO");
  Molecule nitrobenzene;
  for (int i = 0; i < 6; ++i) nitrobenzene.atoms.push_back(atom(Element::C, i == 0 ? 0 : 1, true));
  for (int i = 0; i < 6; ++i)
    nitrobenzene.bonds.push_back(
        bond(std::min(i, (i + 1) % 6), std::max(i, (i + 1) % 6), BondType::aromatic, i % 2 + 1));
  nitrobenzene.atoms.push_back(atom(Element::N, 0, false, 1));
  nitrobenzene.atoms.push_back(atom(Element::O, 0));
  nitrobenzene.atoms.push_back(atom(Element::O, 0, false, -1));
  nitrobenzene.bonds.push_back(bond(0, 6, BondType::single, 1));
  nitrobenzene.bonds.push_back(bond(6, 7, BondType::double_bond, 2));
  nitrobenzene.bonds.push_back(bond(6, 8, BondType::single, 1));
  CHECK(to_smiles(nitrobenzene) == "c1(ccccc1)[N+](=O)[O-]");
  CHECK(to_smiles(in_smiles_order(nitrobenzene, 7)) == "O=[N+](c1ccccc1)[O-]");
  Molecule pyrrole;  // [nH]: the donor N keeps its hydrogen
  pyrrole.atoms = {atom(Element::N, 1, true), atom(Element::C, 1, true), atom(Element::C, 1, true),
                   atom(Element::C, 1, true), atom(Element::C, 1, true)};
  pyrrole.bonds = {bond(0, 1, BondType::aromatic, 1), bond(1, 2, BondType::aromatic, 2),
                   bond(2, 3, BondType::aromatic, 1), bond(3, 4, BondType::aromatic, 2),
                   bond(0, 4, BondType::aromatic, 1)};
  CHECK(to_smiles(pyrrole) == "[nH]1cccc1");
  Molecule broken = ethanol;
  broken.bonds.push_back(bond(2, 5, BondType::single, 1));
  CHECK_THROWS_WITH(to_smiles(broken), StartsWith("molecule:"));

  for (Task task : tasks) {
    for (const Molecule& m : generate(params_for(task), 0, 300)) {
      const std::string s = to_smiles(m);
      const auto written = smiles_atoms(s);
      REQUIRE(written.size() == m.atoms.size());
      for (std::size_t i = 0; i < written.size(); ++i) {
        std::string symbol(element_symbol(m.atoms[i].element));
        if (m.atoms[i].aromatic) symbol[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(symbol[0])));
        REQUIRE(written[i] == symbol);
      }
      REQUIRE(to_smiles(in_smiles_order(m, 0)) == s);  // generated molecules are already in SMILES order
    }
  }
}

TEST_CASE("the TU writer produces PyG's layout with consistent counts and 1-based ids", "[molecules][io]") {
  const auto root = std::filesystem::temp_directory_path() / "flashlstm_test_molecules_tu";
  std::filesystem::remove_all(root);
  const auto molecules = generate(params_for(Task::substitution), 0, 50);
  const auto raw = write_tu(root, "MOLS", molecules);
  CHECK(raw == root / "MOLS" / "raw");
  const auto a = read_lines(raw / "MOLS_A.txt");
  const auto indicator = read_lines(raw / "MOLS_graph_indicator.txt");
  const auto node_labels = read_lines(raw / "MOLS_node_labels.txt");
  const auto edge_labels = read_lines(raw / "MOLS_edge_labels.txt");
  const auto graph_labels = read_lines(raw / "MOLS_graph_labels.txt");
  std::size_t atoms = 0, bonds = 0;
  for (const Molecule& m : molecules) atoms += m.atoms.size(), bonds += m.bonds.size();
  CHECK(indicator.size() == atoms);
  CHECK(node_labels.size() == atoms);
  CHECK(a.size() == 2 * bonds);
  CHECK(edge_labels.size() == 2 * bonds);
  REQUIRE(graph_labels.size() == molecules.size());
  std::size_t first = 1, line = 0;  // node id of each graph's atom 0
  for (std::size_t g = 0; g < molecules.size(); ++g) {
    const Molecule& m = molecules[g];
    CHECK(graph_labels[g] == std::to_string(m.label));
    for (std::size_t i = 0; i < m.atoms.size(); ++i) {
      CHECK(indicator[first - 1 + i] == std::to_string(g + 1));
      CHECK(node_labels[first - 1 + i] == std::to_string(static_cast<int>(m.atoms[i].element)));
    }
    for (const Bond& b : m.bonds) {
      CHECK(a[line] == std::to_string(first + b.a) + ", " + std::to_string(first + b.b));
      CHECK(a[line + 1] == std::to_string(first + b.b) + ", " + std::to_string(first + b.a));
      CHECK(edge_labels[line] == std::to_string(static_cast<int>(b.type)));
      CHECK(edge_labels[line + 1] == edge_labels[line]);
      line += 2;
    }
    first += m.atoms.size();
  }
  CHECK_THROWS_WITH(write_tu(root, "a/b", molecules), StartsWith("name:"));
  std::filesystem::remove_all(root);
}

TEST_CASE("every exception of a molecule leaves the OpenMP loop as itself", "[molecules][errors]") {
  const Params p = params_for(Task::distance);
  std::atomic<int> calls{0};
  // bad_alloc and any other exception thrown inside the parallel loop (here by the progress callback)
  // reach the caller; an exception escaping an OpenMP region would terminate the process instead.
  CHECK_THROWS_AS(generate(p, 0, 500, 2, [&](index_t) {
    ++calls;
    throw std::bad_alloc();
  }), std::bad_alloc);
  CHECK(calls < 500);  // the first failure stops the rest
  CHECK_THROWS_WITH(generate(p, 0, 500, 2, [](index_t) { throw std::runtime_error("callback failed"); }),
                    "callback failed");
}

TEST_CASE("counts and thread counts that cannot work are refused before any work", "[molecules][errors]") {
  const Params p;
  constexpr index_t largest = std::numeric_limits<index_t>::max();
  CHECK_THROWS_WITH(generate(p, largest - 1, 4), StartsWith("count: first + count must be <="));
  CHECK_THROWS_WITH(generate(p, 0, index_t{1} << 40), StartsWith("count:") && Catch::Contains("GiB"));
  CHECK(molecule_bytes(p) >= sizeof(Molecule) + p.max_atoms * sizeof(Atom));
  CHECK_THROWS_WITH(generate(p, 0, 1, 65536), StartsWith("threads: must be in [0, " +
                                                         std::to_string(flashlstm::datasets::max_threads()) + "]"));
  CHECK(generate(p, largest - 2, 2, 1).size() == 2);
}

TEST_CASE("writers that cannot write name the file and leave no partial file", "[molecules][io]") {
  const auto root = std::filesystem::temp_directory_path() / "flashlstm_test_molecule_writers";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  const auto molecules = generate(params_for(Task::ring_parity), 0, 20);
  std::ofstream(root / "file") << "a regular file";
  // A parent that is a regular file: ENOTDIR.
  CHECK_THROWS_WITH(write_smiles(root / "file" / "m.smi", molecules), StartsWith("file:"));
  CHECK_THROWS_WITH(write_json(root / "file" / "m.json", "M", Params{}, molecules), StartsWith("file:"));
  CHECK_THROWS_WITH(write_tu(root / "file", "M", molecules), StartsWith("root:"));
  if (std::filesystem::is_character_file("/dev/full")) {  // a full disk: ENOSPC
    CHECK_THROWS_WITH(write_smiles("/dev/full", molecules),
                      StartsWith("file: cannot write '/dev/full': No space left on device"));
    CHECK_THROWS_WITH(write_json("/dev/full", "M", Params{}, molecules), Catch::Contains("No space left on device"));
    // The last TU file on a full disk: none of the five is renamed into place, the old ones stay.
    const auto raw = write_tu(root, "M", molecules);
    std::filesystem::remove(raw / "M_graph_labels.txt");
    std::filesystem::create_symlink("/dev/full", raw / "M_graph_labels.txt");
    const auto old_a = read_lines(raw / "M_A.txt");
    const auto more = generate(params_for(Task::ring_parity), 100, 30);
    CHECK_THROWS_WITH(write_tu(root, "M", more),
                      StartsWith("root: cannot write '" + (raw / "M_graph_labels.txt").string() + "'"));
    CHECK(read_lines(raw / "M_A.txt") == old_a);
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(raw)) names.insert(e.path().filename().string());
    CHECK(names == std::set<std::string>{"M_A.txt", "M_edge_labels.txt", "M_graph_indicator.txt",
                                         "M_graph_labels.txt", "M_node_labels.txt", "README.txt"});
  }
  // The JSON document streams molecule by molecule and is still one valid document.
  write_json(root / "m.json", "M", Params{}, molecules);
  std::ifstream in(root / "m.json");
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(json.starts_with("{\"edge_label_names\":"));
  CHECK(json.ends_with("]}\n"));
  CHECK(json.find("\"molecules\":[{\"aromatic\":") != std::string::npos);
  std::filesystem::remove_all(root);
}
