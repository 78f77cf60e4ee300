"""Binary cross-entropy with logits on the GPU path: the host side of ``bce.cu``.

The GPU twin of ``fastce._bce``: same semantics, options, dtypes (float32, float64),
broadcasting of ``weight`` / ``pos_weight``, reductions, ``grad_output``, ``out=`` /
``inplace=`` and error messages; results are arrays of the backend (CuPy), scalar losses
0-d arrays.  ``fastce.binary_cross_entropy_with_logits*`` and ``BCEWithLogitsLoss`` come
here for CuPy inputs.

Layers (as ``fastce.cuda._api``):

1. Planning, pure Python.  ``walk_axes`` fixes the order in which the kernel walks the
   elements (the logits' memory order, from their strides only); ``bce_dims`` collapses
   the logits' shape and every operand's element strides (0 along broadcast axes) to the
   kernel's 4 dimensions; ``bce_grid`` sizes the launch from the element count only.
2. ``BceOps`` / ``BceCall``: validation (the CPU path's order and messages; the array
   checks of ``fastce.cuda._api.Ops``), outputs, the launch and the host side of the
   reduction, against a backend (CuPy, or the CPU emulator of the test suite).
3. The public functions on the CuPy backend.

Memory: operands are read in place, through their strides, whatever their layout; a
weight of shape ``(C,)`` or ``(N, 1)`` is never tiled or broadcast in memory.  Temporaries
of the logits' size only for (a) a target or ``grad_output`` of another dtype (converted,
as on the CPU path), (b) a misaligned operand, and (c) layouts that do not collapse to 4
dimensions (e.g. 5-D non-contiguous views): those operands, outputs first, are copied
into the walk order, so the summation order (and the loss bits) never depends on them.

Determinism: the walk order comes from the logits' shape and strides, the launch shape
from the element count, and every sum has a fixed order (bce.cu, section 4): the loss is
bitwise reproducible (whatever the GPU's size) and identical with and without the gradient.

Host synchronisation: none; everything is asynchronous on CuPy's current stream (Python
numbers and lists given as weight / pos_weight / target are first copied to the device by
``cupy.asarray``).
"""
import numpy as np

from .. import _validation as V
from ._api import Ops, _check_threads, cupy_backend, element_strides, kernel_signatures, pack_args

__all__ = ["binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad"]

# ---------------------------------------------------------------------------------------
# 1. kernel signature and planning (pure Python)
# ---------------------------------------------------------------------------------------
#: the kernel's operands, in parameter order: logits, target, weight, pos_weight,
#: per-element gradient scale, gradient, elementwise loss
BCE_OPERANDS = ("x", "y", "w", "pw", "ge", "grad", "le")
BCE_OUTPUTS = ("grad", "le")
BCE_MAX_DIMS = 4
#: the kernel's parameters (kernel_params.h, FCE_BCE_FIELDS): n, n1..n3, each operand with
#: its strides ``{p}_s0``..``{p}_s3``, gscale, part
BCE_SIGNATURE = kernel_signatures()["BCE"]
BCE_BLOCK = 256         # threads per block: bce.cu's __launch_bounds__(256)
BCE_MAX_BLOCKS = 1024   # grid-stride beyond: about one wave on today's largest GPUs


def walk_axes(shape, strides):
    """The logits' axes from outer to inner in the kernel's walk: by decreasing |stride|
    (ties keep C order), so that a C- or Fortran-ordered (or permuted) array is walked in
    memory order."""
    return tuple(sorted(range(len(shape)), key=lambda d: -abs(strides[d])))


def bce_dims(shape, axes, strides, max_dims=BCE_MAX_DIMS):
    """The kernel's geometry: ``(dims, [strides of each operand])``, or None when the
    operands need more than ``max_dims`` dimensions.

    ``strides`` lists each operand's element strides over ``shape`` (0 along broadcast
    axes).  Axes of length 1 are dropped, and an axis merges into the one before it (in
    ``axes`` order) when every operand steps over both as over one; the result is padded
    in front with length-1 axes.  The walk (element i <-> C order over ``axes``) is the
    same for any operands."""
    dims, out = [], [[] for _ in strides]
    for d in axes:
        n = shape[d]
        if n == 1:
            continue
        if dims and all(s[-1] == st[d] * n for s, st in zip(out, strides)):
            dims[-1] *= n
            for s, st in zip(out, strides):
                s[-1] = st[d]
        else:
            dims.append(n)
            for s, st in zip(out, strides):
                s.append(st[d])
    if len(dims) > max_dims:
        return None
    pad = max_dims - len(dims)
    return (1,) * pad + tuple(dims), [(0,) * pad + tuple(s) for s in out]


def bce_grid(n, max_blocks=BCE_MAX_BLOCKS):
    """Blocks of ``BCE_BLOCK`` threads for ``n`` elements (a function of n only)."""
    return max(1, min(-(-n // BCE_BLOCK), max_blocks))


# ---------------------------------------------------------------------------------------
# 2. operations on a backend
# ---------------------------------------------------------------------------------------
class BceOps:
    """The BCE-with-logits functions on one backend's arrays (signatures of the CPU ones)."""

    #: grid cap (tests lower it to make every thread walk several elements)
    max_blocks = BCE_MAX_BLOCKS

    def __init__(self, backend):
        self.b = backend
        self.xp = backend.xp
        self.o = Ops(backend)  # the array checks shared with the cross-entropy path

    # ------------------------------------------------------------------ validation
    # The CPU path's checks (fastce._validation and the contract, same order, classes and
    # messages) on the metadata of device arrays: device memory is never read.
    @staticmethod
    def threads(n_threads):
        _check_threads(n_threads)  # accepted and checked like the CPU path's, then unused

    def check_inplace(self, logits, out):
        self.o._check_inplace(logits, out)

    def check_grad_buffer(self, x, out, inplace, dtype, inputs):
        self.o._check_grad_buffer(x, out, inplace, dtype, inputs)

    def empty(self, shape, dtype, order):
        return self.xp.empty(shape, dtype=dtype, order=order)

    def as_logits(self, logits):
        return self.o._as_float(logits, "logits", allow_half=False)

    def as_target(self, target, shape, dtype):
        t = self.o._asarray(target, "target")
        V.check_probability_target(t.dtype, t.shape, shape)
        return t.astype(dtype, copy=False)

    def as_operand(self, arr, name, shape, dtype):
        """``V.as_broadcast_operand`` (``shape=None``: the type only)."""
        if arr is None:
            return None
        a = self.o._asarray(arr, name)
        V.check_broadcast_operand(a.dtype, a.shape, name, shape)
        return a.astype(dtype, copy=False) if shape is not None else a

    def grad_output(self, grad_output, reduction, shape, dtype):
        """``V.as_elementwise_grad_output``, as ``(scale, per-element scale or None)``: a
        number stays on the host (``(value, None)``), an array is read by the kernel
        (``(1.0, array in dtype)``, a 0-d one for 'mean'/'sum')."""
        value, g = self.o._checked_grad_output(grad_output, reduction, shape, V.GRAD_OUTPUT_ELEMENTS)
        if g is None:
            return value, None
        if g.ndim == 0 and reduction == "none":  # a scalar scales every element
            return float(g), None
        if g.ndim and g.shape != tuple(shape):  # broadcast like NumPy: a stride-0 view
            g = self.xp.broadcast_to(g, tuple(shape))
        return 1.0, g.astype(dtype, copy=False)

    # ------------------------------------------------------------------ the sweep
    def _strides(self, a):
        """Element strides of ``a`` for the kernel, or None when it cannot read it in place
        (a stride that is not a multiple of the item size, or a misaligned address)."""
        if self.b.address(a) % a.itemsize:
            return None
        return element_strides(a.strides, a.itemsize)

    def sweep(self, operands, gscale, part, grid):
        """One launch of ``fastce_bce_{f32,f64}`` over ``operands`` (``{name: array or
        None}`` keyed by ``BCE_OPERANDS``; each broadcasts to the logits' shape)."""
        xp = self.xp
        x = operands["x"]
        shape = x.shape
        axes = walk_axes(shape, x.strides)
        views = {k: (a if a.shape == shape else xp.broadcast_to(a, shape))
                 for k, a in operands.items() if a is not None}
        walked, copies = set(), []

        def to_walk_order(name):
            """Replace an operand by a C-contiguous array over ``axes`` (written back
            after the launch for an output)."""
            a = views[name]
            t = xp.empty(tuple(shape[d] for d in axes), dtype=a.dtype)
            t = t.transpose(tuple(int(k) for k in np.argsort(axes)))
            if name in BCE_OUTPUTS:
                copies.append((t, operands[name]))
            else:
                t[...] = a
            views[name] = t
            walked.add(name)

        for name in list(views):
            if self._strides(views[name]) is None:
                to_walk_order(name)
        names = list(views)
        for stage in ((), BCE_OUTPUTS, ("x", "y", "ge"), ("w", "pw")):
            for name in stage:
                if name in views and name not in walked:
                    to_walk_order(name)
            plan = bce_dims(shape, axes, [self._strides(views[k]) for k in names])
            if plan is not None:
                break
        dims, strides = plan
        vals = dict(n=x.size, n1=dims[1], n2=dims[2], n3=dims[3], gscale=gscale, part=part)
        strides = dict(zip(names, strides))
        for name in BCE_OPERANDS:
            vals[name] = views.get(name)
            for k, s in enumerate(strides.get(name, (0,) * BCE_MAX_DIMS)):
                vals[f"{name}_s{k}"] = s
        suf = "f32" if x.itemsize == 4 else "f64"
        self.b.launch(f"fastce_bce_{suf}", (grid, 1, 1), (BCE_BLOCK, 1, 1),
                      pack_args(BCE_SIGNATURE, vals, self.b.null))
        for t, dest in copies:
            dest[...] = t

    # ------------------------------------------------------------------ the functions
    def call(self, logits, target, weight=None, pos_weight=None, reduction="mean", n_threads=None,
             inplace=False, out=None):
        """A validated call (see ``BceCall``)."""
        return BceCall(self, logits, target, weight, pos_weight, reduction, n_threads, inplace, out)

    def binary_cross_entropy_with_logits(self, logits, target, *, weight=None, pos_weight=None,
                                         reduction="mean", n_threads=None):
        return self.call(logits, target, weight, pos_weight, reduction, n_threads).run(want_loss=True)[0]

    def binary_cross_entropy_with_logits_with_grad(self, logits, target, *, weight=None,
                                                   pos_weight=None, reduction="mean",
                                                   grad_output=1.0, out=None, inplace=False,
                                                   n_threads=None):
        call = self.call(logits, target, weight, pos_weight, reduction, n_threads, inplace, out)
        return call.run(want_loss=True, want_grad=True, grad_output=grad_output)


class BceCall(V.BCEArguments):
    """One validated call on device arrays: the arguments checked by ``V.BCEArguments``
    (the CPU path's class), on this backend; ``run`` launches the kernel. So
    ``BCEWithLogitsLoss`` drives either path."""

    def __init__(self, ops, logits, target, weight, pos_weight, reduction, n_threads,
                 inplace=False, out=None):
        self.ops = ops
        super().__init__(ops, logits, target, weight, pos_weight, reduction, n_threads,
                         inplace, out)

    def run(self, want_loss, want_grad=False, grad_output=1.0):
        """Returns ``(loss or None, grad or None)``."""
        ops, xp, x = self.ops, self.ops.xp, self.x
        numel, red = x.size, self.reduction
        grad = ge = le = part = None
        gscale = 1.0
        if want_grad:
            self.set_output(self.out, self.inplace, {"grad_output": grad_output})
            gscale, ge = ops.grad_output(grad_output, red, x.shape, x.dtype)
            if red == "mean":
                gscale = gscale / numel if numel else float("nan")
            grad = x if self.inplace else self.out if self.out is not None else self._empty()
        if want_loss and red == "none":
            le = self._empty()
        grid = bce_grid(numel, ops.max_blocks)
        if numel:
            if want_loss and red != "none":
                part = xp.empty(grid, dtype=np.float64)
            ops.sweep(dict(x=x, y=self.y, w=self.w, pw=self.pw, ge=ge, grad=grad, le=le),
                      gscale, part, grid)
        loss = None
        if want_loss:
            if red == "none":
                loss = le
            elif numel:
                loss = ops.o._finalize(part, grid, numel, red == "mean", x.dtype)
            else:  # torch: the mean of nothing is nan, the sum 0
                loss = xp.full((), np.nan if red == "mean" else 0.0, dtype=x.dtype)
        return loss, grad


# ---------------------------------------------------------------------------------------
# 3. the public GPU functions
# ---------------------------------------------------------------------------------------
def cupy_ops():
    return BceOps(cupy_backend())


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean", n_threads=None):
    """GPU twin of :func:`fastce.binary_cross_entropy_with_logits`; 'mean'/'sum' give a 0-d
    CuPy array."""
    return cupy_ops().binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction,
        n_threads=n_threads)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction="mean", grad_output=1.0, out=None,
                                               inplace=False, n_threads=None):
    """GPU twin of :func:`fastce.binary_cross_entropy_with_logits_with_grad`: one kernel
    writes the loss and the gradient."""
    return cupy_ops().binary_cross_entropy_with_logits_with_grad(
        logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction,
        grad_output=grad_output, out=out, inplace=inplace, n_threads=n_threads)
