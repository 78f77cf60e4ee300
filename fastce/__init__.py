"""fastce: fast softmax cross-entropy on NumPy arrays.

Row-wise log-sum-exp, log-softmax, softmax, cross-entropy (forward, fused forward +
backward, backward) and NLL with PyTorch's semantics, computed by SIMD kernels
(AVX-512, AVX2+FMA, NEON, scalar; chosen at import) over OpenMP threads.
"""
from __future__ import annotations

from ._version import __version__  # noqa: E402, F401  (a leaf: _config reads it too)

# The compiled core first: in a source tree that was never built, "from ._api import ..."
# would otherwise fail with Python's misleading "partially initialized module ... circular
# import" message.
try:
    from . import _kernels  # noqa: E402, F401
except ImportError as _exc:
    import importlib.machinery as _machinery
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if any(f.startswith("_kernels.") and f.endswith(tuple(_machinery.EXTENSION_SUFFIXES))
           for f in _os.listdir(_here)):
        raise  # the module is built but does not load (a missing libgomp, say): say that
    raise ImportError(
        f"fastce is not built in {_here}: the compiled module fastce._kernels is missing. "
        "This is fastce's source tree, imported because it is first on sys.path (Python "
        "run from the repository root, or python -m/-c there). Either install fastce "
        "(pip install .) and run Python from another directory, or build it in place "
        "(pip install -e .)."
    ) from None

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
from ._errors import ArgumentTypeError, ArgumentValueError  # noqa: E402
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad  # noqa: E402
from ._config import (  # noqa: E402
    _select_initial_isa,
    register_backend as _register_backend,
    get_isa,
    get_num_threads,
    set_isa,
    set_num_threads,
    show_config,
    supported_isas,
)

_select_initial_isa()
del _select_initial_isa


def _describe_gpu() -> str | None:
    """show_config's GPU line: the CuPy path's own description, None without CuPy."""
    try:
        from . import cuda
    except ImportError:
        return None
    description: str | None = cuda.describe()  # fastce.cuda is not annotated
    return description


_register_backend("gpu", _describe_gpu)

__all__ = [
    "CrossEntropyLoss", "cross_entropy", "cross_entropy_backward", "cross_entropy_with_grad",
    "log_softmax", "logsumexp", "nll_loss", "nll_loss_backward", "softmax",
    "ArgumentTypeError", "ArgumentValueError",
    "BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
    "linear_cross_entropy", "linear_cross_entropy_with_grad",
    "get_isa", "set_isa", "supported_isas", "get_num_threads", "set_num_threads", "show_config",
]
