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

``d_weight += buf.T @ h_chunk``: with SciPy importable every chunk goes through SciPy's
BLAS GEMM, in place (``beta=0`` for the first chunk, ``beta=1`` after, no temporary);
without it, the first chunk writes ``d_weight`` directly (NumPy ``matmul`` with
``out=``) and later chunks go through NumPy ``matmul`` into a
temporary block of at most ``_ACC_BLOCK_BYTES`` (4 MiB) of ``d_weight`` rows, added in
place block by block: the extra pass over ``d_weight`` makes that GEMM ~5% slower at
524-row chunks and 15-30% slower at 130-row chunks; SciPy's BLAS, on the other hand, is a
second OpenBLAS whose idle threads spin for a while after each call, competing with
NumPy's.  End to end (2 cores, N=4096, H=1024, float32, quiet machine): V=32000 5.2-5.7 s
with SciPy vs 5.1-5.2 s without; V=128256 25.5-26.5 s vs 28.8-29.4 s.

Memory: the formula and measured shapes are in ``linear_cross_entropy``'s docstring
(``_METHOD``) and BENCHMARKS.md.  The first chunk's ``d_weight`` also goes through SciPy's
GEMM (``beta=0``): NumPy's and SciPy's OpenBLAS each keep a packing buffer that this
GEMM fills, and using one of them for it saves ~25-34 MB of peak RSS.

Every chunk reads and writes all of ``d_weight`` (V x H) once, so chunks of few rows
(much fewer than ~H) make the weight gradient memory-bound: prefer the default budget or
larger chunks over tiny ones.

CuPy inputs: ``_linear_call`` hands the call to ``fastce.cuda._linear.GpuLinearCall``, a
subclass of ``_LinearCall`` that replaces its backend hooks (arrays, cross-entropy,
products, loss total) and runs the same sweeps (``loss``, ``loss_and_grads``) on the GPU.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from ._dispatch import gpu_twin as _cuda_dispatch
from ._linear_call import _LinearCall

if TYPE_CHECKING:  # names for annotations only: never imported at run time
    import numpy.typing as npt
    from ._typing import FloatArray, FloatScalar, GradOutput, Loss, Reduction, ScalarReduction

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]


def _linear_call(hidden: Any, weight: Any, target: Any, grad_output: Any = None,
                 **options: Any) -> _LinearCall:
    """The call object: the CPU one, or the GPU path's when an array is a CuPy array."""
    gpu = _cuda_dispatch("linear_call", hidden, weight, target, options.get("bias"), grad_output)
    call: _LinearCall = (gpu or _LinearCall)(hidden, weight, target, **options)
    return call


@overload
def linear_cross_entropy(hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike,
        *, bias: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        chunk_size: int | None = ..., memory_budget: float | None = ...,
        n_threads: int | None = ...) -> FloatScalar: ...
@overload
def linear_cross_entropy(hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike,
        *, bias: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Literal["none"],
        label_smoothing: float = ..., z_loss: float = ..., chunk_size: int | None = ...,
        memory_budget: float | None = ..., n_threads: int | None = ...) -> FloatArray: ...
@overload
def linear_cross_entropy(hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike,
        *, bias: npt.ArrayLike | None = ..., ignore_index: int = ..., reduction: Reduction = ...,
        label_smoothing: float = ..., z_loss: float = ..., chunk_size: int | None = ...,
        memory_budget: float | None = ..., n_threads: int | None = ...) -> Loss: ...
def linear_cross_entropy(hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike, *,
                         bias: npt.ArrayLike | None = None, ignore_index: int = -100,
                         reduction: Reduction = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0, chunk_size: int | None = None,
                         memory_budget: float | None = None,
                         n_threads: int | None = None) -> Loss:
    return _linear_call(  # type: ignore[no-any-return]
        hidden, weight, target, bias=bias, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=chunk_size,
        memory_budget=memory_budget, n_threads=n_threads).loss()


@overload
def linear_cross_entropy_with_grad(hidden: npt.ArrayLike, weight: npt.ArrayLike,
        target: npt.ArrayLike, *, bias: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: ScalarReduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        chunk_size: int | None = ..., memory_budget: float | None = ...,
        grad_output: GradOutput = ..., n_threads: int | None = ...,
) -> tuple[FloatScalar, FloatArray, FloatArray, FloatArray | None]: ...
@overload
def linear_cross_entropy_with_grad(hidden: npt.ArrayLike, weight: npt.ArrayLike,
        target: npt.ArrayLike, *, bias: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: Literal["none"], label_smoothing: float = ..., z_loss: float = ...,
        chunk_size: int | None = ..., memory_budget: float | None = ...,
        grad_output: GradOutput = ..., n_threads: int | None = ...,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]: ...
@overload
def linear_cross_entropy_with_grad(hidden: npt.ArrayLike, weight: npt.ArrayLike,
        target: npt.ArrayLike, *, bias: npt.ArrayLike | None = ..., ignore_index: int = ...,
        reduction: Reduction = ..., label_smoothing: float = ..., z_loss: float = ...,
        chunk_size: int | None = ..., memory_budget: float | None = ...,
        grad_output: GradOutput = ..., n_threads: int | None = ...,
) -> tuple[Loss, FloatArray, FloatArray, FloatArray | None]: ...
def linear_cross_entropy_with_grad(
        hidden: npt.ArrayLike, weight: npt.ArrayLike, target: npt.ArrayLike, *,
        bias: npt.ArrayLike | None = None, ignore_index: int = -100,
        reduction: Reduction = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        chunk_size: int | None = None, memory_budget: float | None = None,
        grad_output: GradOutput = 1.0, n_threads: int | None = None,
) -> tuple[Loss, FloatArray, FloatArray, FloatArray | None]:
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
    ``hidden @ weight.T + bias`` is computed in chunks of rows into one reused buffer;
    the N x V logits never exist. Only rows not ignored are computed.

    Memory beyond the inputs and the returned gradients, with
    ``chunk = chunk_size or max(1, memory_budget // (V * itemsize))`` and
    ``m = min(chunk, rows not ignored)``::

        m * V * itemsize               the logits buffer (the gradient overwrites it)
        + m * H * itemsize             with gradients: d_hidden scratch
        + 16 * V bytes                 with a bias: float64 d_bias and column sums
        + O(N)                         int64 targets, row indices, per-row losses
        + BLAS packing                 with gradients: the d_weight GEMM's packed copy
                                       of the chunk, <= m * V * itemsize (OpenBLAS:
                                       capped, 28-52 MB measured)
        + min(4 MiB, V * H * itemsize) with gradients, only without SciPy

    The buffer is a fraction of the logits only when N exceeds the chunk; with the
    gradients the total is at most about twice the buffer. Measured in float32 with the
    default budget (extra resident set; BENCHMARKS.md has more shapes):

    ====================  =======  =====  ==============  =======  ==============
    N x H x V             logits   chunk  buffer          forward  with gradients
    ====================  =======  =====  ==============  =======  ==============
    4096 x 1024 x 128256  2101 MB  130    66.7 MB (3.2%)  68.7 MB  95.3 MB
    2048 x 512 x 50257    412 MB   333    66.9 MB (16%)   68.3 MB  119.4 MB
    256 x 512 x 50257     51.5 MB  256    51.5 MB (100%)  --       92.8 MB
    ====================  =======  =====  ==============  =======  ==============
    """

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
    The chunk's gradient overwrites its logits in the buffer
    (:func:`fastce.cross_entropy_with_grad` with ``inplace=True``).
    {_METHOD}

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
