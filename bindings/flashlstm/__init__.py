"""flashlstm: the xLSTM family of recurrences (mLSTM, sLSTM/LSTM, pLSTM) from Python.

- ``flashlstm.mlstm``: recurrent, parallel, chunkwise and step, exp and sig input gates, states and
  exact backward — the CPU reference on numpy arrays, the CUDA kernels on GPU arrays (DLPack).
- ``flashlstm.slstm``: the sLSTM and the LSTM cell, forward and backward through time.
- ``flashlstm.plstm``: pLSTM on DAGs, sequences and grids, P-mode and D-mode gates, backward.
- ``flashlstm.graph``: DAGs (from edge arrays or networkx), dagify, reverse, line graph, levels,
  multitree pruning.
- ``flashlstm.datasets``: arrow-pointing images and molecular graphs.
- ``flashlstm.torch`` (import it explicitly; needs torch): the ops as torch custom ops with
  autograd, for torch.compile and gradcheck.

numpy inputs are float32 or float64 (one dtype per call, never cast). C-contiguous, aligned arrays
are read in place; any other layout (a strided view such as ``q[..., ::2]`` or ``x[:, :, 0]``, a
transposed or Fortran-ordered array, a broadcast) is copied to a C-contiguous array of the same
dtype for the call, as numpy would. Results are returned without copies. Bad input (a wrong dtype,
rank or shape) raises ValueError naming the argument. The guide: docs/python.md.
"""

from . import _core
from . import datasets, graph, mlstm, plstm, slstm

__version__: str = _core.__version__

#: True when this build has the CUDA kernels.
built_with_cuda: bool = _core.cuda.built


def cuda_available() -> bool:
    """True when the CUDA kernels are built and a CUDA device is visible."""
    return bool(_core.cuda.device_available())


__all__ = ["mlstm", "slstm", "plstm", "graph", "datasets", "built_with_cuda", "cuda_available", "__version__"]
