"""fastce: fast softmax cross-entropy on NumPy arrays.

Row-wise log-sum-exp, log-softmax, softmax, cross-entropy (forward, fused forward +
backward, backward) and NLL with PyTorch's semantics, computed by SIMD kernels
(AVX-512, AVX2+FMA, NEON, scalar; chosen at import) over OpenMP threads.
"""
__version__ = "0.1.0"

from ._api import (  # noqa: E402
    CrossEntropyLoss,
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    nll_loss_backward,
    softmax,
)
from ._bce import (  # noqa: E402
    BCEWithLogitsLoss,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
)
from ._validation import ArgumentTypeError, ArgumentValueError  # noqa: E402
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad  # noqa: E402
from ._config import (  # noqa: E402
    _select_initial_isa,
    get_isa,
    get_num_threads,
    set_isa,
    set_num_threads,
    show_config,
    supported_isas,
)

_select_initial_isa()
del _select_initial_isa

__all__ = [
    "CrossEntropyLoss", "cross_entropy", "cross_entropy_backward", "cross_entropy_with_grad",
    "log_softmax", "logsumexp", "nll_loss", "nll_loss_backward", "softmax",
    "ArgumentTypeError", "ArgumentValueError",
    "BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
    "linear_cross_entropy", "linear_cross_entropy_with_grad",
    "get_isa", "set_isa", "supported_isas", "get_num_threads", "set_num_threads", "show_config",
]
