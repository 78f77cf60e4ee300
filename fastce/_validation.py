"""Argument validation and layout normalisation: the only place fastce checks input.

Every public function calls into this module before touching a kernel; the kernels
trust what they get.  Errors name the argument and the offending value:
``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong shape or value,
``IndexError`` for a class index out of range.
"""
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------
# scalars
# ---------------------------------------------------------------------------------------
def check_n_threads(n, name="n_threads"):
    """Return ``n`` as a positive int, or raise."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive int or None, got {n!r} ({type(n).__name__})")
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def resolve_threads(n_threads):
    """The thread count for one call: ``n_threads`` if given, else the library default."""
    from ._config import get_num_threads
    return get_num_threads() if n_threads is None else check_n_threads(n_threads)


def check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index):
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return int(ignore_index)


def check_label_smoothing(label_smoothing):
    if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ArgumentValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def check_z_loss(z_loss):
    if isinstance(z_loss, (bool, np.bool_)) or not isinstance(z_loss, numbers.Real):
        raise TypeError(f"z_loss must be a float >= 0, got {z_loss!r}")
    z = float(z_loss)
    if not (z >= 0.0 and np.isfinite(z)):
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")
    return z


def check_softcap(softcap):
    """Logit softcap: None (off) -> 0.0, else a finite float > 0."""
    if softcap is None:
        return 0.0
    if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a float > 0 or None, got {softcap!r}")
    c = float(softcap)
    if not (c > 0.0 and np.isfinite(c)):
        raise ValueError(f"softcap must be a finite float > 0, got {softcap!r}")
    return c


def check_shard(class_start, num_classes, n_classes):
    """``(class_start, total classes)`` of a vocabulary shard holding ``n_classes`` classes."""
    for name, v in (("class_start", class_start), ("num_classes", num_classes)):
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)):
            raise TypeError(f"{name} must be an int, got {v!r}")
    start = int(class_start)
    total = start + n_classes if num_classes is None else int(num_classes)
    if start < 0:
        raise ValueError(f"class_start must be >= 0, got {start}")
    if total < start + n_classes:
        raise ValueError(f"num_classes={total} is too small for a shard of {n_classes} classes "
                         f"starting at class_start={start}")
    return start, total


def as_lse(lse, target_shape):
    """Per-row log-sum-exp given by the caller, flat float64, or None."""
    if lse is None:
        return None
    if _is_cupy(lse):
        raise TypeError("lse is a CuPy array but logits is not: mix of CuPy and NumPy")
    arr = np.asarray(lse)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
        raise TypeError(f"lse must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != tuple(target_shape):
        raise ValueError(f"lse must have one value per row, shape {tuple(target_shape)}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)


def check_axis(axis, ndim, name="axis"):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of {ndim} dimension(s)")
    return int(axis) % ndim


# ---------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------
def is_half(dtype):
    """float16, or ml_dtypes' bfloat16 (recognised by name: no import needed)."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def compute_dtype(dtype):
    """The dtype kernels compute in and reductions are returned in: float32 for halves."""
    return np.dtype(np.float32) if is_half(dtype) else np.dtype(dtype)


def as_float_array(x, name, allow_half=False):
    """``x`` as a float32/float64 (optionally float16/bfloat16) ndarray, no copy of ndarrays."""
    if _is_cupy(x):
        raise TypeError(f"{name} is a CuPy array but another argument is not: mix of CuPy and NumPy")
    arr = np.asarray(x)
    if arr.dtype not in FLOAT_DTYPES and not (allow_half and is_half(arr.dtype)):
        kinds = "float32, float64, float16 or bfloat16" if allow_half else "float32 or float64"
        raise TypeError(f"{name} must have dtype {kinds}, got {arr.dtype}")
    return arr


def check_grad_dtype(grad_dtype, dtype):
    """The gradient's dtype: the logits' (default) or, for half logits, float32."""
    if grad_dtype is None:
        return np.dtype(dtype)
    try:
        g = np.dtype(grad_dtype)
    except TypeError:
        raise TypeError(f"grad_dtype must be a NumPy dtype, got {grad_dtype!r}") from None
    if g != dtype and not (is_half(dtype) and g == np.float32):
        raise ValueError(f"grad_dtype must be the logits' dtype {np.dtype(dtype)}"
                         f"{' or float32' if is_half(dtype) else ''}, got {g}")
    return g


def _is_cupy(x):
    return type(x).__module__.split(".")[0] == "cupy"


class ArgumentValueError(ValueError, RuntimeError):
    """A bad argument value for which torch raises ``RuntimeError``.

    Catchable as ``ValueError`` (NumPy convention) and as ``RuntimeError`` (torch parity),
    as NumPy's ``AxisError`` is both a ``ValueError`` and an ``IndexError``.
    """


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument dtype for which torch raises ``RuntimeError`` (see ArgumentValueError)."""


def is_probability_target(target, logits_shape):
    """Class probabilities: a floating target with exactly the logits' shape (torch's rule)."""
    t = target if isinstance(target, np.ndarray) else np.asarray(target)
    return np.issubdtype(t.dtype, np.floating) and t.shape == tuple(logits_shape)


def as_soft_target(target, logits_shape, dtype, ignore_index):
    """Probability targets in the logits' dtype (copied only when the dtype differs)."""
    if _is_cupy(target):
        raise TypeError("target is a CuPy array but logits is not: mix of CuPy and NumPy")
    if ignore_index != -100:
        raise ArgumentValueError(f"ignore_index={ignore_index} is not supported with probability "
                                 f"targets (a float target of the logits' shape {tuple(logits_shape)})")
    return np.asarray(target).astype(dtype, copy=False)


def as_hard_target(target, logits_shape, n_classes, ignore_index, logits_name="logits"):
    """Validate class-index targets; return them flat as int64 with -1 marking ignored rows.

    ``logits_shape`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; the target shape
    must be ``()``, ``(N,)`` or ``(N, d1, ..., dk)`` respectively.
    """
    if _is_cupy(target):
        raise TypeError("target is a CuPy array but logits is not: mix of CuPy and NumPy")
    t = np.asarray(target)
    expected = expected_target_shape(logits_shape)
    if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        raise ArgumentTypeError(
            f"target must hold class indices (an integer dtype) of shape {expected}, or class "
            f"probabilities (a float dtype) of the {logits_name}' shape {tuple(logits_shape)}; got "
            f"dtype {t.dtype} and shape {t.shape}")
    if t.shape != expected:
        raise ArgumentValueError(f"target has shape {t.shape}, but {logits_name} of shape "
                                 f"{tuple(logits_shape)} need a target of shape {expected} (class "
                                 f"indices) or {tuple(logits_shape)} (class probabilities)")
    if t.dtype.kind == "u" and t.size and t.max() > np.iinfo(np.int64).max:
        # would wrap negative in int64 (and could pass for ignore_index): report it as is
        flat = int(np.argmax(t.reshape(-1)))
        pos = [int(i) for i in np.unravel_index(flat, t.shape)] if t.ndim else []
        raise IndexError(f"target{pos} = {t.reshape(-1)[flat]} is out of bounds for {n_classes} classes")
    t64 = t.astype(np.int64, copy=False).reshape(-1)
    ignored = t64 == ignore_index
    bad = ((t64 < 0) | (t64 >= n_classes)) & ~ignored
    if bad.any():
        flat = int(np.flatnonzero(bad)[0])
        pos = [int(i) for i in np.unravel_index(flat, t.shape)] if t.ndim else []
        raise IndexError(f"target{pos} = {t64[flat]} is out of bounds for {n_classes} "
                         f"classes (valid: 0 <= target < {n_classes}, or ignore_index={ignore_index})")
    return np.where(ignored, np.int64(-1), t64)


def expected_target_shape(logits_shape):
    if len(logits_shape) == 1:
        return ()
    return (logits_shape[0],) + tuple(logits_shape[2:])


def as_weight(weight, n_classes, dtype):
    """Class weights as ``(weight in dtype, weight in float64)``, or ``(None, None)``."""
    if weight is None:
        return None, None
    if _is_cupy(weight):
        raise TypeError("weight is a CuPy array but logits is not: mix of CuPy and NumPy")
    w = np.asarray(weight)
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"weight must hold real numbers, got dtype {w.dtype}")
    if w.shape != (n_classes,):
        raise ArgumentValueError(f"weight must have shape ({n_classes},) (one per class), got {w.shape}")
    wd = np.ascontiguousarray(w, dtype=np.float64)
    return np.ascontiguousarray(w, dtype=dtype), wd


def _checked_grad_output(grad_output, reduction, shape, what):
    """``(float, None)`` for 'mean'/'sum', ``(None, ndarray of shape)`` for 'none'."""
    if _is_cupy(grad_output):
        raise TypeError("grad_output is a CuPy array but logits is not: mix of CuPy and NumPy")
    g = np.asarray(grad_output)
    if g.dtype == np.bool_ or not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
        raise TypeError(f"grad_output must be a real number or array, got dtype {g.dtype}")
    if reduction == "none":
        if g.shape != tuple(shape):
            raise ValueError(f"grad_output must have {what} {tuple(shape)} for reduction='none', "
                             f"got {g.shape}")
        return None, g
    if g.ndim != 0:
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r}, got shape {g.shape}")
    return float(g), None


def as_grad_output(grad_output, reduction, target_shape):
    """``(scalar, None)`` for 'mean'/'sum', ``(None, per-row float64 array)`` for 'none'."""
    g0, g = _checked_grad_output(grad_output, reduction, target_shape, "the shape of the per-row loss")
    return g0, None if g is None else np.ascontiguousarray(g, dtype=np.float64).reshape(-1)


def _overlaps(a, b):
    if b is None or not isinstance(b, np.ndarray) or not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=10_000)
    except np.exceptions.TooHardError:  # undecided: refuse rather than risk aliasing
        return True


def check_out(out, shape, dtype, inputs, name="out"):
    """Check a caller's output buffer: ndarray, shape, dtype, writeable, no input overlap."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {np.dtype(dtype)}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for input_name, arr in inputs.items():
        if _overlaps(out, arr):
            raise ValueError(f"{name} overlaps the input {input_name!r}; pass a separate buffer "
                             f"(or inplace=True where the function offers it)")
    return out


def check_inplace(logits, out):
    """``inplace=True`` needs the caller's own writeable, C-contiguous float ndarray."""
    if out is not None:
        raise ValueError("inplace=True and out= are exclusive: in place, the gradient goes into logits")
    if not isinstance(logits, np.ndarray):
        raise ValueError(f"inplace=True needs logits to be a numpy.ndarray, got {type(logits).__name__}")
    if logits.dtype not in FLOAT_DTYPES and not is_half(logits.dtype):
        raise TypeError(f"logits must have dtype float32, float64, float16 or bfloat16, got {logits.dtype}")
    if not logits.flags.writeable:
        raise ValueError("inplace=True needs writeable logits, but logits is read-only")
    if not logits.flags.c_contiguous:
        raise ValueError("inplace=True needs C-contiguous logits; pass out= for other layouts")


# ---------------------------------------------------------------------------------------
# layout: the kernels' canonical (A, C, B) view
# ---------------------------------------------------------------------------------------
def rows3_shape(shape, axis):
    a = int(np.prod(shape[:axis], dtype=np.int64))
    b = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return (a, shape[axis], b)


def _strides_ok(arr):
    return all(s % arr.itemsize == 0 for s in arr.strides)


def as_rows3(x, axis):
    """Read-only ``(A, C, B)`` view of ``x`` with the class axis in the middle.

    A view whenever NumPy can express one (always for contiguous arrays, and for 2-D
    arrays of any strides); otherwise a copy.
    """
    x3 = x.reshape(rows3_shape(x.shape, axis))
    if not _strides_ok(x3):
        x3 = np.ascontiguousarray(x3)
    return x3


def writable_rows3(out, axis):
    """``(A, C, B)`` view of an output buffer, or ``(temp, out)`` when no view exists.

    Returns ``(view, target)``: the kernels write into ``view``; when ``target`` is not
    None the caller copies ``view`` into it afterwards.
    """
    shape3 = rows3_shape(out.shape, axis)
    view = out.reshape(shape3)  # a view when the strides allow one, else a copy
    if out.size == 0 or not np.may_share_memory(view, out) or not _strides_ok(view):
        return np.empty(shape3, dtype=out.dtype), out
    return view, None


# ---------------------------------------------------------------------------------------
# binary cross-entropy with logits (fastce/_bce.py)
# ---------------------------------------------------------------------------------------
def as_probability_target(target, logits_shape, dtype):
    """Targets of ``binary_cross_entropy_with_logits``: a real floating array of exactly the
    logits' shape (no broadcasting, like torch), returned in the logits' dtype (a copy only
    when the dtype differs). Values are not checked: like torch, any real value is used as
    given by the formula (probabilities in [0, 1] are the meaningful ones). A shape mismatch
    is a ValueError (torch's too); an integer or bool target an ArgumentTypeError (torch
    raises RuntimeError)."""
    if _is_cupy(target):
        raise TypeError("target is a CuPy array but logits is not: mix of CuPy and NumPy")
    t = np.asarray(target)
    if t.shape != tuple(logits_shape):
        raise ValueError(f"Target size must be the same as input size: target has shape {t.shape}, "
                         f"logits has shape {tuple(logits_shape)}")
    if not np.issubdtype(t.dtype, np.floating):
        raise ArgumentTypeError(f"target must have a floating dtype (probabilities in [0, 1]), got "
                                f"{t.dtype}; convert 0/1 labels with target.astype(logits.dtype)")
    return t.astype(dtype, copy=False)


def as_broadcast_operand(arr, name, shape, dtype):
    """``weight`` / ``pos_weight`` of the BCE loss: real numbers whose shape broadcasts to the
    logits' ``shape`` (NumPy rules, without enlarging it), returned in ``dtype`` in their own
    shape (not broadcast), or None. With ``shape=None`` only the type is checked. A shape
    that does not broadcast is an ArgumentValueError (torch raises RuntimeError)."""
    if arr is None:
        return None
    if _is_cupy(arr):
        raise TypeError(f"{name} is a CuPy array but logits is not: mix of CuPy and NumPy")
    a = np.asarray(arr)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if shape is None:
        return a
    try:
        ok = np.broadcast_shapes(a.shape, tuple(shape)) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ArgumentValueError(f"{name} of shape {a.shape} does not broadcast to the logits' shape "
                                 f"{tuple(shape)}")
    return a.astype(dtype, copy=False)


def as_elementwise_grad_output(grad_output, reduction, shape, dtype):
    """Upstream gradient of an elementwise loss: ``(float, None)`` for 'mean'/'sum', or
    ``(None, array of the logits' shape in dtype)`` for 'none' (a copy only when the dtype
    differs; any layout)."""
    g0, g = _checked_grad_output(grad_output, reduction, shape, "the logits' shape")
    return g0, None if g is None else g.astype(dtype, copy=False)


def check_inplace_inputs(logits, inputs):
    """With ``inplace=True`` the gradient overwrites ``logits`` while the other inputs are
    still being read: none of them may share memory with it."""
    for input_name, arr in inputs.items():
        if _overlaps(logits, arr):
            raise ValueError(f"inplace=True would overwrite {input_name!r}, which shares memory "
                             f"with logits; pass a separate {input_name} (or use out=)")


# =======================================================================================
# fused linear + cross-entropy (fastce/_linear.py)
# -- appended section: checks used only by _linear.py; the part above is the lead's --
# =======================================================================================
LINEAR_DEFAULT_MEMORY_BUDGET = 64 * 2**20  # bytes of the reused (chunk, V) logits buffer


def _linear_array(x, name, asarray=None):
    """``x`` as a float32/float64 array: a NumPy one, or through ``asarray(x, name)`` (the
    GPU path's conversion, which refuses NumPy arrays among CuPy ones)."""
    if asarray is None:
        if _is_cupy(x):
            raise TypeError(f"{name} is a CuPy array but another argument is not: mix of CuPy "
                            f"and NumPy")
        return as_float_array(x, name)
    arr = asarray(x, name)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    return arr


def _blas_layout(a, xp=np):
    """``a`` itself when BLAS can read it without a copy (C- or Fortran-contiguous), else a
    C-contiguous copy (made once, so that no per-chunk matmul copies it again)."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return xp.ascontiguousarray(a)


def as_linear_operands(hidden, weight, bias, asarray=None, xp=np):
    """``(hidden (N, H), weight (V, H), bias (V,) or None)`` of a fused linear +
    cross-entropy, checked for shape and a common float dtype; ``weight`` (and ``bias``)
    copied to a contiguous layout only when they have none.  ``asarray``/``xp``: the
    array conversion and module of the GPU path (default: NumPy)."""
    h = _linear_array(hidden, "hidden", asarray)
    w = _linear_array(weight, "weight", asarray)
    if h.ndim != 2:
        raise ValueError(f"hidden must have shape (N, H) (N rows of H features), got shape {h.shape}")
    if w.ndim != 2:
        raise ValueError(f"weight must have shape (V, H) (one row of H features per class), "
                         f"got shape {w.shape}")
    if w.dtype != h.dtype:
        raise TypeError(f"hidden and weight must have the same dtype, got hidden {h.dtype} and "
                        f"weight {w.dtype}")
    if w.shape[1] != h.shape[1]:
        raise ValueError(f"hidden of shape {h.shape} has H={h.shape[1]} features but weight has "
                         f"shape {w.shape}: weight must have shape (V, {h.shape[1]})")
    if w.shape[0] == 0:
        raise ValueError(f"weight must have at least one row (class), got shape {w.shape}")
    b = None
    if bias is not None:
        b = _linear_array(bias, "bias", asarray)
        if b.dtype != h.dtype:
            raise TypeError(f"bias must have the dtype of hidden and weight ({h.dtype}), got {b.dtype}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},) (one per class, weight has "
                             f"shape {w.shape}), got {b.shape}")
    return h, _blas_layout(w, xp), b


def check_linear_target(t, n_rows):
    """Dtype and shape of a linear cross-entropy's target array (NumPy or CuPy)."""
    if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        raise ArgumentTypeError(f"target must hold class indices (an integer dtype) of shape "
                                f"({n_rows},), got dtype {t.dtype}")
    if t.shape != (n_rows,):
        raise ArgumentValueError(f"target must have shape ({n_rows},) (one class index per row "
                                 f"of hidden), got {t.shape}")
    return t


def as_linear_target(target, n_rows, n_classes, ignore_index):
    """Class indices of shape ``(N,)``: flat int64, -1 marking ignored rows."""
    if _is_cupy(target):
        raise TypeError("target is a CuPy array but another argument is not: mix of CuPy and NumPy")
    t = check_linear_target(np.asarray(target), n_rows)
    return as_hard_target(t, (n_rows, n_classes), n_classes, ignore_index)


def linear_chunk_rows(chunk_size, memory_budget, n_classes, itemsize):
    """Rows per chunk: ``chunk_size`` if given, else ``max(1, memory_budget // (V * itemsize))``
    (``memory_budget`` in bytes, default ``LINEAR_DEFAULT_MEMORY_BUDGET``)."""
    if chunk_size is not None and memory_budget is not None:
        raise ValueError(f"pass chunk_size or memory_budget, not both (got chunk_size="
                         f"{chunk_size!r}, memory_budget={memory_budget!r})")
    if chunk_size is not None:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    if memory_budget is None:
        memory_budget = LINEAR_DEFAULT_MEMORY_BUDGET
    elif isinstance(memory_budget, (bool, np.bool_)) or not isinstance(memory_budget, numbers.Real):
        raise TypeError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    elif not (memory_budget > 0 and np.isfinite(memory_budget)):
        raise ValueError(f"memory_budget must be a finite number of bytes > 0, got {memory_budget!r}")
    return max(1, int(memory_budget) // (n_classes * itemsize))
# =================================== end of the _linear.py section ====================
