"""binary_cross_entropy_with_logits on CuPy arrays: the GPU path (fastce/cuda/bce.cu) against
the float64 reference, through the public ``fastce`` functions.

Runs only where CuPy imports and sees a GPU; skipped otherwise, with the reason.  The matrix
is tests/cuda_bce_cases.py's, the one tests/test_cuda_emulated_bce.py runs on the CPU
against an emulation of the kernel, with larger shapes here (several waves of blocks, the
full grid) since a GPU runs them in no time.
"""
import time

import numpy as np
import pytest

import cuda_bce_cases as K
import fastce
from fastce import cuda as fcuda
# test_cupy skips (this module with it) where CuPy or a GPU is missing, with the reason
from test_cupy import GpuHarness as CeHarness, cp


class GpuHarness(CeHarness):
    """tests/test_cupy.py's harness (host, is_dev, shares), for cuda_bce_cases."""

    fns = fastce
    array_name = "cupy.ndarray"
    to_dev = staticmethod(cp.asarray)

    @staticmethod
    def dev(a, layout="C"):
        return K.layout_on(cp.asarray, a, layout)


@pytest.fixture
def h():
    return GpuHarness()


# ------------------------------------------------------------------ the shared matrix
class TestCupy(K.BceMatrix):
    pass


# ------------------------------------------------------------------ larger than the emulator runs
@pytest.mark.parametrize("layout", K.LAYOUTS)
@pytest.mark.parametrize("shape", [(300, 1000), (3, 100003), (1 << 20,), (64, 3, 129)], ids=str)
@pytest.mark.parametrize("dtype", K.DTYPES, **K.DTYPE_IDS)
def test_large_shapes(h, reference, dtype, shape, layout):
    """Several waves of blocks, the full grid of BCE_MAX_BLOCKS, every thread walking many
    elements."""
    for reduction, wk, pk in (("mean", "full", "C"), ("none", "N1", "full"), ("sum", "scalar", None),
                              ("mean", "C", "N1")):
        K.check_case(h, reference, shape, dtype, layout, wk, pk, reduction)


@pytest.mark.parametrize("out_layout", K.LAYOUTS)
@pytest.mark.parametrize("dtype", K.DTYPES, **K.DTYPE_IDS)
def test_large_out_and_inplace(h, dtype, out_layout):
    K.check_out(h, dtype, (512, 1000), out_layout)
    K.check_inplace(h, dtype, (1 << 20,))


# ------------------------------------------------------------------ API behaviour
def test_results_are_cupy_arrays():
    x = cp.asarray(K.make_x((4, 9), np.float32))
    y = cp.asarray(K.make_y((4, 9), np.float32))
    loss = fastce.binary_cross_entropy_with_logits(x, y)
    assert isinstance(loss, cp.ndarray) and loss.shape == () and loss.dtype == cp.float32
    loss, g = fastce.binary_cross_entropy_with_logits_with_grad(x, y)
    assert isinstance(g, cp.ndarray) and g.dtype == cp.float32 and g.shape == (4, 9)
    direct = fcuda.binary_cross_entropy_with_logits(x, y)
    assert cp.asnumpy(direct).tobytes() == cp.asnumpy(loss).tobytes()


def test_mixing_numpy_and_cupy_raises():
    x, y = K.make_x((4, 9), np.float32), K.make_y((4, 9), np.float32)
    fwd, fused = fastce.binary_cross_entropy_with_logits, fastce.binary_cross_entropy_with_logits_with_grad
    with pytest.raises(TypeError, match="mix of CuPy and NumPy arrays: logits on the GPU .* but target"):
        fwd(cp.asarray(x), y)
    with pytest.raises(TypeError, match="target on the GPU .* but logits on the host"):
        fwd(x, cp.asarray(y))
    with pytest.raises(TypeError, match="but pos_weight on the host"):
        fwd(cp.asarray(x), cp.asarray(y), pos_weight=np.ones(9))
    with pytest.raises(TypeError, match="but grad_output on the host"):
        fused(cp.asarray(x), cp.asarray(y), reduction="none", grad_output=np.ones((4, 9)))
    with pytest.raises(TypeError, match="but out on the host"):
        fused(cp.asarray(x), cp.asarray(y), out=np.empty((4, 9), np.float32))
    crit = fastce.BCEWithLogitsLoss(weight=cp.ones(9))
    with pytest.raises(TypeError, match="but logits, target on the host"):
        crit(x, y)
    crit(cp.asarray(x), cp.asarray(y))
    with pytest.raises(TypeError, match="but out on the host"):
        crit.backward(out=np.empty((4, 9), np.float32))
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fcuda.binary_cross_entropy_with_logits(cp.asarray(x), y)


def test_no_host_synchronisation():
    """The calls only enqueue work: they return while a ~1 s kernel queued ahead of them
    on the stream still runs (a device-to-host read would wait for it)."""
    x = cp.asarray(K.make_x((1 << 20,), np.float32))
    y = cp.asarray(K.make_y((1 << 20,), np.float32))
    pw, w = cp.asarray(K.make_operand("C", (1 << 20,), np.float32)), cp.asarray(2.0)
    for reduction in K.REDUCTIONS:  # compile and warm up first
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=pw, reduction=reduction)
    cp.cuda.Device().synchronize()
    spin = cp.RawKernel(r"""extern "C" __global__ void spin(long long n) {
        long long t0 = clock64(); while (clock64() - t0 < n) {} }""", "spin")
    spin((1,), (1,), (np.int64(2_000_000_000),))  # about 1 s at 2 GHz
    t0 = time.perf_counter()
    for reduction in K.REDUCTIONS:
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=pw, reduction=reduction)
        fastce.binary_cross_entropy_with_logits(x, y, weight=w, reduction=reduction)
    elapsed = time.perf_counter() - t0
    cp.cuda.Device().synchronize()
    assert elapsed < 0.3, f"the calls took {elapsed:.2f} s: they waited for the device"
