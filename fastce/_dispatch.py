"""The one place that decides whether a call runs on the GPU path.

``gpu_twin(name, *arrays)`` is ``fastce.cuda.<name>`` when an argument is a
``cupy.ndarray`` (a TypeError naming them when CuPy and NumPy arrays are mixed), else
None.  It never imports CuPy: with CuPy not yet imported no argument can be a CuPy array.
``fastce.cuda`` is imported here, inside the function, and imports nothing of the CPU
front end, so the import graph stays a tree.  The cross-entropy family's compiled
contract makes the same decision for its first array and hands the call to
``fastce._api._gpu_route``.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

__all__ = ["gpu_twin"]


def gpu_twin(name: str, *arrays: object,
             names: Sequence[str] | None = None) -> Callable[..., Any] | None:
    """``fastce.cuda.<name>`` for a call on CuPy arrays, else None."""
    if "cupy" not in sys.modules:
        return None
    from . import cuda
    if not cuda.is_cupy_call(*arrays, names=names):
        return None
    twin: Callable[..., Any] = getattr(cuda, name)
    return twin
