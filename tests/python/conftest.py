"""pytest setup for tests/python: the binding tests import the package built by CMake, whose folder
ctest passes in FLASHLSTM_PYTHONPATH (<build>/python); without it they use an installed flashlstm,
and without one they are skipped (pytest.importorskip in each file)."""

import os
import sys

_path = os.environ.get("FLASHLSTM_PYTHONPATH")
if _path:
    sys.path.insert(0, _path)
