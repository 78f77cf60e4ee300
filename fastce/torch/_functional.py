"""torch.nn.functional-compatible front ends of fastce's custom ops."""
import numbers
import warnings
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _ops as ops
from ._convert import check_float, loss_dtype

__all__ = ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_softmax",
           "softmax", "logsumexp", "linear_cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")
_FLOAT_DTYPES = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))


def _reduction(size_average: Optional[bool], reduce: Optional[bool], reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reduction


def _threads(n_threads: Optional[int]) -> int:
    """0 = follow torch.get_num_threads() at call time (resolved inside the op)."""
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"n_threads must be a positive int or None, got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return int(n_threads)


def _grad_on(t: Optional[Tensor]) -> bool:
    return t is not None and t.requires_grad and torch.is_grad_enabled()


def _not_differentiable(fn: str, **tensors: Optional[Tensor]) -> None:
    """torch's error for class weights that require grad (they are not differentiable)."""
    for name, t in tensors.items():
        if _grad_on(t):
            raise RuntimeError(f"The function '{fn}' is not differentiable with respect to "
                               f"argument '{name}'. This input cannot have requires_grad True.")


def _float_or_none(v: Any, name: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, Tensor):
        raise TypeError(f"{name} must be a Python number (a tensor would make the op depend on "
                        f"data); use float(t) or .item()")
    return float(v)


def _check_ce_shapes(input: Tensor, target: Tensor, soft: bool) -> None:
    if input.dim() == 0:
        raise ValueError("input must have shape (C,), (N, C) or (N, C, d1, ..., dk), got a 0-d tensor")
    if soft:
        return
    if input.dim() == 1:
        if target.dim() != 0:
            raise RuntimeError(f"0D target tensor expected for 1D input, got {target.dim()}D target")
        return
    if target.dim() == 0 or target.shape[0] != input.shape[0]:
        got = target.shape[0] if target.dim() else 1
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target "
                         f"batch_size ({got}).")
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise RuntimeError(f"Expected target size {list(expected)}, got {list(target.shape)}")


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  size_average: Optional[bool] = None, ignore_index: int = -100,
                  reduce: Optional[bool] = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                  softcap: Optional[float] = None, logit_scale: float = 1.0,
                  num_items: Optional[float] = None, return_lse: bool = False,
                  n_threads: Optional[int] = None) -> Any:
    """Cross-entropy between logits and targets, as ``torch.nn.functional.cross_entropy``.

    Same arguments and semantics as torch's (class indices of any integer dtype, or class
    probabilities of the logits' shape; K-dimensional inputs with the class axis at 1;
    ``weight``, ``ignore_index``, ``label_smoothing``, the three reductions, the legacy
    ``size_average``/``reduce``), computed by fastce's row sweep. When ``input`` requires
    grad, the forward also writes d loss / d input (one sweep) and saves it; ``backward``
    scales it by the upstream gradient.

    Parameters
    ----------
    input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As ``torch.nn.functional.cross_entropy``.
    z_loss : float, default 0
        Adds ``z_loss * lse**2`` per row (see :func:`fastce.cross_entropy`).
    softcap : float, optional
        Logits become ``softcap * tanh(x / softcap)`` first (Gemma 2).
    logit_scale : float, default 1
        Logits become ``logit_scale * x`` before the softcap (needs a fastce that has it).
    num_items : float, optional
        An external divisor for 'mean' (gradient accumulation over micro-batches; needs a
        fastce that has it). A Python number, not a tensor.
    return_lse : bool, default False
        Also return each row's log-sum-exp (a tensor without gradient).
    n_threads : int, optional
        fastce's threads for this call; default ``torch.get_num_threads()``.

    Returns
    -------
    loss : Tensor
        0-d for 'mean'/'sum', the target's shape (rows) for 'none'. Dtype: the logits'
        for float32/float64, float32 for float16/bfloat16 logits (torch returns the
        half dtype). The gradient has the logits' dtype.
    lse : Tensor (only with ``return_lse``)
    """
    # The checks are written inline with fast common cases (a 2-D float input, class indices,
    # default options): at small shapes each Python call here costs as much as a percent of
    # the kernel. The slow helpers run only off the common path.
    if size_average is not None or reduce is not None or reduction not in _REDUCTIONS:
        reduction = _reduction(size_average, reduce, reduction)
    dtype = input.dtype
    if dtype not in _FLOAT_DTYPES:
        check_float(input, "input")
    soft = target.dtype.is_floating_point
    if soft or input.dim() != 2 or target.dim() != 1 or target.shape[0] != input.shape[0]:
        _check_ce_shapes(input, target, soft)
    if weight is not None:
        _not_differentiable("nll_loss_forward", weight=weight)
    if soft and target.dtype != dtype:
        target = target.to(dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    if label_smoothing.__class__ is not float or not 0.0 <= label_smoothing <= 1.0:
        label_smoothing = _smoothing(label_smoothing)
    grad_mode = torch.is_grad_enabled()
    grad = grad_mode and input.requires_grad
    # a probability target that requires grad: backward needs the lse (log_softmax = x - lse)
    grad_target = soft and grad_mode and target.requires_grad
    args = (input, target, weight, ignore_index if ignore_index.__class__ is int else int(ignore_index),
            reduction, label_smoothing, z_loss if z_loss.__class__ is float else float(z_loss),
            None if softcap is None else _float_or_none(softcap, "softcap"),
            logit_scale if logit_scale.__class__ is float else float(logit_scale),
            None if num_items is None else _float_or_none(num_items, "num_items"),
            bool(return_lse) or grad_target, grad, 0 if n_threads is None else _threads(n_threads))
    if grad or grad_target:
        loss, lse, _ = ops.call(ops.cross_entropy_op, *args, grad=True)
    elif ops.plain_eager(input):  # the loss only: no autograd node, no placeholder outputs
        loss, lse, _ = ops._ce_compute(*args)
    else:
        loss, lse, _ = ops.call(ops.cross_entropy_op, *args)
    return (loss, lse) if return_lse else loss


def _smoothing(label_smoothing: Any) -> float:
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= float(label_smoothing) <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    return float(label_smoothing)


def nll_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
             size_average: Optional[bool] = None, ignore_index: int = -100,
             reduce: Optional[bool] = None, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood loss, as ``torch.nn.functional.nll_loss``.

    Parameters
    ----------
    input, target, weight, size_average, ignore_index, reduce, reduction
        As torch's. ``input`` is float32 or float64 (log-probabilities).

    Returns
    -------
    Tensor
        0-d for 'mean'/'sum', the target's shape for 'none'; input's dtype.
    """
    reduction = _reduction(size_average, reduce, reduction)
    check_float(input, "input")
    if input.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"fastce.torch.nll_loss: input must be float32 or float64, got {input.dtype}")
    if target.dtype.is_floating_point:
        raise RuntimeError(f"expected target dtype to be Long, but got {target.dtype}")
    _check_ce_shapes(input, target, False)
    _not_differentiable("nll_loss_forward", weight=weight)
    loss: Tensor = ops.call(ops.nll_loss_op, input, target, weight, int(ignore_index), reduction,
                            grad=_grad_on(input))
    return loss


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                                     size_average: Optional[bool] = None,
                                     reduce: Optional[bool] = None, reduction: str = "mean",
                                     pos_weight: Optional[Tensor] = None, *,
                                     n_threads: Optional[int] = None) -> Tensor:
    """Binary cross-entropy with logits, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Parameters
    ----------
    input, target, weight, size_average, reduce, reduction, pos_weight
        As torch's (``weight`` broadcasts to the input, ``pos_weight`` over the last axis).
        float32 or float64.
    n_threads : int, optional
        fastce's threads; default ``torch.get_num_threads()``.

    Returns
    -------
    Tensor
        0-d for 'mean'/'sum', the input's shape for 'none'; input's dtype.
    """
    reduction = _reduction(size_average, reduce, reduction)
    check_float(input, "input")
    if input.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"fastce.torch.binary_cross_entropy_with_logits: input must be "
                                  f"float32 or float64, got {input.dtype}")
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    _not_differentiable("binary_cross_entropy_with_logits", weight=weight, pos_weight=pos_weight)
    grad = _grad_on(input)
    loss: Tensor
    loss, _ = ops.call(ops.bce_op, input, target, weight, pos_weight, reduction, grad,
                       _threads(n_threads), grad=grad or _grad_on(target))
    return loss


def _softmax_dim(ndim: int) -> int:
    warnings.warn("Implicit dimension choice for softmax has been deprecated. Change the call to "
                  "include dim=X as an argument.", stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_call(op: Any, input: Tensor, dim: Optional[int], dtype: Optional[torch.dtype],
                  n_threads: Optional[int]) -> Tensor:
    if dtype is not None:
        input = input.to(dtype)
    check_float(input, "input")
    if dim is None:
        dim = _softmax_dim(input.dim())
    grad = _grad_on(input)
    if input.dim() == 0:
        out: Tensor = ops.call(op, input.reshape(1), 0, _threads(n_threads), grad=grad)
        return out.reshape(())
    dim = _dim(dim, input.dim())
    res: Tensor = ops.call(op, input, dim, _threads(n_threads), grad=grad)
    return res


def _dim(dims: Union[int, Sequence[int]], ndim: int) -> int:
    if isinstance(dims, (tuple, list)):
        if len(dims) != 1:
            raise NotImplementedError("fastce.torch reduces over one dimension; got dims "
                                      f"{tuple(dims)} (use torch for several)")
        dims = dims[0]
    dim = int(dims)  # type: ignore[arg-type]  # a Sequence was unpacked above
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"Dimension out of range (expected to be in range of "
                         f"[{-max(ndim, 1)}, {max(ndim, 1) - 1}], but got {dim})")
    return dim % max(ndim, 1)


def log_softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
                dtype: Optional[torch.dtype] = None, *, n_threads: Optional[int] = None) -> Tensor:
    """Log-softmax along ``dim``, as ``torch.nn.functional.log_softmax`` (twice differentiable).

    float32/float64/float16/bfloat16 (half computed in float32, returned in its dtype).
    """
    return _softmax_call(ops.log_softmax_op, input, dim, dtype, n_threads)


def softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
            dtype: Optional[torch.dtype] = None, *, n_threads: Optional[int] = None) -> Tensor:
    """Softmax along ``dim``, as ``torch.nn.functional.softmax`` (twice differentiable)."""
    return _softmax_call(ops.softmax_op, input, dim, dtype, n_threads)


def logsumexp(input: Tensor, dim: Union[int, Sequence[int]], keepdim: bool = False, *,
              n_threads: Optional[int] = None) -> Tensor:
    """``log(sum(exp(input), dim))``, as ``torch.logsumexp``, over one dimension."""
    check_float(input, "input")
    if input.dim() == 0:
        return input.clone()
    d = _dim(dim, input.dim())
    out: Tensor = ops.call(ops.logsumexp_op, input, d, _threads(n_threads), grad=_grad_on(input))
    return out.unsqueeze(d) if keepdim else out


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor,
                         bias: Optional[Tensor] = None, *, linear_bias: Optional[Tensor] = None,
                         weight: Optional[Tensor] = None, reduction: str = "mean",
                         ignore_index: Optional[int] = -100, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: Optional[float] = None,
                         logit_scale: float = 1.0, num_items: Optional[float] = None,
                         return_lse: bool = False, chunk_size: Optional[int] = None,
                         n_threads: Optional[int] = None, options: Any = None) -> Any:
    """Cross-entropy of ``input @ linear_weight.T + bias`` without the N x V logits.

    As ``torch.nn.functional.linear_cross_entropy`` (torch 2.13; ``linear_bias=`` and a
    positional ``bias`` are the same argument, ``weight=`` are class weights, ``options``
    is accepted and ignored), with gradients for ``input``, ``linear_weight`` and the bias.
    Rows are taken in chunks (not ignored rows only) into one reused ``(chunk_size, V)``
    buffer: torch computes the products (its own thread pool), fastce the cross-entropy
    and its gradient in place. 'mean'/'sum' compute the gradients in the forward and save
    them (``N x H + V x H``); 'none' saves the lse and recomputes the logits in backward,
    once, with the per-row upstream gradient.

    Parameters
    ----------
    input : Tensor (N, H) or (H,)
    linear_weight : Tensor (V, H)
    target : Tensor of int, (N,) or ()
        Class indices (probability targets are not supported here).
    bias, linear_bias : Tensor (V,), optional
    weight : Tensor (V,), optional
        Class weights.
    reduction, ignore_index, label_smoothing
        As ``torch.nn.functional.cross_entropy`` (``ignore_index=None`` means -100).
    z_loss, softcap, logit_scale, num_items, return_lse, n_threads
        As :func:`cross_entropy`.
    chunk_size : int, optional
        Rows per chunk; default: a 64 MiB logits buffer.

    Returns
    -------
    loss : Tensor (0-d, or (N,) for 'none'); float32 for half inputs
    lse : Tensor (only with ``return_lse``; every row, ignored ones included)
    """
    reduction = _reduction(None, None, reduction)
    if bias is not None and linear_bias is not None:
        raise TypeError("give the bias once: bias= or linear_bias=")
    bias = linear_bias if bias is None else bias
    ignore_index = -100 if ignore_index is None else int(ignore_index)
    check_float(input, "input")
    if linear_weight.dim() != 2:
        raise NotImplementedError("fastce.torch.linear_cross_entropy: linear_weight must be (V, H); "
                                  "K-dimensional outputs are not supported")
    if input.dim() not in (1, 2):
        raise NotImplementedError(f"fastce.torch.linear_cross_entropy: input must be (N, H) or (H,), "
                                  f"got {input.dim()}-D")
    if target.dtype.is_floating_point:
        raise NotImplementedError("fastce.torch.linear_cross_entropy: probability targets are not "
                                  "supported; pass class indices")
    if input.shape[-1] != linear_weight.shape[-1]:
        raise RuntimeError(f"expected equal input and linear_weight last dimensions (in_features), "
                           f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    if linear_weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise RuntimeError(f"expected input, linear_weight and bias to have the same dtype, got "
                           f"{input.dtype}, {linear_weight.dtype}"
                           f"{'' if bias is None else ', ' + str(bias.dtype)}")
    if bias is not None and tuple(bias.shape) != (linear_weight.shape[0],):
        raise RuntimeError(f"expected linear_bias of shape ({linear_weight.shape[0]},), got {tuple(bias.shape)}")
    squeeze = input.dim() == 1
    if squeeze:
        if target.dim() != 0:
            raise RuntimeError(f"0D target tensor expected for 1D input, got {target.dim()}D target")
        input, target = input.unsqueeze(0), target.reshape(1)
    elif target.shape != input.shape[:1]:
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                         f"({target.shape[0] if target.dim() else 1}).")
    _not_differentiable("linear_cross_entropy", weight=weight)
    if not isinstance(label_smoothing, numbers.Real) or not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    grads = [_grad_on(input), _grad_on(linear_weight), _grad_on(bias)]
    loss, lse, _, _, _ = ops.call(
        ops.linear_cross_entropy_op, input, linear_weight, target, bias, weight, ignore_index, reduction,
        float(label_smoothing), float(z_loss), _float_or_none(softcap, "softcap"),
        float(logit_scale), _float_or_none(num_items, "num_items"), int(chunk_size or 0),
        bool(return_lse), grads, _threads(n_threads), grad=any(grads))
    if squeeze and reduction == "none":
        loss = loss.reshape(())
    if not return_lse:
        return loss
    lse = lse.to(loss_dtype(input.dtype))
    return loss, (lse.reshape(()) if squeeze else lse)
