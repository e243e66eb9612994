"""RDKit checks of `flashlstm data molecules` (datasets/molecules).

The tool writes a few hundred molecules per task in the SMILES, TU and JSON formats; the tests check
that every SMILES parses and sanitizes in RDKit, that RDKit's graph (elements, aromaticity, bond
orders, charges, hydrogens) equals the generator's graph from the TU and JSON files atom by atom, that
the TU files are what PyG's TUDataset reads, that each task's label holds by RDKit's own distances and
rings, that the printed statistics are right and in range, and that bad parameters fail clearly.

Needs FLASHLSTM_BIN, the path of the built `flashlstm` tool (ctest sets it).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, RDLogger

RDLogger.DisableLog("rdApp.*")

BIN = os.environ.get("FLASHLSTM_BIN")
pytestmark = pytest.mark.skipif(
    not BIN, reason="FLASHLSTM_BIN is not set: point it at the built flashlstm tool (ctest sets it)"
)

N = 300
NAME = "MOLS"
TASKS = ["distance", "ring_parity", "substitution"]
BOND_LABEL = {
    Chem.BondType.AROMATIC: 0,
    Chem.BondType.SINGLE: 1,
    Chem.BondType.DOUBLE: 2,
    Chem.BondType.TRIPLE: 3,
}
NITRO = Chem.MolFromSmarts("[N+](=O)[O-]")
AMINO = Chem.MolFromSmarts("[NX3;H2;+0]")


def run_tool(*args):
    return subprocess.run([BIN, "data", "molecules", *map(str, args)], capture_output=True, text=True, timeout=60)


def read_ints(path):
    return np.loadtxt(path, dtype=np.int64, delimiter=",", ndmin=1)


class Dataset:
    """One tool run: its output, the SMILES lines, the JSON document and the TU graphs split per molecule."""

    def __init__(self, root, task, stdout):
        self.task = task
        self.stdout = stdout
        self.smiles, self.labels = [], []
        for line in (root / f"{NAME}.smi").read_text().splitlines():
            smiles, label = line.split(" ")
            self.smiles.append(smiles)
            self.labels.append(int(label))
        self.json = json.loads((root / f"{NAME}.json").read_text())
        raw = root / NAME / "raw"
        self.raw = raw
        self.A = np.loadtxt(raw / f"{NAME}_A.txt", dtype=np.int64, delimiter=",", ndmin=2)
        self.indicator = read_ints(raw / f"{NAME}_graph_indicator.txt")
        self.node_labels = read_ints(raw / f"{NAME}_node_labels.txt")
        self.edge_labels = read_ints(raw / f"{NAME}_edge_labels.txt")
        self.graph_labels = read_ints(raw / f"{NAME}_graph_labels.txt")

    def tu_graph(self, g):
        """Molecule g (0-based) from the TU files: node labels, {(a, b): edge label} with 0-based a < b."""
        nodes = np.flatnonzero(self.indicator == g + 1)
        first = nodes[0]
        in_graph = self.indicator[self.A[:, 0] - 1] == g + 1
        edges = {}
        for (u, v), label in zip(self.A[in_graph] - 1 - first, self.edge_labels[in_graph]):
            edges[(int(min(u, v)), int(max(u, v)))] = int(label)
        return self.node_labels[nodes], edges


@pytest.fixture(scope="module", params=TASKS)
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    result = run_tool("--n", N, "--task", request.param, "--seed", 17, "--out", root, "--name", NAME,
                      "--format", "tu,smiles,json")
    assert result.returncode == 0, result.stderr
    return Dataset(root, request.param, result.stdout)


def test_every_smiles_parses_and_sanitizes(dataset):
    assert len(dataset.smiles) == N
    for smiles in dataset.smiles:
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
        assert mol is not None, smiles
        assert Chem.SanitizeMol(mol, catchErrors=True) == Chem.SanitizeFlags.SANITIZE_NONE, smiles
        assert Chem.MolFromSmiles(Chem.MolToSmiles(mol)) is not None, smiles


def test_rdkit_graph_equals_the_generators_graph(dataset):
    names = dataset.json["node_label_names"]
    for g, smiles in enumerate(dataset.smiles):
        mol = Chem.MolFromSmiles(smiles)
        nodes, edges = dataset.tu_graph(g)
        entry = dataset.json["molecules"][g]
        assert entry["smiles"] == smiles
        assert mol.GetNumAtoms() == len(nodes), smiles
        aromatic_atoms = {a for (u, v), label in edges.items() if label == 0 for a in (u, v)}
        for atom in mol.GetAtoms():
            i = atom.GetIdx()
            assert atom.GetSymbol() == names[nodes[i]], (smiles, i)
            assert atom.GetIsAromatic() == (i in aromatic_atoms), (smiles, i)
            assert atom.GetIsAromatic() == bool(entry["aromatic"][i]), (smiles, i)
            assert atom.GetFormalCharge() == entry["charges"][i], (smiles, i)
            assert atom.GetTotalNumHs() == entry["hydrogens"][i], (smiles, i)
        rdkit_edges = {
            tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))): BOND_LABEL[b.GetBondType()] for b in mol.GetBonds()
        }
        assert rdkit_edges == edges, smiles
        json_edges = {tuple(e): label for e, label in zip(entry["edges"], entry["edge_labels"])}
        assert json_edges == edges, smiles
        assert entry["node_labels"] == nodes.tolist()
        ring_info = mol.GetRingInfo()
        assert ring_info.NumRings() == entry["rings"], smiles
        aromatic_rings = sum(all(mol.GetBondWithIdx(b).GetIsAromatic() for b in r) for r in ring_info.BondRings())
        assert aromatic_rings == entry["aromatic_rings"], smiles


def test_tu_files_are_what_tudataset_reads(dataset):
    n_nodes = len(dataset.indicator)
    assert len(dataset.node_labels) == n_nodes
    assert len(dataset.edge_labels) == len(dataset.A)
    assert len(dataset.graph_labels) == N
    assert dataset.A.shape[1] == 2
    assert dataset.A.min() == 1 and dataset.A.max() <= n_nodes  # 1-based node ids
    # graph ids 1..N, contiguous and in order, every graph with atoms
    assert dataset.indicator[0] == 1 and dataset.indicator[-1] == N
    assert np.all(np.diff(dataset.indicator) >= 0)
    assert np.array_equal(np.unique(dataset.indicator), np.arange(1, N + 1))
    # both directions of every bond, with the same label; no edge between graphs; no self loops
    forward = {(u, v): label for (u, v), label in zip(dataset.A.tolist(), dataset.edge_labels.tolist())}
    assert len(forward) == len(dataset.A)
    for (u, v), label in forward.items():
        assert forward.get((v, u)) == label
        assert dataset.indicator[u - 1] == dataset.indicator[v - 1]
        assert u != v
    assert set(dataset.node_labels.tolist()) <= set(range(8))
    assert set(dataset.edge_labels.tolist()) <= set(range(4))
    assert dataset.graph_labels.tolist() == dataset.labels
    assert [m["label"] for m in dataset.json["molecules"]] == dataset.labels
    total_atoms = sum(len(m["node_labels"]) for m in dataset.json["molecules"])
    total_bonds = sum(len(m["edges"]) for m in dataset.json["molecules"])
    assert n_nodes == total_atoms and len(dataset.A) == 2 * total_bonds
    assert "Node labels" in (dataset.raw / "README.txt").read_text()


def attach_carbon(mol, n_idx):
    return next(a.GetIdx() for a in mol.GetAtomWithIdx(n_idx).GetNeighbors() if a.GetSymbol() == "C")


def test_labels_hold_by_rdkit(dataset):
    distance = dataset.json["parameters"]["distance"]
    for smiles, label in zip(dataset.smiles, dataset.labels):
        mol = Chem.MolFromSmiles(smiles)
        if dataset.task == "ring_parity":
            assert mol.GetRingInfo().NumRings() % 2 == label, smiles
            continue
        nitro = mol.GetSubstructMatches(NITRO)
        amino = mol.GetSubstructMatches(AMINO)
        assert len(nitro) == 1 and len(amino) == 1, smiles
        n_nitro, n_amino = nitro[0][0], amino[0][0]
        if dataset.task == "distance":
            d = Chem.GetDistanceMatrix(mol)[n_nitro][n_amino]
            assert (d >= distance) == (label == 1), (smiles, d)
        else:
            a, b = attach_carbon(mol, n_nitro), attach_carbon(mol, n_amino)
            rings = [
                r for r in mol.GetRingInfo().AtomRings()
                if len(r) == 6 and a in r and b in r and all(mol.GetAtomWithIdx(i).GetSymbol() == "C" for i in r)
                and all(mol.GetAtomWithIdx(i).GetIsAromatic() for i in r)
            ]
            assert len(rings) == 1, smiles
            k = abs(rings[0].index(a) - rings[0].index(b))
            offset = min(k, 6 - k)
            assert (offset in (1, 3)) == (label == 1), (smiles, offset)


def printed(stdout, row):
    match = re.search(rf"^\s+{row}\s+min (\S+)\s+mean (\S+)\s+max (\S+)$", stdout, re.M)
    assert match, stdout
    return tuple(float(x) for x in match.groups())


def test_statistics_are_printed_and_in_range(dataset):
    out = dataset.stdout
    atoms = [len(m["node_labels"]) for m in dataset.json["molecules"]]
    bonds = [len(m["edges"]) for m in dataset.json["molecules"]]
    rings = [m["rings"] for m in dataset.json["molecules"]]
    for row, values, lo, hi in [("atoms", atoms, 10, 28), ("bonds", bonds, 9, 40), ("rings", rings, 1, 4)]:
        mn, mean, mx = printed(out, row)
        assert (mn, mx) == (min(values), max(values))
        assert mean == pytest.approx(np.mean(values), abs=0.006)
        assert lo <= mn and mx <= hi, row
    assert abs(np.mean(atoms) - 18) < 1.5  # the default size distribution (MUTAG: mean 17.9)
    summary = out.strip().splitlines()[-1]
    positives = sum(dataset.labels)
    assert summary.startswith(f"molecules: {N} generated (task {dataset.task}, seed 17)")
    assert f"{positives} positive ({100 * positives / N:.1f}%), {N - positives} negative" in summary
    assert abs(positives / N - 0.5) < 4 * np.sqrt(0.25 / N)
    assert "molecules/s" in summary


def test_same_seed_same_molecules(tmp_path):
    first = run_tool("--n", 50, "--seed", 3, "--out", tmp_path / "a", "--format", "smiles")
    second = run_tool("--n", 50, "--seed", 3, "--out", tmp_path / "b", "--format", "smiles", "--threads", 1)
    other = run_tool("--n", 50, "--seed", 4, "--out", tmp_path / "c", "--format", "smiles")
    assert first.returncode == second.returncode == other.returncode == 0
    text = [(tmp_path / d / "FLASHLSTM_MOLS.smi").read_text() for d in "abc"]
    assert text[0] == text[1] != text[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "-5"], "n: must be >= 0, got -5"),
        (["--task", "nope"], "task: must be one of distance, ring_parity, substitution; got 'nope'"),
        (["--positive-fraction", "1.5"], "positive_fraction: must be in [0, 1], got 1.5"),
        (["--min-atoms", "30"], "max_atoms: must be >= min_atoms = 30, got 28"),
        (["--min-atoms", "-2"], "min_atoms: must be >= 1, got -2"),
        (["--format", "xml"], "format: unknown format 'xml'"),
        (["--distance", "2"], "distance: must be in [4, max_atoms - 3]"),
        (["--atom-mix", "Xe=1"], "atom-mix: unknown element 'Xe'"),
    ],
)
def test_bad_parameters_fail_clearly(tmp_path, args, message):
    result = run_tool("--out", tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_pyg_tudataset_loads_the_tu_files(tmp_path):
    tg = pytest.importorskip("torch_geometric.datasets", reason="torch_geometric is not installed")
    result = run_tool("--n", 40, "--out", tmp_path, "--name", NAME, "--format", "tu")
    assert result.returncode == 0, result.stderr
    data = tg.TUDataset(root=str(tmp_path), name=NAME)
    assert len(data) == 40
    assert data.num_node_features > 0 and data[0].edge_attr is not None
