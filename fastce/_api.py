"""fastce's public functions on NumPy arrays.

Each function validates its arguments (``_validation``), presents the data to the
kernels in their canonical ``(A, C, B)`` layout, runs one row sweep (``_kernels``) and
reduces the per-row results in a fixed order.  Semantics follow PyTorch
(``torch.nn.functional``); the formulas are in the docstrings and in design.md.
"""
import numpy as np

from . import _kernels
from . import _validation as V

__all__ = [
    "logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad",
    "cross_entropy_backward", "nll_loss", "nll_loss_backward", "CrossEntropyLoss",
]

_THREADS_DOC = """n_threads : int, optional
        Threads for this call; default :func:`fastce.get_num_threads`. Results are
        bitwise identical for any value."""


def _cuda_dispatch(name, *arrays):
    """The CuPy twin of ``name`` when any argument is a CuPy array, else None."""
    import sys
    if "cupy" not in sys.modules:
        return None
    from . import cuda
    if cuda.is_cupy_call(*arrays):
        return getattr(cuda, name)
    return None


# ---------------------------------------------------------------------------------------
# log-sum-exp, log-softmax, softmax
# ---------------------------------------------------------------------------------------
def logsumexp(x, axis=-1, *, out=None, n_threads=None):
    """Log of the sum of exponentials along ``axis``: ``log(sum(exp(x), axis))``, stably.

    Parameters
    ----------
    x : array_like of float32 or float64
        Input; any layout.
    axis : int, default -1
        The axis to reduce.
    out : ndarray, optional
        Receives the result: ``x``'s shape without ``axis``, ``x``'s dtype.
    n_threads : int, optional
        Threads for this call; default :func:`fastce.get_num_threads`.

    Returns
    -------
    ndarray or scalar
        ``out`` if given; a NumPy scalar for 1-D ``x``; float32 for float16/bfloat16
        ``x`` (computed in float32). Rows that are all ``-inf`` give
        ``-inf``; a row holding ``nan`` or ``+inf`` gives ``nan`` or ``+inf`` like NumPy.
    """
    twin = _cuda_dispatch("logsumexp", x, out)
    if twin:
        return twin(x, axis, out=out, n_threads=n_threads)
    x = V.as_float_array(x, "x", allow_half=True)
    ax = _array_axis(x, axis)
    nt = V.resolve_threads(n_threads)
    shape = x.shape[:ax] + x.shape[ax + 1:]
    rdtype = V.compute_dtype(x.dtype)
    if out is not None:
        V.check_out(out, shape, rdtype, {"x": x})
    a, c, b = V.rows3_shape(x.shape, ax)
    res = np.full(a * b, -np.inf)
    if a * b and c:
        x3 = V.as_rows3(x, ax)
        _kernels.lse_rows(x3, res, nt)
        for r in np.flatnonzero(np.isnan(res)):  # rare: +inf alone gives +inf, like NumPy/torch
            row = x3[r // b, :, r % b]
            if np.isposinf(row).any() and not np.isnan(row).any():
                res[r] = np.inf
    res = res.reshape(shape)
    if out is not None:
        np.copyto(out, res, casting="same_kind")
        return out
    res = res.astype(rdtype)
    return res[()] if res.ndim == 0 else res


def log_softmax(x, axis=-1, *, out=None, n_threads=None):
    """Log-softmax along ``axis``: ``x - logsumexp(x, axis, keepdims=True)``.

    Parameters
    ----------
    x : array_like of float32 or float64
        Input; any layout.
    axis : int, default -1
        The class axis.
    out : ndarray, optional
        Receives the result (``x``'s shape and dtype, any strides, must not overlap ``x``).
    n_threads : int, optional
        Threads for this call; default :func:`fastce.get_num_threads`.

    Returns
    -------
    ndarray
        ``out`` if given, else a new C-ordered array.
    """
    return _softmax_impl("log_softmax", x, axis, out, n_threads, True)


def softmax(x, axis=-1, *, out=None, n_threads=None):
    """Softmax along ``axis``: ``exp(x - logsumexp(x, axis, keepdims=True))``.

    Parameters and returns as :func:`log_softmax`.
    """
    return _softmax_impl("softmax", x, axis, out, n_threads, False)


def _array_axis(x, axis):
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    return V.check_axis(axis, x.ndim)


def _softmax_impl(name, x, axis, out, n_threads, log_space):
    twin = _cuda_dispatch(name, x, out)
    if twin:
        return twin(x, axis, out=out, n_threads=n_threads)
    x = V.as_float_array(x, "x", allow_half=True)
    ax = _array_axis(x, axis)
    nt = V.resolve_threads(n_threads)
    if out is None:
        out = np.empty(x.shape, dtype=x.dtype)
    else:
        V.check_out(out, x.shape, x.dtype, {"x": x})
    a, c, b = V.rows3_shape(x.shape, ax)
    if a * b * c:
        out3, copy_to = V.writable_rows3(out, ax)
        _kernels.softmax_rows(V.as_rows3(x, ax), out3, log_space, nt)
        if copy_to is not None:
            np.copyto(copy_to, out3.reshape(copy_to.shape))
    return out


# ---------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------
class _CECall:
    """One validated cross-entropy call: canonical views and per-row parameters."""

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing,
                 n_threads, inplace=False, out=None, allow_soft=True, z_loss=0.0, lse=None,
                 class_start=0, num_classes=None, grad_dtype=None, softcap=None,
                 logits_name="logits"):
        self.reduction = V.check_reduction(reduction)
        self.softcap = V.check_softcap(softcap)
        self.eps = V.check_label_smoothing(label_smoothing)
        self.z = V.check_z_loss(z_loss)
        ignore_index = V.check_ignore_index(ignore_index)
        self.n_threads = V.resolve_threads(n_threads)
        if inplace:
            V.check_inplace(logits, out)
        x = V.as_float_array(logits, logits_name, allow_half=True)
        if x.ndim == 0:
            raise ValueError(f"{logits_name} must have shape (C,), (N, C) or (N, C, d1, ..., dk), "
                             f"got a 0-d array")
        self.cdtype = V.compute_dtype(x.dtype)  # reductions; float32 for half logits
        self.grad_dtype = V.check_grad_dtype(grad_dtype, x.dtype)
        if inplace and self.grad_dtype != x.dtype:
            raise ValueError(f"inplace=True writes the gradient into the logits: grad_dtype must be "
                             f"{x.dtype}, got {self.grad_dtype}")
        self.axis = 0 if x.ndim == 1 else 1
        self.n_classes = x.shape[self.axis]
        if self.n_classes == 0:
            raise ValueError(f"{logits_name} must have at least one class, got shape {x.shape}")
        self.x = x
        self.target_shape = V.expected_target_shape(x.shape)
        self.class_start, self.total_classes = V.check_shard(class_start, num_classes, self.n_classes)
        sharded = self.total_classes != self.n_classes
        if allow_soft and V.is_probability_target(target, x.shape):
            if sharded:
                raise ValueError("probability targets cannot be split over vocabulary shards "
                                 "(class_start/num_classes); pass class indices")
            self.soft = V.as_soft_target(target, x.shape, x.dtype, ignore_index)
            self.t = None
        else:
            self.soft = None
            self.t = V.as_hard_target(target, x.shape, self.total_classes, ignore_index, logits_name)
        self.wt, self.wd = V.as_weight(weight, self.total_classes, self.cdtype)
        if self.wt is not None and sharded:
            self.wt = np.ascontiguousarray(self.wt[self.class_start:self.class_start + self.n_classes])
        self.lse = V.as_lse(lse, self.target_shape)
        if sharded and self.lse is None:
            raise ValueError("a vocabulary shard (class_start/num_classes) needs lse=: the "
                             "log-sum-exp over all classes, e.g. np.logaddexp.reduce of every "
                             "shard's fastce.logsumexp")
        if out is not None:
            V.check_out(out, x.shape, self.grad_dtype, {logits_name: x, "target": target, "weight": weight})
        self.out = out
        self.inplace = inplace

    @property
    def rows(self):
        return int(np.prod(self.target_shape, dtype=np.int64))

    def valid_rows(self):
        if self.soft is not None:
            return float(self.rows)
        return float(np.count_nonzero(self.t >= 0))

    def mean_normaliser(self):
        """torch's 'mean' divisor: summed target weights (row count for probabilities)."""
        if self.soft is not None or self.wd is None:
            return self.valid_rows()
        return float(self.wd[self.t[self.t >= 0]].sum())

    def sweep(self, want_loss, grad_output=None, want_grad=False, want_lse=False):
        """Run the row sweep; returns (per-row loss, z-term and lse or None, grad or None)."""
        rows = self.rows
        loss = np.empty(rows) if want_loss else None
        zl = np.empty(rows) if want_loss and self.z else None
        compute_lse = self.lse is None or self.soft is not None  # soft rows re-read targets anyway
        lse = np.empty(rows) if compute_lse and want_lse else self.lse
        grad = copy_to = None
        scale0 = zscale0 = 0.0
        scale_rows = None
        if want_grad:
            g0, scale_rows = V.as_grad_output(grad_output, self.reduction, self.target_shape)
            if self.reduction == "mean":
                with np.errstate(divide="ignore", invalid="ignore"):
                    scale0 = float(np.float64(g0) / np.float64(self.mean_normaliser()))
                    zscale0 = float(np.float64(g0) / np.float64(self.valid_rows()))
            elif self.reduction == "sum":
                scale0 = zscale0 = g0
            if self.inplace:
                grad = self.x
            elif self.out is not None:
                grad = self.out
            else:
                grad = np.empty_like(self.x, dtype=self.grad_dtype)  # the logits' layout, so
                # column sweeps write in place
        if rows:
            grad3 = None
            if grad is not None:
                grad3, copy_to = V.writable_rows3(grad, self.axis)
            x3 = V.as_rows3(self.x, self.axis)
            W = float(self.wt.sum(dtype=np.float64)) if self.wt is not None else float(self.n_classes)
            if self.soft is not None:
                _kernels.ce_soft_rows(x3, V.as_rows3(self.soft, self.axis), self.wt, W, self.eps,
                                      loss, lse if want_lse else None, grad3, scale_rows, scale0,
                                      self.n_threads, self.z, zl, self.softcap)
            else:
                Wtot = float(self.wd.sum()) if self.wd is not None else float(self.total_classes)
                _kernels.ce_rows(x3, self.t, self.wt, self.wd, W, self.eps, loss, lse, compute_lse,
                                 grad3, scale_rows, scale0, self.n_threads, self.z, zl, zscale0,
                                 self.class_start, self.total_classes, Wtot, self.softcap)
            if copy_to is not None:
                np.copyto(copy_to, grad3.reshape(copy_to.shape))
        return (loss, zl), lse, grad

    def reduce(self, parts):
        """Per-row (loss, z-term) -> the reduced loss in the logits' dtype."""
        loss_rows, z_rows = parts
        dtype = self.cdtype
        if self.reduction == "none":
            total_rows = loss_rows if z_rows is None else loss_rows + z_rows
            return total_rows.reshape(self.target_shape).astype(dtype)
        total = np.float64(loss_rows.sum())  # NumPy's pairwise sum: a fixed order
        ztotal = np.float64(z_rows.sum()) if z_rows is not None else None
        if self.reduction == "sum":
            return dtype.type(total if ztotal is None else total + ztotal)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / np.float64(self.mean_normaliser())
            if ztotal is not None:  # the z-term is averaged over rows, unweighted (as Liger)
                mean = mean + ztotal / np.float64(self.valid_rows())
            return dtype.type(mean)

    def lse_out(self, lse):
        return lse.reshape(self.target_shape)


_CE_PARAMS = """Parameters
    ----------
    logits : array_like of float32, float64, float16 or bfloat16
        Scores, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` (class axis 1, as
        in torch); any layout. Half-precision logits (float16, or ``ml_dtypes.bfloat16``)
        are converted row by row into a float32 scratch row and computed in float32;
        the loss comes back as float32 and the gradient is rounded once, at the end.
    target : array_like of int, or of float
        Class indices in ``[0, C)`` or ``ignore_index``, shape ``()``, ``(N,)`` or
        ``(N, d1, ..., dk)``; or class probabilities ``t``, a float array of the logits'
        shape, for which the row loss is ``-sum_c w_c t'_c log_softmax(x)_c`` with
        ``t' = (1 - eps) t + eps / C``, 'mean' divides by the number of rows (not by
        weights, like torch), and ``ignore_index`` must stay -100. A class with
        ``t_c = 0`` and a ``-inf`` logit gives ``0 * -inf = nan``, as in torch.
    weight : array_like, shape (C,), optional
        Class weights ``w`` (default all ones); ``(num_classes,)`` for a shard.
    ignore_index : int, default -100
        Rows whose target equals it contribute no loss and get a zero gradient.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'none' gives one loss per row (target's shape); 'sum' their sum; 'mean' their
        sum divided by ``sum_i w[target_i]`` over the rows not ignored (nan when every
        row is ignored or the batch is empty, like torch).
    label_smoothing : float in [0, 1], default 0
        ``eps``: the row loss becomes
        ``(1 - eps) * w[y] * nll + (eps / C) * sum_c w_c * (-log_softmax(x)_c)``.
    softcap : float > 0, optional
        ``c``: the logits become ``c * tanh(x / c)`` before everything else (Gemma 2's
        logit softcapping), inside the row sweep; the gradient chains through it.
    z_loss : float >= 0, default 0
        ``z``: adds ``z * lse_i**2`` to every row not ignored (PaLM's z-loss, Liger's
        ``lse_square_scale``); under 'mean' this term is averaged over those rows,
        unweighted, while the cross-entropy term keeps torch's normaliser.
    lse : array_like, optional
        Each row's log-sum-exp over all classes (target's shape, e.g. from a previous
        call's ``return_lse`` or from combining vocabulary shards): reused instead of
        recomputed.
    class_start, num_classes : int, optional
        Vocabulary sharding (Megatron-style): ``logits`` holds classes
        ``[class_start, class_start + C)`` of ``num_classes``; targets are global class
        indices and ``lse`` (the global log-sum-exp, ``np.logaddexp`` of every shard's
        :func:`logsumexp`) is required. Each shard returns its additive share of the loss
        (the nll and z terms from the shard owning the row's target, the smoothing term
        over the shard's own classes) and its slice of the gradient, so the shares sum to
        the unsharded loss and the slices concatenate to its gradient."""

_GRAD_PARAMS = """grad_output : float or ndarray, default 1.0
        Upstream gradient: a scalar for 'mean'/'sum', one value per row (target's
        shape) for 'none'.
    out : ndarray, optional
        Receives the gradient (logits' shape and dtype, any strides, no overlap with
        the inputs).
    inplace : bool, default False
        Write the gradient into ``logits`` itself (a writeable C-contiguous ndarray),
        allocating nothing of size N x C. The logits are overwritten: use it only when
        nothing else needs them.
    grad_dtype : dtype, optional
        The gradient's dtype: the logits' (default), or float32 for float16/bfloat16
        logits."""

_LSE_RETURN = """lse : ndarray of float64, target's shape (only with ``return_lse=True``)
        Each row's log-sum-exp (nan for ignored rows)."""


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, lse=None, return_lse=False, class_start=0,
                  num_classes=None, n_threads=None):
    twin = _cuda_dispatch("cross_entropy", logits, target, weight, lse)
    if twin:
        return twin(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, lse=lse,
                    return_lse=return_lse, class_start=class_start, num_classes=num_classes,
                    n_threads=n_threads)
    call = _CECall(logits, target, weight, ignore_index, reduction, label_smoothing, n_threads,
                   z_loss=z_loss, lse=lse, class_start=class_start, num_classes=num_classes,
                   softcap=softcap)
    loss, lse_rows, _ = call.sweep(want_loss=True, want_lse=return_lse)
    if return_lse:
        return call.reduce(loss), call.lse_out(lse_rows)
    return call.reduce(loss)


cross_entropy.__doc__ = f"""Cross-entropy of logits against targets, as ``torch.nn.functional.cross_entropy``.

    One read of the logits; no N x C temporary.

    {_CE_PARAMS}
    return_lse : bool, default False
        Also return each row's log-sum-exp.
    {_THREADS_DOC}

    Returns
    -------
    loss : NumPy scalar (logits' dtype) for 'mean'/'sum'; ndarray of target's shape for 'none'
    {_LSE_RETURN}
    """


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None, lse=None, return_lse=False,
                            class_start=0, num_classes=None, grad_output=1.0, out=None,
                            inplace=False, grad_dtype=None, n_threads=None):
    twin = _cuda_dispatch("cross_entropy_with_grad", logits, target, weight, lse, out)
    if twin:
        return twin(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, lse=lse,
                    return_lse=return_lse, class_start=class_start, num_classes=num_classes,
                    grad_output=grad_output, out=out, inplace=inplace, grad_dtype=grad_dtype,
                    n_threads=n_threads)
    call = _CECall(logits, target, weight, ignore_index, reduction, label_smoothing, n_threads,
                   inplace=inplace, out=out, z_loss=z_loss, lse=lse, class_start=class_start,
                   num_classes=num_classes, grad_dtype=grad_dtype, softcap=softcap)
    loss, lse_rows, grad = call.sweep(want_loss=True, grad_output=grad_output, want_grad=True,
                                      want_lse=return_lse)
    if return_lse:
        return call.reduce(loss), grad, call.lse_out(lse_rows)
    return call.reduce(loss), grad


cross_entropy_with_grad.__doc__ = f"""Cross-entropy loss and its gradient w.r.t. the logits in one sweep.

    Each row is read once from memory, its log-sum-exp found, and the gradient row
    ``d loss / d logits`` written (the second read hits the cache).

    {_CE_PARAMS}
    return_lse : bool, default False
        Also return each row's log-sum-exp.
    {_GRAD_PARAMS}
    {_THREADS_DOC}

    Returns
    -------
    loss : as :func:`cross_entropy`
    grad : ndarray, logits' shape and dtype (``out`` or ``logits`` itself when given/in place)
    {_LSE_RETURN}
    """


def cross_entropy_backward(logits, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, lse=None,
                           class_start=0, num_classes=None, out=None, inplace=False,
                           grad_dtype=None, n_threads=None):
    twin = _cuda_dispatch("cross_entropy_backward", logits, target, weight, lse, out)
    if twin:
        return twin(logits, target, grad_output, weight=weight, ignore_index=ignore_index,
                    reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                    softcap=softcap, lse=lse, class_start=class_start, num_classes=num_classes,
                    out=out, inplace=inplace, grad_dtype=grad_dtype, n_threads=n_threads)
    call = _CECall(logits, target, weight, ignore_index, reduction, label_smoothing, n_threads,
                   inplace=inplace, out=out, z_loss=z_loss, lse=lse, class_start=class_start,
                   num_classes=num_classes, grad_dtype=grad_dtype, softcap=softcap)
    _, _, grad = call.sweep(want_loss=False, grad_output=grad_output, want_grad=True)
    return grad


cross_entropy_backward.__doc__ = f"""Gradient of :func:`cross_entropy` w.r.t. the logits.

    With ``lse`` given (say, from ``cross_entropy(..., return_lse=True)``), one read of
    the logits and one write of the gradient.

    {_CE_PARAMS}
    {_GRAD_PARAMS}
    {_THREADS_DOC}

    Returns
    -------
    grad : ndarray, logits' shape and dtype
    """


def nll_loss(log_probs, target, *, weight=None, ignore_index=-100, reduction="mean",
             n_threads=None):
    """Negative log-likelihood of class-index targets, as ``torch.nn.functional.nll_loss``.

    ``l_i = -w[y_i] * log_probs[i, y_i]`` (0 for ignored rows); 'mean' divides the sum
    by ``sum_i w[y_i]`` over rows not ignored (nan when all are ignored). Reads only the
    N picked entries.

    Parameters
    ----------
    log_probs : array_like of float32 or float64
        Shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``, usually a log-softmax.
    target : array_like of int
        Class indices, shape ``()``, ``(N,)`` or ``(N, d1, ..., dk)``.
    weight, ignore_index, reduction
        As :func:`cross_entropy`.
    n_threads : int, optional
        Accepted for a uniform signature; the O(N) gather runs on one thread.

    Returns
    -------
    loss : NumPy scalar (log_probs' dtype) for 'mean'/'sum'; ndarray of target's shape for 'none'
    """
    twin = _cuda_dispatch("nll_loss", log_probs, target, weight)
    if twin:
        return twin(log_probs, target, weight=weight, ignore_index=ignore_index, reduction=reduction)
    call = _CECall(log_probs, target, weight, ignore_index, reduction, 0.0, n_threads,
                   allow_soft=False, logits_name="log_probs")
    rows, cls, pos = _nll_picks(call)
    lp3 = V.as_rows3(call.x, call.axis)
    w = call.wd[cls] if call.wd is not None else 1.0
    loss = np.zeros(call.rows)
    loss[rows] = -w * lp3[rows // pos, cls, rows % pos].astype(np.float64)
    return call.reduce((loss, None))


def nll_loss_backward(log_probs, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                      reduction="mean", out=None):
    """Gradient of :func:`nll_loss` w.r.t. ``log_probs``.

    Zero everywhere except ``-g_i * w[y_i]`` at each row's target (``g_i`` the upstream
    gradient, divided by the 'mean' normaliser).

    Parameters
    ----------
    log_probs, target, weight, ignore_index, reduction
        As :func:`nll_loss`.
    grad_output : float or ndarray, default 1.0
        Scalar for 'mean'/'sum', one value per row for 'none'.
    out : ndarray, optional
        Receives the gradient (log_probs' shape and dtype, any strides).

    Returns
    -------
    ndarray
        The gradient, log_probs' shape and dtype.
    """
    twin = _cuda_dispatch("nll_loss_backward", log_probs, target, weight, out)
    if twin:
        return twin(log_probs, target, grad_output, weight=weight, ignore_index=ignore_index,
                    reduction=reduction, out=out)
    call = _CECall(log_probs, target, weight, ignore_index, reduction, 0.0, None, out=out,
                   allow_soft=False, logits_name="log_probs")
    g0, g_rows = V.as_grad_output(grad_output, call.reduction, call.target_shape)
    if call.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            g0 = float(np.float64(g0) / np.float64(call.mean_normaliser()))
    grad = out if out is not None else np.empty(call.x.shape, dtype=call.x.dtype)
    rows, cls, pos = _nll_picks(call)
    w = call.wd[cls] if call.wd is not None else 1.0
    g = g_rows[rows] if g_rows is not None else g0
    grad3, copy_to = V.writable_rows3(grad, call.axis)  # a view of grad, or a temporary
    grad3[...] = 0
    grad3[rows // pos, cls, rows % pos] = -w * g
    if copy_to is not None:
        np.copyto(copy_to, grad3.reshape(copy_to.shape))
    return grad


def _nll_picks(call):
    """Flat indices of the rows not ignored, their classes, and the trailing size B."""
    valid = call.t >= 0
    return np.flatnonzero(valid), call.t[valid], V.rows3_shape(call.x.shape, call.axis)[2]


# ---------------------------------------------------------------------------------------
# module-style front end
# ---------------------------------------------------------------------------------------
class CrossEntropyLoss:
    """Cross-entropy criterion with a NumPy-friendly ``backward``.

    ``loss = crit(logits, target)`` computes the loss in one read of the logits and keeps
    only O(N) state (the per-row log-sum-exp); ``crit.backward()`` then writes the
    gradient in one more sweep, without recomputing the log-sum-exp.  The logits must not
    change between the two calls (``backward`` reads them again).

    Parameters
    ----------
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As :func:`cross_entropy`.
    n_threads : int, optional
        Threads per call; default :func:`fastce.get_num_threads`.

    Examples
    --------
    >>> crit = CrossEntropyLoss()
    >>> loss = crit(logits, target)
    >>> grad = crit.backward()            # d loss / d logits
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 z_loss=0.0, softcap=None, n_threads=None):
        self.weight = weight
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.reduction = V.check_reduction(reduction)
        self.label_smoothing = V.check_label_smoothing(label_smoothing)
        self.z_loss = V.check_z_loss(z_loss)
        self.softcap = V.check_softcap(softcap)
        self.n_threads = None if n_threads is None else V.check_n_threads(n_threads)
        self._saved = None

    def __call__(self, logits, target):
        twin = _cuda_dispatch("cross_entropy", logits, target, self.weight)
        if twin:
            loss, lse = twin(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap or None, return_lse=True,
                             n_threads=self.n_threads)
            self._saved = ("cuda", logits, target, lse)  # backward reuses the lse
            return loss
        call = _CECall(logits, target, self.weight, self.ignore_index, self.reduction,
                       self.label_smoothing, self.n_threads, z_loss=self.z_loss,
                       softcap=self.softcap or None)
        loss, lse, _ = call.sweep(want_loss=True, want_lse=True)
        call.lse = lse  # backward reuses it instead of recomputing
        self._saved = ("cpu", logits, call)
        return call.reduce(loss)

    forward = __call__

    def backward(self, grad_output=1.0, *, out=None, inplace=False):
        """Gradient of the last loss w.r.t. its logits.

        Parameters
        ----------
        grad_output : float or ndarray, default 1.0
            Scalar for 'mean'/'sum', one value per row for 'none'.
        out : ndarray, optional
            Receives the gradient.
        inplace : bool, default False
            Overwrite the logits passed to the last call with the gradient.

        Returns
        -------
        ndarray
            The gradient, logits' shape and dtype.
        """
        if self._saved is None:
            raise RuntimeError("backward() called before the loss was computed: call the criterion first")
        if self._saved[0] == "cuda":
            _, logits, target, lse = self._saved
            from . import cuda
            grad = cuda.cross_entropy_backward(
                logits, target, grad_output, weight=self.weight, ignore_index=self.ignore_index,
                reduction=self.reduction, label_smoothing=self.label_smoothing,
                z_loss=self.z_loss, softcap=self.softcap or None, lse=lse, out=out,
                inplace=inplace, n_threads=self.n_threads)
            if inplace:
                self._saved = None  # the logits are gone
            return grad
        _, logits, call = self._saved
        if inplace:
            V.check_inplace(logits, out)
        elif out is not None:
            V.check_out(out, call.x.shape, call.x.dtype, {"logits": call.x, "weight": self.weight})
        call.out, call.inplace = out, inplace
        _, _, grad = call.sweep(want_loss=False, grad_output=grad_output, want_grad=True)
        if inplace:
            self._saved = None  # the logits are gone
        return grad
