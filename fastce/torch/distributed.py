"""Vocabulary-parallel cross-entropy on tensors, with autograd: ``fastce.torch.distributed``.

:func:`cross_entropy` is :func:`fastce.distributed.cross_entropy_with_grad` on the NumPy
views of CPU tensors (no copies), wrapped in a ``torch.autograd.Function``: the forward
computes the full loss (two all-reduces over ``comm``) and, when the logits require
grad, this rank's gradient slice in the same call; backward scales that slice by the
upstream gradient and communicates nothing.  No autograd runs through an all-reduce, so
no rank loses its gradient (ranks whose shard holds no target get their softmax terms,
as in the unsharded gradient).

Why an ``autograd.Function`` and not a ``torch.library.custom_op`` as the rest of
``fastce.torch``: the process group (or mpi4py communicator) is a Python object a custom
op's schema cannot carry, and the op is not functional in torch's sense (it
communicates).  The cost is that ``torch.compile`` graph-breaks around it (eager only).
"""
from typing import Any, Optional

import torch
from torch import Tensor

import fastce.distributed as _fastce_distributed

from ._convert import as_array, check_float, loss_dtype, resolve_threads, to_tensor
from ._ops import scale_grad

_fd: Any = _fastce_distributed  # not annotated (yet): Any at the boundary for mypy --strict

__all__ = ["cross_entropy"]


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor, target: Tensor, weight: Optional[Tensor],
                kw: Any) -> Tensor:
        x = as_array(input, "input")
        t = as_array(target, "target")
        w = None if weight is None else as_array(weight, "weight")
        if ctx.needs_input_grad[0]:
            loss, grad = _fd.cross_entropy_with_grad(x, t, weight=w, **kw)
            ctx.save_for_backward(to_tensor(grad))
        else:
            loss = _fd.cross_entropy(x, t, weight=w, **kw)
        ctx.per_row = kw["reduction"] == "none" and input.dim() > 1
        return to_tensor(loss, loss_dtype(input.dtype))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:
        (grad,) = ctx.saved_tensors
        return scale_grad(grad, g, ctx.per_row), None, None, None


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
    target : Tensor of int
        Global class indices, the same on every rank of ``comm``.
    class_start, num_classes, comm, dp_comm, weight, ignore_index, reduction,
    label_smoothing, z_loss, softcap, logit_scale, num_items, n_threads
        As :func:`fastce.distributed.cross_entropy` (``comm``: a torch.distributed
        ProcessGroup, None for the default group, or an mpi4py communicator; ``weight``:
        the global class-weight tensor, not differentiated, as in torch).

    Returns
    -------
    Tensor
        The full loss, the same on every rank (float32 for half-precision logits); under
        ``dp_comm`` with 'mean', this data-parallel rank's share of the global mean.
        ``backward`` yields ``d loss / d input`` on every rank with no communication.
    """
    check_float(input, "input")
    if target.is_floating_point():
        raise ValueError("target: fastce.torch.distributed takes class-index targets "
                         "(probability targets are not supported across shards)")
    kw = dict(class_start=class_start, num_classes=num_classes, comm=comm, dp_comm=dp_comm,
              ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
              z_loss=z_loss, softcap=softcap, logit_scale=logit_scale, num_items=num_items,
              n_threads=resolve_threads(n_threads))
    apply: Any = _VocabParallelCE.apply  # torch's stubs leave Function.apply untyped
    loss: Tensor = apply(input, target, weight, kw)
    return loss
