"""Tensors to NumPy views and back, without copies, and the thread count of a call."""
import numpy as np
import torch

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_device(t, name):
    """Raise a clear error for tensors fastce cannot read in place (CUDA, meta, ...)."""
    if t.device.type == "cpu":
        return
    if t.device.type == "cuda":
        try:
            import cupy  # noqa: F401
        except ImportError:
            raise RuntimeError(
                f"fastce.torch: {name} is a CUDA tensor; fastce's GPU path needs CuPy "
                f"(pip install 'fastce[cupy]'), which is not installed. Move the tensors to "
                f"the CPU or use torch.nn.functional on the GPU.") from None
        raise NotImplementedError(
            f"fastce.torch: {name} is a CUDA tensor; routing CUDA tensors to fastce's CuPy "
            f"kernels is not implemented yet. Use fastce.cross_entropy on cupy.from_dlpack(t) "
            f"directly, or torch.nn.functional on the GPU.")
    raise RuntimeError(f"fastce.torch computes on CPU tensors; {name} is on {t.device}")


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("fastce.torch: bfloat16 tensors are read through ml_dtypes' bfloat16 "
                          "NumPy dtype; pip install ml_dtypes (or 'fastce[torch]')") from None
    return ml_dtypes.bfloat16


def as_array(t, name):
    """A NumPy view of ``t``'s memory (same strides), or None for None.

    The view aliases the tensor: writing to it writes the tensor. ``bfloat16`` tensors are
    reinterpreted as int16 and viewed with ml_dtypes' ``bfloat16`` (2 bytes either way).
    """
    if t is None:
        return None
    if not t.is_cpu:
        check_device(t, name)
    if t.requires_grad:
        t = t.detach()
    if t.is_neg() or t.is_conj():  # lazy negation bits: .numpy() refuses them
        t = t.resolve_neg().resolve_conj()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def to_tensor(a, dtype=None):
    """A tensor sharing ``a``'s memory (a NumPy scalar becomes a 0-d tensor)."""
    a = np.asarray(a)
    if not a.flags.writeable:  # torch warns on read-only arrays; results are ours, so copy
        a = a.copy()
    if a.dtype.name == "bfloat16":
        out = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        out = torch.from_numpy(a)
    return out if dtype is None or out.dtype == dtype else out.to(dtype)


def loss_dtype(dtype):
    """The loss dtype for logits of ``dtype``: float32 for float16/bfloat16 (computed in float32)."""
    return torch.float32 if dtype in _HALF else dtype


def resolve_threads(n_threads):
    """``n_threads`` when given (> 0), else torch's intra-op thread count."""
    return n_threads if n_threads and n_threads > 0 else torch.get_num_threads()


def check_float(t, name):
    if not t.dtype.is_floating_point or t.dtype not in _FLOATS:
        raise NotImplementedError(f"fastce.torch: {name} must be float32, float64, float16 or "
                                  f"bfloat16, got {t.dtype}")
