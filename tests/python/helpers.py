"""Shared by the binding tests: seeded inputs, directional finite differences, and FakeCudaArray, a
DLPack producer written with ctypes that can claim any device, dtype, shape and strides, so that the
GPU entry points' argument handling is tested on machines without a GPU."""

from __future__ import annotations

import ctypes
from typing import Callable, Dict, Optional, Sequence

import numpy as np


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rel(a, b) -> float:
    """Relative L2 difference of a against the reference b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def check_gradients(loss: Callable[[Dict[str, np.ndarray]], float], inputs: Dict[str, np.ndarray],
                    grads: Dict[str, np.ndarray], seed: int = 1, eps: float = 1e-5, tol: float = 1e-6) -> None:
    """For each input, compares <grad, d> with the central difference of ``loss`` along a random
    direction d (float64), relative to the size of the directional derivative."""
    r = rng(seed)
    for name, grad in grads.items():
        d = r.standard_normal(inputs[name].shape)
        plus = dict(inputs, **{name: inputs[name] + eps * d})
        minus = dict(inputs, **{name: inputs[name] - eps * d})
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        an = float(np.sum(grad * d))
        assert abs(fd - an) <= tol * max(abs(an), abs(fd), 1e-3), f"{name}: finite difference {fd}, backward {an}"


# DLPack by hand -----------------------------------------------------------------------------------


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32), ("dtype", _DataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _Managed(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Managed))
_Managed._fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _ManagedVersioned(ctypes.Structure):
    pass


_VERSIONED_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_ManagedVersioned))
_ManagedVersioned._fields_ = [("version", _Version), ("manager_ctx", ctypes.c_void_p),
                              ("deleter", _VERSIONED_DELETER), ("flags", ctypes.c_uint64), ("dl_tensor", _Tensor)]

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_NAME = b"dltensor"
_VERSIONED_NAME = b"dltensor_versioned"

DTYPES = {"float32": (2, 32), "float64": (2, 64), "float16": (2, 16), "bfloat16": (4, 16), "int32": (0, 32)}
CUDA, CPU = 2, 1


class FakeCudaArray:
    """An object with __dlpack__ / __dlpack_device__ whose capsule says what the test wants: host
    memory labelled as a CUDA array. Records the streams it was asked for and counts deleter calls."""

    def __init__(self, shape: Sequence[int], dtype: str = "float32", device: tuple = (CUDA, 0),
                 strides: Optional[Sequence[int]] = None, versioned: bool = True, read_only: bool = False,
                 capsule_device: Optional[tuple] = None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self._device = device
        self._capsule_device = capsule_device or device
        code, bits = DTYPES[dtype]
        self._dtype = (code, bits)
        self._buffer = np.zeros(max(int(np.prod(self.shape)), 1) * bits // 8 + 64, np.uint8)
        self._shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
        self._strides = (ctypes.c_int64 * len(self.shape))(*strides) if strides is not None else None
        self._versioned = versioned
        self._read_only = read_only
        self.streams: list = []
        self.deleted = 0
        self._keep: list = []

    def __dlpack_device__(self):
        return self._device

    def _tensor(self) -> _Tensor:
        strides = ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64)) if self._strides is not None else None
        return _Tensor(self._buffer.ctypes.data, _Device(*self._capsule_device), len(self.shape),
                       _DataType(self._dtype[0], self._dtype[1], 1),
                       ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64)), strides, 0)

    def _count(self, _):
        self.deleted += 1

    def __dlpack__(self, stream=None, max_version=None):
        self.streams.append(stream)
        if self._versioned and max_version is not None and max_version[0] >= 1:
            deleter = _VERSIONED_DELETER(self._count)
            managed = _ManagedVersioned(_Version(1, 0), None, deleter, 1 if self._read_only else 0, self._tensor())
            name = _VERSIONED_NAME
        else:
            deleter = _DELETER(self._count)
            managed = _Managed(self._tensor(), None, deleter)
            name = _NAME
        self._keep.append((managed, deleter))
        return _capsule_new(ctypes.addressof(managed), name, None)
