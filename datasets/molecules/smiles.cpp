// SMILES for molecule graphs (molecules.hpp). One depth-first walk serves both to_smiles and
// in_smiles_order, so a molecule renumbered by in_smiles_order is written atom 0, 1, 2, ...: an RDKit
// molecule parsed from the string has our atom numbering, and tests compare graphs atom by atom
// instead of matching them up to isomorphism.
//
// Tree bonds of the walk are written between an atom and its child (all children but the last in
// parentheses); every other bond closes a ring with a digit, written with its bond symbol where the
// walk meets the bond first. Digits are reused once closed, but never at the atom that closes them.
#include "datasets/molecules/molecules.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <string>

namespace flashlstm::datasets::molecules {

namespace {

constexpr int max_ring_digits = 99;

void check(const Molecule& m) {
  const auto n = static_cast<int>(m.atoms.size());
  for (const Bond& b : m.bonds) {
    require(b.a >= 0 && b.a < n && b.b >= 0 && b.b < n && b.a != b.b, "molecule",
            "bond ({}, {}) must join two different atoms of the {}", b.a, b.b, n);
    require(static_cast<int>(b.type) < num_bond_types && b.order >= 1 && b.order <= 3, "molecule",
            "bond ({}, {}) has type {} and order {}", b.a, b.b, static_cast<int>(b.type), b.order);
  }
  for (const Atom& a : m.atoms) {
    const auto e = static_cast<int>(a.element);
    require(e < num_elements, "molecule", "unknown element {}", e);
    require(!a.aromatic || a.element == Element::C || a.element == Element::N || a.element == Element::O ||
                a.element == Element::S,
            "molecule", "{} cannot be aromatic", element_symbol(a.element));
    require(a.hydrogens >= 0, "molecule", "negative hydrogen count {}", a.hydrogens);
  }
}

// The walk: atoms in visiting order, the tree bonds to each atom's children in visiting order, and the
// ring-closure bonds at each atom.
struct Walk {
  std::vector<int> order;
  std::vector<int> roots;                                   // first atom of each connected component
  std::vector<std::vector<int>> children;                   // bond indices
  std::vector<std::vector<int>> closures;                   // bond indices
  std::vector<std::vector<std::pair<int, int>>> adjacency;  // (neighbour, bond), ascending neighbour

  Walk(const Molecule& m, int start) {
    const auto n = m.atoms.size();
    adjacency.resize(n);
    children.resize(n);
    closures.resize(n);
    for (int i = 0; i < static_cast<int>(m.bonds.size()); ++i) {
      adjacency[m.bonds[i].a].emplace_back(m.bonds[i].b, i);
      adjacency[m.bonds[i].b].emplace_back(m.bonds[i].a, i);
    }
    for (auto& list : adjacency) std::ranges::sort(list);
    seen_.assign(n, false);
    std::vector<bool> tree(m.bonds.size(), false);
    if (n > 0) {
      roots.push_back(start);
      visit(start, tree);
    }
    for (int i = 0; i < static_cast<int>(n); ++i) {
      if (!seen_[i]) {
        roots.push_back(i);
        visit(i, tree);
      }
    }
    for (int i = 0; i < static_cast<int>(m.bonds.size()); ++i) {
      if (!tree[i]) {
        closures[m.bonds[i].a].push_back(i);
        closures[m.bonds[i].b].push_back(i);
      }
    }
  }

 private:
  void visit(int v, std::vector<bool>& tree) {
    seen_[v] = true;
    order.push_back(v);
    for (const auto& [w, bond] : adjacency[v]) {
      if (seen_[w]) continue;
      tree[bond] = true;
      children[v].push_back(bond);
      visit(w, tree);
    }
  }

  std::vector<bool> seen_;
};

class Writer {
 public:
  Writer(const Molecule& m, const Walk& walk)
      : m_(m), walk_(walk), digit_(m.bonds.size(), 0), bond_sum_(m.atoms.size(), 0) {
    for (const Bond& b : m.bonds) {
      bond_sum_[b.a] += b.order;
      bond_sum_[b.b] += b.order;
    }
  }

  std::string write() {
    for (std::size_t r = 0; r < walk_.roots.size(); ++r) {
      if (r > 0) out_ += '.';
      atom(walk_.roots[r]);
    }
    return std::move(out_);
  }

 private:
  int other(int bond, int v) const { return m_.bonds[bond].a == v ? m_.bonds[bond].b : m_.bonds[bond].a; }

  std::string bond_symbol(int bond) const {
    const Bond& b = m_.bonds[bond];
    switch (b.type) {
      case BondType::aromatic:
        return "";
      case BondType::single:
        return m_.atoms[b.a].aromatic && m_.atoms[b.b].aromatic ? "-" : "";
      case BondType::double_bond:
        return "=";
      case BondType::triple_bond:
        return "#";
    }
    return "";
  }

  // Organic-subset atoms get the hydrogens SMILES readers add (lowest normal valence minus bonds);
  // anything else goes in brackets with explicit hydrogens and charge.
  std::string token(int v) const {
    const Atom& a = m_.atoms[v];
    std::string symbol(element_symbol(a.element));
    if (a.aromatic) symbol[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(symbol[0])));
    const int implicit = valence(a.element, 0) - bond_sum_[v];
    const bool bracket =
        a.charge != 0 || (a.aromatic ? a.hydrogens > 0 && a.element != Element::C : a.hydrogens != implicit);
    if (!bracket) return symbol;
    std::string t = "[" + symbol;
    if (a.hydrogens > 0) t += a.hydrogens == 1 ? "H" : fmt::format("H{}", a.hydrogens);
    if (a.charge != 0) {
      t += a.charge > 0 ? '+' : '-';
      if (std::abs(a.charge) > 1) t += std::to_string(std::abs(a.charge));
    }
    return t + "]";
  }

  static std::string digit_text(int d) { return d < 10 ? std::to_string(d) : fmt::format("%{}", d); }

  void atom(int v) {
    out_ += token(v);
    std::vector<int> closed;
    for (int bond : walk_.closures[v]) {
      if (digit_[bond] > 0) {
        out_ += digit_text(digit_[bond]);
        closed.push_back(digit_[bond]);
      }
    }
    for (int bond : walk_.closures[v]) {
      if (digit_[bond] > 0) continue;
      int d = 1;
      while (d <= max_ring_digits && (in_use_[d] || std::ranges::find(closed, d) != closed.end())) ++d;
      require(d <= max_ring_digits, "molecule", "more than {} rings open at once", max_ring_digits);
      in_use_[d] = true;
      digit_[bond] = d;
      out_ += bond_symbol(bond) + digit_text(d);
    }
    for (int d : closed) in_use_[d] = false;
    const auto& kids = walk_.children[v];
    for (std::size_t k = 0; k < kids.size(); ++k) {
      const bool branch = k + 1 < kids.size();
      if (branch) out_ += '(';
      out_ += bond_symbol(kids[k]);
      atom(other(kids[k], v));
      if (branch) out_ += ')';
    }
  }

  const Molecule& m_;
  const Walk& walk_;
  std::vector<int> digit_;  // ring digit of each closure bond, 0 until opened
  std::vector<int> bond_sum_;
  std::array<bool, max_ring_digits + 1> in_use_{};
  std::string out_;
};

}  // namespace

std::string to_smiles(const Molecule& molecule) {
  check(molecule);
  const Walk walk(molecule, 0);
  return Writer(molecule, walk).write();
}

Molecule in_smiles_order(const Molecule& molecule, int start) {
  check(molecule);
  const auto n = static_cast<int>(molecule.atoms.size());
  require(n == 0 || (start >= 0 && start < n), "start", "must be an atom index in [0, {}), got {}", n, start);
  const Walk walk(molecule, start);
  std::vector<int> position(n);
  for (int k = 0; k < n; ++k) position[walk.order[k]] = k;
  Molecule out = molecule;
  for (int k = 0; k < n; ++k) out.atoms[k] = molecule.atoms[walk.order[k]];
  for (Bond& b : out.bonds) {
    b.a = position[b.a];
    b.b = position[b.b];
    if (b.a > b.b) std::swap(b.a, b.b);
  }
  std::ranges::sort(out.bonds, [](const Bond& x, const Bond& y) { return std::pair(x.a, x.b) < std::pair(y.a, y.b); });
  return out;
}

}  // namespace flashlstm::datasets::molecules
