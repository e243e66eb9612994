"""The molecular-graph generator (docs/datasets.md): heavy-atom graphs of small organic molecules
like MUTAG's, each labelled by a task that needs long-range structure ("distance", "ring_parity",
"substitution"). Every molecule is valid by construction (RDKit parses and sanitizes its SMILES);
atom i of a Molecule is the i-th atom of its SMILES.

A Molecule has ``node_labels`` (0 C, 1 N, 2 O, 3 F, 4 I, 5 Cl, 6 Br, 7 S), ``charges``,
``aromatic``, ``hydrogens``, ``edges`` (E, 2), ``edge_labels`` (0 aromatic, 1 single, 2 double,
3 triple), ``bond_orders`` (Kekulé), ``rings``, ``aromatic_rings``, ``label`` and ``smiles``.
``to_dag`` orients its bonds for pLSTM, ``to_networkx`` gives a networkx graph.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from .. import graph as _graph
from .._core.datasets import molecules as _m

Params = _m.Params
Substituents = _m.Substituents
Molecule = _m.Molecule

ELEMENTS: List[str] = _m.element_symbols()
BOND_TYPES: List[str] = _m.bond_type_names()


def make_params(**fields) -> Params:
    """Parameters with ``fields`` set (seed, task, positive_fraction, distance, min_atoms, max_atoms,
    mean_atoms, stddev_atoms, min_rings, max_rings, six_ring_fraction, aromatic_fraction,
    fused_fraction, ring_heteroatom_probability, double_bond_probability, triple_bond_probability,
    atom_mix (8 weights, C N O F I Cl Br S), substituents (a dict of nitro, amino, hydroxyl, carbonyl,
    halogen, alkyl, ether)). Raises ValueError for an unknown field or values out of range."""
    params = Params()
    for name, value in fields.items():
        if name == "substituents" and isinstance(value, dict):
            sub = Substituents()
            for key, weight in value.items():
                if not hasattr(sub, key) or key.startswith("_"):
                    raise ValueError(f"substituents.{key}: not a substituent")
                setattr(sub, key, weight)
            value = sub
        if not hasattr(params, name) or name.startswith("_"):
            raise ValueError(f"{name}: not a parameter of the molecule generator")
        setattr(params, name, value)
    _m.validate(params)
    return params


def generate(params: Params, first: int, count: int, threads: int = 0) -> List[Molecule]:
    """Molecules first .. first + count - 1 on ``threads`` OpenMP threads (0: the default; at most 4
    per processor). Releases the GIL while it runs; a count that cannot fit in memory raises
    ValueError."""
    return _m.generate(params, first, count, threads)


def generate_molecule(params: Params, index: int) -> Molecule:
    return _m.generate_molecule(params, index)


def summarize(molecules: Sequence[Molecule]) -> dict:
    """Counts, (min, mean, max) of atoms, bonds, rings and aromatic rings, elements and bond types."""
    return _m.summarize(list(molecules))


def task_description(task: str, distance: int = 7) -> str:
    return _m.task_description(task, distance)


def to_dag(molecule: Molecule, *, order: str = "bfs", root: int = 0, seed: int = 0) -> _graph.Dag:
    """The molecule's bonds oriented by graph.dagify along ``order`` (bfs from atom ``root`` by
    default); edge i is bond i."""
    return _graph.dagify(molecule.num_atoms, molecule.edges, order=order, root=root, seed=seed)


def to_networkx(molecule: Molecule) -> Any:
    """A networkx.Graph: atoms with "element", "charge", "aromatic", "hydrogens"; bonds with "type"
    (a name of BOND_TYPES) and "order" (Kekulé)."""
    import networkx as nx

    g = nx.Graph(label=molecule.label, smiles=molecule.smiles)
    for i, (e, c, a, h) in enumerate(zip(molecule.node_labels.tolist(), molecule.charges.tolist(),
                                         molecule.aromatic.tolist(), molecule.hydrogens.tolist())):
        g.add_node(i, element=ELEMENTS[e], charge=c, aromatic=bool(a), hydrogens=h)
    for (u, v), t, o in zip(molecule.edges.tolist(), molecule.edge_labels.tolist(), molecule.bond_orders.tolist()):
        g.add_edge(u, v, type=BOND_TYPES[t], order=o)
    return g


def write_smiles(path: str, molecules: Sequence[Molecule]) -> None:
    """One "<SMILES> <label>" line per molecule. Like every writer here, it writes under a temporary
    name and renames the file once complete; a failed write raises ValueError naming the file."""
    _m.write_smiles(str(path), list(molecules))


def write_tu(root: str, name: str, molecules: Sequence[Molecule]) -> str:
    """The TU dataset text format in PyG's layout (TUDataset(root, name) loads it); returns the raw folder."""
    return _m.write_tu(str(root), name, list(molecules))


def write_json(path: str, name: str, params: Params, molecules: Sequence[Molecule]) -> None:
    _m.write_json(str(path), name, params, list(molecules))
