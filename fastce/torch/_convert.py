"""Tensors to NumPy views and back, without copies, and the thread count of a call."""
from typing import Any, Optional

import numpy as np
import torch

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _has_cupy() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def check_device(t: torch.Tensor, name: str) -> None:
    """Raise a clear error for tensors fastce cannot read in place (CUDA, meta, ...).

    CUDA tensors: fastce has a GPU path (CuPy arrays), but this version does not route
    CUDA tensors to it (a DLPack hand-over could not be tested without a GPU), so the
    error says what works today and what the hand-over would need.
    """
    if t.device.type == "cpu":
        return
    if t.device.type == "cuda":
        cupy_note = ("" if _has_cupy() else
                     ", which is not installed here: pip install 'fastce[cupy]'")
        raise NotImplementedError(
            f"fastce.torch: {name} is a CUDA tensor ({t.device}); fastce.torch computes on CPU "
            f"tensors only: handing CUDA tensors to fastce's GPU path is not implemented in this "
            f"version. Move the tensors to the CPU (.cpu()), or use torch.nn.functional on the "
            f"GPU, or call fastce's array API on cupy.from_dlpack(t.detach()) (no autograd; "
            f"needs a CUDA build of torch and CuPy{cupy_note}).")
    raise RuntimeError(f"fastce.torch computes on CPU tensors; {name} is on {t.device}")


def _bfloat16() -> Any:
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("fastce.torch: bfloat16 tensors are read through ml_dtypes' bfloat16 "
                          "NumPy dtype; pip install ml_dtypes (or 'fastce[torch]')") from None
    return ml_dtypes.bfloat16


def as_array(t: Optional[torch.Tensor], name: str) -> Any:
    """A NumPy view of ``t``'s memory (same strides), or None for None.

    The view aliases the tensor: writing to it writes the tensor. ``bfloat16`` tensors are
    reinterpreted as int16 and viewed with ml_dtypes' ``bfloat16`` (2 bytes either way).
    """
    if t is None:
        return None
    if t.requires_grad:  # before .numpy(): torch's refusal (an exception) costs ~10 us
        t = t.detach()
    try:  # the common case costs one call; torch refuses the rare others, handled below
        return t.numpy()
    except (RuntimeError, TypeError, NotImplementedError):
        pass
    if not t.is_cpu:
        check_device(t, name)
    if t.is_neg() or t.is_conj():  # lazy negation bits: .numpy() refuses them
        t = t.resolve_neg().resolve_conj()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def to_tensor(a: Any, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A tensor sharing ``a``'s memory (a NumPy scalar becomes a 0-d tensor)."""
    a = np.asarray(a)
    if not a.flags.writeable:  # torch warns on read-only arrays; results are ours, so copy
        a = a.copy()
    if a.dtype.kind == "V":  # ml_dtypes' bfloat16 (dtype.name is a slow Python property)
        out = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        out = torch.from_numpy(a)
    return out if dtype is None or out.dtype == dtype else out.to(dtype)


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss dtype for logits of ``dtype``: float32 for float16/bfloat16 (computed in float32)."""
    return torch.float32 if dtype in _HALF else dtype


def resolve_threads(n_threads: Optional[int]) -> int:
    """``n_threads`` when given (> 0), else torch's intra-op thread count."""
    return n_threads if n_threads and n_threads > 0 else torch.get_num_threads()


def check_float(t: torch.Tensor, name: str) -> None:
    if not t.dtype.is_floating_point or t.dtype not in _FLOATS:
        raise NotImplementedError(f"fastce.torch: {name} must be float32, float64, float16 or "
                                  f"bfloat16, got {t.dtype}")
