"""Vocabulary-parallel cross-entropy on tensors, with autograd: ``fastce.torch.distributed``.

:func:`cross_entropy` is :func:`fastce.distributed.cross_entropy_with_grad` on the NumPy
views of CPU tensors (no copies), registered as the ``torch.library`` custom op
``fastce::vocab_parallel_cross_entropy`` (with a fake implementation and an autograd
formula, like the rest of ``fastce.torch``): the forward computes the full loss (two
all-reduces over ``comm``) and, when the logits require grad, this rank's gradient slice
in the same call; backward scales that slice by the upstream gradient and communicates
nothing.  No autograd runs through an all-reduce, so no rank loses its gradient (ranks
whose shard holds no target get their softmax terms, as in the unsharded gradient).

A custom op's schema cannot carry a Python object, so the communicators travel as
integer handles: :func:`comm_handle` registers a process group (or mpi4py communicator,
or :class:`fastce.distributed.Communicator`) once and returns its handle, and
:func:`cross_entropy` accepts either (plain eager calls pass the object itself and
register nothing; traced calls register the objects they see, at trace time).
``torch.compile(fullgraph=True)`` traces a function calling :func:`cross_entropy` without
a graph break when ``comm`` is None (the default group), an ``int`` handle (also as an
argument of the compiled function), or an object from the function's globals or closure
(the compiler guards its identity; a different object recompiles).  A ProcessGroup passed
as an argument of the compiled function is a traced input, refused with a TypeError: pass
its handle.  The op is opaque to the compiler, which keeps it (it is never dead: its loss
is the function's output or feeds it).
"""
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import torch
from torch import Tensor

import fastce.distributed as _fastce_distributed

from ._convert import as_array, check_float, loss_dtype, resolve_threads, to_tensor
from ._ops import _register, call, plain_eager, rows_shape, scale_grad

_fd: Any = _fastce_distributed  # not annotated (yet): Any at the boundary for mypy --strict

__all__ = ["cross_entropy", "comm_handle"]

# handle -> communicator; handles are indices, never reused, and the registry keeps each
# object alive (process groups live as long as the program in practice), so an id() is
# never mistaken for a newer object's
_COMMS: List[Any] = []
_HANDLES: Dict[int, int] = {}
NONE = -1  # the handle of None: torch's default group for comm, no data-parallel group


def _comm_handle(comm: Any) -> int:
    """The integer handle of a communicator, registering it on first use.

    Parameters
    ----------
    comm : torch.distributed ProcessGroup, mpi4py communicator, Communicator, int or None
        An int is returned as it is (a handle); None is ``-1`` (torch's default group as
        ``comm``, no group as ``dp_comm``).

    Returns
    -------
    int
        The handle, valid in this process for the rest of its life.
    """
    if comm is None:
        return NONE
    if type(comm).__name__ == "FakeScriptObject":  # a group that is a traced input
        raise TypeError(
            "comm: a torch.distributed ProcessGroup passed as an argument of a compiled "
            "function is a traced input, whose identity the compiler does not guard; pass "
            "fastce.torch.distributed.comm_handle(group) (an int) instead, or refer to the "
            "group from the function's globals or closure")
    if isinstance(comm, int) and not isinstance(comm, bool):
        if not NONE <= comm < len(_COMMS):
            raise ValueError(f"comm: {comm} is not a handle from fastce.torch.distributed."
                             f"comm_handle ({len(_COMMS)} registered)")
        return comm
    key = id(comm)
    h = _HANDLES.get(key)
    if h is None or _COMMS[h] is not comm:
        _fd.as_communicator(comm)  # a TypeError naming comm for anything else
        h = len(_COMMS)
        _COMMS.append(comm)
        _HANDLES[key] = h
    return h


# Traced code must not run the registration symbolically (the compiler would defer the
# registry's mutation past the op's run): it is called for real at trace time and its
# result baked into the graph as a constant, guarded by the compiler on the object.
_assume_constant: Any = torch.compiler.assume_constant_result  # (untyped in torch)
comm_handle = cast(Callable[[Any], int], _assume_constant(_comm_handle))


def _comm(h: Any) -> Any:
    """The communicator of a handle (plain eager calls pass the object itself)."""
    if isinstance(h, int) and not isinstance(h, bool):
        return None if h == NONE else _COMMS[comm_handle(h)]
    return h


def _compute(input: Tensor, target: Tensor, weight: Optional[Tensor], class_start: int,
             num_classes: int, comm: int, dp_comm: int, ignore_index: int, reduction: str,
             label_smoothing: float, z_loss: float, softcap: Optional[float],
             logit_scale: float, num_items: Optional[float], compute_grad: bool,
             n_threads: int) -> Tuple[Tensor, Optional[Tensor]]:
    """(loss, this rank's d loss / d input at grad_output=1 or None): the op's work."""
    x = as_array(input, "input")
    t = as_array(target, "target")
    w = None if weight is None else as_array(weight, "weight")
    kw = dict(class_start=class_start, num_classes=num_classes, comm=_comm(comm),
              dp_comm=_comm(dp_comm), weight=w, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
              logit_scale=logit_scale, num_items=num_items, n_threads=resolve_threads(n_threads))
    ldtype = loss_dtype(input.dtype)
    if compute_grad:
        loss, grad = _fd.cross_entropy_with_grad(x, t, **kw)
        return to_tensor(loss, ldtype), to_tensor(grad)
    return to_tensor(_fd.cross_entropy(x, t, **kw), ldtype), None


@torch.library.custom_op("fastce::vocab_parallel_cross_entropy", mutates_args=())
def vocab_parallel_cross_entropy_op(
        input: Tensor, target: Tensor, weight: Optional[Tensor], class_start: int,
        num_classes: int, comm: int, dp_comm: int, ignore_index: int, reduction: str,
        label_smoothing: float, z_loss: float, softcap: Optional[float], logit_scale: float,
        num_items: Optional[float], compute_grad: bool, n_threads: int) -> Tuple[Tensor, Tensor]:
    """(loss, d loss / d input at grad_output=1 or empty); ``comm``/``dp_comm``: handles."""
    loss, grad = _compute(input, target, weight, class_start, num_classes, comm, dp_comm,
                          ignore_index, reduction, label_smoothing, z_loss, softcap,
                          logit_scale, num_items, compute_grad, n_threads)
    return loss, grad if grad is not None else input.new_empty(0)


@vocab_parallel_cross_entropy_op.register_fake
def _(input: Any, target: Any, weight: Any, class_start: Any, num_classes: Any, comm: Any,
      dp_comm: Any, ignore_index: Any, reduction: Any, label_smoothing: Any, z_loss: Any,
      softcap: Any, logit_scale: Any, num_items: Any, compute_grad: Any, n_threads: Any) -> Any:
    rows = rows_shape(input, target)
    loss = input.new_empty(rows if reduction == "none" else (), dtype=loss_dtype(input.dtype))
    grad = input.new_empty(input.shape) if compute_grad else input.new_empty(0)
    return loss, grad


def _setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    ctx.set_materialize_grads(False)
    input, reduction, compute_grad = inputs[0], inputs[8], inputs[14]
    loss, grad = output
    if grad is not None:
        ctx.mark_non_differentiable(grad)
    ctx.compute_grad = compute_grad
    ctx.per_row = reduction == "none" and input.dim() > 1
    ctx.save_for_backward(grad if compute_grad else None)


def _backward(ctx: Any, g_loss: Optional[Tensor], g_grad: Optional[Tensor]) -> Any:
    out: List[Optional[Tensor]] = [None] * 16
    if g_loss is not None and ctx.compute_grad and ctx.needs_input_grad[0]:
        (grad,) = ctx.saved_tensors
        out[0] = scale_grad(grad, g_loss, ctx.per_row)  # no communication
    return tuple(out)


_register(vocab_parallel_cross_entropy_op, _setup, _backward, eager=_compute, shown=1)  # the loss


def cross_entropy(input: Tensor, target: Tensor, *, class_start: int, num_classes: int,
                  comm: Any = None, dp_comm: Any = None, weight: Optional[Tensor] = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: Optional[float] = None, logit_scale: float = 1.0,
                  num_items: Optional[float] = None, n_threads: Optional[int] = None) -> Tensor:
    """Vocabulary-parallel cross-entropy of a logits shard, autograd-aware.

    Parameters
    ----------
    input : Tensor
        This rank's logits (CPU; float32, float64, float16 or bfloat16), shape
        ``(N, C_local)``, ``(C_local,)`` or ``(N, C_local, d1, ..., dk)``: the classes
        ``[class_start, class_start + C_local)`` of ``num_classes``.
    target : Tensor
        Global class indices, the same on every rank of ``comm``; or class probabilities,
        this rank's slice of the rows (a float tensor of ``input``'s shape; not
        differentiated: a target that requires grad is refused).
    comm, dp_comm : ProcessGroup, mpi4py communicator, Communicator, int handle or None
        As :func:`fastce.distributed.cross_entropy` (``comm=None``: the default group;
        ``dp_comm=None``: no data-parallel group), or their :func:`comm_handle`.
    class_start, num_classes, weight, ignore_index, reduction, label_smoothing, z_loss,
    softcap, logit_scale, num_items, n_threads
        As :func:`fastce.distributed.cross_entropy` (``weight``: the global class-weight
        tensor, not differentiated, as in torch).

    Returns
    -------
    Tensor
        The full loss, the same on every rank (float32 for half-precision logits); under
        ``dp_comm`` with 'mean', this data-parallel rank's share of the global mean.
        ``backward`` yields ``d loss / d input`` on every rank with no communication.
    """
    check_float(input, "input")
    if target.is_floating_point() and target.requires_grad and torch.is_grad_enabled():
        raise ValueError("target: fastce.torch.distributed does not differentiate probability "
                         "targets; pass target.detach()")
    grad = torch.is_grad_enabled() and input.requires_grad
    if not plain_eager(input):  # traced: the op's schema takes handles
        comm = comm if isinstance(comm, int) else comm_handle(comm)
        dp_comm = dp_comm if isinstance(dp_comm, int) else comm_handle(dp_comm)
    res = call(vocab_parallel_cross_entropy_op, input, target, weight, int(class_start),
               int(num_classes), comm, dp_comm, int(ignore_index),
               reduction, float(label_smoothing), float(z_loss),
               None if softcap is None else float(softcap), float(logit_scale),
               None if num_items is None else float(num_items), grad,
               0 if n_threads is None else int(n_threads), grad=grad)
    loss: Tensor = res[0]
    return loss
