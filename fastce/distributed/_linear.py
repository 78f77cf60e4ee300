"""Vocabulary-parallel fused linear + cross-entropy: the LM head's weight sharded by rows.

The local logits ``hidden @ local_weight.T (+ local_bias)`` are computed in one product
and overwritten in place by their gradient (``inplace=True``), so this rank holds one
``N x C_local`` buffer -- not chunked like :func:`fastce.linear_cross_entropy`, which
never holds the logits.  d_weight and d_bias are local; d_hidden = sum over the ranks of
``grad_local @ local_weight`` is the one more all-reduce (SUM of N x H values).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._ce import cross_entropy_with_grad
from ._comm import as_communicator

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt
    from .._typing import FloatArray, GradOutput, Loss, Reduction


def linear_cross_entropy_with_grad(
        hidden: npt.ArrayLike, local_weight: npt.ArrayLike, target: npt.ArrayLike, *,
        class_start: int, num_classes: int, comm: object = None, dp_comm: object = None,
        local_bias: npt.ArrayLike | None = None, ignore_index: int = -100,
        reduction: Reduction = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: float | None = None, logit_scale: float = 1.0, num_items: float | None = None,
        grad_output: GradOutput = 1.0, n_threads: int | None = None,
) -> tuple[Loss, FloatArray, FloatArray, FloatArray | None]:
    """Loss of ``cross_entropy(hidden @ W.T + b, target)`` with ``W`` sharded by rows, and
    its gradients.

    Parameters
    ----------
    hidden : ndarray (N, H), float32 or float64
        The hidden states, the same on every rank of ``comm``.
    local_weight : ndarray (C_local, H)
        Rows ``[class_start, class_start + C_local)`` of the head's weight ``W (V, H)``.
    target : array_like of int, shape (N,)
        Global class indices or ``ignore_index``.
    class_start, num_classes, comm, dp_comm
        As :func:`cross_entropy`.
    local_bias : ndarray (C_local,), optional
        The same rows of the head's bias.
    ignore_index, reduction, label_smoothing, z_loss, softcap, logit_scale, num_items
        As :func:`cross_entropy` (no class weights, as :func:`fastce.linear_cross_entropy`).
    grad_output : float or ndarray, default 1.0
        As :func:`cross_entropy_with_grad`.
    n_threads : int, optional
        Threads for the cross-entropy sweeps.

    Returns
    -------
    loss : as :func:`cross_entropy`, the same on every rank
    d_hidden : ndarray (N, H), hidden's dtype, the same on every rank (all-reduced)
    d_weight : ndarray (C_local, H), this rank's rows
    d_bias : ndarray (C_local,) or None without ``local_bias``

    Notes
    -----
    Communication: the two all-reduces of :func:`cross_entropy` (N + 5 and 3N + 2 values)
    and one SUM of N x H float64 values for d_hidden.
    """
    h = np.asarray(hidden)
    w = np.asarray(local_weight)
    if h.ndim != 2 or w.ndim != 2 or w.shape[1] != h.shape[1]:
        raise ValueError(f"hidden must be (N, H) and local_weight (C_local, H), got shapes "
                         f"{h.shape} and {w.shape}")
    logits = h @ w.T
    if local_bias is not None:
        logits += np.asarray(local_bias, dtype=logits.dtype)
    loss, g = cross_entropy_with_grad(
        logits, target, class_start=class_start, num_classes=num_classes, comm=comm,
        dp_comm=dp_comm, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        logit_scale=logit_scale, num_items=num_items, grad_output=grad_output, inplace=True,
        n_threads=n_threads)
    d_hidden = np.ascontiguousarray(g @ w, dtype=np.float64)
    as_communicator(comm).allreduce_sum(d_hidden.reshape(-1))
    d_weight = g.T @ h
    d_bias = None if local_bias is None else g.sum(axis=0, dtype=np.float64).astype(g.dtype)
    return loss, d_hidden.astype(h.dtype, copy=False), d_weight, d_bias
