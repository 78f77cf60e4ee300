"""The chunked sweeps of the fused linear + cross-entropy, written once against an array
module: ``_LinearCall`` (NumPy) here, ``fastce.cuda._linear.GpuLinearCall`` (CuPy) over it.
The algorithm, its memory and its accuracy are described in ``fastce._linear``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from . import _kernels
from . import _validation as V

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt

__all__ = ["_LinearCall", "_acc_blocks"]

# SciPy's BLAS for the in-place ``d_weight += g.T @ h``: None = use it when importable,
# False = never (the NumPy-only path; the tests flip it to exercise that path).
_USE_SCIPY: bool | None = None
_ACC_BLOCK_BYTES = 4 * 2**20  # NumPy-only path: the largest temporary block of d_weight
_GEMM: dict[str, Callable[..., Any] | None] = {}


def _scipy_gemm(dtype: npt.DTypeLike) -> Callable[..., Any] | None:
    """SciPy's ``sgemm``/``dgemm`` for ``dtype``, or None."""
    if _USE_SCIPY is False:
        return None
    key = np.dtype(dtype).char
    if key not in _GEMM:
        try:
            from scipy.linalg import blas
        except ImportError:
            _GEMM[key] = None
        else:
            _GEMM[key] = blas.sgemm if key == "f" else blas.dgemm
    return _GEMM[key]


def _acc_weight_grad(d_weight: npt.NDArray[Any], g: npt.NDArray[Any], h: npt.NDArray[Any],
                     scratch: npt.NDArray[Any] | None, first: bool) -> None:
    """``d_weight += g.T @ h`` (``d_weight = g.T @ h`` for the ``first`` chunk) with
    ``g (m, V)`` and ``h (m, H)`` C-contiguous."""
    gemm = _scipy_gemm(d_weight.dtype)
    if gemm is not None:
        # Column-major view: d_weight.T (H, V) (+)= h.T (H, m) @ g (m, V); every operand is
        # Fortran-contiguous, so f2py passes them to BLAS without a copy.  The first chunk
        # goes through SciPy's BLAS too (beta=0), not NumPy's: each OpenBLAS keeps a packing
        # buffer of up to 32 MiB per process that this GEMM's long N = V fills, and one such
        # buffer is 32 MiB less peak memory than two (BENCHMARKS.md, linear CE memory).
        c = d_weight.T
        r = gemm(1.0, h.T, g.T, beta=0.0 if first else 1.0, c=c, trans_b=1, overwrite_c=1)
        if not np.shares_memory(r, c):  # f2py had to copy: keep the result all the same
            c[...] = r
        return
    if first:
        np.matmul(g.T, h, out=d_weight)
        return
    _acc_blocks(np, d_weight, g, h, scratch)


def _acc_blocks(xp: Any, d_weight: Any, g: Any, h: Any, scratch: Any) -> None:
    """``d_weight += g.T @ h`` through ``scratch``, a reused block of ``d_weight`` rows."""
    n_classes = d_weight.shape[0]
    rows = scratch.shape[0]
    for s in range(0, n_classes, rows):
        e = min(n_classes, s + rows)
        tmp = scratch[:e - s]
        xp.matmul(g[:, s:e].T, h, out=tmp)
        d_weight[s:e] += tmp


class _LinearCall:
    """One validated linear + cross-entropy call, and its chunked sweeps (``loss``,
    ``loss_and_grads``).

    Written against ``xp`` (NumPy here); ``fastce.cuda._linear`` subclasses it for CuPy
    arrays, replacing the *backend hooks* below and keeping the sweeps.
    """

    xp: Any = np

    def __init__(self, hidden: Any, weight: Any, target: Any, *, bias: Any = None,
                 ignore_index: object = -100, reduction: object = "mean",
                 label_smoothing: object = 0.0, z_loss: object = 0.0, chunk_size: object = None,
                 memory_budget: object = None, n_threads: int | None = None) -> None:
        self.reduction = V.check_reduction(reduction)
        self.eps = V.check_label_smoothing(label_smoothing)
        self.z = V.check_z_loss(z_loss)
        ignore_index = V.check_ignore_index(ignore_index)
        self.n_threads = V.resolve_threads(n_threads)
        self.hidden, self.weight, self.bias = self._operands(hidden, weight, bias)
        self.dtype = self.hidden.dtype
        self.n_rows, self.n_features = self.hidden.shape
        self.n_classes = self.weight.shape[0]
        self.t = self._target(target, ignore_index)
        self.chunk = V.linear_chunk_rows(chunk_size, memory_budget, self.n_classes,
                                         self.dtype.itemsize)
        # rows to compute: a slice when none is ignored, else their indices
        self.n_valid, self.rows = self._valid_rows()

    # ------------------------------------------------------------------ backend hooks
    def _operands(self, hidden: Any, weight: Any, bias: Any) -> tuple[Any, Any, Any]:
        return V.as_linear_operands(hidden, weight, bias)

    def _target(self, target: Any, ignore_index: int) -> Any:
        return V.as_linear_target(target, self.n_rows, self.n_classes, ignore_index)

    def _valid_rows(self) -> tuple[int, Any]:
        """``(number of rows not ignored, their indices or None when that is all rows)``."""
        valid = self.t >= 0
        n_valid = int(np.count_nonzero(valid))
        return n_valid, None if n_valid == self.n_rows else np.flatnonzero(valid)

    def _ce(self, logits: Any, t: Any, reduction: str, **grad_kw: Any) -> Any:
        """fastce's cross-entropy of one chunk (``_with_grad`` when ``grad_kw`` is given)."""
        if not grad_kw:
            return _kernels.ce_call(0, logits, t, None, -1, reduction, self.eps, self.z, None,
                                    1.0, None, None, False, 0, None, 1.0, None, False, None,
                                    self.n_threads)
        return _kernels.ce_call(1, logits, t, None, -1, reduction, self.eps, self.z, None, 1.0,
                                None, None, False, 0, None, grad_kw["grad_output"], None,
                                grad_kw["inplace"], None, self.n_threads)

    def _total(self, total: Any = None, part: Any = None) -> Any:
        """The running float64 loss total: 0 without arguments, else ``total + part``."""
        return 0.0 if total is None else total + float(part)

    def _grad_scale(self, grad_output: Any) -> tuple[Any, Any]:
        """``(per-row upstream gradients (N,) for 'none' else None, the chunks' scalar
        grad_output for 'mean'/'sum')``."""
        if self.reduction == "none" and np.ndim(grad_output) == 0:
            g0, _ = V.as_grad_output(grad_output, "sum", ())  # the same for every row
            return np.full(self.n_rows, g0), None
        g0, g_rows = V.as_grad_output(grad_output, self.reduction, (self.n_rows,))
        return g_rows, self._mean_scale(g0)

    def _hidden_grad(self, d_hidden: Any, rows: Any, g: Any, scratch: Any) -> None:
        """``d_hidden[rows] = g @ weight``, computed as its transpose ``weight.T @ g.T``: the
        same GEMM, but OpenBLAS runs this orientation (long K = V, short M = m) 1.5-2.5x
        faster."""
        m = g.shape[0]
        dh_t = scratch[:m * self.n_features].reshape(self.n_features, m)
        np.matmul(self.weight.T, g.T, out=dh_t)
        d_hidden[rows] = dh_t.T

    def _weight_accumulator(self, d_weight: Any) -> Callable[[Any, Any, bool], None]:
        """``acc(g, h, first)``: ``d_weight (+)= g.T @ h``."""
        scratch = self._acc_scratch() if _scipy_gemm(self.dtype) is None else None
        return lambda g, h, first: _acc_weight_grad(d_weight, g, h, scratch, first)

    def finish(self, total: Any, loss_rows: Any) -> Any:
        """The reduced loss: a NumPy scalar of the input dtype, or the per-row array."""
        if self.reduction == "none":
            return loss_rows
        if self.reduction == "sum":
            return self.dtype.type(total)
        with np.errstate(divide="ignore", invalid="ignore"):
            # no class weights: the cross-entropy and z-terms share the divisor
            return self.dtype.type(np.float64(total) / np.float64(self.n_valid))

    # ------------------------------------------------------------------ shared pieces
    def _mean_scale(self, g0: Any) -> Any:
        """The chunks' grad_output for 'mean'/'sum': ``g0`` over the GLOBAL normaliser."""
        if self.reduction == "mean":
            return g0 / self.n_valid if self.n_valid else 0.0  # nothing to scale when all ignored
        return g0

    def _acc_scratch(self) -> Any:
        """The reused block for ``_acc_blocks`` (None with a single chunk: no accumulation)."""
        if self.n_valid <= self.chunk:
            return None
        itemsize = self.dtype.itemsize
        block = max(1, min(self.n_classes, _ACC_BLOCK_BYTES // (self.n_features * itemsize or 1)))
        return self.xp.empty((block, self.n_features), dtype=self.dtype)

    def chunks(self) -> Iterator[tuple[Any, Any, Any]]:
        """``(rows, h_chunk, t_chunk)``: rows a slice or an index array into [0, N)."""
        for s in range(0, self.n_valid, self.chunk):
            e = min(self.n_valid, s + self.chunk)
            rows = slice(s, e) if self.rows is None else self.rows[s:e]
            h = self.hidden[rows]  # a view for a slice, a (m, H) copy for indices
            if not h.flags.c_contiguous:
                h = self.xp.ascontiguousarray(h)
            yield rows, h, self.t[rows]

    def buffer(self) -> Any:
        """The reused ``(chunk, V)`` logits buffer (no rows when nothing is computed)."""
        return self.xp.empty((min(self.chunk, self.n_valid), self.n_classes), dtype=self.dtype)

    def logits(self, buf: Any, h: Any) -> Any:
        """The chunk's logits ``h @ weight.T + bias`` into the first rows of ``buf``."""
        out = buf[:h.shape[0]]
        self.xp.matmul(h, self.weight.T, out=out)
        if self.bias is not None:
            self.xp.add(out, self.bias, out=out)
        return out

    # ------------------------------------------------------------------ the sweeps
    def loss(self) -> Any:
        """The loss, chunk by chunk (``linear_cross_entropy``)."""
        none = self.reduction == "none"
        loss_rows: Any = self.xp.zeros(self.n_rows, dtype=self.dtype) if none else None
        total = self._total()
        buf = self.buffer()
        with _kernels.one_table():  # every chunk on one ISA, whatever set_isa does meanwhile
            for rows, h, t in self.chunks():
                part = self._ce(self.logits(buf, h), t, "none" if none else "sum")
                if none:
                    loss_rows[rows] = part
                else:
                    total = self._total(total, part)
        return self.finish(total, loss_rows)

    def loss_and_grads(self, grad_output: Any) -> tuple[Any, Any, Any, Any]:
        """``(loss, d_hidden, d_weight, d_bias)`` (``linear_cross_entropy_with_grad``)."""
        xp, dt = self.xp, self.dtype
        none = self.reduction == "none"
        g_rows, scale = self._grad_scale(grad_output)
        d_hidden = xp.zeros((self.n_rows, self.n_features), dtype=dt)
        d_weight = xp.zeros((self.n_classes, self.n_features), dtype=dt)
        d_bias64 = xp.zeros(self.n_classes) if self.bias is not None else None
        col_sum = xp.empty(self.n_classes) if self.bias is not None else None
        acc = self._weight_accumulator(d_weight)
        loss_rows: Any = xp.zeros(self.n_rows, dtype=dt) if none else None
        total = self._total()
        buf = self.buffer()
        dh_scratch = xp.empty(buf.shape[0] * self.n_features, dtype=dt)
        with _kernels.one_table():  # every chunk on one ISA, whatever set_isa does meanwhile
            for k, (rows, h, t) in enumerate(self.chunks()):
                g = self.logits(buf, h)
                part, _ = self._ce(g, t, "none" if none else "sum", inplace=True,
                                   grad_output=g_rows[rows] if none else scale)
                # g now holds d loss / d logits
                if none:
                    loss_rows[rows] = part
                else:
                    total = self._total(total, part)
                self._hidden_grad(d_hidden, rows, g, dh_scratch)
                acc(g, h, k == 0)
                if d_bias64 is not None:
                    xp.sum(g, axis=0, dtype=np.float64, out=col_sum)
                    d_bias64 += col_sum
        d_bias = d_bias64.astype(dt) if d_bias64 is not None else None
        return self.finish(total, loss_rows), d_hidden, d_weight, d_bias
