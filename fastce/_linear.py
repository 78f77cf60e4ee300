"""Fused linear + cross-entropy: the loss of ``cross_entropy(hidden @ weight.T + bias, target)``
and its gradients, without ever holding the N x V logits.

How a call runs (``_LinearCall``):

1. Validate once (``_validation``): ``hidden (N, H)``, ``weight (V, H)``, ``bias (V,)``,
   ``target (N,)``; the rows not ignored are counted first, so that 'mean' divides every
   chunk by the GLOBAL count.
2. Only rows whose target is not ``ignore_index`` are computed (ignored rows have no loss
   and a zero gradient); they are taken in chunks of ``chunk_size`` rows.
3. Per chunk, its logits go into ONE reused ``(chunk_size, V)`` buffer
   (``np.matmul(h_chunk, weight.T, out=buf)``, BLAS through NumPy, plus the bias);
   :func:`fastce.cross_entropy_with_grad` (``reduction='sum'``, ``grad_output`` = the
   upstream gradient over the global normaliser, ``inplace=True``) turns the buffer into
   the gradient of the logits; then ``d_hidden[chunk] = buf @ weight``,
   ``d_weight += buf.T @ h_chunk`` and ``d_bias += buf.sum(0)``.

Accumulation precision: ``d_weight`` accumulates in the input dtype (float32 for float32
input), inside BLAS and across chunks -- as torch's unfused ``F.linear`` backward does,
whose weight gradient is one float32 GEMM over all N rows.  Measured max error relative
to max|d_weight| against float64 (N=2048..4096, chunks of 8..16 rows): 3-4e-7, against
torch's 1.6-1.8e-7; a float64 accumulator would cost V x H x 8 bytes (1 GiB for an LM
head of 128256 x 1024), far above the memory this function is for, so float32 it is
(``tests/test_linear.py::test_float32_accumulation_accuracy`` keeps it within 4x of
torch's error).  ``d_bias`` (a length-V vector, cheap) accumulates in float64 and is
rounded once.  The loss sums each chunk's loss (from the kernels' float64 accumulators,
rounded once to the input dtype) in float64.

``d_weight += buf.T @ h_chunk``: the first chunk writes ``d_weight`` directly (NumPy
``matmul`` with ``out=``); later chunks go through SciPy's BLAS GEMM with ``beta=1`` (in
place, no temporary) when SciPy is importable, else through NumPy ``matmul`` into a
temporary block of at most ``_ACC_BLOCK_BYTES`` (4 MiB) of ``d_weight`` rows, added in
place block by block: the extra pass over ``d_weight`` makes that GEMM ~5% slower at
524-row chunks and 15-30% slower at 130-row chunks; SciPy's BLAS, on the other hand, is a
second OpenBLAS whose idle threads spin for a while after each call, competing with
NumPy's.  End to end (2 cores, N=4096, H=1024, float32, quiet machine): V=32000 5.2-5.7 s
with SciPy vs 5.1-5.2 s without; V=128256 25.5-26.5 s vs 28.8-29.4 s.

Every chunk reads and writes all of ``d_weight`` (V x H) once, so chunks of few rows
(much fewer than ~H) make the weight gradient memory-bound: prefer the default budget or
larger chunks over tiny ones.

CuPy inputs: ``_linear_call`` hands the call to ``fastce.cuda._linear.GpuLinearCall``, a
subclass of ``_LinearCall`` that replaces its backend hooks (arrays, cross-entropy,
products, loss total) and runs the same sweeps (``loss``, ``loss_and_grads``) on the GPU.
"""
import numpy as np

from . import _validation as V
from ._api import _cuda_dispatch, cross_entropy, cross_entropy_with_grad

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# SciPy's BLAS for the in-place ``d_weight += g.T @ h``: None = use it when importable,
# False = never (the NumPy-only path; the tests flip it to exercise that path).
_USE_SCIPY = None
_ACC_BLOCK_BYTES = 4 * 2**20  # NumPy-only path: the largest temporary block of d_weight
_GEMM = {}


def _scipy_gemm(dtype):
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


def _acc_weight_grad(d_weight, g, h, scratch, first):
    """``d_weight += g.T @ h`` (``d_weight = g.T @ h`` for the ``first`` chunk) with
    ``g (m, V)`` and ``h (m, H)`` C-contiguous."""
    if first:
        np.matmul(g.T, h, out=d_weight)
        return
    gemm = _scipy_gemm(d_weight.dtype)
    if gemm is not None:
        # Column-major view: d_weight.T (H, V) += h.T (H, m) @ g (m, V); every operand is
        # Fortran-contiguous, so f2py passes them to BLAS without a copy.
        c = d_weight.T
        r = gemm(1.0, h.T, g.T, beta=1.0, c=c, trans_b=1, overwrite_c=1)
        if not np.shares_memory(r, c):  # f2py had to copy: keep the result all the same
            c[...] = r
        return
    _acc_blocks(np, d_weight, g, h, scratch)


def _acc_blocks(xp, d_weight, g, h, scratch):
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

    xp = np

    def __init__(self, hidden, weight, target, *, bias=None, ignore_index=-100,
                 reduction="mean", label_smoothing=0.0, z_loss=0.0, chunk_size=None,
                 memory_budget=None, n_threads=None):
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
    def _operands(self, hidden, weight, bias):
        return V.as_linear_operands(hidden, weight, bias)

    def _target(self, target, ignore_index):
        return V.as_linear_target(target, self.n_rows, self.n_classes, ignore_index)

    def _valid_rows(self):
        """``(number of rows not ignored, their indices or None when that is all rows)``."""
        valid = self.t >= 0
        n_valid = int(np.count_nonzero(valid))
        return n_valid, None if n_valid == self.n_rows else np.flatnonzero(valid)

    def _ce(self, logits, t, reduction, **grad_kw):
        """fastce's cross-entropy of one chunk (``_with_grad`` when ``grad_kw`` is given)."""
        fn = cross_entropy_with_grad if grad_kw else cross_entropy
        return fn(logits, t, ignore_index=-1, reduction=reduction, label_smoothing=self.eps,
                  z_loss=self.z, n_threads=self.n_threads, **grad_kw)

    def _total(self, total=None, part=None):
        """The running float64 loss total: 0 without arguments, else ``total + part``."""
        return 0.0 if total is None else total + float(part)

    def _grad_scale(self, grad_output):
        """``(per-row upstream gradients (N,) for 'none' else None, the chunks' scalar
        grad_output for 'mean'/'sum')``."""
        if self.reduction == "none" and np.ndim(grad_output) == 0:
            g0, _ = V.as_grad_output(grad_output, "sum", ())  # the same for every row
            return np.full(self.n_rows, g0), None
        g0, g_rows = V.as_grad_output(grad_output, self.reduction, (self.n_rows,))
        return g_rows, self._mean_scale(g0)

    def _hidden_grad(self, d_hidden, rows, g, scratch):
        """``d_hidden[rows] = g @ weight``, computed as its transpose ``weight.T @ g.T``: the
        same GEMM, but OpenBLAS runs this orientation (long K = V, short M = m) 1.5-2.5x
        faster."""
        m = g.shape[0]
        dh_t = scratch[:m * self.n_features].reshape(self.n_features, m)
        np.matmul(self.weight.T, g.T, out=dh_t)
        d_hidden[rows] = dh_t.T

    def _weight_accumulator(self, d_weight):
        """``acc(g, h, first)``: ``d_weight (+)= g.T @ h``."""
        scratch = self._acc_scratch() if _scipy_gemm(self.dtype) is None else None
        return lambda g, h, first: _acc_weight_grad(d_weight, g, h, scratch, first)

    def finish(self, total, loss_rows):
        """The reduced loss: a NumPy scalar of the input dtype, or the per-row array."""
        if self.reduction == "none":
            return loss_rows
        if self.reduction == "sum":
            return self.dtype.type(total)
        with np.errstate(divide="ignore", invalid="ignore"):
            # no class weights: the cross-entropy and z-terms share the divisor
            return self.dtype.type(np.float64(total) / np.float64(self.n_valid))

    # ------------------------------------------------------------------ shared pieces
    def _mean_scale(self, g0):
        """The chunks' grad_output for 'mean'/'sum': ``g0`` over the GLOBAL normaliser."""
        if self.reduction == "mean":
            return g0 / self.n_valid if self.n_valid else 0.0  # nothing to scale when all ignored
        return g0

    def _acc_scratch(self):
        """The reused block for ``_acc_blocks`` (None with a single chunk: no accumulation)."""
        if self.n_valid <= self.chunk:
            return None
        itemsize = self.dtype.itemsize
        block = max(1, min(self.n_classes, _ACC_BLOCK_BYTES // (self.n_features * itemsize or 1)))
        return self.xp.empty((block, self.n_features), dtype=self.dtype)

    def chunks(self):
        """``(rows, h_chunk, t_chunk)``: rows a slice or an index array into [0, N)."""
        for s in range(0, self.n_valid, self.chunk):
            e = min(self.n_valid, s + self.chunk)
            rows = slice(s, e) if self.rows is None else self.rows[s:e]
            h = self.hidden[rows]  # a view for a slice, a (m, H) copy for indices
            if not h.flags.c_contiguous:
                h = self.xp.ascontiguousarray(h)
            yield rows, h, self.t[rows]

    def buffer(self):
        """The reused ``(chunk, V)`` logits buffer (no rows when nothing is computed)."""
        return self.xp.empty((min(self.chunk, self.n_valid), self.n_classes), dtype=self.dtype)

    def logits(self, buf, h):
        """The chunk's logits ``h @ weight.T + bias`` into the first rows of ``buf``."""
        out = buf[:h.shape[0]]
        self.xp.matmul(h, self.weight.T, out=out)
        if self.bias is not None:
            self.xp.add(out, self.bias, out=out)
        return out

    # ------------------------------------------------------------------ the sweeps
    def loss(self):
        """The loss, chunk by chunk (``linear_cross_entropy``)."""
        none = self.reduction == "none"
        loss_rows = self.xp.zeros(self.n_rows, dtype=self.dtype) if none else None
        total = self._total()
        buf = self.buffer()
        for rows, h, t in self.chunks():
            part = self._ce(self.logits(buf, h), t, "none" if none else "sum")
            if none:
                loss_rows[rows] = part
            else:
                total = self._total(total, part)
        return self.finish(total, loss_rows)

    def loss_and_grads(self, grad_output):
        """``(loss, d_hidden, d_weight, d_bias)`` (``linear_cross_entropy_with_grad``)."""
        xp, dt = self.xp, self.dtype
        none = self.reduction == "none"
        g_rows, scale = self._grad_scale(grad_output)
        d_hidden = xp.zeros((self.n_rows, self.n_features), dtype=dt)
        d_weight = xp.zeros((self.n_classes, self.n_features), dtype=dt)
        d_bias64 = xp.zeros(self.n_classes) if self.bias is not None else None
        col_sum = xp.empty(self.n_classes) if self.bias is not None else None
        acc = self._weight_accumulator(d_weight)
        loss_rows = xp.zeros(self.n_rows, dtype=dt) if none else None
        total = self._total()
        buf = self.buffer()
        dh_scratch = xp.empty(buf.shape[0] * self.n_features, dtype=dt)
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


def _linear_call(hidden, weight, target, grad_output=None, **options):
    """The call object: the CPU one, or the GPU path's when an array is a CuPy array."""
    gpu = _cuda_dispatch("linear_call", hidden, weight, target, options.get("bias"), grad_output)
    return (gpu or _LinearCall)(hidden, weight, target, **options)


def linear_cross_entropy(hidden, weight, target, *, bias=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, z_loss=0.0, chunk_size=None,
                         memory_budget=None, n_threads=None):
    return _linear_call(hidden, weight, target, bias=bias, ignore_index=ignore_index,
                        reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                        chunk_size=chunk_size, memory_budget=memory_budget,
                        n_threads=n_threads).loss()


def linear_cross_entropy_with_grad(hidden, weight, target, *, bias=None, ignore_index=-100,
                                   reduction="mean", label_smoothing=0.0, z_loss=0.0,
                                   chunk_size=None, memory_budget=None, grad_output=1.0,
                                   n_threads=None):
    return _linear_call(hidden, weight, target, grad_output, bias=bias,
                        ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=chunk_size,
                        memory_budget=memory_budget,
                        n_threads=n_threads).loss_and_grads(grad_output)


_PARAMS = """Parameters
    ----------
    hidden : array_like of float32 or float64, shape (N, H)
        The rows fed to the linear layer (e.g. a transformer's last hidden states).
    weight : array_like, shape (V, H), hidden's dtype
        The linear layer's weight (an LM head), one row per class, as
        ``torch.nn.Linear(H, V).weight``. An array that is neither C- nor
        Fortran-contiguous is copied once.
    target : array_like of int, shape (N,)
        Class indices in ``[0, V)``, or ``ignore_index``.
    bias : array_like, shape (V,), hidden's dtype, optional
        The linear layer's bias.
    ignore_index : int, default -100
        Rows whose target equals it have no loss and a zero gradient; they are skipped
        (neither their logits nor their gradients are computed).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'none': one loss per row, shape ``(N,)`` (0 for ignored rows); 'sum': their sum;
        'mean': the sum over the number of rows not ignored (nan when every row is
        ignored or N == 0, like torch). There are no class weights, so the cross-entropy
        and z-loss terms share this divisor.
    label_smoothing : float in [0, 1], default 0
        As :func:`fastce.cross_entropy`.
    z_loss : float >= 0, default 0
        Adds ``z_loss * lse_i**2`` to every row not ignored, as
        :func:`fastce.cross_entropy`.
    chunk_size : int >= 1, optional
        Rows (not ignored) per chunk: the logits buffer holds ``chunk_size x V`` values.
        Default: from ``memory_budget``. With gradients, every chunk reads and writes all
        of ``d_weight`` once, so chunks of far fewer rows than H are slow.
    memory_budget : int > 0, optional
        Bytes for the reused logits buffer when ``chunk_size`` is not given:
        ``chunk_size = max(1, memory_budget // (V * itemsize))``. Default 64 MiB
        (``fastce._validation.LINEAR_DEFAULT_MEMORY_BUDGET``): 130 rows at V = 128256 in
        float32. Give ``chunk_size`` or ``memory_budget``, not both.
    n_threads : int, optional
        Threads of fastce's cross-entropy kernels; default :func:`fastce.get_num_threads`.
        The matrix products run in NumPy's BLAS, with the BLAS's own threads
        (``threadpoolctl`` limits them). Ignored for CuPy arrays, which run on the GPU
        (cuBLAS products, fastce's CUDA cross-entropy; 'mean'/'sum' losses as 0-d CuPy
        arrays)."""

_METHOD = """
    ``hidden @ weight.T + bias`` is computed in chunks of rows into one reused
    ``(chunk_size, V)`` buffer, so memory beyond the inputs and outputs is that buffer
    plus O(chunk_size * H + V + N) (plus, for the gradients without SciPy installed, one
    block of at most 4 MiB); the N x V logits never exist. Only rows not ignored are
    computed."""

linear_cross_entropy.__doc__ = f"""Cross-entropy of a linear layer's output, without materialising the logits.

    The loss of ``fastce.cross_entropy(hidden @ weight.T + bias, target, ...)`` (PyTorch:
    ``F.linear_cross_entropy(hidden, weight, target, linear_bias=bias, ...)``, plus
    ``z_loss``).
    {_METHOD}

    {_PARAMS}

    Returns
    -------
    loss : NumPy scalar of hidden's dtype for 'mean'/'sum'; ndarray (N,) for 'none'

    Examples
    --------
    >>> hidden = np.random.randn(4096, 1024).astype(np.float32)
    >>> head = (np.random.randn(128256, 1024) / 32).astype(np.float32)
    >>> target = np.random.randint(0, 128256, 4096)
    >>> loss = fastce.linear_cross_entropy(hidden, head, target)  # 64 MiB of logits at a time, not 2 GiB

    See Also
    --------
    linear_cross_entropy_with_grad : the loss and the gradients of hidden, weight and bias.
    """

linear_cross_entropy_with_grad.__doc__ = f"""Loss of :func:`linear_cross_entropy` and its gradients w.r.t. hidden, weight and bias.

    The gradients of ``loss = cross_entropy(hidden @ weight.T + bias, target, ...)``:
    with ``G = d loss / d logits`` (computed chunk by chunk, never whole),
    ``d_hidden = G @ weight``, ``d_weight = G.T @ hidden``, ``d_bias = G.sum(0)``.
    {_METHOD} The chunk's gradient overwrites its logits in the buffer
    (:func:`fastce.cross_entropy_with_grad` with ``inplace=True``).

    {_PARAMS}
    grad_output : float or ndarray, default 1.0
        Upstream gradient: a scalar for 'mean'/'sum'; for 'none' one value per row,
        shape ``(N,)``, or a scalar applied to every row.

    Returns
    -------
    loss : as :func:`linear_cross_entropy`
    d_hidden : ndarray (N, H), hidden's dtype (zero rows for ignored targets)
    d_weight : ndarray (V, H), hidden's dtype; accumulated over chunks in that dtype
        (inside BLAS, as torch's unfused backward does)
    d_bias : ndarray (V,), hidden's dtype (accumulated in float64), or None without bias

    Examples
    --------
    >>> loss, d_hidden, d_head, _ = fastce.linear_cross_entropy_with_grad(
    ...     hidden, head, target, z_loss=1e-4, chunk_size=256)
    """
