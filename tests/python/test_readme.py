"""The Python examples of the documentation run as written: every ```python block of docs/python.md
(the Python guide) and of README.md (its quick start), each on its own, in a temporary working
directory; the torch ones where torch (and, for CUDA, a GPU) is there. Blocks that are not meant to
run (signatures) are tagged ```py instead."""

import re
from pathlib import Path

import pytest

fl = pytest.importorskip("flashlstm")

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["docs/python.md", "README.md"]


def examples():
    """(document, index, code) of every ```python block."""
    out = []
    for document in DOCUMENTS:
        path = ROOT / document
        if not path.exists():
            continue
        blocks = re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)
        out += [(document, i, code) for i, code in enumerate(blocks)]
    return out


EXAMPLES = examples()


def test_the_guide_has_examples():
    assert any(document == "docs/python.md" for document, _, _ in EXAMPLES)


@pytest.mark.parametrize("document,index,code", EXAMPLES, ids=[f"{d}-{i + 1}" for d, i, _ in EXAMPLES])
def test_example_runs(document, index, code, tmp_path, monkeypatch):
    if "import torch" in code or "flashlstm.torch" in code:
        torch = pytest.importorskip("torch")
        if "cuda" in code and not (torch.cuda.is_available() and fl.built_with_cuda):
            pytest.skip("the example needs a GPU")
    if "networkx" in code:
        pytest.importorskip("networkx")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{document} Python example {index + 1}", "exec"), {"__name__": "__main__"})
