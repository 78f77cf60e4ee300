"""The slow twin: float64 NumPy implementations of fastce's public functions.

Every function here has the signature of its fast counterpart minus the ``out``,
``n_threads`` and ``inplace`` arguments, follows the formulas of ``docs/design.md`` §1
literally, computes in float64 and returns float64 (NumPy scalars for 'mean'/'sum').
The test suite uses it as the oracle, and checks it against ``torch`` in turn.
This module must stay pure NumPy: it never imports fastce's compiled core.

Notation: ``lse_i = log sum_c exp(x_ic)``, ``logp_ic = x_ic - lse_i``,
``p_ic = exp(logp_ic)``, class weights ``w`` (default ones), ``W = sum_c w_c``,
``eps = label_smoothing``.  For a hard target ``y_i`` (or ``ignore_index``)::

    l_i = (1 - eps) * w_{y_i} * (-logp_{i, y_i}) + (eps / C) * (-sum_c w_c logp_ic)
    l_i = 0 for ignored rows
    'mean' = sum_i l_i / sum_{i not ignored} w_{y_i}      (nan when that sum is empty)
    dl_i/dx_ic = (1 - eps) w_{y_i} (p_ic - [c = y_i]) + (eps / C) (W p_ic - w_c)

The LLM options, in this order: ``logit_scale = s`` (x <- s x), ``softcap = c``
(x <- c tanh(x / c)), then the loss above plus ``z_loss * lse_i**2`` on every row not
ignored; 'mean' divides the z-term by the number of rows not ignored, and both terms by
``num_items`` when it is given.

A vocabulary shard (``class_start = s``, ``num_classes = Ctot``, the logits holding classes
``[s, s + C)`` of ``Ctot``) needs the full row's ``lse`` and gives this shard's share of
every row's loss, so that the shares of a partition of the vocabulary add up to the full
loss and their gradients are its columns::

    share_i = [y_i in shard] (1 - eps) w_{y_i} (lse_i - x_{i, y_i})
              + (eps / Ctot) sum_{c in shard} w_c (lse_i - x_ic) + [y_i in shard] z lse_i**2
    dshare_i/dx_ic = ((1 - eps) w_{y_i} + (eps / Ctot) Wtot) p_ic - (eps / Ctot) w_c
                     - (1 - eps) w_{y_i} [c = y_i] + 2 z lse_i p_ic

with ``w`` and ``Wtot`` over the whole vocabulary, ``p_ic = exp(x_ic - lse_i)``, and the
normalisers of 'mean' those of the full call.  A shard with probability targets takes the
FULL rows ``t`` (shape ``(N, Ctot)``, like the global ``weight``), smooths them over the
whole vocabulary, ``t' = (1 - eps) t + eps / Ctot``, and with ``U_i = sum_c w_c t'_ic``
over ALL classes::

    share_i = sum_{c in shard} w_c t'_ic (lse_i - x_ic) + [class_start = 0] z lse_i**2
    dshare_i/dx_ic = (U_i + 2 z lse_i) p_ic - w_c t'_ic

(the z-term once per row, from the shard holding class 0; 'mean' divides by the rows). Linear cross-entropy is
``cross_entropy(hidden @ weight.T + bias, target)``; its gradients are ``G @ weight``,
``G.T @ hidden`` and ``G.sum(0)`` for the logits' gradient ``G``.

Accuracy: ``logp`` is computed as ``(x - max) - log1p(sum of exp(x - max) without one
maximum)``, never as ``x - lse``, so it is exact at any magnitude of ``x`` and keeps a
tail far below the maximum (SciPy's ``logsumexp`` does the same).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt

    F64Array = npt.NDArray[np.float64]
    #: a float64 loss: a scalar for 'mean'/'sum', one value per row for 'none'
    RefLoss = Union[np.float64, F64Array]

__all__ = [
    "logsumexp",
    "log_softmax",
    "softmax",
    "nll_loss",
    "cross_entropy",
    "cross_entropy_with_grad",
    "cross_entropy_backward",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- row-wise
def logsumexp(x: npt.ArrayLike, axis: int = -1) -> Any:
    """Log-sum-exp along ``axis``, in float64.

    Parameters
    ----------
    x : array_like
        Real input.
    axis : int, default -1
        Axis to reduce.

    Returns
    -------
    numpy.ndarray or numpy.float64
        ``x.shape`` without ``axis``; a scalar for 1-D input.  A row of all ``-inf``
        gives ``-inf``; a row holding ``nan`` gives ``nan``; a row holding ``+inf`` and no
        ``nan`` gives ``+inf`` (as NumPy, SciPy and torch).
    """
    x = np.asarray(x, dtype=np.float64)
    shift, logsum = _shift_logsum(x, axis)
    lse = shift + logsum
    posinf = np.isposinf(x).any(axis=axis, keepdims=True) & ~np.isnan(x).any(axis=axis, keepdims=True)
    lse = np.where(posinf, np.inf, lse)
    return _squeeze(lse, axis)


def log_softmax(x: npt.ArrayLike, axis: int = -1) -> F64Array:
    """Log-softmax ``x - logsumexp(x)`` along ``axis``, in float64.

    Parameters
    ----------
    x : array_like
        Real input.
    axis : int, default -1
        Class axis.

    Returns
    -------
    numpy.ndarray
        Same shape as ``x``.  ``-inf`` entries stay ``-inf``; rows of all ``-inf``,
        or holding ``nan``/``+inf``, are ``nan``.
    """
    x = np.asarray(x, dtype=np.float64)
    shift, logsum = _shift_logsum(x, axis)
    with np.errstate(invalid="ignore"):
        # never x - lse: lse is rounded at the scale of max(x)
        return (x - shift) - logsum  # type: ignore[no-any-return]


def softmax(x: npt.ArrayLike, axis: int = -1) -> F64Array:
    """Softmax ``exp(log_softmax(x))`` along ``axis``, in float64.

    Parameters
    ----------
    x : array_like
        Real input.
    axis : int, default -1
        Class axis.

    Returns
    -------
    numpy.ndarray
        Same shape as ``x``.
    """
    return np.exp(log_softmax(x, axis))


def _shift_logsum(x: Any, axis: int) -> tuple[Any, Any]:
    """``(m, l)`` with ``lse = m + l`` (keepdims): ``m`` the row max, ``l`` the log of
    ``sum exp(x - m)`` as SciPy computes it, ``log1p`` of the sum without one maximum, so
    that a tail far below the max keeps its digits (``logsumexp([0, -40]) = 4.2e-18``)."""
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if x.shape[axis] == 0:
        shape = list(x.shape)
        shape[axis] = 1
        return np.zeros(shape), np.full(shape, -np.inf)
    m = np.max(x, axis=axis, keepdims=True)
    # an all -inf row keeps shift 0 (so the sum is 0 and lse -inf); +inf or nan
    # shifts make x - m nan, which propagates
    shift = np.where(m == -np.inf, 0.0, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.exp(x - shift)
        top = np.expand_dims(np.argmax(x == m, axis=axis), axis)
        # one maximum's exp(0) = 1 taken out (nan, from +inf or nan, stays nan)
        np.put_along_axis(e, top, np.take_along_axis(e, top, axis=axis) - 1.0, axis=axis)
        logsum = np.where(m == -np.inf, -np.inf, np.log1p(np.sum(e, axis=axis, keepdims=True)))
    return shift, logsum


def _squeeze(a: Any, axis: int) -> Any:
    a = np.squeeze(a, axis=axis)
    return a[()] if a.ndim == 0 else a


# ---------------------------------------------------------------------- hard targets
def _hard_target_setup(logits: Any, target: Any, weight: Any, ignore_index: int, reduction: str,
                       label_smoothing: float, name: str = "logits",
                       n_total: int | None = None) -> tuple[Any, ...]:
    """Validate and normalise to 2-D float64 rows, int64 targets, float64 weights; targets
    and weights over ``n_total`` classes (a shard's whole vocabulary), by default the rows'."""
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(target)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if x.ndim == 1 and t.shape == ():
        x2, t2 = x[None, :], t.reshape(1)
    elif x.ndim == 2 and t.shape == x.shape[:1]:
        x2, t2 = x, t
    else:
        raise ValueError(f"{name} shape {x.shape} does not match target shape {t.shape}")
    if not (np.issubdtype(t2.dtype, np.integer) and t2.dtype != np.bool_):
        raise TypeError(f"target must have an integer dtype, got {t2.dtype}")
    n_classes = x2.shape[1] if n_total is None else n_total
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), got {w.shape}")
    t2 = t2.astype(np.int64)
    ignored = t2 == ignore_index
    bad = ~ignored & ((t2 < 0) | (t2 >= n_classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise IndexError(f"target[{i}] = {t2[i]} is out of bounds for {n_classes} classes")
    y = np.where(ignored, 0, t2)
    w_y = np.where(ignored, 0.0, w[y])
    return x2, y, ignored, w, w_y


def _reduce(rows: Any, w_y: Any, reduction: str, one_d: bool) -> Any:
    if reduction == "none":
        return rows.reshape(()) if one_d else rows
    total = np.float64(np.sum(rows))
    if reduction == "sum":
        return total
    norm = np.sum(w_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total / norm if norm != 0 else np.nan)


def _row_losses(logp: Any, y: Any, ignored: Any, w: Any, w_y: Any,
                label_smoothing: float) -> Any:
    n, n_classes = logp.shape
    with np.errstate(invalid="ignore"):
        nll = -logp[np.arange(n), y]
        rows = w_y * nll
        if label_smoothing > 0:  # torch skips the smoothing term entirely when eps == 0
            smooth = -np.sum(w * logp, axis=1)
            rows = (1.0 - label_smoothing) * rows + (label_smoothing / n_classes) * smooth
    return np.where(ignored, 0.0, rows)


def nll_loss(log_probs: npt.ArrayLike, target: npt.ArrayLike, *, weight: npt.ArrayLike | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> RefLoss:
    """Negative log-likelihood of given log-probabilities, in float64.

    Parameters
    ----------
    log_probs : array_like, shape (N, C) or (C,)
        Log-probabilities.
    target : array_like of int, shape (N,) or ()
        Class indices in ``[0, C)`` or ``ignore_index``.
    weight : array_like, shape (C,), optional
        Class weights.
    ignore_index : int, default -100
        Target value whose rows contribute nothing.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'mean' divides by the summed target weights of the non-ignored rows.

    Returns
    -------
    numpy.float64 or numpy.ndarray
        ``-log_probs[i, y_i] * w[y_i]`` reduced.
    """
    lp, y, ignored, w, w_y = _hard_target_setup(log_probs, target, weight, ignore_index,
                                                reduction, 0.0, name="log_probs")
    rows = _row_losses(lp, y, ignored, w, w_y, 0.0)
    return _reduce(rows, w_y, reduction, np.ndim(log_probs) == 1)  # type: ignore[no-any-return]


def _is_soft(logits: Any, target: Any) -> bool:
    """Class probabilities: a floating target of the logits' shape (torch's rule)."""
    t = np.asarray(target)
    return np.issubdtype(t.dtype, np.floating) and t.shape == np.shape(logits)


def _soft_target_setup(logits: Any, target: Any, weight: Any, ignore_index: int, reduction: str,
                       label_smoothing: float) -> tuple[Any, ...]:
    """2-D float64 rows and smoothed targets ``t' = (1 - eps) t + eps / C``; every row
    counts (w_y is 1 per row: 'mean' divides by the number of rows, as in torch)."""
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if ignore_index != -100:
        raise ValueError("ignore_index is not supported with probability targets")
    x2, t2 = (x[None, :], t[None, :]) if x.ndim == 1 else (x, t)
    if x2.ndim != 2:
        raise ValueError(f"logits must be 1-D or 2-D, got shape {x.shape}")
    n, n_classes = x2.shape
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), got {w.shape}")
    t2 = (1.0 - label_smoothing) * t2 + label_smoothing / n_classes
    return x2, t2, w, np.ones(n), np.zeros(n, dtype=bool)


def _transform(x: Any, logit_scale: float, softcap: float | None) -> tuple[Any, Any]:
    """The logits as the loss sees them: scaled, then capped; and d(that)/dx."""
    x1 = logit_scale * x
    if not softcap:
        return x1, np.full_like(x, logit_scale)
    xc = softcap * np.tanh(x1 / softcap)
    return xc, logit_scale * (1.0 - (xc / softcap) ** 2)


def _z_rows(xc: Any, ignored: Any, z_loss: float) -> Any:
    if not z_loss:  # exactly nothing, also for rows whose lse is infinite (0 * inf)
        return np.zeros(len(xc))
    return np.where(ignored, 0.0, z_loss * logsumexp(xc, axis=1) ** 2)


def _normalisers(w_y: Any, ignored: Any, reduction: str,
                 num_items: float | None) -> tuple[Any, float]:
    """(cross-entropy divisor, z-term divisor) of the reduction."""
    if reduction != "mean":
        return 1.0, 1.0
    if num_items is not None:
        return float(num_items), float(num_items)
    return np.sum(w_y), float(np.count_nonzero(~ignored))


def _shard_classes(logits: Any, lse: Any, class_start: int, num_classes: int | None) -> int:
    """The vocabulary size of a shard call, its bounds and its lse checked."""
    C = np.shape(logits)[-1]
    n_total = C if num_classes is None else int(num_classes)
    if not (0 <= class_start and class_start + C <= n_total):
        raise ValueError(f"classes [{class_start}, {class_start + C}) are not within {n_total}")
    if lse is None:
        raise ValueError("a vocabulary shard needs lse= (the log-sum-exp over all classes)")
    return n_total


def _shard(logits: Any, target: Any, lse: Any, class_start: int, num_classes: int | None,
           weight: Any, ignore_index: int, reduction: str, label_smoothing: float) -> tuple[Any, ...]:
    """The hard-target setup of a call given its lse (a vocabulary shard, or a whole row
    reusing a known lse): rows, targets, the full weights, and the lse per row."""
    n_total = _shard_classes(logits, lse, class_start, num_classes)
    x, y, ignored, w, w_y = _hard_target_setup(logits, target, weight, ignore_index, reduction,
                                               label_smoothing, n_total=n_total)
    lse_rows = np.asarray(lse, dtype=np.float64).reshape(x.shape[0])
    return x, y, ignored, w, w_y, lse_rows


def _shard_rows(xc: Any, lse: Any, y: Any, ignored: Any, w: Any, w_y: Any, class_start: int,
                eps: float, z_loss: float) -> tuple[Any, Any]:
    """(this shard's cross-entropy share, its z share) per row: the module docstring."""
    n, C = xc.shape
    owns = ~ignored & (y >= class_start) & (y < class_start + C)
    yl = np.where(owns, y - class_start, 0)
    with np.errstate(invalid="ignore"):
        rows = np.where(owns, (1.0 - eps) * w_y * (lse - xc[np.arange(n), yl]), 0.0)
        if eps > 0:
            rows = rows + eps / len(w) * np.sum(w[class_start:class_start + C] * (lse[:, None] - xc), axis=1)
        z = np.where(owns, z_loss * lse ** 2, 0.0)
    return np.where(ignored, 0.0, rows), z


def _shard_grad(xc: Any, lse: Any, y: Any, ignored: Any, w: Any, w_y: Any, class_start: int,
                eps: float, z_loss: float, scale: Any, zscale: Any) -> Any:
    n, C = xc.shape
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(xc - lse[:, None])
        a = scale * ((1.0 - eps) * w_y + eps / len(w) * np.sum(w)) + zscale * 2.0 * z_loss * lse
        d = a[:, None] * p - (scale * eps / len(w))[:, None] * w[class_start:class_start + C]
        owns = ~ignored & (y >= class_start) & (y < class_start + C)
        rows = np.flatnonzero(owns)
        d[rows, y[rows] - class_start] -= scale[rows] * (1.0 - eps) * w_y[rows]
    return np.where(ignored[:, None], 0.0, d)


def _is_soft_shard(logits: Any, target: Any, num_classes: int | None) -> bool:
    """Probability targets of a shard: a floating target holding the full rows, shape
    ``logits.shape[:-1] + (num_classes,)``."""
    t = np.asarray(target)
    C = np.shape(logits)[-1] if np.ndim(logits) else 0
    n_total = C if num_classes is None else int(num_classes)
    return (np.issubdtype(t.dtype, np.floating) and np.ndim(logits) in (1, 2)
            and t.shape == np.shape(logits)[:-1] + (n_total,))


def _soft_shard(logits: Any, target: Any, lse: Any, class_start: int, num_classes: int | None,
                weight: Any, ignore_index: int, reduction: str,
                label_smoothing: float) -> tuple[Any, ...]:
    """The setup of a shard with probability targets: 2-D rows, the full smoothed targets
    ``t'`` (over ``num_classes``), the full weights, and the lse per row."""
    n_total = _shard_classes(logits, lse, class_start, num_classes)
    x = np.asarray(logits, dtype=np.float64)
    x2 = x[None, :] if x.ndim == 1 else x
    full = np.zeros(x2.shape[:1] + (n_total,))  # the soft setup, on rows of every class
    _, t2, w, w_y, ignored = _soft_target_setup(full, np.reshape(target, full.shape), weight,
                                                ignore_index, reduction, label_smoothing)
    lse_rows = np.asarray(lse, dtype=np.float64).reshape(x2.shape[0])
    return x2, t2, w, w_y, ignored, lse_rows


def _soft_shard_rows(xc: Any, lse: Any, t: Any, w: Any, class_start: int,
                     z_loss: float) -> tuple[Any, Any]:
    """(this shard's cross-entropy share, its z share) per row, probability targets."""
    C = xc.shape[1]
    sl = slice(class_start, class_start + C)
    with np.errstate(invalid="ignore"):
        rows = np.sum(w[sl] * t[:, sl] * (lse[:, None] - xc), axis=1)
        z = (z_loss * lse ** 2 if class_start == 0 and z_loss else np.zeros(len(xc)))
    return rows, z


def _soft_shard_grad(xc: Any, lse: Any, t: Any, w: Any, class_start: int, z_loss: float,
                     scale: Any, zscale: Any) -> Any:
    C = xc.shape[1]
    sl = slice(class_start, class_start + C)
    with np.errstate(invalid="ignore", over="ignore"):
        u = np.sum(w * t, axis=1)  # over ALL classes
        p = np.exp(xc - lse[:, None])
        a = scale * u + (zscale * 2.0 * z_loss * lse if z_loss else 0.0)
        return a[:, None] * p - scale[:, None] * (w[sl] * t[:, sl])


def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *, weight: npt.ArrayLike | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: float | None = None, logit_scale: float = 1.0,
                  num_items: float | None = None, lse: npt.ArrayLike | None = None,
                  class_start: int = 0, num_classes: int | None = None) -> RefLoss:
    """Softmax cross-entropy with PyTorch semantics, in float64.

    Parameters
    ----------
    logits : array_like, shape (N, C) or (C,)
        Unnormalised class scores.
    target : array_like of int, shape (N,) or (); or of float, the logits' shape
        Class indices in ``[0, C)`` or ``ignore_index``; or class probabilities ``t``,
        for which the row loss is ``-sum_c w_c t'_c logp_c`` with
        ``t' = (1 - eps) t + eps / C`` and 'mean' divides by the number of rows.
    weight : array_like, shape (C,), optional
        Class weights.
    ignore_index : int, default -100
        Target value whose rows give loss 0 and gradient 0.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'mean' divides by ``sum_{i not ignored} w[y_i]``: nan when no row counts or
        when that sum is 0 (torch's nll term is then 0 / 0).
    label_smoothing : float in [0, 1], default 0.0
        Mixes ``eps / C`` of the weighted uniform target into every row.
    z_loss, softcap, logit_scale, num_items
        The LLM options (module docstring).
    lse : array_like, optional
        Each row's log-sum-exp (of the transformed logits, over the whole vocabulary):
        used instead of being computed (probability targets: with a shard only).
    class_start, num_classes : int, optional
        A vocabulary shard: ``logits`` holds classes ``[class_start, class_start + C)`` of
        ``num_classes``; targets and ``weight`` are over all of them (probability
        targets: the full rows, shape ``(N, num_classes)``), ``lse`` is required, and the
        result is this shard's share (module docstring).

    Returns
    -------
    numpy.float64 or numpy.ndarray
        Scalar for 'mean'/'sum'; per-row losses of ``target.shape`` for 'none'.
    """
    if ((lse is not None or class_start != 0 or num_classes is not None)
            and _is_soft_shard(logits, target, num_classes)):
        x, t, w, w_y, ignored, lse_r = _soft_shard(logits, target, lse, class_start, num_classes,
                                                   weight, ignore_index, reduction, label_smoothing)
        xc, _ = _transform(x, logit_scale, softcap)
        rows, z = _soft_shard_rows(xc, lse_r, t, w, class_start, z_loss)
        return _finish_loss(logits, rows, z, w_y, ignored, reduction, num_items)
    if lse is not None or class_start != 0 or num_classes is not None:
        x, y, ignored, w, w_y, lse_r = _shard(logits, target, lse, class_start, num_classes, weight,
                                              ignore_index, reduction, label_smoothing)
        xc, _ = _transform(x, logit_scale, softcap)
        rows, z = _shard_rows(xc, lse_r, y, ignored, w, w_y, class_start, label_smoothing, z_loss)
        return _finish_loss(logits, rows, z, w_y, ignored, reduction, num_items)
    if _is_soft(logits, target):
        x, t, w, w_y, ignored = _soft_target_setup(logits, target, weight, ignore_index,
                                                   reduction, label_smoothing)
    else:
        x, y, ignored, w, w_y = _hard_target_setup(logits, target, weight, ignore_index,
                                                   reduction, label_smoothing)
    xc, _ = _transform(x, logit_scale, softcap)
    if _is_soft(logits, target):
        with np.errstate(invalid="ignore"):
            rows = -np.sum(w * t * log_softmax(xc, axis=1), axis=1)
    else:
        rows = _row_losses(log_softmax(xc, axis=1), y, ignored, w, w_y, label_smoothing)
    return _finish_loss(logits, rows, _z_rows(xc, ignored, z_loss), w_y, ignored, reduction,
                        num_items)


def _finish_loss(logits: Any, rows: Any, z: Any, w_y: Any, ignored: Any, reduction: str,
                 num_items: float | None) -> RefLoss:
    """Per-row cross-entropy and z terms -> the reduced loss."""
    if reduction == "none":
        shape = np.shape(logits)[:1] if np.ndim(logits) > 1 else ()
        return (rows + z).reshape(shape)  # type: ignore[no-any-return]
    norm, znorm = _normalisers(w_y, ignored, reduction, num_items)
    if norm == 0:  # torch: the nll term is 0 / 0 whatever the smoothing term is
        return np.float64(np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(np.sum(rows) / norm + np.sum(z) / znorm)


def cross_entropy_backward(logits: npt.ArrayLike, target: npt.ArrayLike, grad_output: npt.ArrayLike = 1.0, *,
                           weight: npt.ArrayLike | None = None, ignore_index: int = -100,
                           reduction: str = "mean", label_smoothing: float = 0.0,
                           z_loss: float = 0.0, softcap: float | None = None,
                           logit_scale: float = 1.0, num_items: float | None = None,
                           lse: npt.ArrayLike | None = None, class_start: int = 0,
                           num_classes: int | None = None) -> F64Array:
    """Gradient of :func:`cross_entropy` with respect to ``logits``, in float64.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing
        As in :func:`cross_entropy`.
    grad_output : float or array_like, default 1.0
        Upstream gradient: a scalar (any reduction), or for 'none' an array that
        broadcasts to ``target.shape``.
    z_loss, softcap, logit_scale, num_items, lse, class_start, num_classes
        As in :func:`cross_entropy`.

    Returns
    -------
    numpy.ndarray
        Same shape as ``logits``; ignored rows are 0.
    """
    sharded = lse is not None or class_start != 0 or num_classes is not None
    soft = not sharded and _is_soft(logits, target)
    if sharded and _is_soft_shard(logits, target, num_classes):
        x, t, w, w_y, ignored, lse_r = _soft_shard(logits, target, lse, class_start, num_classes,
                                                   weight, ignore_index, reduction, label_smoothing)
        g = np.asarray(grad_output, dtype=np.float64)
        if reduction != "none" and g.shape != ():
            raise ValueError(f"grad_output must be a scalar for reduction={reduction!r}")
        g = np.broadcast_to(g, np.shape(logits)[:-1]).reshape(x.shape[0])
        norm, znorm = _normalisers(w_y, ignored, reduction, num_items)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale, zscale = g / norm, g / znorm
        xc, dxc = _transform(x, logit_scale, softcap)
        d = _soft_shard_grad(xc, lse_r, t, w, class_start, z_loss, scale, zscale)
        return (d * dxc).reshape(np.shape(logits))  # type: ignore[no-any-return]
    if sharded:
        x, y, ignored, w, w_y, lse_r = _shard(logits, target, lse, class_start, num_classes, weight,
                                              ignore_index, reduction, label_smoothing)
    elif soft:
        x, t, w, w_y, ignored = _soft_target_setup(logits, target, weight, ignore_index,
                                                   reduction, label_smoothing)
    else:
        x, y, ignored, w, w_y = _hard_target_setup(logits, target, weight, ignore_index,
                                                   reduction, label_smoothing)
    n, n_classes = x.shape
    g = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none" and g.shape != ():
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r}")
    rows = (np.shape(logits)[:1] if np.ndim(logits) > 1 else ()) if soft else np.shape(target)
    g = np.broadcast_to(g, rows).reshape(n)  # (1-D probability rows: one row, shape ())
    norm, znorm = _normalisers(w_y, ignored, reduction, num_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale, zscale = g / norm, g / znorm
    xc, dxc = _transform(x, logit_scale, softcap)
    eps = label_smoothing
    if sharded:
        d = _shard_grad(xc, lse_r, y, ignored, w, w_y, class_start, eps, z_loss, scale, zscale)
        return (d * dxc).reshape(np.shape(logits))  # type: ignore[no-any-return]
    with np.errstate(invalid="ignore"):
        p = softmax(xc, axis=1)
        if soft:  # d/dx of -sum_c w_c t'_c logp_c
            wt = w * t
            d = np.sum(wt, axis=1, keepdims=True) * p - wt
        else:
            onehot = np.zeros_like(p)
            onehot[np.arange(n), y] = 1.0
            d = w_y[:, None] * (p - onehot)
            if eps > 0:
                d = (1.0 - eps) * d + (eps / n_classes) * (np.sum(w) * p - w)
        d = d * scale[:, None]
        if z_loss:
            d = d + (zscale * 2.0 * z_loss * logsumexp(xc, axis=1))[:, None] * p
        grad = np.where(ignored[:, None], 0.0, d * dxc)
    return grad.reshape(np.shape(logits))


def cross_entropy_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *, weight: npt.ArrayLike | None = None,
                            ignore_index: int = -100, reduction: str = "mean",
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: float | None = None, logit_scale: float = 1.0,
                            num_items: float | None = None, lse: npt.ArrayLike | None = None,
                            class_start: int = 0, num_classes: int | None = None,
                            grad_output: npt.ArrayLike = 1.0) -> tuple[RefLoss, F64Array]:
    """Loss and gradient together: ``(cross_entropy(...), cross_entropy_backward(...))``.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`cross_entropy`.
    logit_scale, num_items, lse, class_start, num_classes
        As in :func:`cross_entropy`.
    grad_output : float or array_like, default 1.0
        As in :func:`cross_entropy_backward`.

    Returns
    -------
    loss : numpy.float64 or numpy.ndarray
    grad : numpy.ndarray
    """
    kw: dict[str, Any] = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
              logit_scale=logit_scale, num_items=num_items, lse=lse,
              class_start=class_start, num_classes=num_classes)
    return (cross_entropy(logits, target, **kw),
            cross_entropy_backward(logits, target, grad_output, **kw))


# ------------------------------------------------------------- linear cross-entropy
def _linear_logits(hidden: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any]:
    h = np.asarray(hidden, dtype=np.float64)
    W = np.asarray(weight, dtype=np.float64)
    if h.ndim != 2 or W.ndim != 2 or h.shape[1] != W.shape[1]:
        raise ValueError(f"hidden (N, H) and weight (V, H) do not match: {h.shape}, {W.shape}")
    logits = h @ W.T
    if bias is not None:
        logits = logits + np.asarray(bias, dtype=np.float64)
    return h, W, logits


def linear_cross_entropy(hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike, *,
                         bias: npt.ArrayLike | None = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0) -> RefLoss:
    """``cross_entropy(hidden @ weight.T + bias, target)`` in float64, the logits held whole.

    Parameters
    ----------
    hidden : array_like, shape (N, H)
    weight : array_like, shape (V, H)
    target : array_like of int, shape (N,)
    bias : array_like, shape (V,), optional
    ignore_index, reduction, label_smoothing, z_loss
        As in :func:`cross_entropy`.

    Returns
    -------
    numpy.float64 or numpy.ndarray
    """
    _, _, logits = _linear_logits(hidden, weight, bias)
    return cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing, z_loss=z_loss)


def linear_cross_entropy_with_grad(
        hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike, *,
        bias: npt.ArrayLike | None = None, ignore_index: int = -100, reduction: str = "mean",
        label_smoothing: float = 0.0, z_loss: float = 0.0, grad_output: npt.ArrayLike = 1.0,
) -> tuple[RefLoss, F64Array, F64Array, F64Array | None]:
    """Loss and gradients of :func:`linear_cross_entropy`: ``(loss, d_hidden, d_weight,
    d_bias)`` with ``G`` the logits' gradient, ``d_hidden = G @ weight``, ``d_weight =
    G.T @ hidden``, ``d_bias = G.sum(0)`` (None without a bias).

    Parameters
    ----------
    hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss
        As in :func:`linear_cross_entropy`.
    grad_output : float or array_like, default 1.0
        As in :func:`cross_entropy_backward`.

    Returns
    -------
    loss, d_hidden, d_weight, d_bias
    """
    h, W, logits = _linear_logits(hidden, weight, bias)
    loss, G = cross_entropy_with_grad(logits, target, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing,
                                      z_loss=z_loss, grad_output=grad_output)
    return loss, G @ W, G.T @ h, (G.sum(axis=0) if bias is not None else None)


# ------------------------------------------------------ binary cross-entropy with logits
# (appended for issue 3; torch's formula, literally, in float64)
__all__ += ["binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad"]


def _bce_setup(logits: Any, target: Any, weight: Any, pos_weight: Any,
               reduction: str) -> tuple[Any, Any, Any, Any]:
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if y.shape != x.shape:
        raise ValueError(f"Target size must be the same as input size: target {y.shape}, logits {x.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        raise TypeError(f"target must have a floating dtype, got {y.dtype}")
    y = y.astype(np.float64)
    w = np.ones(()) if weight is None else np.asarray(weight, dtype=np.float64)
    pw = np.ones(()) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    for name, a in (("weight", w), ("pos_weight", pw)):
        if np.broadcast_shapes(a.shape, x.shape) != x.shape:
            raise ValueError(f"{name} of shape {a.shape} does not broadcast to {x.shape}")
    return x, y, w, pw


def binary_cross_entropy_with_logits(logits: npt.ArrayLike, target: npt.ArrayLike, *,
                                     weight: npt.ArrayLike | None = None,
                                     pos_weight: npt.ArrayLike | None = None,
                                     reduction: str = "mean") -> RefLoss:
    """Binary cross-entropy with logits, in float64, as torch computes it.

    ``l = w * ((1 - y) * x + lw * softplus(-x))`` with ``lw = 1 + (pw - 1) * y`` and
    ``softplus(-x) = log1p(exp(-|x|)) + max(-x, 0)``; 'mean' divides by the number of
    elements (nan when there are none).

    Parameters
    ----------
    logits : array_like
        Logits ``x``, any shape.
    target : array_like of float
        Targets ``y``, the logits' shape.
    weight, pos_weight : array_like, optional
        Broadcast to the logits' shape (NumPy rules).
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    numpy.float64 or numpy.ndarray
    """
    x, y, w, pw = _bce_setup(logits, target, weight, pos_weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        softplus_neg = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0.0)
        loss = w * ((1.0 - y) * x + (1.0 + (pw - 1.0) * y) * softplus_neg)
    loss = np.broadcast_to(loss, x.shape)
    if reduction == "none":
        return np.array(loss)
    total = np.float64(np.sum(loss))
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total / np.float64(x.size))


def binary_cross_entropy_with_logits_with_grad(
        logits: npt.ArrayLike, target: npt.ArrayLike, *, weight: npt.ArrayLike | None = None,
        pos_weight: npt.ArrayLike | None = None, reduction: str = "mean",
        grad_output: npt.ArrayLike = 1.0) -> tuple[RefLoss, F64Array]:
    """Loss and gradient w.r.t. the logits, in float64.

    ``dl/dx = w * ((1 + (pw - 1) * y) * sigmoid(x) - pw * y)``, times ``grad_output`` (a
    scalar for 'mean'/'sum', the logits' shape for 'none'), divided by the number of
    elements for 'mean' (torch's ``binary_cross_entropy_with_logits_backward``).

    Returns
    -------
    loss : as :func:`binary_cross_entropy_with_logits`
    grad : numpy.ndarray of the logits' shape
    """
    loss = binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pos_weight,
                                            reduction=reduction)
    x, y, w, pw = _bce_setup(logits, target, weight, pos_weight, reduction)
    g = np.asarray(grad_output, dtype=np.float64)
    if reduction == "none":
        if g.shape != x.shape:
            raise ValueError(f"grad_output must have the logits' shape {x.shape}, got {g.shape}")
    elif g.shape != ():
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r}")
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        e = np.exp(-np.abs(x))
        sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))  # sigmoid without overflow
        grad = w * ((1.0 + (pw - 1.0) * y) * sig - pw * y) * g
        if reduction == "mean":
            grad = grad / np.float64(x.size)
    return loss, np.array(np.broadcast_to(grad, x.shape))
