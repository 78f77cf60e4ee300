"""Argument checks of the loss families that are not compiled (BCE, linear CE) and the
array layout helpers, over the compiled contract of ``_kernels`` (``_contract.pxi``),
which owns every check the cross-entropy family shares with them.

Errors name the argument and the offending value: ``TypeError`` for a wrong type or
dtype, ``ValueError`` for a wrong shape or value, ``IndexError`` for a class index out
of range (see docs/design.md, "Errors").
"""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ._errors import ArgumentTypeError as ArgumentTypeError
from ._errors import ArgumentValueError as ArgumentValueError
from ._kernels import (  # noqa: F401  (the shared contract, re-exported for the other families)
    GRAD_OUTPUT_ELEMENTS as GRAD_OUTPUT_ELEMENTS,
    GRAD_OUTPUT_ROWS as GRAD_OUTPUT_ROWS,
    as_float_array as as_float_array,
    as_grad_output as as_grad_output,
    as_hard_target as as_hard_target,
    as_lse as as_lse,
    as_rows3 as as_rows3,
    as_soft_target as as_soft_target,
    as_weight as as_weight,
    bad_target_error as bad_target_error,
    byte_extent as byte_extent,
    ce_inputs as ce_inputs,
    check_ce_logits as check_ce_logits,
    check_class_target as check_class_target,
    check_class_weight as check_class_weight,
    check_float_dtype as check_float_dtype,
    check_grad_buffer as check_grad_buffer,
    check_grad_dtype as check_grad_dtype,
    check_grad_output_array as check_grad_output_array,
    check_ignore_index as check_ignore_index,
    check_inplace as check_inplace,
    check_inplace_inputs as check_inplace_inputs,
    check_label_smoothing as check_label_smoothing,
    check_logit_scale as check_logit_scale,
    check_lse as check_lse,
    check_n_threads as check_n_threads,
    check_num_items as check_num_items,
    check_out as check_out,
    check_real_dtype as check_real_dtype,
    check_reduction as check_reduction,
    check_shard as check_shard,
    check_shard_lse as check_shard_lse,
    check_soft_target as check_soft_target,
    check_softcap as check_softcap,
    check_z_loss as check_z_loss,
    checked_grad_output as checked_grad_output,
    compute_dtype as compute_dtype,
    default_threads as default_threads,
    expected_target_shape as expected_target_shape,
    extents_overlap as extents_overlap,
    is_half as is_half,
    is_probability_target as is_probability_target,
    mix_error as mix_error,
    overlaps as overlaps,
    posinf_lse as posinf_lse,
    rows3_shape as rows3_shape,
    self_overlapping as self_overlapping,
    writable_rows3 as writable_rows3,
)

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_threads(n_threads: int | None) -> int:
    """The thread count for one call: ``n_threads`` if given, else the library default."""
    return default_threads() if n_threads is None else check_n_threads(n_threads)


def check_axis(axis: object, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    ax = int(axis)
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of {ndim} dimension(s)")
    return ax % ndim


def array_axis(ndim: int, axis: object) -> int:
    """The reduced axis of the softmax family's ``x`` (``ndim`` dimensions, at least one)."""
    if ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    return check_axis(axis, ndim)


def criterion_repr(obj: object, options: Mapping[str, Any]) -> str:
    """``Name(arg=value, ...)`` of a criterion, with the arguments that differ from their
    defaults (as torch's modules show theirs)."""
    init = type(obj).__init__
    names = init.__code__.co_varnames[1:init.__code__.co_argcount]
    defaults = dict(zip(names, init.__defaults__ or ()))
    shown = [f"{k}={v!r}" for k, v in options.items()
             if not (v is defaults.get(k) or (not isinstance(v, np.ndarray) and v == defaults.get(k)))]
    return f"{type(obj).__name__}({', '.join(shown)})"


def _is_cupy(x: object) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


# ---------------------------------------------------------------------------------------
# binary cross-entropy with logits (fastce/_bce.py)
# ---------------------------------------------------------------------------------------
def as_probability_target(target: object, logits_shape: tuple[int, ...],
                          dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Targets of ``binary_cross_entropy_with_logits``: a real floating array of exactly the
    logits' shape (no broadcasting, like torch), returned in the logits' dtype (a copy only
    when the dtype differs). Values are not checked: like torch, any real value is used as
    given by the formula (probabilities in [0, 1] are the meaningful ones). A shape mismatch
    is a ValueError (torch's too); an integer or bool target an ArgumentTypeError (torch
    raises RuntimeError)."""
    if _is_cupy(target):
        raise mix_error("target")
    t = np.asarray(target)
    check_probability_target(t.dtype, t.shape, logits_shape)
    return t.astype(dtype, copy=False)


def check_probability_target(dtype: np.dtype[Any], shape: tuple[int, ...],
                             logits_shape: tuple[int, ...]) -> None:
    """The metadata checks of ``as_probability_target`` (any array kind)."""
    if tuple(shape) != tuple(logits_shape):
        raise ValueError(f"Target size must be the same as input size: target has shape "
                         f"{tuple(shape)}, logits has shape {tuple(logits_shape)}")
    if not np.issubdtype(dtype, np.floating):
        raise ArgumentTypeError(f"target must have a floating dtype (probabilities in [0, 1]), got "
                                f"{dtype}; convert 0/1 labels with target.astype(logits.dtype)")


class BCEArguments:
    """The checked arguments of one BCE-with-logits call, on the array backend ``b``: one
    order of checks and one output rule for every path. ``b`` provides ``threads``,
    ``check_inplace``, ``as_logits``, ``as_target``, ``as_operand``, ``check_grad_buffer``
    and ``empty``: :class:`NumpyBCEChecks` here, ``fastce.cuda._bce.BceOps`` for CuPy."""

    def __init__(self, b: Any, logits: Any, target: Any, weight: Any, pos_weight: Any,
                 reduction: Any, n_threads: Any, inplace: bool = False, out: Any = None) -> None:
        self.b = b
        self.reduction = check_reduction(reduction)
        self.n_threads = b.threads(n_threads)
        if inplace:
            b.check_inplace(logits, out)
        x = b.as_logits(logits)
        self.y = b.as_target(target, x.shape, x.dtype)
        self.w = b.as_operand(weight, "weight", x.shape, x.dtype)
        self.pw = b.as_operand(pos_weight, "pos_weight", x.shape, x.dtype)
        self.inputs = bce_inputs(target, weight, pos_weight)
        self.x = x
        self.set_output(out, inplace)

    def check_inplace(self, logits: Any, out: Any) -> None:
        self.b.check_inplace(logits, out)

    def set_output(self, out: Any, inplace: bool,
                   more_inputs: dict[str, Any] | None = None) -> None:
        inputs = dict(self.inputs, **(more_inputs or {}))
        self.b.check_grad_buffer(self.x, out, inplace, self.x.dtype, inputs)
        self.out, self.inplace = out, inplace

    def _empty(self) -> Any:
        """A new array of the logits' shape, Fortran order for Fortran-ordered logits."""
        x = self.x
        f_order = x.flags.f_contiguous and not x.flags.c_contiguous
        return self.b.empty(x.shape, x.dtype, "F" if f_order else "C")


class NumpyBCEChecks:
    """The NumPy backend of :class:`BCEArguments`."""

    threads = staticmethod(resolve_threads)
    check_inplace = staticmethod(check_inplace)
    check_grad_buffer = staticmethod(check_grad_buffer)

    @staticmethod
    def as_logits(logits: Any) -> npt.NDArray[Any]:
        return as_float_array(logits, "logits")

    as_target = staticmethod(as_probability_target)

    @staticmethod
    def as_operand(arr: Any, name: str, shape: tuple[int, ...] | None,
                   dtype: np.dtype[Any] | None) -> npt.NDArray[Any] | None:
        return as_broadcast_operand(arr, name, shape, dtype)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: np.dtype[Any], order: Any) -> npt.NDArray[Any]:
        return np.empty(shape, dtype=dtype, order=order)


def bce_inputs(target: object, weight: object, pos_weight: object) -> dict[str, object]:
    """The array inputs of a BCE call that its gradient may not overwrite (with
    ``grad_output``, added by the call that has one)."""
    return {"target": target, "weight": weight, "pos_weight": pos_weight}


def as_broadcast_operand(arr: object, name: str, shape: tuple[int, ...] | None,
                         dtype: np.dtype[Any] | None) -> npt.NDArray[Any] | None:
    """``weight`` / ``pos_weight`` of the BCE loss: real numbers whose shape broadcasts to the
    logits' ``shape`` (NumPy rules, without enlarging it), returned in ``dtype`` in their own
    shape (not broadcast), or None. With ``shape=None`` only the type is checked. A shape
    that does not broadcast is an ArgumentValueError (torch raises RuntimeError)."""
    if arr is None:
        return None
    if _is_cupy(arr):
        raise mix_error(name)
    a = np.asarray(arr)
    check_broadcast_operand(a.dtype, a.shape, name, shape)
    return a if shape is None else a.astype(dtype, copy=False)


def check_broadcast_operand(dtype: np.dtype[Any], op_shape: tuple[int, ...], name: str,
                            shape: tuple[int, ...] | None) -> None:
    """The metadata checks of ``as_broadcast_operand`` (any array kind)."""
    check_real_dtype(dtype, name)
    if shape is None:
        return
    try:
        ok = np.broadcast_shapes(tuple(op_shape), tuple(shape)) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ArgumentValueError(f"{name} of shape {tuple(op_shape)} does not broadcast to the "
                                 f"logits' shape {tuple(shape)}")


def as_elementwise_grad_output(
        grad_output: object, reduction: str, shape: tuple[int, ...],
        dtype: np.dtype[Any]) -> tuple[float | None, npt.NDArray[Any] | None]:
    """Upstream gradient of an elementwise loss: ``(float, None)`` for 'mean'/'sum', or
    ``(None, array of the logits' shape in dtype)`` for 'none' (a copy only when the dtype
    differs; any layout)."""
    g0, g = checked_grad_output(grad_output, reduction, shape, GRAD_OUTPUT_ELEMENTS)
    return g0, None if g is None else g.astype(dtype, copy=False)


# =======================================================================================
# fused linear + cross-entropy (fastce/_linear.py)
# -- appended section: checks used only by _linear.py; the part above is the lead's --
# =======================================================================================
LINEAR_DEFAULT_MEMORY_BUDGET = 64 * 2**20  # bytes of the reused (chunk, V) logits buffer


def _linear_array(x: object, name: str, asarray: Callable[[object, str], Any] | None = None) -> Any:
    """``x`` as a float32/float64 array: a NumPy one, or through ``asarray(x, name)`` (the
    GPU path's conversion, which refuses NumPy arrays among CuPy ones)."""
    if asarray is None:
        if _is_cupy(x):
            raise mix_error(name, "another argument")
        return as_float_array(x, name)
    arr = asarray(x, name)
    check_float_dtype(arr.dtype, name)
    return arr


def _blas_layout(a: Any, xp: Any = np) -> Any:
    """``a`` itself when BLAS can read it without a copy (C- or Fortran-contiguous), else a
    C-contiguous copy (made once, so that no per-chunk matmul copies it again)."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return xp.ascontiguousarray(a)


def as_linear_operands(hidden: object, weight: object, bias: object,
                       asarray: Callable[[object, str], Any] | None = None,
                       xp: Any = np) -> tuple[Any, Any, Any]:
    """``(hidden (N, H), weight (V, H), bias (V,) or None)`` of a fused linear +
    cross-entropy, checked for shape and a common float dtype (errors catchable as
    RuntimeError too, as torch's); ``weight`` (and ``bias``) copied to a contiguous
    layout only when they have none.  ``asarray``/``xp``: the
    array conversion and module of the GPU path (default: NumPy)."""
    h = _linear_array(hidden, "hidden", asarray)
    w = _linear_array(weight, "weight", asarray)
    if h.ndim != 2:
        raise ArgumentValueError(f"hidden must have shape (N, H) (N rows of H features), got shape {h.shape}")
    if w.ndim != 2:
        raise ArgumentValueError(f"weight must have shape (V, H) (one row of H features per class), "
                         f"got shape {w.shape}")
    if w.dtype != h.dtype:
        raise ArgumentTypeError(f"hidden and weight must have the same dtype, got hidden {h.dtype} and "
                        f"weight {w.dtype}")
    if w.shape[1] != h.shape[1]:
        raise ArgumentValueError(f"hidden of shape {h.shape} has H={h.shape[1]} features but weight has "
                         f"shape {w.shape}: weight must have shape (V, {h.shape[1]})")
    if w.shape[0] == 0:
        raise ArgumentValueError(f"weight must have at least one row (class), got shape {w.shape}")
    b = None
    if bias is not None:
        b = _linear_array(bias, "bias", asarray)
        if b.dtype != h.dtype:
            raise ArgumentTypeError(f"bias must have the dtype of hidden and weight ({h.dtype}), got {b.dtype}")
        if b.shape != (w.shape[0],):
            raise ArgumentValueError(f"bias must have shape ({w.shape[0]},) (one per class, weight has "
                             f"shape {w.shape}), got {b.shape}")
    return h, _blas_layout(w, xp), b


def check_linear_target(t: Any, n_rows: int) -> Any:
    """Dtype and shape of a linear cross-entropy's target array (NumPy or CuPy)."""
    if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        raise ArgumentTypeError(f"target must hold class indices (an integer dtype) of shape "
                                f"({n_rows},), got dtype {t.dtype}")
    if t.shape != (n_rows,):
        raise ArgumentValueError(f"target must have shape ({n_rows},) (one class index per row "
                                 f"of hidden), got {t.shape}")
    return t


def as_linear_target(target: object, n_rows: int, n_classes: int,
                     ignore_index: int) -> npt.NDArray[np.int64]:
    """Class indices of shape ``(N,)``: flat int64, -1 marking ignored rows."""
    if _is_cupy(target):
        raise mix_error("target", "another argument")
    t = check_linear_target(np.asarray(target), n_rows)
    return as_hard_target(t, (n_rows, n_classes), n_classes, ignore_index)


def linear_chunk_rows(chunk_size: object, memory_budget: object, n_classes: int,
                      itemsize: int) -> int:
    """Rows per chunk: ``chunk_size`` if given, else ``max(1, memory_budget // (V * itemsize))``
    (``memory_budget`` in bytes, default ``LINEAR_DEFAULT_MEMORY_BUDGET``)."""
    if chunk_size is not None and memory_budget is not None:
        raise ValueError(f"pass chunk_size or memory_budget, not both (got chunk_size="
                         f"{chunk_size!r}, memory_budget={memory_budget!r})")
    if chunk_size is not None:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        rows = int(chunk_size)
        if rows < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return rows
    if memory_budget is None:
        memory_budget = LINEAR_DEFAULT_MEMORY_BUDGET
    elif isinstance(memory_budget, (bool, np.bool_)) or not isinstance(memory_budget, numbers.Real):
        raise TypeError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    budget: Any = memory_budget  # a real number (numbers.Real has no operators for mypy)
    if not (budget > 0 and np.isfinite(budget)):
        raise ValueError(f"memory_budget must be a finite number of bytes > 0, got {memory_budget!r}")
    return max(1, int(budget) // (n_classes * itemsize))
# =================================== end of the _linear.py section ====================
