"""fastce.distributed's cross-entropy: the semantics, written once over the Communicator
interface (the package docstring and docs/design.md §6 state the communication)."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from .. import _kernels
from .._api import cross_entropy as _ce
from .._api import cross_entropy_backward as _ce_backward
from ._comm import Communicator, as_communicator

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt
    from .._typing import Float64Array, FloatArray, GradOutput, Loss, Reduction

# the fixed parts of the two vocabulary-group buffers (after the N row values)
_MAX_HEAD = 5   # error flag, num_classes, -num_classes, shard end, -shard start
_SUM_HEAD = 2   # classes held, sum of end**2 - start**2 (the shards tile [0, V) iff == V**2)
# the records of the fused exchange: (tag, 7 values); tags: a row, the MAX head, the SUM head
_REC, _REC_ROW, _REC_MAX, _REC_SUM = 8, 0.0, 1.0, 2.0

_OPTIONS_DOC = """local_logits : array_like of float32, float64, float16 or bfloat16
        This rank's logits, shape ``(N, C_local)``, ``(C_local,)`` or
        ``(N, C_local, d1, ..., dk)``: the classes ``[class_start, class_start + C_local)``.
    target : array_like of int, or of float
        Global class indices in ``[0, num_classes)`` or ``ignore_index``, the same on every
        rank of ``comm``; or class probabilities: this rank's slice of the rows, a float
        array of ``local_logits``' shape (torch's rule, per shard), on every rank of
        ``comm`` alike. The row loss is ``sum_c w_c t'_c (lse - x_c)`` over the global
        vocabulary, ``t' = (1 - eps) t + eps / num_classes``, 'mean' divides by the rows
        and ``ignore_index`` must stay -100 (as :func:`fastce.cross_entropy`).
    class_start : int
        The first global class of this rank's shard.
    num_classes : int
        The number of classes of the whole vocabulary, the same on every rank. The shards
        of ``comm``'s ranks must tile ``[0, num_classes)`` (any sizes, any order of ranks;
        checked collectively).
    comm : mpi4py communicator, torch.distributed ProcessGroup, Communicator or None
        The vocabulary group; None is torch.distributed's default group.
    dp_comm : same types, optional
        The data-parallel group (ranks holding other rows of the same classes). Used only
        by ``reduction='mean'`` without ``num_items``: the normalisers are summed over it,
        and the loss is this group's share of the global-batch mean (the shares sum to
        the mean over every rank's rows; the gradient is that mean's gradient).
    weight : array_like, shape (num_classes,), optional
        The GLOBAL class-weight vector, the same on every rank (a local slice is refused:
        assemble it once with :func:`global_weight`).
    ignore_index, reduction, label_smoothing, z_loss, softcap, logit_scale, num_items
        As :func:`fastce.cross_entropy`, over the global vocabulary: label smoothing
        spreads ``eps`` over ``num_classes`` classes, and ``num_items`` is the global
        'mean' divisor (no data-parallel communication then).
    return_lse : bool, default False
        Also return each row's global log-sum-exp (float64, target's shape).
    n_threads : int, optional
        Threads for this rank's sweeps; default :func:`fastce.get_num_threads`."""


def global_weight(local_weight: npt.ArrayLike, *, class_start: int, num_classes: int,
                  comm: object = None) -> Float64Array:
    """Assemble the global class-weight vector from every rank's slice (one SUM
    all-reduce of ``num_classes`` values; do it once, not per call).

    Parameters
    ----------
    local_weight : array_like, shape (C_local,)
        This rank's weights of the classes ``[class_start, class_start + C_local)``.
    class_start, num_classes, comm
        As :func:`cross_entropy`; the slices must tile ``[0, num_classes)``.

    Returns
    -------
    ndarray of float64, shape (num_classes,)
        The same vector on every rank.
    """
    c = as_communicator(comm)
    w = np.asarray(local_weight, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"local_weight must be 1-D, got shape {w.shape}")
    start, total = _kernels.check_shard(class_start, num_classes, w.shape[0])
    buf = np.zeros(total + 1)
    buf[start:start + w.shape[0]] = w
    buf[total] = w.shape[0]
    c.allreduce_sum(buf)
    if buf[total] != total:
        raise ValueError(f"the weight slices of comm's ranks hold {int(buf[total])} classes in "
                         f"all, not num_classes={total}: check class_start and local_weight")
    return buf[:total].copy()


class _Call:
    """One call's local state: the arguments checked, the two local sweeps, the buffers."""

    # probability targets: the targets as the kernel reads them, the local weights, and
    # the global sum of w t' per row (after the SUM)
    tp: Any = None
    w_loc: Any = None
    U: Any = None

    def __init__(self, x: Any, target: Any, class_start: Any, num_classes: Any, weight: Any,
                 ignore_index: Any, reduction: Any, label_smoothing: Any, z_loss: Any,
                 softcap: Any, logit_scale: Any, num_items: Any, n_threads: Any) -> None:
        self.red = _kernels.check_reduction(reduction)
        self.eps = float(_kernels.check_label_smoothing(label_smoothing))
        self.z = float(_kernels.check_z_loss(z_loss))
        self.num_items = _kernels.check_num_items(num_items, reduction)
        self.ignore_index = _kernels.check_ignore_index(ignore_index)
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("local_logits must have shape (C,), (N, C) or (N, C, d1, ..., dk), "
                             "got a 0-d array")
        self.x = x
        axis = 0 if x.ndim == 1 else 1
        C = x.shape[axis]
        if num_classes is None:
            raise TypeError("num_classes is required: the number of classes of the whole "
                            "vocabulary")
        self.start, self.V = _kernels.check_shard(class_start, num_classes, C)
        self.C = C
        t = np.asarray(target)
        floating = t.dtype.kind == "f" or t.dtype.name == "bfloat16"
        self.soft = floating and t.shape == x.shape
        full = x.shape[:axis] + (self.V,) + x.shape[axis + 1:]
        if floating and not self.soft and t.shape == full:
            raise ValueError(f"target: probability targets are this rank's slice of the rows, "
                             f"local_logits' shape {x.shape} (classes [{self.start}, "
                             f"{self.start + C})), got the full rows {t.shape}")
        self.t = t
        self.tshape = x.shape[:axis] + x.shape[axis + 1:]
        self.axis = axis
        if weight is not None:
            w = np.asarray(weight)
            if w.shape != (self.V,):
                hint = (" (this looks like the local slice: assemble the global vector once "
                        "with fastce.distributed.global_weight)" if w.shape == (C,) else "")
                raise ValueError(f"weight must be the global class-weight vector of shape "
                                 f"(num_classes,) = ({self.V},), got shape {w.shape}{hint}")
            weight = w
        self.weight = weight
        self.opts = dict(ignore_index=self.ignore_index, softcap=softcap,
                         logit_scale=logit_scale, n_threads=n_threads)
        if self.soft:
            self._soft_sweep(x, t, axis, C)
            return
        # sweep 1: the transformed local lse of every row (all rows ignored: no target read)
        ignored = np.full(self.tshape, self.ignore_index, dtype=np.int64)
        _, lse_loc = _ce(x, ignored, reduction="none", return_lse=True, **self.opts)
        self.lse_loc = lse_loc.reshape(-1)
        # sweep 2: the shard's share at lse = lam_s, its own lse (0 where that is -inf):
        # share_s = lam_s * b_s - A_s, the linear part A_s (target logit and smoothing sum)
        # in a value of the loss's size (docs/design.md §6)
        self.lam = np.where(np.isfinite(self.lse_loc), self.lse_loc, 0.0)
        share = _ce(x, t, reduction="none", lse=self.lam.reshape(self.tshape), weight=weight,
                    label_smoothing=self.eps, class_start=self.start, num_classes=self.V,
                    **self.opts)
        self.share = np.asarray(share, dtype=np.float64).reshape(-1)
        # the kept rows and their target weights (the targets were checked by sweep 2)
        ti = t.reshape(-1).astype(np.int64, copy=False)
        self.kept = ti != self.ignore_index
        if weight is None:
            self.wy = self.kept.astype(np.float64)
            self.W = float(self.V)
            w_local_sum = float(C)
        else:
            wd = weight.astype(np.float64, copy=False)
            self.wy = np.where(self.kept, wd[np.where(self.kept, ti, 0)], 0.0)
            self.W = float(wd.sum())
            w_local_sum = float(wd[self.start:self.start + C].sum())
        owner = self.kept & (ti >= self.start) & (ti < self.start + C)
        # b_s: this shard's coefficient of the lse in the row loss (sum over shards: B)
        self.b_s = ((1.0 - self.eps) * np.where(owner, self.wy, 0.0)
                    + self.eps / self.V * w_local_sum)
        self.n = self.lse_loc.shape[0]

    def _soft_sweep(self, x: Any, t: Any, axis: int, C: int) -> None:
        """Probability targets: one local sweep (fastce's soft-target kernel on the
        targets smoothed over the GLOBAL vocabulary) gives the local lse lam_s and the
        share sum_c w_c t'_c (lam_s - x_c) in the kernel's exact form; NumPy gives
        u_s = sum_c w_c t'_c (float64), the shard's coefficient of the lse (§6)."""
        # t' in the kernel's compute dtype, which is what it reads (no copy when t is
        # already in it and unsmoothed)
        cdt = np.float64 if x.dtype == np.float64 else np.float32
        tp: Any = np.asarray(t)
        if self.eps:
            tp = ((1.0 - self.eps) * tp.astype(cdt, copy=False)
                  + cdt(self.eps / self.V))  # over the global V, not C_local
        else:
            tp = tp.astype(cdt, copy=False)
        w_loc = None
        if self.weight is not None:
            w_loc = self.weight[self.start:self.start + C].astype(np.float64)
        share, lse_loc = _ce(x, tp, reduction="none", return_lse=True, weight=w_loc,
                             **self.opts)
        self.tp, self.w_loc = tp, w_loc
        self.lse_loc = np.asarray(lse_loc, dtype=np.float64).reshape(-1)
        self.n = self.lse_loc.shape[0]
        self.lam = np.where(np.isfinite(self.lse_loc), self.lse_loc, 0.0)
        self.share = np.asarray(share, dtype=np.float64).reshape(-1)
        t_rows = self._rows(tp)
        self.b_s = (t_rows.sum(axis=1, dtype=np.float64) if w_loc is None
                    else (t_rows * w_loc).sum(axis=1))  # u_s
        masked = self.lse_loc == -np.inf
        if masked.any() and C:
            # every local logit -inf: w t' (L - x) is +inf per class, 0 * inf = nan where
            # w t' = 0, as the unsharded row (the kernel's own lse is -inf here)
            wt = t_rows[masked].astype(np.float64) * (1.0 if w_loc is None else w_loc)
            with np.errstate(invalid="ignore"):
                self.share[masked] = np.sum(wt * np.inf, axis=1)
        self.kept = np.ones(self.n, dtype=bool)
        self.wy = np.ones(self.n)  # 'mean' divides by the rows, as torch
        self.W = 0.0

    @staticmethod
    def merged(calls: list[_Call]) -> _Call:
        """One call's state from the calls of its row chunks (same options, rows in
        order): the per-row arrays concatenated.  ``x``/``t`` stay the first chunk's
        (their dtype is what the loss needs; the gradient takes each chunk's, see
        :meth:`chunk`)."""
        m = copy.copy(calls[0])
        if len(calls) > 1:
            for name in ("lse_loc", "lam", "share", "kept", "wy", "b_s"):
                setattr(m, name, np.concatenate([getattr(c, name) for c in calls]))
            m.n = sum(c.n for c in calls)
            m.tshape = (m.n,)
        return m

    def chunk(self, x: Any, t: Any) -> _Call:
        """This (merged) call's state for rows held in ``x`` and ``t``: for the gradient."""
        c = copy.copy(self)
        c.x, c.t, c.tshape = x, t, t.shape
        return c

    def _rows(self, a: Any) -> Any:
        """An array of local_logits' shape as (rows, C_local), rows in the target's order."""
        return np.moveaxis(a, self.axis, -1).reshape(self.n, self.C)


def _forward(logits: Any, target: Any, class_start: Any, num_classes: Any, comm: object,
             dp_comm: object, weight: Any, ignore_index: Any, reduction: Any,
             label_smoothing: Any, z_loss: Any, softcap: Any, logit_scale: Any, num_items: Any,
             n_threads: Any, make_call: Any = None) -> tuple[_Call, Any, Any, Any, Any]:
    """The two all-reduces and the row losses.  ``make_call``: builds the local state
    instead of ``_Call(logits, ...)`` (linear CE's chunks; ``logits`` then only gives the
    row count of a failed call)."""
    c = as_communicator(comm, "comm")
    dp = as_communicator(dp_comm, "dp_comm", default_torch=False)
    err: Exception | None = None
    call: Any = None  # a _Call once the checks passed (else err is raised below)
    try:
        if make_call is not None:
            call = make_call()
        else:
            call = _Call(logits, target, class_start, num_classes, weight, ignore_index,
                         reduction, label_smoothing, z_loss, softcap, logit_scale, num_items,
                         n_threads)
        n = call.n
    except Exception as exc:  # raised on every rank below, after the same all-reduces
        err = exc
        n = _rows(logits)  # the buffers' length must still agree with the other ranks'
    dp_mean = (dp is not None and reduction == "mean" and num_items is None)

    # 1. MAX: the local lse, the error flag and the argument checks
    mx = np.empty(n + _MAX_HEAD)
    if call is not None:
        mx[:n] = call.lse_loc
        kind = 2.0 * call.V + call.soft  # num_classes and the target kind, checked at once
        mx[n:] = (0.0, kind, -kind, call.start + call.C, -call.start)
    else:
        mx[:] = 0.0
        mx[n] = c.rank + 1
    fused = c.fused_lse
    if fused:  # steps 1 and 2 in one all-reduce (an engine with the (max, sum) operator)
        sm_fused = _fused_exchange(c, call, mx, n)
    else:
        c.allreduce_max(mx)
    problem = None
    if mx[n] > 0:
        problem = err or RuntimeError(
            f"fastce.distributed: rank {int(mx[n]) - 1} of comm raised an error before the "
            f"all-reduce (its traceback says which argument)")
    elif mx[n + 1] != -mx[n + 2] and mx[n + 1] // 2 == -mx[n + 2] // 2:
        problem = ValueError("target: some ranks of comm pass probability targets and others "
                             "class indices")
    elif mx[n + 1] != -mx[n + 2]:
        problem = ValueError(f"num_classes differs across the ranks of comm: from "
                             f"{int(-mx[n + 2] // 2)} to {int(mx[n + 1] // 2)}")
    else:
        V = call.V
        m = mx[:n]
        # 2. SUM: the exps of the non-maximal shards, the count of maximal ones, and the
        # shares moved to the common shift m (every term >= 0: no cancellation, §6);
        # probability targets add u_s = sum_c w_c t'_c, the lse's coefficient
        k = 4 if call.soft else 3
        if fused:
            sm = sm_fused
        else:
            sm = np.empty(k * n + _SUM_HEAD)
            top = call.lse_loc == m
            with np.errstate(invalid="ignore", over="ignore"):
                np.exp(call.lse_loc - m, out=sm[:n])
                sm[:n][top] = 0.0
                sm[n:2 * n] = top
                sm[2 * n:3 * n] = call.share + (m - call.lam) * call.b_s
                if call.soft:
                    sm[3 * n:4 * n] = call.b_s
            sm[k * n:] = (call.C, float(call.start + call.C) ** 2 - float(call.start) ** 2)
            c.allreduce_sum(sm)
        if (sm[k * n] != V or sm[k * n + 1] != float(V) ** 2 or mx[n + 3] != V
                or mx[n + 4] != 0):
            problem = ValueError(
                f"class_start: the shards [class_start, class_start + C_local) of comm's "
                f"ranks do not tile [0, num_classes={V}): they hold {int(sm[k * n])} classes "
                f"from {int(-mx[n + 4])} to {int(mx[n + 3])}, overlapping or with gaps")

    # 3. the data-parallel normalisers (also when failing: the peers wait on this one)
    if dp_mean and dp is not None:  # (dp_mean implies dp)
        d = np.zeros(3)
        if problem is None:
            d[:2] = call.wy.sum(), float(call.kept.sum())
        else:
            d[2] = 1.0
        dp.allreduce_sum(d)
        if problem is None and d[2] > 0:
            problem = RuntimeError("fastce.distributed: a rank of dp_comm raised an error "
                                   "before its all-reduce (its traceback says which argument)")
        norms = (d[0], d[1])
    elif problem is None and call.red == "mean":
        if call.num_items is not None:
            norms = (float(call.num_items),) * 2
        else:
            norms = (call.wy.sum(), float(call.kept.sum()))
    else:
        norms = None
    if problem is not None:
        raise problem

    # 4. lse = m + log1p(ties - 1 + the others' exps); the row loss (design.md §6)
    #    l_i = d_i * B_i + sum_s [share_s + (m_i - lam_s) b_s] + z lse_i^2, masked
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        d = np.log1p((sm[n:2 * n] - 1.0) + sm[:n])
        lse = np.where(m == -np.inf, -np.inf, m + d)
        if call.soft:
            B = call.U = sm[3 * n:4 * n]  # U = sum over ALL classes of w_c t'_c
        else:
            B = (1.0 - call.eps) * call.wy + call.eps * call.W / V
        ce = np.where(call.kept, d * B + sm[2 * n:3 * n], 0.0)
        ce[call.kept & ~np.isfinite(m)] = np.nan  # all -inf, +inf or nan: nan, as unsharded
        zt = np.where(call.kept, call.z * lse * lse, 0.0) if call.z else None
    return call, lse, ce, zt, norms


def _fused_exchange(c: Communicator, call: Any, mx: Any, n: int) -> Any:
    """The MAX and the SUM of ``_forward`` as ONE all-reduce of records (the engine's
    (max, sum) operator, ``Communicator.allreduce_lse``): per row ``(m, e, k, rho, S, B)``
    -- k shards at the max m, the others' exps e below it, the shares S measured from the
    reference rho (the max of the shards' own lam) and their lse coefficients B, combined
    exactly by shifting to the larger max and reference -- then a MAX record of the
    argument checks and a SUM record of the tiling check.  Fills ``mx`` in place and
    returns the SUM buffer in the two-step layout (None on a failing rank)."""
    rec = np.zeros((n + 2, _REC))
    rec[n, 0], rec[n + 1, 0] = _REC_MAX, _REC_SUM
    rec[n, 1:1 + _MAX_HEAD] = mx[n:]
    if call is None:  # neutral rows: no shard, no share
        rec[:n, 1] = rec[:n, 4] = -np.inf
    else:
        rec[:n, 1] = call.lse_loc
        rec[:n, 3] = 1.0
        rec[:n, 4] = call.lam
        rec[:n, 5] = call.share
        rec[:n, 6] = call.b_s
        rec[n + 1, 1:3] = (call.C, float(call.start + call.C) ** 2 - float(call.start) ** 2)
    c.allreduce_lse(rec, combine_lse_records)
    mx[:n] = m = rec[:n, 1]
    mx[n:] = rec[n, 1:1 + _MAX_HEAD]
    if call is None:
        return None
    k = 4 if call.soft else 3
    sm = np.empty(k * n + _SUM_HEAD)
    sm[:n], sm[n:2 * n] = rec[:n, 2], rec[:n, 3]
    with np.errstate(invalid="ignore"):  # the shares, moved from rho to m as in the SUM
        sm[2 * n:3 * n] = rec[:n, 5] + (m - rec[:n, 4]) * rec[:n, 6]
    if call.soft:
        sm[3 * n:4 * n] = rec[:n, 6]
    sm[k * n:] = rec[n + 1, 1:3]
    return sm


def combine_lse_records(a: Any, b: Any) -> None:
    """``b = a (+) b`` for the records of :func:`_fused_exchange` (the (max, sum)
    operator; ``a``, ``b``: (R, 8) float64, b written in place).  Symmetric in a and b
    term by term, so bitwise commutative: every rank of a reduction tree gets the same
    bits.  Exact: e, k, S are shifted to the larger max / reference, never subtracted."""
    tag = a[:, 0]
    hm, hs, r = tag == _REC_MAX, tag == _REC_SUM, tag == _REC_ROW
    if hm.any():
        b[hm, 1:] = np.maximum(a[hm, 1:], b[hm, 1:])
    if hs.any():
        b[hs, 1:] += a[hs, 1:]
    if not r.any():
        return
    A, B_ = a[r], b[r]
    M = np.maximum(A[:, 1], B_[:, 1])
    R = np.maximum(A[:, 4], B_[:, 4])
    with np.errstate(invalid="ignore", over="ignore"):
        def exps(x: Any) -> Any:  # the exps below M (tops below M become exps)
            return np.where(x[:, 1] == M, x[:, 2], (x[:, 2] + x[:, 3]) * np.exp(x[:, 1] - M))

        def tops(x: Any) -> Any:
            return np.where(x[:, 1] == M, x[:, 3], 0.0)

        def shares(x: Any) -> Any:  # S moved from x's reference to R (no shard: nothing)
            return x[:, 5] + np.where((x[:, 4] == R) | (x[:, 6] == 0.0), 0.0,
                                      (R - x[:, 4]) * x[:, 6])
        out = np.empty_like(A)
        out[:, 0] = _REC_ROW
        out[:, 1], out[:, 4] = M, R
        out[:, 2] = exps(A) + exps(B_)
        out[:, 3] = tops(A) + tops(B_)
        out[:, 5] = shares(A) + shares(B_)
        out[:, 6] = A[:, 6] + B_[:, 6]
        out[:, 7] = 0.0
    b[r] = out


def _rows(logits: Any) -> int:
    """The row count of logits that failed the checks (0 if it has no shape)."""
    try:
        shape = np.shape(logits)
    except Exception:
        return 0
    return 1 if len(shape) <= 1 else int(np.prod(shape[:1] + shape[2:]))


def _loss(call: _Call, ce: Any, zt: Any, norms: Any) -> Any:
    dt = np.float64 if call.x.dtype == np.float64 else np.float32
    if call.red == "none":
        rows = ce if zt is None else ce + zt
        return rows.astype(dt).reshape(call.tshape)
    with np.errstate(invalid="ignore", divide="ignore"):
        if call.red == "sum":
            total = ce.sum() + (zt.sum() if zt is not None else 0.0)
        else:  # 0 / 0 = nan when no row counts, like torch
            total = ce.sum() / norms[0] + (zt.sum() / norms[1] if zt is not None else 0.0)
    return dt(total)


def _grad(call: _Call, lse: Any, norms: Any, dp_mean: bool, grad_output: Any, out: Any,
          inplace: bool, grad_dtype: Any) -> FloatArray:
    """The gradient slice: fastce's shard kernel at the global lse; the data-parallel
    'mean' through its normalisers (weight and z scaled when they differ)."""
    if call.soft:
        return _soft_grad(call, lse, norms, grad_output, out, inplace, grad_dtype)
    red, weight, z, items = call.red, call.weight, call.z, call.num_items
    if dp_mean and norms[0] != 0 and norms[1] != 0:
        if weight is None or z == 0.0:
            items = norms[0]  # unweighted: both normalisers are the kept rows
        else:  # the loss is linear in (w, z): sum with w / Dw and z / Dn is the mean
            red, weight, z = "sum", weight / norms[0], z / norms[1]
    # (an all-ignored global batch keeps the local 'mean': 0 / 0, the unsharded result)
    return _ce_backward(call.x, call.t, grad_output, lse=lse.reshape(call.tshape),
                        weight=weight, reduction=red, label_smoothing=call.eps, z_loss=z,
                        num_items=items, class_start=call.start, num_classes=call.V,
                        out=out, inplace=inplace, grad_dtype=grad_dtype, **call.opts)


def _soft_grad(call: _Call, lse: Any, norms: Any, grad_output: Any, out: Any, inplace: bool,
               grad_dtype: Any) -> FloatArray:
    """The gradient slice of probability targets, g [(U + 2 z lse) p_c - w_c t'_c] chained
    through softcap and logit_scale, at the GLOBAL lse (p_c = exp(x_c - lse)) and with U
    the global sum of w t' (from the SUM).

    fastce's shard kernels have no soft-target form, but the class-index shard kernel
    with a target OUTSIDE this shard, no weights and no smoothing writes exactly
    ``a p_c`` (chained) for a per-row ``a`` passed as grad_output: that sweep, then one
    NumPy pass subtracts ``g w_c t'_c`` (chained). A single shard (C_local = V) is the
    unsharded soft-target backward itself."""
    x = call.x
    gdtype = _kernels.check_grad_dtype(grad_dtype, x.dtype)
    if inplace:
        _kernels.check_inplace(x, out)
        if gdtype != x.dtype:
            raise ValueError("inplace=True writes the gradient into local_logits: grad_dtype "
                             "must be its dtype")
    elif out is not None:
        _kernels.check_out(out, x.shape, gdtype, {"local_logits": x, "target": call.t})
    g0, g_rows = _kernels.checked_grad_output(grad_output, call.red, call.tshape,
                                              "the shape of the per-row loss")
    g = np.full(call.n, g0) if g_rows is None else np.asarray(g_rows, np.float64).reshape(-1)
    if call.red == "mean":  # both terms over the (global) rows, or num_items
        with np.errstate(invalid="ignore", divide="ignore"):
            g = g / norms[0]
    opts = dict(call.opts, reduction="none", grad_dtype=gdtype)
    if call.C == call.V:  # one shard: the unsharded kernel (its lse is the global one)
        return _ce_backward(x, call.tp, g.reshape(call.tshape), weight=call.w_loc,
                            z_loss=call.z, out=out, inplace=inplace, **opts)
    s, cap = float(call.opts["logit_scale"]), call.opts["softcap"]
    dxc: Any = s
    if cap is not None:  # d(transform)/dx, before an in-place sweep overwrites x
        xc = np.tanh(x.astype(np.float64) * (s / float(cap)))
        dxc = s * (1.0 - xc * xc)
    with np.errstate(invalid="ignore", over="ignore"):
        a = g * call.U
        if call.z:
            a = a + g * 2.0 * call.z * lse
    half = np.dtype(gdtype).itemsize == 2
    if half:  # the half gradient is rounded once, at the end, as the unsharded call's
        opts["grad_dtype"] = np.float32
    outside = call.start + call.C if call.start + call.C < call.V else call.start - 1
    grad = _ce_backward(x, np.full(call.tshape, outside, dtype=np.int64), a.reshape(call.tshape),
                        lse=lse.reshape(call.tshape), class_start=call.start,
                        num_classes=call.V, out=None if half else out,
                        inplace=inplace and not half, **opts)
    row = np.expand_dims(g.reshape(call.tshape), call.axis)  # per-row, broadcast on classes
    sub = call.tp * row
    if call.w_loc is not None:
        shape = [1] * x.ndim
        shape[call.axis] = call.C
        sub *= call.w_loc.reshape(shape)
    sub *= dxc
    np.subtract(grad, sub, out=grad, casting="unsafe")
    if not half:
        return grad
    dest: FloatArray = x if inplace else out if out is not None else np.empty(x.shape, gdtype)
    np.copyto(dest, grad, casting="unsafe")
    return dest


@overload
def cross_entropy(local_logits: npt.ArrayLike, target: npt.ArrayLike, *, class_start: int,
        num_classes: int, comm: object = ..., dp_comm: object = ...,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., return_lse: Literal[False] = ...,
        n_threads: int | None = ...) -> Loss: ...
@overload
def cross_entropy(local_logits: npt.ArrayLike, target: npt.ArrayLike, *, class_start: int,
        num_classes: int, comm: object = ..., dp_comm: object = ...,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., return_lse: Literal[True],
        n_threads: int | None = ...) -> tuple[Loss, Float64Array]: ...
@overload
def cross_entropy(local_logits: npt.ArrayLike, target: npt.ArrayLike, *, class_start: int,
        num_classes: int, comm: object = ..., dp_comm: object = ...,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., return_lse: bool = ...,
        n_threads: int | None = ...) -> Loss | tuple[Loss, Float64Array]: ...
def cross_entropy(local_logits: npt.ArrayLike, target: npt.ArrayLike, *, class_start: int,
                  num_classes: int, comm: object = None, dp_comm: object = None,
                  weight: npt.ArrayLike | None = None, ignore_index: int = -100,
                  reduction: Reduction = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0,
                  num_items: float | None = None, return_lse: bool = False,
                  n_threads: int | None = None) -> Loss | tuple[Loss, Float64Array]:
    call, lse, ce, zt, norms = _forward(
        local_logits, target, class_start, num_classes, comm, dp_comm, weight, ignore_index,
        reduction, label_smoothing, z_loss, softcap, logit_scale, num_items, n_threads)
    loss = _loss(call, ce, zt, norms)
    return (loss, lse.reshape(call.tshape)) if return_lse else loss


@overload
def cross_entropy_with_grad(local_logits: npt.ArrayLike, target: npt.ArrayLike, *,
        class_start: int, num_classes: int, comm: object = ..., dp_comm: object = ...,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., return_lse: Literal[False] = ...,
        grad_output: GradOutput = ..., out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[Loss, FloatArray]: ...
@overload
def cross_entropy_with_grad(local_logits: npt.ArrayLike, target: npt.ArrayLike, *,
        class_start: int, num_classes: int, comm: object = ..., dp_comm: object = ...,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., return_lse: Literal[True],
        grad_output: GradOutput = ..., out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[Loss, FloatArray, Float64Array]: ...
@overload
def cross_entropy_with_grad(local_logits: npt.ArrayLike, target: npt.ArrayLike, *,
        class_start: int, num_classes: int, comm: object = ..., dp_comm: object = ...,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., return_lse: bool = ...,
        grad_output: GradOutput = ..., out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[Loss, FloatArray] | tuple[Loss, FloatArray, Float64Array]: ...
def cross_entropy_with_grad(
        local_logits: npt.ArrayLike, target: npt.ArrayLike, *, class_start: int,
        num_classes: int, comm: object = None, dp_comm: object = None,
        weight: npt.ArrayLike | None = None, ignore_index: int = -100,
        reduction: Reduction = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: float | None = None, logit_scale: float = 1.0, num_items: float | None = None,
        return_lse: bool = False, grad_output: GradOutput = 1.0,
        out: npt.NDArray[Any] | None = None, inplace: bool = False,
        grad_dtype: npt.DTypeLike | None = None, n_threads: int | None = None,
) -> tuple[Loss, FloatArray] | tuple[Loss, FloatArray, Float64Array]:
    call, lse, ce, zt, norms = _forward(
        local_logits, target, class_start, num_classes, comm, dp_comm, weight, ignore_index,
        reduction, label_smoothing, z_loss, softcap, logit_scale, num_items, n_threads)
    loss = _loss(call, ce, zt, norms)
    dp_mean = dp_comm is not None and reduction == "mean" and num_items is None
    grad = _grad(call, lse, norms, dp_mean, grad_output, out, inplace, grad_dtype)
    return (loss, grad, lse.reshape(call.tshape)) if return_lse else (loss, grad)


cross_entropy.__doc__ = f"""Vocabulary-parallel cross-entropy: the full loss from this rank's shard.

    Every rank of ``comm`` calls it with its own class range and the same rows; every rank
    gets the unsharded loss (the value :func:`fastce.cross_entropy` gives on the
    concatenated logits). Two local sweeps of the logits (one with probability targets),
    then one MAX all-reduce of N + 5 and one SUM all-reduce of 3N + 2 float64 values
    (4N + 2 with probability targets) over ``comm`` (plus 3 values
    over ``dp_comm`` for a data-parallel 'mean'). Argument errors found on any rank are
    raised on every rank (the others raise RuntimeError naming it), not left to hang.

    Parameters
    ----------
    {_OPTIONS_DOC}

    Returns
    -------
    loss : NumPy scalar (float64 for float64 logits, else float32) for 'mean'/'sum';
        ndarray of target's shape for 'none'. The same on every rank of ``comm``.
    lse : ndarray of float64, target's shape (only with ``return_lse=True``)

    Examples
    --------
    >>> # rank r of P holds classes [r * V // P, (r + 1) * V // P)
    >>> loss = fastce.distributed.cross_entropy(x_local, y, class_start=start,
    ...                                         num_classes=V, comm=MPI.COMM_WORLD)
    """

cross_entropy_with_grad.__doc__ = f"""Vocabulary-parallel loss and this rank's gradient slice.

    As :func:`cross_entropy` (the same two all-reduces), then one local read-and-write
    sweep for ``d loss / d local_logits`` at the global lse; no more communication. The
    slices of ``comm``'s ranks concatenate to the unsharded gradient, on every rank,
    including ranks whose shard holds no target.

    Parameters
    ----------
    {_OPTIONS_DOC}
    grad_output : float or ndarray, default 1.0
        Upstream gradient, as :func:`fastce.cross_entropy_with_grad`.
    out : ndarray, optional
        Receives the gradient slice (local_logits' shape and dtype).
    inplace : bool, default False
        Write the gradient slice over ``local_logits``.
    grad_dtype : dtype, optional
        As :func:`fastce.cross_entropy_with_grad`.

    Returns
    -------
    loss : as :func:`cross_entropy`
    grad : ndarray, local_logits' shape
    lse : ndarray of float64, target's shape (only with ``return_lse=True``)
    """

