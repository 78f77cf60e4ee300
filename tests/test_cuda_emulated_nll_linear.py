"""The GPU path's nll_loss_backward and fused linear cross-entropy, run on the CPU.

The kernels (reduce.cu's ``fastce_nll_backward_*``, and rows.cu's fused cross-entropy
under the linear cross-entropy) run in the CUDA emulator of ``tests/cuda_emu``; the host
code (``fastce.cuda._nll``, ``fastce.cuda._linear``) drives it exactly as it drives CuPy,
with ``xp = numpy`` standing in for CuPy's arrays and cuBLAS.  The checks are
``nll_linear_cases``'s, shared with test_cupy_nll_linear.py (real GPU).  What this proves
and what it does not: see test_cuda_emulated.py.
"""
import numpy as np
import pytest

import fastce
import nll_linear_cases as NL
from conftest import make_logits, make_target
from test_cuda_emulated import EmuHarness, _same_error, emu_dll  # noqa: F401 - emu_dll: a fixture

from fastce.cuda._linear import GpuLinearCall, LinearOps  # noqa: E402
from fastce.cuda._nll import NllOps  # noqa: E402


class EmuOps(NllOps, LinearOps):
    """Every GPU-path function, on the emulator backend."""


class Harness(EmuHarness):
    def __init__(self, dll, order=0, sm_count=4):
        super().__init__(dll, order, sm_count)
        self.ops = EmuOps(self.backend)


@pytest.fixture
def h(emu_dll):  # noqa: F811
    return Harness(emu_dll)


class TestShared(NL.SharedTests):
    """nll_linear_cases' matrix (also run on a GPU by test_cupy_nll_linear.py)."""


# ------------------------------------------------------------------ nll_loss_backward
@pytest.mark.parametrize("target_dtype", [np.int32, np.uint8, np.int16])
def test_nll_backward_target_dtypes(h, target_dtype):
    lp = make_logits((9, 6), np.float64, seed=3)
    y = make_target(9, 6, seed=3)
    g = h.ops.nll_loss_backward(lp, y.astype(target_dtype), reduction="sum")
    np.testing.assert_array_equal(g, fastce.nll_loss_backward(lp, y, reduction="sum"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_nll_backward_half(h, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    NL.check_nll_backward_half(h, np.dtype(dtype))


def test_nll_backward_launches(h):
    """The target scan, then one scatter thread per row (the zero-fill is the host's)."""
    h.ops.nll_loss_backward(make_logits((300, 7), np.float32), make_target(300, 7))
    assert [l[:2] for l in h.backend.launches] == [
        ("fastce_target_scan", (1, 1, 1)), ("fastce_nll_backward_f32", (2, 1, 1))]


NLL_ERRORS = {
    "target shape": lambda x, y: ((x, y[:-1]), {}),
    "target float": lambda x, y: ((x, y.astype(np.float32)), {}),
    "target value": lambda x, y: ((x, np.where(np.arange(y.size) == 2, 7, y)), {}),
    "weight shape": lambda x, y: ((x, y), dict(weight=np.ones(3))),
    "reduction": lambda x, y: ((x, y), dict(reduction="avg")),
    "ignore_index": lambda x, y: ((x, y), dict(ignore_index=0.5)),
    "grad_output none shape": lambda x, y: ((x, y, np.ones(3)), dict(reduction="none")),
    "grad_output vector sum": lambda x, y: ((x, y, np.ones(5)), dict(reduction="sum")),
    "grad_output bool": lambda x, y: ((x, y, np.array(True)), {}),
    "out shape": lambda x, y: ((x, y), dict(out=np.empty((5, 6), np.float32))),
    "out dtype": lambda x, y: ((x, y), dict(out=np.empty((5, 7)))),
    "out overlaps": lambda x, y: ((x, y), dict(out=x)),
    "0-d": lambda x, y: ((x[0, 0], y), {}),
    "no class": lambda x, y: ((x[:, :0], y), {}),
}


@pytest.mark.parametrize("name", list(NLL_ERRORS))
def test_nll_backward_errors_match_cpu(h, name):
    args, kw = NLL_ERRORS[name](make_logits((5, 7), np.float32), make_target(5, 7))
    _same_error(lambda: fastce.nll_loss_backward(*args, **kw),
                lambda: h.ops.nll_loss_backward(*args, **kw))


# ------------------------------------------------------------------ linear cross-entropy
def test_linear_cublas_gemm_path(h, reference, monkeypatch):
    """With cupy.cublas.gemm (here a NumPy stand-in with its semantics), d_weight
    accumulates in place: beta=0 for the first chunk, beta=1 after."""
    from fastce.cuda import _linear as GL
    calls = []

    def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        op_a = a.T if transa == "T" else a
        op_b = b.T if transb == "T" else b
        calls.append((transa, transb, beta, out.shape))
        out[...] = alpha * (op_a @ op_b) + (beta * out if beta else 0.0)
        return out

    monkeypatch.setattr(GL, "_cublas_gemm", lambda xp: gemm)
    NL.check_linear(h, reference, n=20, hdim=8, v=60, dtype=np.float64, bias=False, ignore="some",
                    reduction="sum", chunk_size=5)
    assert [c[2] for c in calls] == [0.0, 1.0, 1.0], "13 valid rows in chunks of 5"
    assert all(c[:2] == ("T", "N") and c[3] == (60, 8) for c in calls)


def test_linear_blocked_accumulation(h, reference, monkeypatch):
    """Without cuBLAS's gemm: one reused block of d_weight rows (7 here: 60 = 8 * 7 + 4)."""
    import fastce._linear_call as L
    monkeypatch.setattr(L, "_ACC_BLOCK_BYTES", 7 * 8 * 8)
    NL.check_linear(h, reference, n=20, hdim=8, v=60, dtype=np.float64, bias=True, ignore="none",
                    reduction="mean", chunk_size=6)


def _linear_inputs():
    return NL.make_linear_inputs(6, 4, 9, np.float32, ignore="some")


LINEAR_ERRORS = {
    "target shape": lambda x, w, b, t: ((x, w, t[:-1]), {}),
    "target float": lambda x, w, b, t: ((x, w, t.astype(np.float32)), {}),
    "target value": lambda x, w, b, t: ((x, w, np.where(np.arange(6) == 2, -3, t)), {}),
    "hidden int": lambda x, w, b, t: ((x.astype(np.int32), w, t), {}),
    "hidden 1-d": lambda x, w, b, t: ((x[0], w, t), {}),
    "dtype mismatch": lambda x, w, b, t: ((x, w.astype(np.float64), t), {}),
    "features": lambda x, w, b, t: ((x, w[:, :3], t), {}),
    "bias shape": lambda x, w, b, t: ((x, w, t), dict(bias=b[:4])),
    "bias dtype": lambda x, w, b, t: ((x, w, t), dict(bias=b.astype(np.float64))),
    "chunk and budget": lambda x, w, b, t: ((x, w, t), dict(chunk_size=2, memory_budget=100)),
    "chunk 0": lambda x, w, b, t: ((x, w, t), dict(chunk_size=0)),
    "budget": lambda x, w, b, t: ((x, w, t), dict(memory_budget=-1)),
    "reduction": lambda x, w, b, t: ((x, w, t), dict(reduction="avg")),
    "smoothing": lambda x, w, b, t: ((x, w, t), dict(label_smoothing=2.0)),
    "z_loss": lambda x, w, b, t: ((x, w, t), dict(z_loss=-1.0)),
    "n_threads": lambda x, w, b, t: ((x, w, t), dict(n_threads=0)),
    "grad_output none": lambda x, w, b, t: ((x, w, t), dict(reduction="none", grad_output=np.ones(2))),
    "grad_output mean": lambda x, w, b, t: ((x, w, t), dict(grad_output=np.ones(6))),
}


@pytest.mark.parametrize("name", list(LINEAR_ERRORS))
def test_linear_errors_match_cpu(h, name):
    args, kw = LINEAR_ERRORS[name](*_linear_inputs())
    _same_error(lambda: fastce.linear_cross_entropy_with_grad(*args, **kw),
                lambda: h.ops.linear_cross_entropy_with_grad(*args, **kw))
    kw.pop("grad_output", None)
    if "grad_output" not in name:
        _same_error(lambda: fastce.linear_cross_entropy(*args, **kw),
                    lambda: h.ops.linear_cross_entropy(*args, **kw))


# ------------------------------------------------------------------ determinism, dispatch
def test_same_bits_for_both_thread_orders(emu_dll):  # noqa: F811
    res = []
    for order in (0, 1):
        hh = Harness(emu_dll, order)
        lp = make_logits((3, 6, 4), np.float32, seed=5)
        y = make_target(12, 6, ignore="some", seed=5).reshape(3, 4)
        g = hh.ops.nll_loss_backward(lp, y, weight=np.linspace(0.5, 2, 6))
        hid, w, b, t = NL.make_linear_inputs(13, 8, 70, np.float32, ignore="some")
        lin = hh.ops.linear_cross_entropy_with_grad(hid, w, t, bias=b, label_smoothing=0.1,
                                                    chunk_size=4)
        res.append([g.tobytes()] + [np.asarray(a).tobytes() for a in lin])
    assert res[0] == res[1]


def test_public_functions_dispatch_to_the_gpu_twins(h, monkeypatch):
    """fastce.nll_loss_backward / linear_cross_entropy* hand CuPy calls to fastce.cuda with
    every argument (here: _cuda_dispatch answers with the emulated twins)."""
    import sys
    import types

    from fastce import cuda
    import fastce._linear as L
    for name in ("nll_loss_backward", "linear_call", "linear_cross_entropy",
                 "linear_cross_entropy_with_grad"):
        assert callable(getattr(cuda, name))
    twins = {"nll_loss_backward": h.ops.nll_loss_backward,
             "linear_call": lambda *a, **k: GpuLinearCall(h.ops, *a, **k)}
    seen = []

    def dispatch(name, *arrays):
        seen.append(name)
        return twins[name]

    # nll_loss_backward: the contract hands arrays of a (stand-in) cupy.ndarray to fastce.cuda
    class DevArray(np.ndarray):
        pass

    fake = types.ModuleType("cupy")
    fake.ndarray = DevArray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda, "nll_loss_backward", h.ops.nll_loss_backward)
    monkeypatch.setattr(L, "_cuda_dispatch", dispatch)
    lp = make_logits((6, 5), np.float64)
    y = make_target(6, 5, ignore="some")
    kw = dict(weight=np.linspace(1, 2, 5).view(DevArray), reduction="none", ignore_index=-100)
    launches = len(h.backend.launches)
    g = fastce.nll_loss_backward(lp.view(DevArray), y.view(DevArray), np.arange(6.0).view(DevArray), **kw)
    assert len(h.backend.launches) > launches, "ran on the emulated GPU path"
    monkeypatch.undo()
    kw["weight"] = np.asarray(kw["weight"])
    np.testing.assert_array_equal(g, fastce.nll_loss_backward(lp, y, np.arange(6.0), **kw))
    monkeypatch.setattr(L, "_cuda_dispatch", dispatch)
    hid, w, b, t = _linear_inputs()
    kw = dict(bias=b, reduction="sum", label_smoothing=0.2, chunk_size=2)
    got = fastce.linear_cross_entropy_with_grad(hid, w, t, grad_output=3.0, **kw)
    fwd = fastce.linear_cross_entropy(hid, w, t, **kw)
    assert seen == ["linear_call", "linear_call"]  # nll_loss_backward went through the contract
    assert isinstance(fwd, np.ndarray) and fwd.shape == (), "a 0-d array: the GPU path's result"
    monkeypatch.undo()
    cpu = fastce.linear_cross_entropy_with_grad(hid, w, t, grad_output=3.0, **kw)
    for a, c in zip(got, cpu):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
