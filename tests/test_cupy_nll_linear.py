"""nll_loss_backward and the fused linear cross-entropy on CuPy arrays (real GPU).

Runs only where CuPy imports and sees a GPU; skipped otherwise, with the reason.  The
checks are ``nll_linear_cases``'s, driven through the public ``fastce`` functions (so
their dispatch to ``fastce.cuda`` is exercised); the same checks run on the CPU against
the kernel emulator in test_cuda_emulated_nll_linear.py.  Here ``d_weight`` accumulates
through ``cupy.cublas.gemm`` (beta=1) where CuPy has it.
"""
import numpy as np
import pytest

import nll_linear_cases as NL

cp = pytest.importorskip("cupy", reason="CuPy is not installed: the GPU path is not tested")
try:
    _N_DEV = cp.cuda.runtime.getDeviceCount()
except Exception as exc:  # CuPy without a driver / device
    pytest.skip(f"CuPy {cp.__version__} sees no usable GPU: {type(exc).__name__}: {exc}",
                allow_module_level=True)
if _N_DEV == 0:
    pytest.skip(f"CuPy {cp.__version__} sees no GPU", allow_module_level=True)

from test_cupy import GpuHarness  # noqa: E402


@pytest.fixture
def h():
    return GpuHarness()


class TestShared(NL.SharedTests):
    """nll_linear_cases' matrix (also run on the CPU by test_cuda_emulated_nll_linear.py)."""


def test_nll_backward_large(h):
    NL.check_nll_backward(h, (4096, 128), np.float32, "C", weight="random", ignore="some",
                          reduction="mean")


def test_nll_backward_half(h):
    """CuPy's float64 -> float16 cast may round through float32: one step allowed."""
    NL.check_nll_backward_half(h, np.dtype(np.float16), ulps=1)


@pytest.mark.parametrize("dtype", NL.DTYPES, **NL.DT)
def test_linear_larger(h, reference, dtype):
    """Several chunks of a larger head (cuBLAS picks other kernels than for tiny shapes)."""
    NL.check_linear(h, reference, n=257, hdim=64, v=5000, dtype=dtype, bias=True, ignore="some",
                    reduction="mean", label_smoothing=0.1, chunk_size=100)


def test_linear_weight_gradient_in_place():
    """cupy.cublas.gemm is there (CuPy >= 9): the accumulation path the module uses."""
    from fastce.cuda._linear import _cublas_gemm
    assert _cublas_gemm(cp) is not None
