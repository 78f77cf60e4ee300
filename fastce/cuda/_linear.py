"""``linear_cross_entropy`` and ``linear_cross_entropy_with_grad`` on the GPU path.

The CPU algorithm (``fastce._linear``: rows not ignored taken in chunks, one reused
``(chunk, V)`` logits buffer, the fused cross-entropy gradient written into it in place,
then the d_hidden / d_weight / d_bias products) with the same arguments, defaults, memory
budget, dtypes and errors.  ``GpuLinearCall`` subclasses the CPU ``_LinearCall`` and
replaces only its backend hooks:

- arrays live in ``backend.xp`` (CuPy; NumPy under the test suite's emulator), products
  go through ``xp.matmul`` (cuBLAS on CuPy);
- each chunk's loss and gradient come from ``Ops.cross_entropy(_with_grad)`` (fastce's
  CUDA kernels, ``reduction='sum'``, ``inplace=True``);
- the target is checked by the GPU target scan (the 'mean' normaliser, the number of
  rows not ignored, comes back with it); the loss total stays on the device, in float64,
  and comes back as a 0-d array, like every GPU loss;
- ``d_weight += g.T @ h`` runs in place: ``cupy.cublas.gemm`` with ``beta=1`` when CuPy
  has it, else ``xp.matmul`` into one reused block of at most ``_ACC_BLOCK_BYTES`` of
  ``d_weight`` rows, added in place (as the CPU path without SciPy).

Host synchronisation: one target scan for the call, plus (when some rows are ignored)
``flatnonzero`` for the indices of the others, plus one scan per chunk inside
``Ops.cross_entropy*``.
"""

import numpy as np

from .. import _validation as V
from .._linear_call import _LinearCall, _acc_blocks
from ._api import Ops, cupy_backend
from ._nll import UNSCALED

__all__ = ["LinearOps", "GpuLinearCall", "linear_call", "linear_cross_entropy",
           "linear_cross_entropy_with_grad"]


def _cublas_gemm(xp):
    """``cupy.cublas.gemm`` (``out = alpha op(a) @ op(b) + beta out``) when ``xp`` is CuPy
    and has it, else None."""
    if getattr(xp, "__name__", "") != "cupy":
        return None
    try:
        from cupy import cublas
    except ImportError:
        return None
    return getattr(cublas, "gemm", None)


class GpuLinearCall(_LinearCall):
    """``fastce._linear_call._LinearCall`` on an ``Ops`` backend's arrays."""

    def __init__(self, ops, hidden, weight, target, **options):
        self.ops = ops
        self.xp = ops.xp
        super().__init__(hidden, weight, target, **options)
        self.ce_options = {"z_loss": self.z} if self.z else {}

    # ------------------------------------------------------------------ backend hooks
    def _operands(self, hidden, weight, bias):
        return V.as_linear_operands(hidden, weight, bias, asarray=self.ops._asarray, xp=self.xp)

    def _target(self, target, ignore_index):
        """The targets as the kernels read them (int32/int64, flat), checked by the scan."""
        t = V.check_linear_target(self.ops._asarray(target, "target"), self.n_rows)
        v = self.n_classes
        call = self.ops._prepare(dict(t=t, C=v, ctot=v, w=None, w_all=None,
                                      ignore_index=ignore_index, target_shape=(self.n_rows,)))
        self._n_valid = int(call["norm"])  # no class weights: the count of rows not ignored
        self._ignore = np.int64(call["ignore_k"])
        return call["tflat"]

    def _valid_rows(self):
        if self._n_valid == self.n_rows:
            return self._n_valid, None
        return self._n_valid, self.xp.flatnonzero(self.t != self._ignore)

    def _ce(self, logits, t, reduction, **grad_kw):
        ops = self.ops
        fn = ops.cross_entropy_with_grad if grad_kw else ops.cross_entropy
        return fn(logits, t, ignore_index=-1, reduction=reduction, label_smoothing=self.eps,
                  **self.ce_options, **grad_kw)

    def _total(self, total=None, part=None):
        """On the device, float64: no host synchronisation per chunk."""
        if total is None:
            return self.xp.zeros((), dtype=np.float64)
        total += part
        return total

    def _grad_scale(self, grad_output):
        xp = self.xp
        none = self.reduction == "none"
        if none and np.ndim(grad_output) == 0:  # a scalar: the same for every row
            g, _, value = self.ops._grad_output(grad_output, dict(
                reduction="sum", target_shape=(), **UNSCALED))
            rows = xp.full(self.n_rows, value) if g is None else xp.broadcast_to(g, (self.n_rows,))
            return rows, None
        # norm 1: unscaled; the global normaliser is applied as on the CPU (_mean_scale)
        g, _, value = self.ops._grad_output(grad_output, dict(
            reduction=self.reduction, target_shape=(self.n_rows,), **UNSCALED))
        if none:
            return g, None
        # a device scalar stays there (0-d again: NumPy's ascontiguousarray makes it 1-d)
        return None, self._mean_scale(value if g is None else g.reshape(()))

    def _hidden_grad(self, d_hidden, rows, g, scratch):
        if isinstance(rows, slice):
            self.xp.matmul(g, self.weight, out=d_hidden[rows])
            return
        dh = scratch[:g.shape[0] * self.n_features].reshape(g.shape[0], self.n_features)
        self.xp.matmul(g, self.weight, out=dh)
        d_hidden[rows] = dh

    def _weight_accumulator(self, d_weight):
        xp = self.xp
        gemm = _cublas_gemm(xp)
        if gemm is not None:
            return lambda g, h, first: gemm("T", "N", g, h, out=d_weight, beta=0.0 if first else 1.0)
        scratch = self._acc_scratch()

        def acc(g, h, first):
            if first:
                xp.matmul(g.T, h, out=d_weight)
            else:
                _acc_blocks(xp, d_weight, g, h, scratch)
        return acc

    def finish(self, total, loss_rows):
        """A 0-d device array of the input dtype for 'mean'/'sum' (no host copy)."""
        if self.reduction == "none":
            return loss_rows
        if self.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total / np.float64(self.n_valid)
        return self.xp.asarray(total).astype(self.dtype)


class LinearOps(Ops):
    """``Ops`` plus the fused linear cross-entropy (keywords as the CPU functions')."""

    def linear_cross_entropy(self, hidden, weight, target, **options):
        return GpuLinearCall(self, hidden, weight, target, **options).loss()

    def linear_cross_entropy_with_grad(self, hidden, weight, target, *, grad_output=1.0,
                                       **options):
        return GpuLinearCall(self, hidden, weight, target, **options).loss_and_grads(grad_output)


def linear_call(hidden, weight, target, **options):
    """The call object of ``fastce._linear`` for CuPy arrays (its dispatch lands here)."""
    return GpuLinearCall(LinearOps(cupy_backend()), hidden, weight, target, **options)


def linear_cross_entropy(hidden, weight, target, **options):
    """GPU twin of :func:`fastce.linear_cross_entropy` (same keywords); 'mean'/'sum' give a
    0-d CuPy array."""
    return linear_call(hidden, weight, target, **options).loss()


def linear_cross_entropy_with_grad(hidden, weight, target, *, grad_output=1.0, **options):
    """GPU twin of :func:`fastce.linear_cross_entropy_with_grad` (same keywords)."""
    return linear_call(hidden, weight, target, **options).loss_and_grads(grad_output)
