"""fastce for PyTorch users: torch's loss functions and modules, computed by fastce.

``import fastce.torch as fce`` and replace ``F.cross_entropy`` by ``fce.cross_entropy``,
``nn.CrossEntropyLoss`` by ``fce.CrossEntropyLoss`` (and so on): same signatures, same
semantics, tensors in and tensors out, autograd and ``torch.compile(fullgraph=True)``.
``import fastce`` alone never imports torch; this subpackage does.

Functions: :func:`cross_entropy`, :func:`nll_loss`, :func:`binary_cross_entropy_with_logits`,
:func:`log_softmax`, :func:`softmax`, :func:`logsumexp`, :func:`linear_cross_entropy`.
Modules: :class:`CrossEntropyLoss`, :class:`NLLLoss`, :class:`BCEWithLogitsLoss`,
:class:`LinearCrossEntropyLoss` (subclasses of torch's namesakes). fastce's extensions are
keywords: ``z_loss``, ``softcap``, ``logit_scale``, ``num_items``, ``return_lse``,
``n_threads``.

The call is thin: in plain eager mode the common checks run inline, the tensors become
NumPy views with one call each, the loss-only forward builds no autograd node, and
``cross_entropy`` calls the compiled entry point behind ``fastce.cross_entropy`` directly.
What remains is a few microseconds per call over the NumPy API (two tensor-to-array views,
the result tensor, the argument checks), and for fwd+bwd the cost of a Python autograd
node, which torch's own C++ loss does not pay; see BENCHMARKS.md for the ratios.

Tensors
-------
CPU tensors are handed to fastce as NumPy views of their memory (``Tensor.numpy()`` of the
detached tensor): no copy, any strides (non-contiguous and expanded tensors included);
results are written straight into fresh tensors. float32, float64, float16 and bfloat16
logits (bfloat16: the tensor is reinterpreted as int16 and viewed as ``ml_dtypes.bfloat16``,
2 bytes either way, still no copy). Half-precision logits are computed in float32 and
**the loss comes back as float32**, where torch returns a float16/bfloat16 loss (rounded
from its own float32 accumulation): fastce's loss is the unrounded value (|difference| up
to half a bf16 ulp, ~0.4% relative), and ``loss.backward()`` receives a float32
grad_output; the gradient has the logits' dtype, rounded once. Class-index targets may be
any integer dtype (torch requires int64/uint8). CUDA tensors raise a NotImplementedError
that says what works instead (``.cpu()``, torch on the GPU, or fastce's array API on
``cupy.from_dlpack(t.detach())``, which needs CuPy and a CUDA build of torch): the DLPack
hand-over to fastce's GPU path is not written, since it cannot be tested without a GPU.
Other devices raise a RuntimeError (meta tensors get the fake implementations).

Autograd, and what is saved
---------------------------
Every function is a ``torch.library.custom_op`` (namespace ``fastce``: ``fastce::cross_entropy``,
``fastce::nll_loss``, ``fastce::nll_loss_backward``, ``fastce::binary_cross_entropy_with_logits``,
``fastce::log_softmax``, ``fastce::softmax``, ``fastce::logsumexp``,
``fastce::linear_cross_entropy``, ``fastce::linear_cross_entropy_backward``) with a fake
implementation and a registered autograd formula, so ``torch.compile(fullgraph=True)``
traces models that use them without graph breaks.

The loss ops decide at the call: when the logits require grad (and grad mode is on), the
forward computes d loss / d logits in the same sweep as the loss
(``fastce.cross_entropy_with_grad`` at a unit upstream gradient) and saves it; backward
multiplies it by ``grad_output`` -- no pass at all in eager mode when ``grad_output`` is 1
(``loss.backward()``), one elementwise pass otherwise (including 'none' with per-row
upstream gradients, which broadcast over the class axis). The saved gradient costs as much
memory as the log-probabilities torch saves, and makes forward + backward one read and one
write of the logits. When the logits do not require grad, only the loss is computed and
nothing is saved. ``linear_cross_entropy`` does the same for 'mean'/'sum' (it saves
d_input and d_weight, ``N x H + V x H``); for 'none', whose weight gradient depends on the
per-row upstream gradient, it saves the per-row lse and recomputes the logits chunk by
chunk in backward (one more GEMM per chunk, no lse pass).

Target gradients, as torch defines them. A probability target of ``cross_entropy`` that
requires grad makes the forward return each row's lse too (same sweep) and save it with
the logits; backward computes ``d loss / d target = -(1 - label_smoothing) * weight *
log_softmax(x)`` as ``x - lse`` (``x`` after ``logit_scale`` and ``softcap``; z_loss does
not depend on the target), scaled like the loss ('mean': by the row count or
``num_items``) -- one elementwise pass in torch ops. A target of
``binary_cross_entropy_with_logits`` that requires grad saves the logits; backward
computes ``weight * (logsigmoid(-x) - pos_weight * logsigmoid(x))`` (``-weight * x``
without ``pos_weight``). Nothing of this is computed or saved when the target does not
require grad.

Double backward: the loss ops' gradients come from fastce's kernels and are not
differentiable again; ``create_graph=True`` works, but differentiating their gradients
(the target gradients included) raises a RuntimeError naming the op. ``log_softmax``,
``softmax`` and ``logsumexp`` have backward formulas in torch ops and differentiate any
number of times. Not differentiable: class weights and ``pos_weight`` (as in torch: an
error if they require grad).

Threads
-------
fastce uses ``torch.get_num_threads()`` threads per call (read at each call, so
``torch.set_num_threads`` applies), unless ``n_threads=`` says otherwise.

OpenMP runtimes. torch's Linux wheels bundle ``torch/lib/libgomp.so.1`` with the same
SONAME as the system ``libgomp.so.1`` that a source build of fastce links, so the dynamic
loader keeps only the first one loaded: with torch 2.13 (CPU wheel) ``/proc/self/maps``
shows one libgomp whichever of ``import torch`` / ``import fastce`` comes first, and
fastce's parallel regions run on the same thread team as torch's (and as torch's MKL
GEMMs). There is no second pool to oversubscribe the cores in that setup. Two runtimes
appear when one side vendors a renamed copy (a wheel repaired by auditwheel ships
``libgomp-<hash>.so.1``; torch on macOS has its own libomp): each then keeps its own team
of ``get_num_threads()`` threads, and an idle team spins for a while after each parallel
region. What is fixable in-process is done here: ``linear_cross_entropy`` runs its matrix
products in torch (not in NumPy's OpenBLAS, a third pool of spinning pthreads), and the
thread count follows torch's.

Measured (2-core VM shared with other jobs, load average 2.5-3.7 during the runs; 256 x
1000 float32 cross-entropy forward, median / p90 in microseconds over 300 calls)::

    setup                                         torch F.ce       fastce
    1 thread, each alone                          335 / 387        303 / 389
    2 threads, each alone                         238 / 11980      220 / 12072
    2 threads, alternating torch and fastce       206 / 8407       213 / 8516
    2 threads, a NumPy 256^3 matmul between       12035 / 16070    12255 / 20118
    2 threads, OMP_WAIT_POLICY=passive, alone     235 / 259        210 / 241
    2 threads, OMP_WAIT_POLICY=passive, alternate 261 / 307        262 / 293

So the millisecond swings are not torch against fastce (alternating is no worse than
either alone) but OpenMP's spin-then-sleep barriers on cores that are also busy elsewhere
-- or busy with OpenBLAS's own spinning threads: a parallel region waits for a thread the
kernel has descheduled, and a time slice is milliseconds. That is not fixable from inside
a library, because libgomp reads its wait policy once, when it is loaded (before
fastce.torch runs): on shared or oversubscribed machines set ``OMP_WAIT_POLICY=passive``
(p90 40-50x lower above, medians unchanged) or use one thread; keep NumPy's BLAS to one
thread (``threadpoolctl.threadpool_limits(1, "blas")``) when NumPy products alternate with
torch/fastce calls.
"""
import torch  # noqa: F401  (this subpackage is the torch front end)

from ._functional import (  # noqa: E402
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear_cross_entropy,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
from ._modules import BCEWithLogitsLoss, CrossEntropyLoss, LinearCrossEntropyLoss, NLLLoss  # noqa: E402

__all__ = [
    "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_softmax", "softmax",
    "logsumexp", "linear_cross_entropy",
    "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "LinearCrossEntropyLoss",
]
