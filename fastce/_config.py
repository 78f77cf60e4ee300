"""Run-time configuration: kernel path (ISA), thread count, and ``show_config``."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Callable, TextIO

import numpy as np

from . import _kernels

__all__ = ["get_isa", "set_isa", "supported_isas", "get_num_threads", "set_num_threads", "show_config"]

_ISA_NAMES = ("scalar", "avx2", "avx512", "neon")


def supported_isas() -> list[str]:
    """Kernel paths this build has and this CPU can run, most capable first.

    Returns
    -------
    list of str
        For example ``['avx512', 'avx2', 'scalar']`` on an AVX-512 x86-64 machine.
    """
    return [name for name, _, ok in _kernels.isa_table() if ok]


def get_isa() -> str:
    """Name of the kernel path in use (``'avx512'``, ``'avx2'``, ``'neon'`` or ``'scalar'``)."""
    return _kernels.current_isa()


def set_isa(name: str) -> str:
    """Route every kernel through the path ``name``.

    Parameters
    ----------
    name : {'scalar', 'avx2', 'avx512', 'neon'}
        Must be one of :func:`supported_isas`.

    Returns
    -------
    str
        The previous path, so a caller can restore it.

    Raises
    ------
    TypeError
        ``name`` is not a str.
    ValueError
        ``name`` is not a path, or not one this build and CPU have.
    """
    if not isinstance(name, str):
        raise TypeError(f"isa must be a str, one of {list(_ISA_NAMES)}, got {name!r}")
    built = {n: ok for n, _, ok in _kernels.isa_table()}
    if name not in _ISA_NAMES:
        raise ValueError(f"isa must be one of {list(_ISA_NAMES)}, got {name!r}")
    if name not in built:
        raise ValueError(f"isa {name!r} is not compiled into this build ({platform.machine()}); "
                         f"available: {supported_isas()}")
    if not built[name]:
        raise ValueError(f"isa {name!r} is not supported by this CPU; supported: {supported_isas()}")
    previous = get_isa()
    _kernels.select_isa(name)
    return previous


def _select_initial_isa() -> None:
    forced = os.environ.get("FASTCE_ISA", "").strip().lower()
    if forced:
        try:
            set_isa(forced)
        except ValueError as exc:
            raise RuntimeError(f"FASTCE_ISA={forced!r} cannot be honoured: {exc}") from None
    else:
        _kernels.select_isa(supported_isas()[0])


def get_num_threads() -> int:
    """Number of threads the next call will use when ``n_threads`` is not given.

    The default is OpenMP's: all cores, lowered by ``OMP_NUM_THREADS`` or by a
    ``threadpoolctl`` limit in force; :func:`set_num_threads` overrides it.  A call
    never runs more threads than the machine has processors, nor more than its work
    can use (small inputs run on one thread, without an OpenMP region). A process forked
    from one that used fastce starts at 1 (libgomp's threads do not survive ``fork``).
    """
    return _kernels.default_threads()


def _after_fork_in_child() -> None:
    # libgomp's thread pool does not survive fork(): a child that opened a parallel region
    # would wait in its barrier for threads that are not there. Run serial (no OpenMP
    # region at all) until the child sets a thread count itself.
    _kernels.set_default_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: int | None) -> None:
    """Set the default thread count for fastce calls.

    Parameters
    ----------
    n : int or None
        Threads per call, ``1 <= n <= 2**20``; ``None`` restores OpenMP's default.
    """
    _kernels.set_default_threads(n)


def _config_dict() -> dict[str, Any]:
    from ._version import __version__
    return {
        "fastce": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "isa": get_isa(),
        "isas_supported": supported_isas(),
        "isas_built": [n for n, _, _ in _kernels.isa_table()],
        "openmp": _kernels.have_openmp(),
        "num_threads": get_num_threads(),
        "cpu_count": os.cpu_count(),
        **{name: describe() for name, describe in _BACKENDS.items()},
    }


#: the other backends' lines of show_config: name -> a function describing the backend
#: (None: not available). The package registers them, so this module imports no backend.
_BACKENDS: dict[str, Callable[[], str | None]] = {}


def register_backend(name: str, describe: Callable[[], str | None]) -> None:
    """Add a backend's line to :func:`show_config` (``describe`` is called each time)."""
    _BACKENDS[name] = describe


def show_config(file: TextIO | None = None) -> None:
    """Print the build and run-time configuration: versions, ISA, OpenMP, threads, GPU."""
    cfg = _config_dict()
    out = file or sys.stdout
    print("fastce configuration", file=out)
    for key, value in cfg.items():
        if key == "openmp" and not value:
            value = "NO - this build is serial: every call uses one thread (rebuild with an OpenMP compiler)"
        print(f"  {key:15s} {value}", file=out)
