// The generator (molecules.hpp): parameter checks, the per-molecule random stream, the fragment
// builder, the task placements and the dataset statistics.
//
// Each molecule draws its label, then a size and a ring count, and is built in three steps: ring
// systems (the skeleton), pieces added one by one on atoms with a free valence until the size is
// reached, and the task's two groups where a task needs them. A step that does not fit (the rings need
// more atoms than the size allows, no pair of atoms at the wanted distance) abandons the attempt and
// the molecule draws a new size and ring count from the same stream; labels are never rejected, so the
// positive fraction is the requested one up to sampling noise.
//
// Rules that keep RDKit's aromaticity perception equal to our aromatic flags:
//   - aromatic 6-rings hold C and pyridine-type N, each with one double bond in the Kekulé structure;
//     aromatic 5-rings hold one donor (NH, O or S, no double bond) and four such atoms: 6 pi
//     electrons per ring, so each ring and each fused system passes RDKit's 4n + 2 rule;
//   - rings are fused only onto a C-C bond whose atoms have no other neighbour, aromatic rings only onto
//     an aromatic 6-ring: no atom is in three rings, and the new atoms of an aromatic ring pair up among
//     themselves, so the Kekulé structure extends;
//   - aromatic atoms take substituents through single bonds only; pyridine-type N has no free valence;
//   - every non-aromatic ring keeps an anchor carbon that never gets a double bond: an sp3 atom keeps
//     its ring, and every fused envelope through it, from being aromatic.
// Two heteroatoms are never bonded to each other, except N-O in nitro groups.
#include "datasets/molecules/molecules.hpp"

#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/parallel.hpp"
#include "datasets/arguments.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>

namespace flashlstm::datasets::molecules {

namespace {

using enum Element;

constexpr int atoms_limit = 500;       // max_atoms above this is refused
constexpr int max_attempts = 1000;     // per molecule, before the parameters are declared infeasible
constexpr int attempts_per_size = 20;  // a size is kept for this many attempts, so that a size too small
                                       // for the drawn ring count is not traded for a larger one
constexpr int group_atoms = 4;         // the distance and substitution tasks' nitro (3) and amino (1)
constexpr double linker_lengths[] = {0.5, 0.35, 0.15};  // P(a linked ring hangs on 0, 1, 2 chain atoms)
constexpr double chain_end_preference = 0.5;            // P(an alkyl step extends a chain end)
constexpr Task all_tasks[] = {Task::distance, Task::ring_parity, Task::substitution};

double weight_sum(const std::array<double, num_elements>& mix, std::initializer_list<Element> elements) {
  double sum = 0;
  for (Element e : elements) sum += mix[static_cast<int>(e)];
  return sum;
}

// The random stream of one molecule: std::mt19937_64 seeded by std::seed_seq from (seed, task, index),
// both exactly specified by the standard; the distributions below are ours for the same reason. The
// task is part of the key so that the tasks' labels are independent for one seed.
class Stream {
 public:
  Stream(std::uint64_t seed, Task task, index_t index)
      : engine_(seeded(seed, static_cast<std::uint32_t>(task), static_cast<std::uint64_t>(index))) {}

  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // U[0, 1)
  bool chance(double p) { return uniform() < p; }
  int below(int n) { return std::min(n - 1, static_cast<int>(uniform() * n)); }  // U{0, ..., n - 1}, n >= 1
  double normal() {                                                              // Box-Muller
    const double u = 1.0 - uniform(), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * std::numbers::pi * v);
  }
  // An index with probability proportional to its weight; -1 when the weights sum to 0.
  template <class Weights>
  int weighted(const Weights& weights) {
    const double total = std::accumulate(std::begin(weights), std::end(weights), 0.0);
    if (total <= 0) return -1;
    double x = uniform() * total;
    int last = -1;
    for (int i = 0; i < static_cast<int>(std::size(weights)); ++i) {
      if (weights[i] <= 0) continue;
      last = i;
      if (x < weights[i]) return i;
      x -= weights[i];
    }
    return last;
  }
  template <class T>
  const T& pick(const std::vector<T>& items) {
    return items[below(static_cast<int>(items.size()))];
  }
  template <class T>
  void shuffle(std::vector<T>& items) {
    for (int i = static_cast<int>(items.size()) - 1; i > 0; --i) std::swap(items[i], items[below(i + 1)]);
  }

 private:
  static std::mt19937_64 seeded(std::uint64_t seed, std::uint32_t task, std::uint64_t index) {
    std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32), task,
                      static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32)};
    return std::mt19937_64(seq);
  }

  std::mt19937_64 engine_;
};

// What fill() adds, one piece per step; atoms per piece in piece_atoms.
enum class Piece { nitro, amino, hydroxyl, carbonyl, halogen, alkyl, ether };
constexpr Piece all_pieces[] = {Piece::nitro,   Piece::amino, Piece::hydroxyl, Piece::carbonyl,
                                Piece::halogen, Piece::alkyl, Piece::ether};
constexpr int piece_atoms[] = {3, 1, 1, 1, 1, 1, 2};

double piece_weight(const Substituents& s, Piece piece) {
  switch (piece) {
    case Piece::nitro:
      return s.nitro;
    case Piece::amino:
      return s.amino;
    case Piece::hydroxyl:
      return s.hydroxyl;
    case Piece::carbonyl:
      return s.carbonyl;
    case Piece::halogen:
      return s.halogen;
    case Piece::alkyl:
      return s.alkyl;
    case Piece::ether:
      return s.ether;
  }
  return 0;
}

// The distance and substitution tasks own the one nitro and the one amino group of each molecule.
bool task_places_groups(Task task) { return task != Task::ring_parity; }

struct RingKind {
  int size;
  bool aromatic;
};

class Builder {
 public:
  Builder(const Params& params, Stream& rng) : p_(params), rng_(rng) {}

  std::optional<Molecule> build(int atoms, int rings, int label) {
    switch (p_.task) {
      case Task::distance:
        if (!skeleton(rings, atoms - group_atoms, false) || !fill(atoms - group_atoms) || !place_distance(label)) {
          return std::nullopt;
        }
        break;
      case Task::ring_parity:
        if (!skeleton(rings, atoms, false) || !fill(atoms)) return std::nullopt;
        break;
      case Task::substitution:
        if (!skeleton(rings, atoms - group_atoms, true) || !place_substitution(label) || !fill(atoms)) {
          return std::nullopt;
        }
        break;
    }
    return finish(label);
  }

 private:
  struct Node {
    Element element;
    int charge = 0;
    bool aromatic = false, in_ring = false;
    bool anchor = false;    // the sp3 carbon of a non-aromatic ring: never a double bond
    bool multiple = false;  // has a double or triple bond outside aromatic rings
    bool locked = false;    // a task group's atom: takes no further pieces
    int bond_sum = 0;       // sum of Kekulé orders
    std::vector<int> neighbors;
  };
  struct Ring {
    std::vector<int> atoms;  // in ring order
    bool aromatic;
  };

  int count() const { return static_cast<int>(nodes_.size()); }
  bool is(int i, Element e) const { return nodes_[i].element == e; }
  int degree(int i) const { return static_cast<int>(nodes_[i].neighbors.size()); }
  int free_valence(int i) const { return valence(nodes_[i].element, nodes_[i].charge) - nodes_[i].bond_sum; }
  // A carbon that can take one more single bond.
  bool takes_single(int i) const { return is(i, C) && free_valence(i) >= 1 && degree(i) <= 3; }

  int add_atom(Element element, int charge = 0) {
    nodes_.push_back(Node{.element = element, .charge = charge, .neighbors = {}});
    return count() - 1;
  }

  void add_bond(int a, int b, int order, bool aromatic = false) {
    nodes_[a].neighbors.push_back(b);
    nodes_[b].neighbors.push_back(a);
    nodes_[a].bond_sum += order;
    nodes_[b].bond_sum += order;
    if (order > 1 && !aromatic) nodes_[a].multiple = nodes_[b].multiple = true;
    const BondType type = aromatic ? BondType::aromatic : static_cast<BondType>(order);  // 1, 2, 3: single..triple
    bonds_.push_back(Bond{.a = a, .b = b, .type = type, .order = order});
  }

  std::optional<Element> draw_element(std::initializer_list<Element> choices) {
    std::vector<double> weights;
    for (Element e : choices) weights.push_back(p_.atom_mix[static_cast<int>(e)]);
    const int i = rng_.weighted(weights);
    if (i < 0) return std::nullopt;
    return *(choices.begin() + i);
  }

  bool aromatic_five_possible() const { return weight_sum(p_.atom_mix, {N, O, S}) > 0; }

  RingKind draw_kind() {
    RingKind kind{rng_.chance(p_.six_ring_fraction) ? 6 : 5, rng_.chance(p_.aromatic_fraction)};
    if (kind.size == 5 && kind.aromatic && !aromatic_five_possible()) kind.size = 6;
    return kind;
  }

  // Adds a ring of `size` positions. Standalone: all atoms new, position 0 a carbon bonded to
  // `attach_to` when that is >= 0. Fused: positions 0 and size - 1 are the existing atoms `shared`.
  void ring(RingKind kind, bool benzene, std::optional<std::pair<int, int>> shared, int attach_to) {
    const int size = kind.size;
    const bool fused = shared.has_value();
    std::vector<Element> element(size, C);
    std::vector<bool> fresh(size, true);
    if (fused) fresh[0] = fresh[size - 1] = false;

    int donor = -1, anchor = -1, max_hetero = 2;
    std::vector<int> candidates;  // positions that may become a heteroatom
    if (kind.aromatic && size == 5) {
      donor = fused && rng_.chance(0.5) ? 3 : 1;  // a fused donor must sit next to a shared atom
      element[donor] = *draw_element({N, O, S});
      max_hetero = 1;
      for (int q : {(donor + 2) % 5, (donor + 3) % 5}) {  // 1,3-azoles: pyridine-type N two bonds away
        if (q != 0 && fresh[q]) candidates.push_back(q);
      }
    } else {
      std::vector<int> open;
      for (int q = 1; q < size; ++q) {
        if (fresh[q]) open.push_back(q);
      }
      if (!kind.aromatic) {
        anchor = rng_.pick(open);
        std::erase(open, anchor);
      }
      candidates = open;
    }
    if (!benzene) {
      rng_.shuffle(candidates);
      int placed = 0;
      for (int q : candidates) {
        if (placed == max_hetero || !rng_.chance(p_.ring_heteroatom_probability)) continue;
        if (element[(q + 1) % size] != C || element[(q + size - 1) % size] != C) continue;
        const auto e = kind.aromatic ? std::optional<Element>(N) : draw_element({N, O, S});
        if (!e || (kind.aromatic && p_.atom_mix[static_cast<int>(N)] <= 0)) continue;
        element[q] = *e;
        ++placed;
      }
    }

    std::vector<int> ids(size);
    for (int q = 0; q < size; ++q) {
      ids[q] = fused && q == 0 ? shared->first : fused && q == size - 1 ? shared->second : add_atom(element[q]);
      nodes_[ids[q]].in_ring = true;
      nodes_[ids[q]].aromatic = nodes_[ids[q]].aromatic || kind.aromatic;
    }
    if (anchor >= 0) nodes_[ids[anchor]].anchor = true;
    // The Kekulé structure: in a 6-ring bonds (1,2), (3,4), (5,0) are double; in a 5-ring the two bonds
    // that pair the non-donor atoms, (d+1, d+2) and (d+3, d+4). Shared atoms keep their double bond.
    auto order = [&](int q) {
      if (!kind.aromatic) return 1;
      if (size == 6) return q % 2 == 1 ? 2 : 1;
      return q == (donor + 1) % 5 || q == (donor + 3) % 5 ? 2 : 1;
    };
    for (int q = 0; q < size - 1; ++q) add_bond(ids[q], ids[q + 1], order(q), kind.aromatic);
    if (!fused) add_bond(ids[size - 1], ids[0], order(size - 1), kind.aromatic);
    if (attach_to >= 0) add_bond(attach_to, ids[0], 1);
    rings_.push_back(Ring{ids, kind.aromatic});
  }

  // Free C-C ring bonds (both atoms of degree 2) a new ring can fuse onto: for an aromatic ring only
  // those of aromatic 6-rings.
  std::vector<std::pair<int, int>> fusion_sites(bool aromatic) const {
    std::vector<std::pair<int, int>> sites;
    for (const Ring& r : rings_) {
      const int n = static_cast<int>(r.atoms.size());
      if (aromatic && !(r.aromatic && n == 6)) continue;
      for (int q = 0; q < n; ++q) {
        const int a = r.atoms[q], b = r.atoms[(q + 1) % n];
        if (is(a, C) && is(b, C) && degree(a) == 2 && degree(b) == 2) sites.emplace_back(a, b);
      }
    }
    return sites;
  }

  bool try_fuse(RingKind kind, int atoms_left) {
    if (kind.size - 2 > atoms_left) return false;
    auto sites = fusion_sites(kind.aromatic);
    if (sites.empty()) return false;
    auto site = rng_.pick(sites);
    if (rng_.chance(0.5)) std::swap(site.first, site.second);
    ring(kind, false, site, -1);
    return true;
  }

  // A ring hung on the molecule by a bond or a chain of `length` atoms (C, or N/O/S between carbons).
  bool try_link(RingKind kind, int length, int atoms_left) {
    if (kind.size + length > atoms_left) return false;
    std::vector<int> sites;
    for (int i = 0; i < count(); ++i) {
      const bool neutral_n = is(i, N) && nodes_[i].charge == 0;
      if ((is(i, C) || neutral_n) && free_valence(i) >= 1 && degree(i) <= 3) sites.push_back(i);
    }
    if (sites.empty()) return false;
    int from = rng_.pick(sites);
    for (int k = 0; k < length; ++k) {
      Element e = *draw_element({C, N, O, S});
      if (!is(from, C)) e = C;
      const int atom = add_atom(e);
      add_bond(from, atom, 1);
      from = atom;
    }
    ring(kind, false, std::nullopt, from);
    return true;
  }

  // The ring systems: `rings` rings within `budget` atoms, the first a benzene when asked.
  bool skeleton(int rings, int budget, bool benzene_first) {
    if (rings == 0) {
      add_atom(C);
      return budget >= 1;
    }
    const RingKind first = benzene_first ? RingKind{6, true} : draw_kind();
    if (first.size > budget) return false;
    ring(first, benzene_first, std::nullopt, -1);
    for (int r = 1; r < rings; ++r) {
      const int atoms_left = budget - count() - 3 * (rings - 1 - r);  // a fused 5-ring costs 3
      const RingKind kind = draw_kind();
      const bool placed = rng_.chance(p_.fused_fraction) ? try_fuse(kind, atoms_left)
                                                         : try_link(kind, rng_.weighted(linker_lengths), atoms_left);
      if (placed) continue;
      const bool aromatic5 = kind.aromatic && aromatic_five_possible();
      if (!try_fuse({5, aromatic5}, atoms_left) && !try_fuse({5, false}, atoms_left) &&
          !try_link({5, false}, 0, atoms_left)) {
        return false;
      }
    }
    return count() <= budget;
  }

  std::vector<int> sites(Piece piece) const {
    std::vector<int> out;
    for (int i = 0; i < count(); ++i) {
      const Node& n = nodes_[i];
      bool ok = !n.locked && takes_single(i);
      if (piece == Piece::carbonyl) {
        ok = !n.locked && is(i, C) && !n.aromatic && !n.anchor && !n.multiple && free_valence(i) >= 2;
      } else if (piece == Piece::alkyl) {
        ok = !n.locked && (is(i, C) || (is(i, N) && n.charge == 0)) && free_valence(i) >= 1 && degree(i) <= 3;
      }
      if (ok) out.push_back(i);
    }
    return out;
  }

  void place(Piece piece, int site) {
    switch (piece) {
      case Piece::nitro: {
        const int n = add_atom(N, 1), o1 = add_atom(O), o2 = add_atom(O, -1);
        add_bond(site, n, 1);
        add_bond(n, o1, 2);
        add_bond(n, o2, 1);
        break;
      }
      case Piece::amino:
        add_bond(site, add_atom(N), 1);
        break;
      case Piece::hydroxyl:
        add_bond(site, add_atom(O), 1);
        break;
      case Piece::carbonyl:
        add_bond(site, add_atom(O), 2);
        break;
      case Piece::halogen:
        add_bond(site, add_atom(*draw_element({F, Cl, Br, I})), 1);
        break;
      case Piece::alkyl: {
        const Node& s = nodes_[site];
        const bool chain_carbon = is(site, C) && !s.in_ring && !s.multiple;
        int order = 1;
        if (chain_carbon && free_valence(site) >= 3 && rng_.chance(p_.triple_bond_probability)) {
          order = 3;
        } else if (chain_carbon && free_valence(site) >= 2 && rng_.chance(p_.double_bond_probability)) {
          order = 2;
        }
        add_bond(site, add_atom(C), order);
        break;
      }
      case Piece::ether: {
        const int x = add_atom(*draw_element({N, O, S}));
        add_bond(site, x, 1);
        add_bond(x, add_atom(C), 1);
        break;
      }
    }
  }

  bool piece_possible(Piece piece) const {
    if (task_places_groups(p_.task) && (piece == Piece::nitro || piece == Piece::amino)) return false;
    if (piece == Piece::halogen) return weight_sum(p_.atom_mix, {F, Cl, Br, I}) > 0;
    if (piece == Piece::ether) return weight_sum(p_.atom_mix, {N, O, S}) > 0;
    return true;
  }

  // Pieces on atoms with a free valence until the molecule has `target` atoms.
  bool fill(int target) {
    while (count() < target) {
      std::array<double, std::size(all_pieces)> weights{};
      for (Piece piece : all_pieces) {
        const int k = static_cast<int>(piece);
        if (piece_possible(piece) && piece_atoms[k] <= target - count())
          weights[k] = piece_weight(p_.substituents, piece);
      }
      bool placed = false;
      while (!placed) {
        const int k = rng_.weighted(weights);
        if (k < 0) return false;
        const Piece piece = all_pieces[k];
        std::vector<int> where = sites(piece);
        if (piece == Piece::alkyl && rng_.chance(chain_end_preference)) {
          std::vector<int> ends;
          for (int i : where) {
            if (is(i, C) && !nodes_[i].in_ring && degree(i) == 1) ends.push_back(i);
          }
          if (!ends.empty()) where = std::move(ends);
        }
        if (where.empty()) {
          weights[k] = 0;
          continue;
        }
        place(piece, rng_.pick(where));
        placed = true;
      }
    }
    return true;
  }

  void place_groups(int a, int b) {
    if (rng_.chance(0.5)) std::swap(a, b);
    place(Piece::nitro, a);
    place(Piece::amino, b);
    nodes_.back().locked = true;
  }

  // Nitro and amino on two carbons whose N-N distance (their distance + 2) is >= p.distance iff label.
  bool place_distance(int label) {
    std::vector<int> candidates;
    for (int i = 0; i < count(); ++i) {
      if (takes_single(i)) candidates.push_back(i);
    }
    std::vector<std::pair<int, int>> pairs;
    std::vector<int> dist(count());
    for (std::size_t x = 0; x < candidates.size(); ++x) {
      std::fill(dist.begin(), dist.end(), -1);
      std::vector<int> queue{candidates[x]};
      dist[candidates[x]] = 0;
      for (std::size_t head = 0; head < queue.size(); ++head) {
        for (int w : nodes_[queue[head]].neighbors) {
          if (dist[w] < 0) {
            dist[w] = dist[queue[head]] + 1;
            queue.push_back(w);
          }
        }
      }
      for (std::size_t y = x + 1; y < candidates.size(); ++y) {
        if ((dist[candidates[y]] + 2 >= p_.distance) == (label == 1)) pairs.emplace_back(candidates[x], candidates[y]);
      }
    }
    if (pairs.empty()) return false;
    const auto [a, b] = rng_.pick(pairs);
    place_groups(a, b);
    return true;
  }

  // Nitro and amino on the benzene (ring 0): ortho or para (ring offset 1 or 3) iff label, else meta.
  bool place_substitution(int label) {
    const std::vector<int>& ring = rings_[0].atoms;
    std::vector<std::pair<int, int>> pairs;
    for (int x = 0; x < 6; ++x) {
      for (int y = x + 1; y < 6; ++y) {
        if (degree(ring[x]) != 2 || degree(ring[y]) != 2) continue;
        const int offset = std::min(y - x, 6 - (y - x));
        if ((offset != 2) == (label == 1)) pairs.emplace_back(ring[x], ring[y]);
      }
    }
    if (pairs.empty()) return false;
    const auto [a, b] = rng_.pick(pairs);
    place_groups(a, b);
    return true;
  }

  Molecule finish(int label) const {
    Molecule m;
    for (const Node& n : nodes_) {
      m.atoms.push_back(Atom{.element = n.element,
                             .charge = n.charge,
                             .aromatic = n.aromatic,
                             .hydrogens = valence(n.element, n.charge) - n.bond_sum});
    }
    for (Bond b : bonds_) {
      if (b.a > b.b) std::swap(b.a, b.b);
      m.bonds.push_back(b);
    }
    m.rings = static_cast<int>(rings_.size());
    m.aromatic_rings = static_cast<int>(std::ranges::count_if(rings_, [](const Ring& r) { return r.aromatic; }));
    m.label = label;
    // Start the SMILES at the first chain end (a substituent reads better first), else at atom 0.
    int start = 0;
    for (int i = 0; i < count(); ++i) {
      if (degree(i) == 1) {
        start = i;
        break;
      }
    }
    return in_smiles_order(m, start);
  }

  const Params& p_;
  Stream& rng_;
  std::vector<Node> nodes_;
  std::vector<Bond> bonds_;
  std::vector<Ring> rings_;
};

int draw_atoms(const Params& p, Stream& rng) {
  for (int i = 0; i < 100; ++i) {
    const double x = std::round(p.mean_atoms + p.stddev_atoms * rng.normal());
    if (x >= p.min_atoms && x <= p.max_atoms) return static_cast<int>(x);
  }
  return static_cast<int>(std::clamp(std::round(p.mean_atoms), double(p.min_atoms), double(p.max_atoms)));
}

// Uniform in [min_rings, max_rings]; for ring_parity among the counts whose parity is the label.
int draw_rings(const Params& p, int label, Stream& rng) {
  if (p.task != Task::ring_parity) return p.min_rings + rng.below(p.max_rings - p.min_rings + 1);
  const int first = p.min_rings % 2 == label ? p.min_rings : p.min_rings + 1;
  return first + 2 * rng.below((p.max_rings - first) / 2 + 1);
}

// Molecule `index` of a validated parameter set: the label first, then attempts until one fits.
Molecule build_molecule(const Params& params, index_t index) {
  Stream rng(params.seed, params.task, index);
  const int label = rng.chance(params.positive_fraction) ? 1 : 0;
  int atoms = 0;
  for (int attempt = 0; attempt < max_attempts; ++attempt) {
    if (attempt % attempts_per_size == 0) atoms = draw_atoms(params, rng);
    const int rings = draw_rings(params, label, rng);
    Builder builder(params, rng);
    if (auto m = builder.build(atoms, rings, label)) return std::move(*m);
  }
  throw Error(fmt::format(
      "{}: molecule {} (task {}, label {}) could not be built in {} attempts; the sizes leave no room for the "
      "rings or the task's groups",
      params.task == Task::distance ? "min_atoms/max_atoms/min_rings/max_rings/distance"
                                    : "min_atoms/max_atoms/min_rings/max_rings",
      index, task_name(params.task), label, max_attempts));
}

// Min, mean and max of the values added, without keeping them.
class RangeOf {
 public:
  void add(double x) {
    min_ = std::min(min_, x), max_ = std::max(max_, x), sum_ += x;
    ++count_;
  }
  Range range() const { return count_ > 0 ? Range{min_, sum_ / static_cast<double>(count_), max_} : Range{}; }

 private:
  double min_ = std::numeric_limits<double>::infinity(), max_ = -min_, sum_ = 0;
  index_t count_ = 0;
};

}  // namespace

std::string_view element_symbol(Element element) {
  static constexpr std::string_view symbols[] = {"C", "N", "O", "F", "I", "Cl", "Br", "S"};
  const auto i = static_cast<std::size_t>(element);
  require(i < std::size(symbols), "element", "unknown value {}", i);
  return symbols[i];
}

int valence(Element element, int charge) {
  switch (element) {
    case C:
      return 4;
    case N:
      return charge == 1 ? 4 : 3;
    case O:
      return charge == -1 ? 1 : 2;
    case S:
      return 2;
    default:
      return 1;
  }
}

std::string_view bond_type_name(BondType type) {
  static constexpr std::string_view names[] = {"aromatic", "single", "double", "triple"};
  const auto i = static_cast<std::size_t>(type);
  require(i < std::size(names), "bond type", "unknown value {}", i);
  return names[i];
}

GraphArrays to_arrays(const Molecule& molecule) {
  GraphArrays g;
  for (const Atom& a : molecule.atoms) g.node_labels.push_back(static_cast<int>(a.element));
  for (const Bond& b : molecule.bonds) {
    g.edges.emplace_back(b.a, b.b);
    g.edge_labels.push_back(static_cast<int>(b.type));
  }
  return g;
}

std::string_view task_name(Task task) {
  switch (task) {
    case Task::distance:
      return "distance";
    case Task::ring_parity:
      return "ring_parity";
    case Task::substitution:
      return "substitution";
  }
  throw Error(fmt::format("task: unknown value {}", static_cast<int>(task)));
}

Task parse_task(std::string_view name) {
  for (Task t : all_tasks) {
    if (task_name(t) == name) return t;
  }
  throw Error(fmt::format("task: must be one of distance, ring_parity, substitution; got '{}'", name));
}

std::string task_description(Task task, int distance) {
  switch (task) {
    case Task::distance:
      return fmt::format("1 iff the nitro N and the amino N are >= {} bonds apart", distance);
    case Task::ring_parity:
      return "1 iff the number of rings is odd";
    case Task::substitution:
      return "1 iff nitro and amino are ortho or para on their benzene ring, 0 iff meta";
  }
  throw Error(fmt::format("task: unknown value {}", static_cast<int>(task)));
}

void validate(const Params& p) {
  task_name(p.task);
  auto probability = [](double x, std::string_view name) {
    require(x >= 0 && x <= 1, name, "must be in [0, 1], got {}", x);
  };
  probability(p.positive_fraction, "positive_fraction");
  require(p.min_atoms >= 1, "min_atoms", "must be >= 1, got {}", p.min_atoms);
  require(p.max_atoms >= p.min_atoms, "max_atoms", "must be >= min_atoms = {}, got {}", p.min_atoms, p.max_atoms);
  require(p.max_atoms <= atoms_limit, "max_atoms", "must be <= {}, got {}", atoms_limit, p.max_atoms);
  require(p.mean_atoms >= p.min_atoms && p.mean_atoms <= p.max_atoms, "mean_atoms",
          "must be in [min_atoms, max_atoms] = [{}, {}], got {}", p.min_atoms, p.max_atoms, p.mean_atoms);
  require(std::isfinite(p.stddev_atoms) && p.stddev_atoms >= 0, "stddev_atoms", "must be finite and >= 0, got {}",
          p.stddev_atoms);
  require(p.min_rings >= 0, "min_rings", "must be >= 0, got {}", p.min_rings);
  require(p.max_rings >= p.min_rings, "max_rings", "must be >= min_rings = {}, got {}", p.min_rings, p.max_rings);
  require(p.max_rings <= p.max_atoms, "max_rings", "must be <= max_atoms = {} (no more rings than atoms), got {}",
          p.max_atoms, p.max_rings);
  const int ring_atoms = p.min_rings == 0 ? 1 : 5 + 3 * (p.min_rings - 1);  // a 5-ring, then fused 5-rings
  require(ring_atoms <= p.max_atoms, "min_rings", "{} rings need at least {} atoms, but max_atoms = {}", p.min_rings,
          ring_atoms, p.max_atoms);
  probability(p.six_ring_fraction, "six_ring_fraction");
  probability(p.aromatic_fraction, "aromatic_fraction");
  probability(p.fused_fraction, "fused_fraction");
  probability(p.ring_heteroatom_probability, "ring_heteroatom_probability");
  probability(p.double_bond_probability, "double_bond_probability");
  probability(p.triple_bond_probability, "triple_bond_probability");
  for (int e = 0; e < num_elements; ++e) {
    require(std::isfinite(p.atom_mix[e]) && p.atom_mix[e] >= 0, "atom_mix",
            "weight of {} must be finite and >= 0, got {}", element_symbol(static_cast<Element>(e)), p.atom_mix[e]);
  }
  require(p.atom_mix[static_cast<int>(C)] > 0, "atom_mix", "the weight of C must be > 0, got {}",
          p.atom_mix[static_cast<int>(C)]);
  double usable = 0;
  for (Piece piece : all_pieces) {
    const double w = piece_weight(p.substituents, piece);
    require(std::isfinite(w) && w >= 0, "substituents", "weights must be finite and >= 0, got {}", w);
    const bool owned = task_places_groups(p.task) && (piece == Piece::nitro || piece == Piece::amino);
    if (!owned) usable += w;
  }
  require(usable > 0, "substituents", "the weights the {} task may use sum to 0 (it places nitro and amino itself)",
          task_name(p.task));
  switch (p.task) {
    case Task::distance:
      require(p.distance >= 4 && p.distance <= p.max_atoms - 3, "distance",
              "must be in [4, max_atoms - 3] = [4, {}] (the groups are >= 3 bonds apart and a path of d bonds needs "
              "d + 3 atoms), got {}",
              p.max_atoms - 3, p.distance);
      break;
    case Task::ring_parity: {
      const bool has_odd = p.max_rings > p.min_rings || p.min_rings % 2 == 1;
      const bool has_even = p.max_rings > p.min_rings || p.min_rings % 2 == 0;
      require(p.positive_fraction == 0 || has_odd, "max_rings",
              "ring_parity with positive_fraction > 0 needs an odd ring count in [{}, {}]", p.min_rings, p.max_rings);
      require(p.positive_fraction == 1 || has_even, "max_rings",
              "ring_parity with positive_fraction < 1 needs an even ring count in [{}, {}]", p.min_rings, p.max_rings);
      break;
    }
    case Task::substitution:
      require(p.min_rings >= 1, "min_rings",
              "the substitution task puts its groups on a benzene ring: must be >= 1, got {}", p.min_rings);
      require(p.max_atoms >= 10, "max_atoms", "the substitution task needs >= 10 atoms (benzene, nitro, amino), got {}",
              p.max_atoms);
      break;
  }
}

Molecule generate_molecule(const Params& params, index_t index) {
  validate(params);
  require(index >= 0, "index", "must be >= 0, got {}", index);
  return build_molecule(params, index);
}

double molecule_bytes(const Params& params) {
  constexpr double allocation = 16;  // malloc's bookkeeping per vector
  const double atoms = params.max_atoms, bonds = 2.0 * params.max_atoms;  // degree <= 4: bonds <= 2 atoms
  return sizeof(Molecule) + atoms * sizeof(Atom) + bonds * sizeof(Bond) + 2 * allocation;
}

std::vector<Molecule> generate(const Params& params, index_t first, index_t count, int threads,
                               const std::function<void(index_t)>& progress) {
  validate(params);
  check_range(first, count);
  [[maybe_unused]] const int n = thread_count(threads);
  require_memory("count", static_cast<double>(count) * molecule_bytes(params),
                 fmt::format("{} molecules of up to {} atoms", count, params.max_atoms));
  std::vector<Molecule> out(static_cast<std::size_t>(count));
  ParallelErrors errors;  // infeasible parameters fail every molecule: the first failure stops the rest
#pragma omp parallel for schedule(dynamic, 64) num_threads(n)
  for (index_t i = 0; i < count; ++i) {
    errors.run([&] {
      out[i] = build_molecule(params, first + i);
      if (progress) progress(1);
    });
  }
  errors.rethrow();
  return out;
}

Statistics summarize(std::span<const Molecule> molecules) {
  Statistics s;
  s.count = static_cast<index_t>(molecules.size());
  RangeOf atoms, bonds, rings, aromatic, atoms_by_class[2];
  for (const Molecule& m : molecules) {
    s.positives += m.label == 1 ? 1 : 0;
    atoms.add(static_cast<double>(m.atoms.size()));
    bonds.add(static_cast<double>(m.bonds.size()));
    rings.add(m.rings);
    aromatic.add(m.aromatic_rings);
    atoms_by_class[m.label == 1 ? 1 : 0].add(static_cast<double>(m.atoms.size()));
    for (const Atom& a : m.atoms) ++s.elements[static_cast<int>(a.element)];
    for (const Bond& b : m.bonds) ++s.bond_types[static_cast<int>(b.type)];
  }
  s.atoms = atoms.range();
  s.bonds = bonds.range();
  s.rings = rings.range();
  s.aromatic_rings = aromatic.range();
  s.mean_atoms_positive = atoms_by_class[1].range().mean;
  s.mean_atoms_negative = atoms_by_class[0].range().mean;
  return s;
}

}  // namespace flashlstm::datasets::molecules
