"""Vocabulary-parallel fused linear + cross-entropy: the LM head's weight sharded by rows.

The local logits ``hidden @ local_weight.T (+ local_bias)`` are computed in chunks of rows
into ONE reused ``(chunk_size, C_local)`` buffer, so this rank never holds the
``N x C_local`` logits (as :func:`fastce.linear_cross_entropy`):

1. per chunk: the logits, and the two local sweeps of :func:`cross_entropy` (local lse and
   the shard's share), kept as a few values per row;
2. the two all-reduces of :func:`cross_entropy` over all N rows at once (one MAX of
   N + 5 values, one SUM of 3N + 2), whatever the number of chunks;
3. per chunk: the logits again (a second product, unless one chunk holds every row),
   their gradient in place at the global lse, ``d_hidden[chunk] = G @ local_weight``,
   ``d_weight += G.T @ hidden[chunk]`` and ``d_bias += G.sum(0)``;
4. d_hidden = sum over the ranks of the local ones: one more SUM all-reduce of N x H.

d_weight and d_bias are local.  More than one chunk costs the forward product twice
(4 products in all instead of 3): the price of bounded memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _kernels
from ._ce import _Call, _forward, _grad, _loss
from ._comm import as_communicator

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt
    from .._typing import FloatArray, GradOutput, Loss, Reduction

_BUDGET = 64 * 2**20  # bytes of the reused logits chunk by default, as fastce.linear_cross_entropy


def linear_cross_entropy_with_grad(
        hidden: npt.ArrayLike, local_weight: npt.ArrayLike, target: npt.ArrayLike, *,
        class_start: int, num_classes: int, comm: object = None, dp_comm: object = None,
        local_bias: npt.ArrayLike | None = None, ignore_index: int = -100,
        reduction: Reduction = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: float | None = None, logit_scale: float = 1.0, num_items: float | None = None,
        grad_output: GradOutput = 1.0, chunk_size: int | None = None,
        memory_budget: float | None = None, n_threads: int | None = None,
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
    chunk_size : int >= 1, optional
        Rows per chunk: the logits buffer holds ``chunk_size x C_local`` values. Default:
        from ``memory_budget``.
    memory_budget : int > 0, optional
        Bytes for that buffer when ``chunk_size`` is not given:
        ``chunk_size = max(1, memory_budget // (C_local * itemsize))``; default 64 MiB.
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
    Communication: the two all-reduces of :func:`cross_entropy` (N + 5 and 3N + 2 values,
    for all rows together, whatever the number of chunks) and one SUM of N x H float64
    values for d_hidden. Memory beyond the inputs and results: the logits buffer, a few
    float64 values per row, and d_hidden's float64 all-reduce buffer (N x H).
    """
    h = np.asarray(hidden)
    w = np.asarray(local_weight)
    if h.ndim != 2 or w.ndim != 2 or w.shape[1] != h.shape[1]:
        raise ValueError(f"hidden must be (N, H) and local_weight (C_local, H), got shapes "
                         f"{h.shape} and {w.shape}")
    b = None if local_bias is None else np.asarray(local_bias)
    t = np.asarray(target)
    N, C = h.shape[0], w.shape[0]
    dtype = np.result_type(h.dtype, w.dtype)
    if chunk_size is not None and memory_budget is not None:
        raise ValueError("give chunk_size or memory_budget, not both")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
                or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        rows = int(chunk_size)
    else:
        budget = _BUDGET if memory_budget is None else memory_budget
        if not budget > 0:
            raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget!r}")
        rows = max(1, int(budget // max(C * np.dtype(dtype).itemsize, 1)))
    rows = min(rows, max(N, 1))
    bounds = [(a, min(a + rows, N)) for a in range(0, N, rows)] or [(0, 0)]
    buf = np.empty((rows, C), dtype=dtype)

    def logits(a: int, z: int) -> Any:
        out = buf[:z - a]
        np.matmul(h[a:z], w.T, out=out)
        if b is not None:
            out += b.astype(dtype, copy=False)
        return out

    def local_state() -> _Call:  # step 1, inside _forward's error handling
        if t.shape != (N,):
            raise ValueError(f"target must have shape (N,) = ({N},), got {t.shape}")
        return _Call.merged([
            _Call(logits(a, z), t[a:z], class_start, num_classes, None, ignore_index,
                  reduction, label_smoothing, z_loss, softcap, logit_scale, num_items,
                  n_threads) for a, z in bounds])

    call, lse, ce, zt, norms = _forward(  # step 2
        h, t, class_start, num_classes, comm, dp_comm, None, ignore_index, reduction,
        label_smoothing, z_loss, softcap, logit_scale, num_items, n_threads,
        make_call=local_state)
    loss = _loss(call, ce, zt, norms)
    own_mean = reduction == "mean" and num_items is None
    # a chunk's own 'mean' would divide by its rows: with more than one chunk the gradient
    # divides by the call's normalisers, as a data-parallel 'mean' does
    global_norms = own_mean and (dp_comm is not None or len(bounds) > 1)
    g0, g_rows = _kernels.checked_grad_output(grad_output, call.red, (N,),
                                              "the shape of the per-row loss")
    d_hidden = np.empty((N, h.shape[1]), dtype=np.float64)
    d_weight = np.empty((C, h.shape[1]), dtype=dtype)
    d_bias = None if b is None else np.zeros(C, dtype=np.float64)
    for i, (a, z) in enumerate(bounds):  # step 3
        x = buf[:z - a] if len(bounds) == 1 else logits(a, z)
        g_out: Any = g0 if g_rows is None else g_rows[a:z]
        g = _grad(call.chunk(x, t[a:z]), lse[a:z], norms, global_norms, g_out, None, True,
                  None)
        d_hidden[a:z] = g @ w  # (in the inputs' dtype, as before; float64 for the SUM)
        if i == 0:  # the first chunk writes d_weight (no C_local x H temporary)
            np.matmul(g.T, h[a:z], out=d_weight)
        else:
            d_weight += g.T @ h[a:z]
        if d_bias is not None:
            d_bias += g.sum(axis=0, dtype=np.float64)
    as_communicator(comm).allreduce_sum(d_hidden.reshape(-1))  # step 4
    return (loss, d_hidden.astype(h.dtype, copy=False), d_weight,
            None if d_bias is None else d_bias.astype(dtype))
