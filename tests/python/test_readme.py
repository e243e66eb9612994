"""The Python examples of the README's "Python" section run as written (the torch one where torch
and a GPU are there), so that the README stays true."""

import re
from pathlib import Path

import pytest

fl = pytest.importorskip("flashlstm")

README = Path(__file__).resolve().parents[2] / "README.md"


def examples():
    text = README.read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(index):
    code = examples()[index]
    if "import torch" in code:
        torch = pytest.importorskip("torch")
        if "cuda" in code and not (torch.cuda.is_available() and fl.built_with_cuda):
            pytest.skip("the example needs a GPU")
    exec(compile(code, f"README.md Python example {index + 1}", "exec"), {})
