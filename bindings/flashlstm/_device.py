"""GPU arrays for the public functions: which inputs go to the CUDA kernels, on which stream, and
where the outputs are allocated.

An input goes to the kernels when it has ``__dlpack_device__`` and is not on the CPU (torch, CuPy,
JAX arrays on a GPU). The kernels run on the caller's stream: ``stream=`` when given, else torch's
or CuPy's current stream for their arrays, else the legacy default stream. Outputs are allocated in
the caller's framework where it can allocate (torch, CuPy) and as ``flashlstm._core.cuda.DeviceArray``
otherwise, then handed to the framework through DLPack (JAX) — never copied.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from . import _core

_CPU = 1  # DLPack kDLCPU


def is_device_array(x: Any) -> bool:
    """True for an array on a GPU (anything with ``__dlpack_device__`` that is not on the CPU)."""
    device = getattr(x, "__dlpack_device__", None)
    return device is not None and int(device()[0]) != _CPU


def require_cuda(what: str) -> None:
    """Raises RuntimeError when this build of flashlstm has no CUDA kernels or sees no CUDA device."""
    if not _core.cuda.built:
        raise RuntimeError(f"{what}: got a GPU array, but flashlstm was built without CUDA "
                           "(rebuild with nvcc available, cmake -DFLASHLSTM_CUDA=ON)")
    if not _core.cuda.device_available():
        raise RuntimeError(f"{what}: got a GPU array, but this process sees no CUDA device")


def _framework(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def stream_of(like: Any, stream: Optional[int]) -> Optional[int]:
    """The stream the kernels run on: ``stream`` if given, else the framework's current stream."""
    if stream is not None:
        return stream
    framework = _framework(like)
    if framework == "torch":
        import torch

        return torch.cuda.current_stream(like.device).cuda_stream
    if framework == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    return None


def _dtype_name(like: Any) -> str:
    return str(like.dtype).split(".")[-1]


def empty(like: Any, shape: Sequence[int], dtype: str, stream: Optional[int]) -> Any:
    """Uninitialised GPU memory on ``like``'s device; dtype "float32" or "same" (as ``like``)."""
    framework = _framework(like)
    if framework == "torch":
        import torch

        return torch.empty(tuple(shape), dtype=torch.float32 if dtype == "float32" else like.dtype, device=like.device)
    if framework == "cupy":
        import cupy

        with like.device:
            return cupy.empty(tuple(shape), dtype=cupy.float32 if dtype == "float32" else like.dtype)
    name = "float32" if dtype == "float32" else _dtype_name(like)
    return _core.cuda.empty(list(shape), name, int(like.__dlpack_device__()[1]), stream)


def clone(x: Any, stream: Optional[int]) -> Any:
    """A copy of the GPU array ``x`` (the framework's own copy where it has one)."""
    framework = _framework(x)
    if framework == "torch":
        return x.clone()
    if framework == "cupy":
        return x.copy()
    out = _core.cuda.empty(list(x.shape), _dtype_name(x), int(x.__dlpack_device__()[1]), stream)
    _core.cuda.copy_(out, x, stream)
    return out


def adopt(like: Any, x: Any) -> Any:
    """``x`` (written by a kernel) as an array of ``like``'s framework: DeviceArrays go through DLPack."""
    if not isinstance(x, _core.cuda.DeviceArray):
        return x
    framework = _framework(like)
    if framework in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.from_dlpack(x)
    from_dlpack = getattr(sys.modules.get(framework), "from_dlpack", None)
    return from_dlpack(x) if from_dlpack is not None else x
