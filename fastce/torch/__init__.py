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
``n_threads`` (``logit_scale``/``num_items`` are forwarded to fastce only when they differ
from their defaults, so a fastce without them serves every other call).

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
any integer dtype (torch requires int64/uint8). CUDA tensors raise a clear error (CuPy
absent: install it; CuPy present: the DLPack route is not written yet); other devices too.

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

Double backward: the loss ops' gradients come from fastce's kernels and are not
differentiable again; ``create_graph=True`` works, but differentiating their gradients
raises a RuntimeError naming the op. ``log_softmax``, ``softmax`` and ``logsumexp`` have
backward formulas in torch ops and differentiate any number of times. Not differentiable:
class weights (as in torch), probability targets and BCE targets (torch differentiates
those; here it is a NotImplementedError: detach them).

Threads
-------
fastce uses ``torch.get_num_threads()`` threads per call (read at each call, so
``torch.set_num_threads`` applies), unless ``n_threads=`` says otherwise.
""" + """
(The thread notes on OpenMP runtimes are filled in below by ``_THREAD_NOTES``.)
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
