"""Binary cross-entropy with logits on NumPy arrays, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

Elementwise, for logits ``x``, targets ``y``, weights ``w`` and positive weights ``pw``
(``lw = 1 + (pw - 1) * y``)::

    l     = w * ((1 - y) * x + lw * softplus(-x))
    dl/dx = w * (lw * sigmoid(x) - pw * y)

computed stably for any ``|x|`` (``include/fastce/bce_impl.h``). 'mean' divides the sum by
the number of elements.

How a call is laid out for the kernels (``_plan``): every operand becomes a grid of ``R``
rows of ``L`` elements (``fastce/_bce.pxi``).

* Flat: when the logits, the target and every other full-size array are all C-contiguous
  (or all Fortran-contiguous), the elements are walked in memory order in rows of about
  ``_BLOCK`` elements. A weight / pos_weight that depends only on the last axis (shape
  ``(C,)``, ``(1, C)``, ...) is tiled to one row of ``k * C`` elements (at most
  ``_BLOCK``, or exactly ``C`` when ``C`` is larger), so rows of any ``C`` stay long.
  Scalar weights / pos_weights are passed as scalars.
* Rows: otherwise, ``R = prod(shape[:-1])`` rows of ``L = shape[-1]`` elements, each
  operand a (zero-copy) ``(R, L)`` view: strided rows are gathered into per-thread
  scratch; a weight / pos_weight of shape ``(C,)`` is read through a zero row stride, one
  of shape ``(..., 1)`` as one scalar per row. Broadcasts that no ``(R, L)`` view can
  express (for example a weight of shape ``(N, 1, C)`` over logits ``(N, M, C)``), and
  logits of 3 or more dimensions that are neither contiguous nor reshapeable, are copied
  (materialised) first.

The plan is chosen from the inputs alone, so the loss (its summation order) does not depend
on where the gradient is written; an ``out=`` whose memory order differs from the logits'
in the flat case (or that no ``(R, L)`` view describes) receives the gradient through a
temporary. These two are the only cases where a call allocates a full-size temporary it
does not return.

Rows longer than ``_BLOCK`` are cut into chunks; the work items and their order depend on
shapes and strides only, so results are bitwise identical for any ``n_threads``.

CuPy arrays go to the GPU twin, ``fastce/cuda/_bce.py`` (kernel ``fastce/cuda/bce.cu``):
same semantics, options and errors, CuPy results (scalar losses as 0-d arrays). Mixing
CuPy and NumPy arrays in one call is a TypeError naming them (``_gpu_ops``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from . import _kernels
from . import _validation as V
from ._dispatch import gpu_twin

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt
    from ._typing import FloatArray, FloatScalar, GradOutput, Loss, Reduction, ScalarReduction

__all__ = [
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "BCEWithLogitsLoss",
]

_BLOCK = 8192  # elements per work item (a fixed constant: never derived from n_threads)


def _gpu_ops(**arrays: object) -> Any:
    """The GPU path (``fastce.cuda._bce.BceOps`` on CuPy) when any argument is a CuPy
    array, else None (``fastce._dispatch.gpu_twin``)."""
    ops = gpu_twin("bce_ops", *arrays.values(), names=list(arrays))
    return None if ops is None else ops()


def _new_call(logits: Any, target: Any, weight: Any, pos_weight: Any, reduction: Any,
              n_threads: int | None, inplace: bool = False, out: Any = None,
              grad_output: Any = None) -> _BCECall:
    """A validated call on the path the arrays live on: ``_BCECall`` (NumPy) or its GPU
    twin ``fastce.cuda._bce.BceCall`` (CuPy), which share ``set_output``, ``run`` and
    ``check_inplace``."""
    gpu = _gpu_ops(logits=logits, target=target, weight=weight, pos_weight=pos_weight, out=out,
                   grad_output=grad_output)
    make = _BCECall if gpu is None else gpu.call
    return make(logits, target, weight, pos_weight, reduction, n_threads, inplace=inplace, out=out)


def _reshape_view(a: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any] | None:
    """A view of ``a`` with ``shape``, or None when no view exists (never copies)."""
    try:
        return np.reshape(a, shape, copy=False)
    except ValueError:
        return None
    except TypeError:  # NumPy < 2.1 has no copy=
        v = a.reshape(shape)
        return v if np.may_share_memory(v, a) else None


def _kind(a: npt.NDArray[Any] | None, shape: tuple[int, ...]) -> str | None:
    """How a weight / pos_weight relates to the logits' shape."""
    if a is None:
        return None
    if a.size == 1:
        return "scalar"
    if a.shape == shape:
        return "full"
    if a.ndim >= 1 and a.shape[-1] == shape[-1] and all(d == 1 for d in a.shape[:-1]):
        return "column"  # depends on the last axis only: (C,), (1, C), ...
    return "other"


def _aligned(a: npt.NDArray[Any]) -> bool:
    return a.flags.aligned and all(s % a.itemsize == 0 for s in a.strides)


class _BCECall(V.BCEArguments):
    """One validated BCE-with-logits call on NumPy arrays: converted operands (checked by
    ``V.BCEArguments``, as on the GPU path), then one kernel sweep."""

    def __init__(self, logits: Any, target: Any, weight: Any, pos_weight: Any, reduction: Any,
                 n_threads: int | None, inplace: bool = False, out: Any = None) -> None:
        super().__init__(V.NumpyBCEChecks, logits, target, weight, pos_weight, reduction,
                         n_threads, inplace, out)

    def run(self, want_loss: bool, want_grad: bool = False,
            grad_output: Any = 1.0) -> tuple[Any, Any]:
        """Returns ``(loss or None, grad or None)``."""
        x = self.x
        numel = x.size
        grad = ge = loss_elem = None
        gscale = 0.0
        g0: Any  # a float except under 'none' with an array (then ge is that array)
        if want_grad:
            self.set_output(self.out, self.inplace, {"grad_output": grad_output})
            g0, ge = V.as_elementwise_grad_output(grad_output, self.reduction, x.shape, x.dtype)
            if self.reduction == "mean":
                gscale = g0 / numel if numel else float("nan")
            else:  # 'sum', or 'none' with a scalar (it scales every element)
                gscale = 1.0 if ge is not None else g0
            grad = x if self.inplace else self.out if self.out is not None else self._empty()
        if want_loss and self.reduction == "none":
            loss_elem = self._empty()
        total = 0.0
        if numel:
            R, L, n_last, blk, specs, copies = _plan(x, self.y, self.w, self.pw, ge, grad, loss_elem)
            partial = None
            if want_loss and self.reduction != "none":
                partial = np.empty(R * -(-L // blk))
            _kernels.bce_sweep(*specs, R, L, n_last, blk, 1.0, gscale, partial, self.n_threads)
            for tmp, dest in copies:
                np.copyto(dest, tmp.reshape(dest.shape))
            if partial is not None:
                total = float(np.sum(partial))  # NumPy's pairwise sum: a fixed order
        loss = None
        if want_loss:
            dtype = x.dtype
            if self.reduction == "none":
                loss = loss_elem
            elif self.reduction == "sum":
                loss = dtype.type(total)
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    loss = dtype.type(np.float64(total) / np.float64(numel))
        return loss, grad


def _plan(x: Any, y: Any, w: Any, pw: Any, ge: Any, grad: Any,
          loss_elem: Any) -> tuple[int, int, int, int, tuple[Any, Any, Any, Any, Any, Any, Any],
                                    list[tuple[Any, Any]]]:
    """Lay the call out as a grid (see the module docstring).

    Returns ``(R, L, n_last, blk, specs, copies)``: ``specs`` the seven operand
    descriptors of ``_kernels.bce_sweep`` (``(array, row stride in bytes, element
    stride)`` or None), ``copies`` the ``(temporary, destination)`` pairs to copy back
    after the sweep (outputs no grid view can describe).
    """
    shape = x.shape
    total = x.size
    isz = x.itemsize
    # The plan follows the inputs only, so the loss (its summation order) never depends on
    # where the gradient goes; an output that does not fit the plan is written through a
    # temporary (only an out= of another memory order than the logits').
    fulls = [a for a in (x, y, ge, loss_elem) if a is not None]
    kinds = (_kind(w, shape), _kind(pw, shape))
    fulls += [a for a, k in zip((w, pw), kinds) if k == "full"]
    columns = "column" in kinds
    order: Literal["C", "F"] | None = None
    if "other" not in kinds:
        if all(a.flags.c_contiguous and _aligned(a) for a in fulls):
            order = "C"
        elif not columns and all(a.flags.f_contiguous and _aligned(a) for a in fulls):
            order = "F"
    flat = order is not None
    copies = []
    if flat:
        if grad is not None and not (_aligned(grad) and (grad.flags.c_contiguous if order == "C"
                                                         else grad.flags.f_contiguous)):
            copies.append((np.empty(shape, dtype=grad.dtype, order=order), grad))
            grad = copies[-1][0]
        period = shape[-1] if columns else 1
        if period >= _BLOCK:
            L = period
            blk = _BLOCK
        else:
            L = (_BLOCK // period) * period
            blk = L
        R = -(-total // L)
        n_last = total - (R - 1) * L

        def spec(a: Any, kind: str | None, output: bool = False) -> tuple[Any, int, int] | None:
            if a is None:
                return None
            if kind == "scalar":
                return (np.array(a, order="C").reshape(1), 0, 0)  # a copy: aligned
            if kind == "column":
                return (np.tile(a.reshape(-1), L // period), 0, 1)  # a new array: aligned
            return (a, L * isz, 1)
    else:
        L = shape[-1] if shape else 1
        R = total // L
        n_last = L
        blk = _BLOCK

        def spec(a: Any, kind: str | None, output: bool = False) -> tuple[Any, int, int] | None:
            if a is None:
                return None
            b = a if a.shape == shape else np.broadcast_to(a, shape)
            v = _reshape_view(b, (R, L))
            if v is None or not _aligned(v):
                if output:
                    v = np.empty((R, L), dtype=a.dtype)
                    copies.append((v, a))
                else:  # exotic broadcast or layout: materialise (see the module docstring)
                    v = np.array(b, order="C").reshape(R, L)  # a copy: aligned
            return (v, v.strides[0], v.strides[1] // isz)

    inputs = (spec(x, "full"), spec(y, "full"), spec(w, kinds[0]), spec(pw, kinds[1]),
              spec(ge, "full"))
    if flat:
        outputs = (spec(grad, "full"), spec(loss_elem, "full"))
    else:
        outputs = (spec(grad, "full", True), spec(loss_elem, "full", True))
    return R, L, n_last, blk, inputs + outputs, copies


# ---------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------
_PARAMS = """Parameters
    ----------
    logits : array_like of float32 or float64
        Scores ``x``, any shape (0-d included) and any layout.
    target : array_like of float
        Targets ``y``: probabilities in [0, 1] (soft labels allowed), exactly the logits'
        shape (``ValueError`` otherwise, naming both shapes, like torch); any floating
        dtype, converted to the logits' dtype. Integer or bool labels are a
        ``TypeError`` (as in torch): pass ``target.astype(logits.dtype)``.
    weight : array_like, optional
        Rescaling weight ``w`` of each element; any shape that broadcasts to the logits'
        shape (NumPy rules): a scalar, ``(C,)``, ``(N, 1)``, the full shape, ...
    pos_weight : array_like, optional
        Weight ``pw`` of the positive term; broadcasts to the logits' shape like
        ``weight``, typically shape ``(C,)`` (one per class, the last axis).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'none': the elementwise losses (logits' shape); 'sum': their sum; 'mean': their
        sum divided by the number of elements (nan for empty logits, like torch)."""

_THREADS = """n_threads : int, optional
        Threads for this call; default :func:`fastce.get_num_threads`. Results are
        bitwise identical for any value."""

_GRAD = """grad_output : float or ndarray, default 1.0
        Upstream gradient: a scalar for 'mean'/'sum', an array of the logits' shape for
        'none'.
    out : ndarray, optional
        Receives the gradient (logits' shape and dtype, any strides, no overlap with the
        inputs).
    inplace : bool, default False
        Write the gradient into ``logits`` itself (a writeable C-contiguous ndarray); the
        logits are overwritten."""

_FORMULA = """With ``lw = 1 + (pw - 1) * y``, elementwise::

        l     = w * ((1 - y) * x + lw * softplus(-x))
        dl/dx = w * (lw * sigmoid(x) - pw * y)

    computed without cancellation for any ``|x|`` (float32 included): the per-element loss
    is ``w * (lw * log1p(exp(-|x|)) + max(x, 0) * (1 - y) + max(-x, 0) * pw * y)``, whose
    terms are all non-negative for ``y`` in [0, 1] and ``pw >= 0``. Non-finite logits give
    what torch gives: ``x = +inf`` -> inf (nan where ``y == 1``), ``x = -inf`` -> nan,
    ``nan`` -> nan; the gradient stays finite at ``+-inf``. Sums accumulate in float64;
    results come back in the logits' dtype."""


@overload
def binary_cross_entropy_with_logits(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., pos_weight: npt.ArrayLike | None = ...,
        reduction: ScalarReduction = ..., n_threads: int | None = ...) -> FloatScalar: ...
@overload
def binary_cross_entropy_with_logits(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., pos_weight: npt.ArrayLike | None = ...,
        reduction: Literal["none"], n_threads: int | None = ...) -> FloatArray: ...
@overload
def binary_cross_entropy_with_logits(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., pos_weight: npt.ArrayLike | None = ...,
        reduction: Reduction = ..., n_threads: int | None = ...) -> Loss: ...
def binary_cross_entropy_with_logits(logits: npt.ArrayLike, target: npt.ArrayLike, *,
                                     weight: npt.ArrayLike | None = None,
                                     pos_weight: npt.ArrayLike | None = None,
                                     reduction: Reduction = "mean",
                                     n_threads: int | None = None) -> Loss:
    call = _new_call(logits, target, weight, pos_weight, reduction, n_threads)
    return call.run(want_loss=True)[0]  # type: ignore[no-any-return]


binary_cross_entropy_with_logits.__doc__ = f"""Binary cross-entropy between logits and target probabilities.

    As ``torch.nn.functional.binary_cross_entropy_with_logits`` (torch 2.13). One read of
    the inputs; no temporary of the logits' size (except for the rare broadcasts described
    in ``fastce._bce``).

    {_FORMULA}

    {_PARAMS}
    {_THREADS}

    Returns
    -------
    loss : NumPy scalar of the logits' dtype for 'mean'/'sum'; ndarray of the logits' shape
        and dtype for 'none' (CuPy inputs: CuPy arrays, a 0-d one for 'mean'/'sum')

    Examples
    --------
    >>> import numpy as np, fastce
    >>> x = np.array([[2.0, -1.0], [0.5, 3.0]], dtype=np.float32)
    >>> y = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> loss = fastce.binary_cross_entropy_with_logits(x, y, pos_weight=np.array([2.0, 1.0]))
    >>> round(float(loss), 4), loss.dtype
    (0.3974, dtype('float32'))
    """


@overload
def binary_cross_entropy_with_logits_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., pos_weight: npt.ArrayLike | None = ...,
        reduction: ScalarReduction = ..., grad_output: GradOutput = ...,
        out: npt.NDArray[Any] | None = ..., inplace: bool = ..., n_threads: int | None = ...,
) -> tuple[FloatScalar, FloatArray]: ...
@overload
def binary_cross_entropy_with_logits_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., pos_weight: npt.ArrayLike | None = ...,
        reduction: Literal["none"], grad_output: GradOutput = ...,
        out: npt.NDArray[Any] | None = ..., inplace: bool = ..., n_threads: int | None = ...,
) -> tuple[FloatArray, FloatArray]: ...
@overload
def binary_cross_entropy_with_logits_with_grad(logits: npt.ArrayLike, target: npt.ArrayLike, *,
        weight: npt.ArrayLike | None = ..., pos_weight: npt.ArrayLike | None = ...,
        reduction: Reduction = ..., grad_output: GradOutput = ...,
        out: npt.NDArray[Any] | None = ..., inplace: bool = ..., n_threads: int | None = ...,
) -> tuple[Loss, FloatArray]: ...
def binary_cross_entropy_with_logits_with_grad(
        logits: npt.ArrayLike, target: npt.ArrayLike, *, weight: npt.ArrayLike | None = None,
        pos_weight: npt.ArrayLike | None = None, reduction: Reduction = "mean",
        grad_output: GradOutput = 1.0, out: npt.NDArray[Any] | None = None,
        inplace: bool = False, n_threads: int | None = None,
) -> tuple[Loss, FloatArray]:
    call = _new_call(logits, target, weight, pos_weight, reduction, n_threads, inplace=inplace,
                     out=out, grad_output=grad_output)
    return call.run(want_loss=True, want_grad=True, grad_output=grad_output)


binary_cross_entropy_with_logits_with_grad.__doc__ = f"""Binary cross-entropy with logits and its gradient w.r.t. the logits, in one sweep.

    {_FORMULA}

    The gradient is scaled by ``grad_output`` and, for 'mean', divided by the number of
    elements, exactly as torch's autograd.

    {_PARAMS}
    {_GRAD}
    {_THREADS}

    Returns
    -------
    loss : as :func:`binary_cross_entropy_with_logits`
    grad : ndarray of the logits' shape and dtype (``out``, or ``logits`` itself with
        ``inplace=True``)
    """


class BCEWithLogitsLoss:
    """Binary cross-entropy-with-logits criterion with a NumPy-friendly ``backward``.

    ``loss = crit(logits, target)`` computes the loss (as
    :func:`binary_cross_entropy_with_logits`); ``crit.backward()`` then computes the
    gradient for that call's logits and target in one more sweep (no logarithm: cheaper
    than the forward). The criterion keeps references to the inputs, not copies: they must
    not change between the two calls.

    Parameters
    ----------
    weight, pos_weight, reduction
        As :func:`binary_cross_entropy_with_logits`; shapes are checked against the
        logits of each call.
    n_threads : int, optional
        Threads per call; default :func:`fastce.get_num_threads`.

    Examples
    --------
    >>> import numpy as np, fastce
    >>> logits = np.array([[2.0, -1.0], [0.5, 3.0]])
    >>> target = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> crit = fastce.BCEWithLogitsLoss(pos_weight=np.array([2.0, 1.0]))
    >>> loss = crit(logits, target)
    >>> grad = crit.backward()            # d loss / d logits, logits' shape
    >>> grad.shape
    (2, 2)
    """

    def __init__(self, weight: npt.ArrayLike | None = None,
                 pos_weight: npt.ArrayLike | None = None, reduction: Reduction = "mean",
                 n_threads: int | None = None) -> None:
        gpu = _gpu_ops(weight=weight, pos_weight=pos_weight)
        check = V.as_broadcast_operand if gpu is None else gpu.as_operand
        check(weight, "weight", None, None)
        check(pos_weight, "pos_weight", None, None)
        self.weight = weight
        self.pos_weight = pos_weight
        self.reduction = V.check_reduction(reduction)
        self.n_threads = None if n_threads is None else V.check_n_threads(n_threads)
        self._saved: tuple[Any, _BCECall] | None = None

    def __repr__(self) -> str:
        return V.criterion_repr(self, dict(weight=self.weight, pos_weight=self.pos_weight,
                                           reduction=self.reduction, n_threads=self.n_threads))

    def __call__(self, logits: npt.ArrayLike, target: npt.ArrayLike) -> Loss:
        """The loss of ``logits`` against ``target`` (see the class docstring)."""
        call = _new_call(logits, target, self.weight, self.pos_weight, self.reduction, self.n_threads)
        loss, _ = call.run(want_loss=True)
        self._saved = (logits, call)
        return loss  # type: ignore[no-any-return]

    forward = __call__

    def backward(self, grad_output: GradOutput = 1.0, *, out: npt.NDArray[Any] | None = None,
                 inplace: bool = False) -> FloatArray:
        """Gradient of the last loss w.r.t. its logits.

        Parameters
        ----------
        grad_output : float or ndarray, default 1.0
            Scalar for 'mean'/'sum', an array of the logits' shape for 'none'.
        out : ndarray, optional
            Receives the gradient.
        inplace : bool, default False
            Overwrite the logits passed to the last call with the gradient (after which
            ``backward`` cannot be called again for that call).

        Returns
        -------
        ndarray
            The gradient, logits' shape and dtype.
        """
        if self._saved is None:
            raise RuntimeError("backward() called before the loss was computed: call the criterion first")
        logits, call = self._saved
        if inplace:
            call.check_inplace(logits, out)
        call.set_output(out, inplace)
        _, grad = call.run(want_loss=False, want_grad=True, grad_output=grad_output)
        if inplace:
            self._saved = None  # the logits are gone
        return grad  # type: ignore[no-any-return]
