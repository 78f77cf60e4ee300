"""fastce's public functions of the softmax and cross-entropy families.

The cross-entropy family (``cross_entropy``, ``_with_grad``, ``_backward``, ``nll_loss``,
``nll_loss_backward`` and the criterion) is a thin layer of signatures and docstrings
over one compiled contract, ``_kernels.ce_call`` (fastce/_contract.pxi): the argument
checks, the row sweep and the fixed-order reduction in one C call.  CuPy arrays leave it
through one route, ``_gpu_route``.  Semantics follow PyTorch (``torch.nn.functional``);
the formulas are in the docstrings and in docs/design.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from . import _kernels
from . import _validation as V
from ._dispatch import gpu_twin as _cuda_dispatch

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt
    from ._typing import (Float64Array, FloatArray, FloatScalar, GradOutput, Loss, LossAndLse,
                          Reduction, ScalarReduction)

__all__ = [
    "logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad",
    "cross_entropy_backward", "nll_loss", "nll_loss_backward", "CrossEntropyLoss",
]

_THREADS_DOC = """n_threads : int, optional
        Threads for this call; default :func:`fastce.get_num_threads`. Results are
        bitwise identical for any value."""


# ``ce_call`` returns Any (its result's form depends on its arguments); the overloads of
# each public function give the precise types, hence the ``no-any-return`` ignores below.
_ce_call = _kernels.ce_call


def _gpu_route(kind: int, logits: Any, target: Any, weight: Any, ignore_index: Any,
               reduction: Any, label_smoothing: Any, z_loss: Any, softcap: Any,
               logit_scale: Any, num_items: Any, lse: Any, return_lse: bool, class_start: Any,
               num_classes: Any, grad_output: Any, out: Any, inplace: bool, grad_dtype: Any,
               n_threads: Any, logits_name: str = "logits") -> Any:
    """The one route of the cross-entropy family to the GPU path: ``_kernels.ce_call``
    hands a call over when its first array is a CuPy array (arguments as ``ce_call``'s)."""
    from . import cuda
    cuda.is_cupy_call(logits, target, weight, lse, out, grad_output,  # mixing is a TypeError
                      names=(logits_name, "target", "weight", "lse", "out", "grad_output"))
    if kind >= 3:  # nll_loss, nll_loss_backward
        opts = dict(weight=weight, ignore_index=ignore_index, reduction=reduction)
        if kind == 3:
            return cuda.nll_loss(logits, target, **opts)
        return cuda.nll_loss_backward(logits, target, grad_output, out=out, **opts)
    opts = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                logit_scale=logit_scale, num_items=num_items, lse=lse, class_start=class_start,
                num_classes=num_classes, n_threads=n_threads)
    if kind == 0:
        return cuda.cross_entropy(logits, target, return_lse=return_lse, **opts)
    grad_opts = dict(out=out, inplace=inplace, grad_dtype=grad_dtype)
    if kind == 1:
        return cuda.cross_entropy_with_grad(logits, target, return_lse=return_lse,
                                            grad_output=grad_output, **grad_opts, **opts)
    return cuda.cross_entropy_backward(logits, target, grad_output, **grad_opts, **opts)


_kernels.set_gpu_route(_gpu_route)


# ---------------------------------------------------------------------------------------
# log-sum-exp, log-softmax, softmax
# ---------------------------------------------------------------------------------------
def logsumexp(x: npt.ArrayLike, axis: int = -1, *, out: npt.NDArray[Any] | None = None,
              n_threads: int | None = None) -> FloatArray | FloatScalar:
    """Log of the sum of exponentials along ``axis``: ``log(sum(exp(x), axis))``, stably.

    Parameters
    ----------
    x : array_like of float32 or float64
        Input; any layout (float16/bfloat16 too). Integer, bool and complex input raise
        TypeError (SciPy converts them; convert first); a 0-d array raises ValueError.
    axis : int, default -1
        The axis to reduce: one int (``axis=None`` or a tuple raise TypeError).
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
        return twin(x, axis, out=out, n_threads=n_threads)  # type: ignore[no-any-return]
    x = V.as_float_array(x, "x", allow_half=True)
    ax = _array_axis(x, axis)
    nt = V.resolve_threads(n_threads)
    shape = x.shape[:ax] + x.shape[ax + 1:]
    rdtype = V.compute_dtype(x.dtype)
    if out is not None:
        V.check_out(out, shape, rdtype, {"x": x})
    a, c, b = V.rows3_shape(x.shape, ax)
    res: npt.NDArray[np.float64] = np.full(a * b, -np.inf)
    if a * b and c:
        x3 = V.as_rows3(x, ax)
        _kernels.lse_rows(x3, res, nt)
        V.posinf_lse(x3, 1, res)
    res = res.reshape(shape)
    if out is not None:
        np.copyto(out, res, casting="same_kind")
        return out
    res = res.astype(rdtype)
    return res[()] if res.ndim == 0 else res


def log_softmax(x: npt.ArrayLike, axis: int = -1, *, out: npt.NDArray[Any] | None = None,
                n_threads: int | None = None) -> FloatArray:
    """Log-softmax along ``axis``: ``x - logsumexp(x, axis, keepdims=True)``.

    Parameters
    ----------
    x : array_like of float32 or float64
        Input; any layout (float16/bfloat16 too). Integer, bool and complex input raise
        TypeError (SciPy converts them; convert first); a 0-d array raises ValueError.
    axis : int, default -1
        The class axis: one int (``axis=None`` or a tuple raise TypeError).
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


def softmax(x: npt.ArrayLike, axis: int = -1, *, out: npt.NDArray[Any] | None = None,
            n_threads: int | None = None) -> FloatArray:
    """Softmax along ``axis``: ``exp(x - logsumexp(x, axis, keepdims=True))``.

    Parameters and returns as :func:`log_softmax`.
    """
    return _softmax_impl("softmax", x, axis, out, n_threads, False)


def _array_axis(x: npt.NDArray[Any], axis: int) -> int:
    return V.array_axis(x.ndim, axis)


def _softmax_impl(name: str, x: Any, axis: int, out: npt.NDArray[Any] | None,
                  n_threads: int | None, log_space: bool) -> FloatArray:
    twin = _cuda_dispatch(name, x, out)
    if twin:
        return twin(x, axis, out=out, n_threads=n_threads)  # type: ignore[no-any-return]
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
    logit_scale : float, default 1.0
        ``s``: the logits become ``s * x`` first, before the softcap (flash-attn's and
        Cohere's logit scale, a temperature ``1 / s``); the gradient chains through it.
    z_loss : float >= 0, default 0
        ``z``: adds ``z * lse_i**2`` to every row not ignored (PaLM's z-loss, Liger's
        ``lse_square_scale``); under 'mean' this term is averaged over those rows,
        unweighted, while the cross-entropy term keeps torch's normaliser.
    num_items : float > 0, optional
        With ``reduction='mean'`` only: divide the summed loss (both terms) by
        ``num_items`` instead of the summed target weights; the gradient is scaled the
        same way. The external normaliser of gradient accumulation over micro-batches or
        ranks (transformers' ``num_items_in_batch``, Unsloth's ``n_items``).
    lse : array_like, optional
        Each row's log-sum-exp over all classes (target's shape, e.g. from a previous
        call's ``return_lse`` or from combining vocabulary shards): reused instead of
        recomputed. One float64 per row: it carries the lse to an ulp of its own
        magnitude, so far from 0 (``|lse| > 2**40`` or so) the fused forms, which carry
        the exact pair ``(max, log sum)``, are more accurate than a reuse.
    class_start, num_classes : int, optional
        Vocabulary sharding (Megatron-style): ``logits`` holds classes
        ``[class_start, class_start + C)`` of ``num_classes``; targets are global class
        indices and ``lse`` (the global log-sum-exp, ``np.logaddexp`` of every shard's
        :func:`logsumexp`) is required. Each shard returns its additive share of the loss
        (the nll and z terms from the shard owning the row's target, the smoothing term
        over the shard's own classes) and its slice of the gradient, so the shares sum to
        the unsharded loss and the slices concatenate to its gradient."""

_GRAD_PARAMS = """grad_output : float or ndarray, default 1.0
        Upstream gradient, broadcast like NumPy: a scalar for any reduction (under
        'none' it scales every row), or for 'none' an array that broadcasts to the
        target's shape.
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
        Each row's log-sum-exp, ignored rows included (only their loss is masked)."""


@overload
def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        softcap: float | None = ..., logit_scale: float = ..., num_items: float | None = ...,
        lse: npt.ArrayLike | None = ..., return_lse: Literal[False] = ..., class_start: int = ...,
        num_classes: int | None = ..., n_threads: int | None = ...) -> FloatScalar: ...
@overload
def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Literal["none"],
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., lse: npt.ArrayLike | None = ...,
        return_lse: Literal[False] = ..., class_start: int = ..., num_classes: int | None = ...,
        n_threads: int | None = ...) -> FloatArray: ...
@overload
def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        softcap: float | None = ..., logit_scale: float = ..., num_items: float | None = ...,
        lse: npt.ArrayLike | None = ..., return_lse: Literal[True], class_start: int = ...,
        num_classes: int | None = ..., n_threads: int | None = ...,
) -> tuple[FloatScalar, Float64Array]: ...
@overload
def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Literal["none"],
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., lse: npt.ArrayLike | None = ...,
        return_lse: Literal[True], class_start: int = ..., num_classes: int | None = ...,
        n_threads: int | None = ...) -> tuple[FloatArray, Float64Array]: ...
@overload
def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., lse: npt.ArrayLike | None = ...,
        return_lse: bool = ..., class_start: int = ..., num_classes: int | None = ...,
        n_threads: int | None = ...) -> Loss | LossAndLse: ...
def cross_entropy(logits: npt.ArrayLike, target: npt.ArrayLike, *,
                  weight: npt.ArrayLike | None = None, ignore_index: int = -100,
                  reduction: Reduction = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0,
                  num_items: float | None = None, lse: npt.ArrayLike | None = None,
                  return_lse: bool = False, class_start: int = 0,
                  num_classes: int | None = None,
                  n_threads: int | None = None) -> Loss | LossAndLse:
    return _ce_call(  # type: ignore[no-any-return]
        0, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        logit_scale, num_items, lse, return_lse, class_start, num_classes, 1.0, None, False, None,
        n_threads)


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


@overload
def cross_entropy_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        softcap: float | None = ..., logit_scale: float = ..., num_items: float | None = ...,
        lse: npt.ArrayLike | None = ..., return_lse: Literal[False] = ..., class_start: int = ...,
        num_classes: int | None = ..., grad_output: GradOutput = ...,
        out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[FloatScalar, FloatArray]: ...
@overload
def cross_entropy_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Literal["none"],
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., lse: npt.ArrayLike | None = ...,
        return_lse: Literal[False] = ..., class_start: int = ..., num_classes: int | None = ...,
        grad_output: GradOutput = ..., out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[FloatArray, FloatArray]: ...
@overload
def cross_entropy_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        softcap: float | None = ..., logit_scale: float = ..., num_items: float | None = ...,
        lse: npt.ArrayLike | None = ..., return_lse: Literal[True], class_start: int = ...,
        num_classes: int | None = ..., grad_output: GradOutput = ...,
        out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[FloatScalar, FloatArray, Float64Array]: ...
@overload
def cross_entropy_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Literal["none"],
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., lse: npt.ArrayLike | None = ...,
        return_lse: Literal[True], class_start: int = ..., num_classes: int | None = ...,
        grad_output: GradOutput = ..., out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[FloatArray, FloatArray, Float64Array]: ...
@overload
def cross_entropy_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
        logit_scale: float = ..., num_items: float | None = ..., lse: npt.ArrayLike | None = ...,
        return_lse: bool = ..., class_start: int = ..., num_classes: int | None = ...,
        grad_output: GradOutput = ..., out: npt.NDArray[Any] | None = ..., inplace: bool = ...,
        grad_dtype: npt.DTypeLike | None = ..., n_threads: int | None = ...,
) -> tuple[Loss, FloatArray] | tuple[Loss, FloatArray, Float64Array]: ...
def cross_entropy_with_grad(
        logits: npt.ArrayLike, target: npt.ArrayLike, *, weight: npt.ArrayLike | None = None,
        ignore_index: int = -100, reduction: Reduction = "mean", label_smoothing: float = 0.0,
        z_loss: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0,
        num_items: float | None = None, lse: npt.ArrayLike | None = None,
        return_lse: bool = False, class_start: int = 0, num_classes: int | None = None,
        grad_output: GradOutput = 1.0, out: npt.NDArray[Any] | None = None,
        inplace: bool = False, grad_dtype: npt.DTypeLike | None = None,
        n_threads: int | None = None,
) -> tuple[Loss, FloatArray] | tuple[Loss, FloatArray, Float64Array]:
    return _ce_call(  # type: ignore[no-any-return]
        1, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        logit_scale, num_items, lse, return_lse, class_start, num_classes, grad_output, out,
        inplace, grad_dtype, n_threads)


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


def cross_entropy_backward(
        logits: npt.ArrayLike, target: npt.ArrayLike, grad_output: GradOutput = 1.0, *,
        weight: npt.ArrayLike | None = None, ignore_index: int = -100,
        reduction: Reduction = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: float | None = None, logit_scale: float = 1.0, num_items: float | None = None,
        lse: npt.ArrayLike | None = None, class_start: int = 0, num_classes: int | None = None,
        out: npt.NDArray[Any] | None = None, inplace: bool = False,
        grad_dtype: npt.DTypeLike | None = None, n_threads: int | None = None,
) -> FloatArray:
    return _ce_call(  # type: ignore[no-any-return]
        2, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        logit_scale, num_items, lse, False, class_start, num_classes, grad_output, out, inplace,
        grad_dtype, n_threads)


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


@overload
def nll_loss(log_probs: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., n_threads: int | None = ...) -> FloatScalar: ...
@overload
def nll_loss(log_probs: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Literal["none"],
        n_threads: int | None = ...) -> FloatArray: ...
@overload
def nll_loss(log_probs: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        n_threads: int | None = ...) -> Loss: ...
def nll_loss(log_probs: npt.ArrayLike, target: npt.ArrayLike, *,
             weight: npt.ArrayLike | None = None, ignore_index: int = -100,
             reduction: Reduction = "mean", n_threads: int | None = None) -> Loss:
    """Negative log-likelihood of class-index targets, as ``torch.nn.functional.nll_loss``.

    ``l_i = -w[y_i] * log_probs[i, y_i]`` (0 for ignored rows); 'mean' divides the sum
    by ``sum_i w[y_i]`` over rows not ignored (nan when all are ignored). Reads only the
    N picked entries.

    Parameters
    ----------
    log_probs : array_like of float32, float64, float16 or bfloat16
        Shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``, usually a log-softmax.
    target : array_like of int
        Class indices, shape ``()``, ``(N,)`` or ``(N, d1, ..., dk)``.
    weight, ignore_index, reduction
        As :func:`cross_entropy`.
    n_threads : int, optional
        Accepted for a uniform signature; the O(N) gather runs on one thread.

    Returns
    -------
    loss : NumPy scalar (float32 for float32 and half inputs, else float64) for
        'mean'/'sum'; ndarray of target's shape for 'none'
    """
    return _ce_call(  # type: ignore[no-any-return]
        3, log_probs, target, weight, ignore_index, reduction, 0.0, 0.0, None, 1.0, None, None,
        False, 0, None, 1.0, None, False, None, n_threads, "log_probs")


def nll_loss_backward(log_probs: npt.ArrayLike, target: npt.ArrayLike,
                      grad_output: GradOutput = 1.0, *, weight: npt.ArrayLike | None = None,
                      ignore_index: int = -100, reduction: Reduction = "mean",
                      out: npt.NDArray[Any] | None = None,
                      n_threads: int | None = None) -> FloatArray:
    """Gradient of :func:`nll_loss` w.r.t. ``log_probs``.

    Zero everywhere except ``-g_i * w[y_i]`` at each row's target (``g_i`` the upstream
    gradient, divided by the 'mean' normaliser).

    Parameters
    ----------
    log_probs, target, weight, ignore_index, reduction
        As :func:`nll_loss`.
    grad_output : float or ndarray, default 1.0
        A scalar (any reduction), or for 'none' an array that broadcasts to the
        target's shape.
    out : ndarray, optional
        Receives the gradient (log_probs' shape and dtype, any strides).
    n_threads : int, optional
        Accepted for a uniform signature; the scatter runs on one thread.

    Returns
    -------
    ndarray
        The gradient, log_probs' shape and dtype.
    """
    return _ce_call(  # type: ignore[no-any-return]
        4, log_probs, target, weight, ignore_index, reduction, 0.0, 0.0, None, 1.0, None, None,
        False, 0, None, grad_output, out, False, None, n_threads, "log_probs")


# ---------------------------------------------------------------------------------------
# module-style front end
# ---------------------------------------------------------------------------------------
class CrossEntropyLoss:
    """Cross-entropy criterion with a NumPy-friendly ``backward``.

    ``loss = crit(logits, target)`` computes the loss in one read of the logits and keeps
    only O(N) state (the per-row log-sum-exp); ``crit.backward()`` then writes the
    gradient in one more sweep, without recomputing the log-sum-exp.  The logits must not
    change between the two calls (``backward`` reads them again).  NumPy and CuPy arrays
    alike: both calls go through :func:`cross_entropy` and :func:`cross_entropy_backward`.

    Parameters
    ----------
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap, logit_scale, num_items
        As :func:`cross_entropy`.
    n_threads : int, optional
        Threads per call; default :func:`fastce.get_num_threads`.

    Examples
    --------
    >>> crit = CrossEntropyLoss()
    >>> loss = crit(logits, target)
    >>> grad = crit.backward()            # d loss / d logits
    """

    def __init__(self, weight: npt.ArrayLike | None = None, ignore_index: int = -100,
                 reduction: Reduction = "mean", label_smoothing: float = 0.0,
                 z_loss: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0,
                 num_items: float | None = None, n_threads: int | None = None) -> None:
        self.weight = weight
        self.ignore_index = _kernels.check_ignore_index(ignore_index)
        self.reduction = _kernels.check_reduction(reduction)
        self.label_smoothing = _kernels.check_label_smoothing(label_smoothing)
        self.z_loss = _kernels.check_z_loss(z_loss)
        self.softcap = softcap if softcap is None else _kernels.check_softcap(softcap)
        self.logit_scale = _kernels.check_logit_scale(logit_scale)
        self.num_items = _kernels.check_num_items(num_items, reduction)
        self.n_threads = None if n_threads is None else _kernels.check_n_threads(n_threads)
        self._saved: tuple[Any, Any, Float64Array] | None = None

    def _options(self) -> dict[str, Any]:
        return dict(weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                    softcap=self.softcap, logit_scale=self.logit_scale, num_items=self.num_items,
                    n_threads=self.n_threads)

    def __repr__(self) -> str:
        return V.criterion_repr(self, self._options())

    def __call__(self, logits: npt.ArrayLike, target: npt.ArrayLike) -> Loss:
        loss, lse = cross_entropy(logits, target, return_lse=True, **self._options())
        self._saved = (logits, target, lse)  # backward reuses the lse
        return loss  # type: ignore[no-any-return]

    forward = __call__

    def backward(self, grad_output: GradOutput = 1.0, *, out: npt.NDArray[Any] | None = None,
                 inplace: bool = False) -> FloatArray:
        """Gradient of the last loss w.r.t. its logits.

        Parameters
        ----------
        grad_output : float or ndarray, default 1.0
            A scalar (any reduction), or for 'none' an array that broadcasts to the
            per-row loss.
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
        logits, target, lse = self._saved
        grad = cross_entropy_backward(logits, target, grad_output, lse=lse, out=out,
                                      inplace=inplace, **self._options())
        if inplace:
            self._saved = None  # the logits are gone
        return grad
