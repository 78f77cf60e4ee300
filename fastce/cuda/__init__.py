"""fastce's GPU path: the public functions on ``cupy.ndarray`` inputs.

``fastce.logsumexp(cupy_array)`` and friends land here (``is_cupy_call`` decides), run
fastce's own CUDA kernels (``rows.cu``, ``reduce.cu``, ``bce.cu`` in this folder, compiled
by CuPy's NVRTC at first use and cached on disk by CuPy; the fused linear cross-entropy adds
cuBLAS matrix products through CuPy) and return CuPy arrays.  Semantics, options, dtypes
and errors are those of the CPU functions; scalar losses are 0-d CuPy arrays (no
device-to-host copy).

CuPy is imported lazily: importing this package never imports it, and fastce works
without CuPy or a GPU.  Install the extra with ``pip install "fastce[cupy]"``.
"""
from ._api import (  # noqa: F401
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_with_grad,
    describe,
    is_cupy_call,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
from ._bce import (  # noqa: F401
    cupy_ops as bce_ops,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
)
from ._linear import linear_call, linear_cross_entropy, linear_cross_entropy_with_grad  # noqa: F401
from ._nll import nll_loss_backward  # noqa: F401

__all__ = [
    "is_cupy_call", "describe",
    "logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad",
    "cross_entropy_backward", "nll_loss", "nll_loss_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
    "linear_cross_entropy", "linear_cross_entropy_with_grad", "linear_call", "bce_ops",
]
