"""The arrow-pointing extrapolation (APE) generator (docs/datasets.md): binary images with one
arrow and one filled disk, labelled 1 when the arrow's ray hits the disk. Models train at 192 x 192
and are tested at 384 x 384 with the same object sizes.

``generate(params, first, count)`` returns samples first .. first + count - 1 as numpy arrays:
images uint8 (count, size, size, channels) (0 black, 255 white) and labels uint8 (count), without a
copy. Sample i draws from its own random stream (seed, i), so any sample can be regenerated alone.
``make_params`` builds the parameters from a split preset and/or field overrides.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .._core.datasets import arrows as _a

Params = _a.Params
Geometry = _a.Geometry

SPLITS = ("train", "val", "val_ext", "test", "test_ext", "custom")


def make_params(split: Optional[str] = None, *, train_seed: int = 42, **fields) -> Params:
    """Parameters: the preset of ``split`` (train, val, val_ext, test, test_ext, custom; None: the
    defaults) with ``fields`` (size, channels, seed, positive_fraction, length_min, length_max,
    width_min, width_max, radius_min, radius_max, padding, margin, head_angle, head_ratio) set on top.
    Raises ValueError for an unknown field or parameters out of range."""
    params = split_preset(split, train_seed)[0] if split is not None else Params()
    for name, value in fields.items():
        if not hasattr(params, name) or name.startswith("_"):
            raise ValueError(f"{name}: not a parameter of the arrow-pointing generator")
        setattr(params, name, value)
    _a.validate(params)
    return params


def split_preset(split: str, train_seed: int = 42) -> Tuple[Params, int]:
    """(params, count) of one of the paper's splits: train 100,000 @ 192 (seed train_seed), val 5,120
    @ 192, val_ext 5,120 @ 384, test 10,240 @ 192, test_ext 10,240 @ 384; custom: defaults, count 0."""
    return _a.split_preset(split, train_seed)


def generate(params: Params, first: int, count: int, threads: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (count, size, size, channels), labels uint8 (count)) on ``threads`` OpenMP
    threads (0: the default; at most 4 per processor). Releases the GIL while it runs; a count that
    cannot fit in memory raises ValueError."""
    return _a.generate(params, first, count, threads)


def sample_geometry(params: Params, index: int) -> Geometry:
    """What sample ``index`` is made of: arrow centre, direction, length, width, circle, radius, label."""
    return _a.sample_geometry(params, index)


def write_png(path: str, image: np.ndarray) -> None:
    """One image (size, size, channels) uint8 as a PNG (any layout: a view such as images[i] or
    images[i, ::-1] is copied to a C-contiguous array first)."""
    _a.write_png(str(path), image)


def write_contact_sheet(path: str, params: Params, first: int, count: int, columns: int = 0) -> None:
    """Samples first .. first + count - 1 as one PNG grid, each framed in its label's colour. Both PNG
    writers write under a temporary name and rename the file once complete; a failed write raises
    ValueError naming the file."""
    _a.write_contact_sheet(str(path), params, first, count, columns)
