"""The communicator interface of fastce.distributed, and its two engines.

Everything fastce.distributed needs from an engine is an in-place MAX or SUM all-reduce
of a contiguous float64 buffer (docs/design.md §6), so the semantics are written once,
against :class:`Communicator`, and an engine is a dozen lines.  Neither torch nor mpi4py
is imported here: a communicator is recognised by the modules its type comes from, so
``import fastce.distributed`` costs neither.
"""
from __future__ import annotations

import abc
import sys
from typing import TYPE_CHECKING, Any, Callable, Literal, overload

import numpy as np

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt

__all__ = ["Communicator", "TorchCommunicator", "MPICommunicator", "CountingCommunicator",
           "as_communicator"]


class Communicator(abc.ABC):
    """The interface: ``rank``, ``size``, and two in-place all-reduces.

    ``buf`` is always a C-contiguous, writeable 1-D float64 NumPy array; after the call
    every rank holds the elementwise max (or sum) over the group's ranks, in place.
    Subclass it to run fastce.distributed over another engine (both all-reduces must be
    defined), or wrap one (:class:`CountingCommunicator`).
    """

    rank: int = 0
    size: int = 1
    #: whether :meth:`allreduce_lse` is offered (the forward is then ONE all-reduce)
    fused_lse: bool = False

    @abc.abstractmethod
    def allreduce_max(self, buf: npt.NDArray[np.float64]) -> None:
        """Replace ``buf`` by its elementwise max over the group's ranks."""

    @abc.abstractmethod
    def allreduce_sum(self, buf: npt.NDArray[np.float64]) -> None:
        """Replace ``buf`` by its elementwise sum over the group's ranks."""

    def allreduce_lse(self, rec: npt.NDArray[np.float64],
                      combine: Callable[[Any, Any], None]) -> None:
        """Optional (``fused_lse = True``): replace the ``(R, 8)`` float64 records by
        their reduction under ``combine(a, b)`` (``b = a (+) b`` in place: the forward's
        (max, sum) operator, ``fastce.distributed._ce.combine_lse_records``, the same in
        every call). Engines without user-defined reductions leave it out, and the
        forward takes a MAX and a SUM instead."""
        raise NotImplementedError(f"{type(self).__name__} has no fused (max, sum) all-reduce")


class CountingCommunicator(Communicator):
    """Wraps a communicator and records its traffic: ``log`` lists each all-reduce as
    ``(op, values)`` ('max' or 'sum', float64 values sent), ``calls`` and ``values`` are
    the totals (bytes = 8 * values)."""

    def __init__(self, inner: object) -> None:
        self.inner = as_communicator(inner)
        self.log: list[tuple[str, int]] = []
        self.rank, self.size = self.inner.rank, self.inner.size
        self.fused_lse = self.inner.fused_lse

    @property
    def calls(self) -> int:
        return len(self.log)

    @property
    def values(self) -> int:
        return sum(n for _, n in self.log)

    def allreduce_max(self, buf: npt.NDArray[np.float64]) -> None:
        self.log.append(("max", buf.size))
        self.inner.allreduce_max(buf)

    def allreduce_sum(self, buf: npt.NDArray[np.float64]) -> None:
        self.log.append(("sum", buf.size))
        self.inner.allreduce_sum(buf)

    def allreduce_lse(self, rec: npt.NDArray[np.float64],
                      combine: Callable[[Any, Any], None]) -> None:
        self.log.append(("lse", rec.size))
        self.inner.allreduce_lse(rec, combine)


class TorchCommunicator(Communicator):
    """A ``torch.distributed`` process group (None: the default group).

    The buffer travels as ``torch.from_numpy(buf)`` (no copy), so a CPU backend (gloo,
    or MPI) is needed for NumPy buffers; NCCL groups take CUDA tensors, which fastce's
    CPU path does not compute on.
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "fastce.distributed: comm=None means torch.distributed's default process "
                "group, which is not initialised: call torch.distributed.init_process_group "
                "first, or pass an mpi4py communicator as comm=")
        self._dist, self._group = dist, group
        self._torch = sys.modules["torch"]
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    def _allreduce(self, buf: npt.NDArray[np.float64], op: Any) -> None:
        self._dist.all_reduce(self._torch.from_numpy(buf), op=op, group=self._group)

    def allreduce_max(self, buf: npt.NDArray[np.float64]) -> None:
        self._allreduce(buf, self._dist.ReduceOp.MAX)

    def allreduce_sum(self, buf: npt.NDArray[np.float64]) -> None:
        self._allreduce(buf, self._dist.ReduceOp.SUM)


class MPICommunicator(Communicator):
    """An mpi4py intracommunicator: ``Allreduce`` in place on the buffer (no pickling).

    ``fused=True`` offers the fused forward (``fused_lse``): ONE all-reduce instead of a
    MAX and a SUM, through a user-defined ``MPI.Op`` (commutative) on a contiguous
    datatype of one 8-double record, so the engine splits a reduction only between
    records. Off by default: the operator runs in Python, ~0.1 ms per all-reduce on one
    machine where the two built-in all-reduces take ~0.01 ms (BENCHMARKS.md); it can pay
    where a network round costs more than that.
    """

    _op: Any = None
    _rec_type: Any = None

    def __init__(self, comm: Any, fused: bool = False) -> None:
        from mpi4py import MPI
        self._comm, self._mpi = comm, MPI
        self.fused_lse = bool(fused)
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_max(self, buf: npt.NDArray[np.float64]) -> None:
        self._comm.Allreduce(self._mpi.IN_PLACE, [buf, self._mpi.DOUBLE], op=self._mpi.MAX)

    def allreduce_sum(self, buf: npt.NDArray[np.float64]) -> None:
        self._comm.Allreduce(self._mpi.IN_PLACE, [buf, self._mpi.DOUBLE], op=self._mpi.SUM)

    def allreduce_lse(self, rec: npt.NDArray[np.float64],
                      combine: Callable[[Any, Any], None]) -> None:
        MPI = self._mpi
        cls = MPICommunicator
        if cls._op is None:  # once per process (MPI keeps them until finalize)
            width = rec.shape[1]

            def op(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
                a = np.frombuffer(inbuf, dtype=np.float64).reshape(-1, width)
                b = np.frombuffer(inoutbuf, dtype=np.float64).reshape(-1, width)
                combine(a, b)
            cls._rec_type = MPI.DOUBLE.Create_contiguous(rec.shape[1]).Commit()
            cls._op = MPI.Op.Create(op, commute=True)
        self._comm.Allreduce(MPI.IN_PLACE, [rec, rec.shape[0], cls._rec_type], op=cls._op)


def _is_torch_group(obj: object) -> bool:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not hasattr(dist, "ProcessGroup"):
        return False
    return isinstance(obj, dist.ProcessGroup)


def _is_mpi_comm(obj: object) -> bool:
    MPI = sys.modules.get("mpi4py.MPI")
    return MPI is not None and isinstance(obj, MPI.Intracomm)


@overload
def as_communicator(comm: object, name: str = ...,
                    default_torch: Literal[True] = ...) -> Communicator: ...
@overload
def as_communicator(comm: object, name: str = ...,
                    default_torch: bool = ...) -> Communicator | None: ...
def as_communicator(comm: object, name: str = "comm",
                    default_torch: bool = True) -> Communicator | None:
    """A :class:`Communicator` for ``comm``: a Communicator (returned as it is), an
    mpi4py intracommunicator, a torch.distributed ProcessGroup, or None (torch's default
    group when ``default_torch``, else None).  Anything else is a TypeError naming
    ``name``."""
    if isinstance(comm, Communicator):
        return comm
    if comm is None:
        if not default_torch:
            return None
        if "torch.distributed" not in sys.modules:
            try:
                import torch.distributed  # noqa: F401
            except ImportError:
                raise RuntimeError(
                    f"fastce.distributed: {name}=None means torch.distributed's default "
                    f"process group, but torch is not installed; pass an mpi4py "
                    f"communicator as {name}=") from None
        return TorchCommunicator(None)
    if _is_mpi_comm(comm):
        return MPICommunicator(comm)
    if _is_torch_group(comm):
        return TorchCommunicator(comm)
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is not None and isinstance(comm, MPI.Comm):
        raise TypeError(f"{name} must be an mpi4py intracommunicator, got {type(comm).__name__}")
    raise TypeError(
        f"{name} must be an mpi4py communicator, a torch.distributed ProcessGroup, a "
        f"fastce.distributed.Communicator or None (torch's default group), got "
        f"{type(comm).__module__}.{type(comm).__qualname__}")

