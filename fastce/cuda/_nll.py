"""``nll_loss_backward`` on the GPU path (CuPy arrays).

The gradient of ``nll_loss`` w.r.t. ``log_probs`` is zero except for one entry per row
not ignored: ``grad[i, y_i] = -w[y_i] * g_i`` (``g_i`` the upstream gradient, divided by
the 'mean' normaliser).  The host zero-fills the output (``fill(0)``: a memset on a
contiguous CuPy array) and ``fastce_nll_backward_{f32,f64}`` (reduce.cu, a thread per
row) scatters the N non-zero entries into it through the output's own strides
(float16/bfloat16 log-probs: see ``NllOps._scatter_half``).

Validation, target scan (class-index check and the 'mean' normaliser: one device ->
host copy), ``grad_output`` forms and output layouts are those of ``Ops`` (_api.py);
the entries are computed as the CPU path computes them (``-(w * (g / denom))`` in
float64, rounded once), so both paths give the same bits -- but for weighted 'mean',
whose normaliser the scan sums in its own (fixed) order.
"""
import numpy as np

from .. import _validation as V
from ._api import Ops, cupy_backend, kernel_signatures, pack_args

__all__ = ["NllOps", "nll_loss_backward", "NLL_BACKWARD_SIGNATURE"]

#: parameters of fastce_nll_backward_{f32,f64} (kernel_params.h, FCE_NLL_BACKWARD_FIELDS)
NLL_BACKWARD_SIGNATURE = kernel_signatures()["NLL_BACKWARD"]

_BLOCK = 256
#: ``grad_output`` as given (no 'mean' scaling): the kernel divides by the normaliser
UNSCALED = dict(norm=1.0, valid=1.0)


class NllOps(Ops):
    """``Ops`` plus ``nll_loss_backward``."""

    def nll_loss_backward(self, log_probs, target, grad_output=1.0, *, weight=None,
                          ignore_index=-100, reduction="mean", out=None):
        call = self._ce_setup(log_probs, target, weight, ignore_index, reduction, 0.0, None,
                              out=out, name="log_probs", allow_soft=False,
                              grad_output=grad_output)
        # before the scan: argument errors first, as the GPU cross-entropy
        gout, gout_s, gscale = self._grad_output(grad_output, dict(call, **UNSCALED))
        call = self._prepare(call)
        x, t = call["x"], call["tflat"]
        grad = out if out is not None else self.xp.empty(x.shape, dtype=x.dtype)
        n = t.size
        args = dict(n_rows=n, B=V.rows3_shape(x.shape, call["axis"])[2], target=t,
                    target_is64=int(t.dtype == np.int64), ignore_index=call["ignore_k"],
                    weight=call["w"], gout=gout, gout_s=gout_s, gscale=gscale,
                    denom=call["norm"] if call["reduction"] == "mean" else 1.0)
        if V.is_half(x.dtype):
            self._scatter_half(grad, call, args)
            return grad
        dest, (oa, oc, ob), copy_to = self._out_view(grad, call["axis"], 3)
        dest.fill(0)
        self._scatter(x.dtype, dict(args, out=dest, oa=oa, ob=ob, oc=oc))
        if copy_to is not None:
            copy_to[...] = dest
        return grad

    def _scatter(self, dtype, args):
        """``fastce_nll_backward``: one thread per row writes its entry through the strides."""
        n = args["n_rows"]
        if n == 0:
            return
        grid = min(-(-n // _BLOCK), max(1, self.b.sm_count()) * 64)
        suf = "f32" if np.dtype(dtype).itemsize == 4 else "f64"
        self.b.launch(f"fastce_nll_backward_{suf}", (grid, 1, 1), (_BLOCK, 1, 1),
                      pack_args(NLL_BACKWARD_SIGNATURE, args, self.b.null))

    def _scatter_half(self, grad, call, args):
        """float16/bfloat16 gradients: the kernel writes each row's entry in float64 into a
        (rows,) vector (strides: row r at r, the class ignored), which is rounded once to the
        half dtype, as on the CPU, and put in place by indexing (O(rows) temporaries)."""
        xp, n = self.xp, args["n_rows"]
        vals = xp.zeros(n, dtype=np.float64)
        self._scatter(np.float64, dict(args, out=vals, oa=args["B"], ob=1, oc=0))
        grad.fill(0)
        if n == 0:
            return
        t = call["tflat"]
        cls = xp.where(t == np.int64(call["ignore_k"]), 0, t)  # ignored rows: their 0 at class 0
        if grad.ndim == 1:
            index = (cls,)
        else:
            pos = xp.unravel_index(xp.arange(n), call["target_shape"])
            index = (pos[0], cls) + tuple(pos[1:])
        grad[index] = vals.astype(grad.dtype)


def nll_loss_backward(log_probs, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                      reduction="mean", out=None):
    """GPU twin of :func:`fastce.nll_loss_backward`."""
    return NllOps(cupy_backend()).nll_loss_backward(
        log_probs, target, grad_output, weight=weight, ignore_index=ignore_index,
        reduction=reduction, out=out)
