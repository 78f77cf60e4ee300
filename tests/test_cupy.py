"""fastce on CuPy arrays: the GPU path against the NumPy reference and torch.

Runs only where CuPy imports and sees a GPU; skipped otherwise, with the reason.
The matrix is tests/cuda_cases.py's, driven through the public ``fastce`` functions
(so the CPU API's dispatch to ``fastce.cuda`` is exercised too); the same matrix runs
on the CPU against an emulation of the kernels in test_cuda_emulated.py.
"""
import numpy as np
import pytest

import cuda_cases as K
from conftest import make_logits, make_target, make_weight, torch_cross_entropy

cp = pytest.importorskip("cupy", reason="CuPy is not installed: the GPU path is not tested")
try:
    _N_DEV = cp.cuda.runtime.getDeviceCount()
except Exception as exc:  # CuPy without a driver / device
    pytest.skip(f"CuPy {cp.__version__} sees no usable GPU: {type(exc).__name__}: {exc}",
                allow_module_level=True)
if _N_DEV == 0:
    pytest.skip(f"CuPy {cp.__version__} sees no GPU", allow_module_level=True)

import fastce  # noqa: E402
from fastce import cuda as fcuda  # noqa: E402


class GpuHarness:
    ops = fastce

    @staticmethod
    def dev(a, layout="C"):
        return K.layout_on(cp.asarray, a, layout)

    @staticmethod
    def host(a):
        return cp.asnumpy(a)

    @staticmethod
    def is_dev(a):
        return isinstance(a, cp.ndarray)

    @staticmethod
    def shares(a, b):
        return cp.shares_memory(a, b)


@pytest.fixture
def h():
    return GpuHarness()


# ------------------------------------------------------------------ the shared matrix
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", K.ROW_SHAPES + K.LONG_SHAPES + [(5,), (1, 262144), (64, 32000)],
                         ids=str)
@pytest.mark.parametrize("layout", ["C", "F", "sliced"])
def test_row_functions(h, reference, shape, dtype, layout):
    if len(shape) == 1 and layout == "F":
        pytest.skip("1-D")
    K.check_row_functions(h, reference, shape, dtype, layout)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("out_layout", ["C", "F", "sliced"])
def test_row_outputs(h, reference, dtype, out_layout):
    for shape in ((6, 40), (3, 2500), (2, 50000)):
        K.check_row_outputs(h, reference, shape, dtype, out_layout)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_axes(h, reference, dtype):
    K.check_axes(h, reference, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(6, 5), (6, 100), (6, 1000), (5, 2500), (5, 6000), (5, 9000),
                                   (5, 40000)], ids=str)
def test_special_values(h, reference, shape, dtype):
    K.check_special_values(h, reference, shape, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7, 5), (9, 33), (3, 1000), (3, 2500), (2, 9000), (3, 40000),
                                   (300, 10)], ids=str)
@pytest.mark.parametrize("layout", ["C", "F", "sliced"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_layouts(h, reference, shape, dtype, layout, reduction):
    K.check_cross_entropy(h, reference, shape, dtype, layout, weight="random", ignore="some",
                          eps=0.1, reduction=reduction)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("weight", [None, "random"])
@pytest.mark.parametrize("ignore", ["none", "some"])
@pytest.mark.parametrize("eps", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_options(h, reference, dtype, weight, ignore, eps, reduction):
    K.check_cross_entropy(h, reference, (10, 37), dtype, "C", weight=weight, ignore=ignore, eps=eps,
                          reduction=reduction)


@pytest.mark.parametrize("target_dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_target_dtypes(h, reference, target_dtype):
    K.check_cross_entropy(h, reference, (12, 9), np.float64, "C", weight=None, ignore="none",
                          eps=0.0, reduction="mean", target_dtype=target_dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_grad_output_device_scalar(h, reference, dtype):
    K.check_grad_output_scalar_device(h, reference, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(8, 10), (4, 700), (3, 3000), (2, 9000), (2, 40000)], ids=str)
def test_inplace_and_out(h, reference, shape, dtype):
    K.check_inplace_and_out(h, reference, shape, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_kdim(h, reference, dtype):
    K.check_kdim(h, reference, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_edge_batches(h, dtype):
    K.check_edge_batches(h, dtype)


def test_bad_target(h):
    K.check_bad_target(h, np.float32)


def test_deterministic(h):
    K.check_deterministic(h, np.float32)


# ------------------------------------------------------------------ LLM options, probabilities, half
OPTION_SHAPES = [((40, 6), "F"), ((7, 5), "C"), ((9, 33), "sliced"), ((3, 1000), "C"),
                 ((3, 2500), "C"), ((2, 6000), "C"), ((2, 9000), "C"), ((3, 33000), "C"),
                 ((256, 32000), "C"), ((2, 262144), "C")]


def _gpu_half_dtypes():
    """float16, and bfloat16 where both ml_dtypes and this CuPy handle it."""
    out = []
    for d in K.half_dtypes():
        try:
            cp.asarray(np.zeros(2, d))
        except Exception:  # CuPy without bfloat16
            continue
        out.append(d)
    return out


class TestOptions(K.OptionTests):
    """The shared option tests (forms, identities, shards) on this harness."""


@pytest.mark.parametrize("opts", K.SHARD_OPTIONS, ids=["plain", "weight-smooth-z", "all-none"])
def test_vocabulary_shards_llm_size(h, reference, opts):
    K.check_shards(h, reference, (64, 128256), np.float64, n_shards=4, **opts)


@pytest.mark.parametrize("shape,layout", OPTION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_llm_options_every_kernel(h, reference, shape, layout, dtype):
    K.check_llm_options(h, reference, shape, dtype, layout, z=1e-3, cap=15.0, eps=0.1,
                        weight=True, reduction="mean")


@pytest.mark.parametrize("shape,layout", OPTION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_soft_targets_every_kernel(h, reference, shape, layout, dtype):
    K.check_soft_targets(h, reference, shape, dtype, layout, weight=True, eps=0.1,
                         reduction="mean", z=1e-3, cap=20.0)


@pytest.mark.parametrize("shape,layout", [((40, 6), "F"), ((7, 5), "C"), ((9, 300), "sliced"),
                                          ((3, 2500), "C"), ((2, 9000), "C"), ((2, 40000), "C"),
                                          ((128, 32000), "C")], ids=str)
@pytest.mark.parametrize("hdtype", _gpu_half_dtypes(), ids=lambda d: d.name)
def test_half_precision(h, reference, shape, layout, hdtype):
    K.check_half(h, reference, shape, hdtype, layout)


@pytest.mark.parametrize("hdtype", _gpu_half_dtypes(), ids=lambda d: d.name)
def test_half_conversions(h, hdtype):
    K.check_half_conversions(h, hdtype)


# ------------------------------------------------------------------ torch, the contract
@pytest.mark.torch
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(64, 10), (16, 1000), (4, 32000), (2, 40000)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_against_torch(torch, shape, dtype, reduction, eps):
    x = make_logits(shape, dtype, seed=21)
    y = make_target(shape[0], shape[1], ignore="some", seed=21)
    w = make_weight(shape[1], "random", dtype=dtype)
    go = 1.0 if reduction != "none" else np.linspace(0.5, 2, shape[0]).astype(dtype)
    tl, tg = torch_cross_entropy(torch, x, y, go, weight=w, reduction=reduction, label_smoothing=eps)
    loss, g = fastce.cross_entropy_with_grad(
        cp.asarray(x), cp.asarray(y), weight=cp.asarray(w), reduction=reduction,
        label_smoothing=eps, grad_output=go if reduction != "none" else cp.asarray(go))
    t = K.tol(dtype) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    K.assert_close(cp.asnumpy(loss), tl, what=f"torch loss {shape} {reduction} eps={eps}", **t)
    K.assert_close(cp.asnumpy(g), tg, what=f"torch grad {shape} {reduction} eps={eps}",
                   scale_atol=True, **t)


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(64, 10), (4, 32000)], ids=str)
def test_probability_targets_against_torch(torch, shape):
    x = make_logits(shape, np.float64, seed=22)
    p = np.random.default_rng(22).random(shape)
    p /= p.sum(axis=1, keepdims=True)
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tx, torch.tensor(p), label_smoothing=0.1)
    tl.backward()
    loss, g = fastce.cross_entropy_with_grad(cp.asarray(x), cp.asarray(p), label_smoothing=0.1)
    K.assert_close(cp.asnumpy(loss), tl.detach().numpy(), what=f"torch soft loss {shape}",
                   **K.tol(np.float64))
    K.assert_close(cp.asnumpy(g), tx.grad.numpy(), what=f"torch soft grad {shape}", scale_atol=True,
                   **K.tol(np.float64))


# ------------------------------------------------------------------ API behaviour
def test_results_are_cupy_arrays():
    x = cp.asarray(make_logits((4, 9), np.float32))
    y = cp.asarray(make_target(4, 9))
    assert isinstance(fastce.cross_entropy(x, y), cp.ndarray)
    assert fastce.cross_entropy(x, y).shape == ()
    assert isinstance(fastce.logsumexp(x[0]), cp.ndarray)
    loss, g = fastce.cross_entropy_with_grad(x, y)
    assert isinstance(g, cp.ndarray) and g.dtype == cp.float32


def test_mixing_numpy_and_cupy_raises():
    x = make_logits((4, 9), np.float32)
    y = make_target(4, 9)
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.cross_entropy(cp.asarray(x), y)
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.cross_entropy(x, cp.asarray(y))
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.cross_entropy(cp.asarray(x), cp.asarray(y), weight=np.ones(9))
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.cross_entropy_backward(cp.asarray(x), cp.asarray(y), np.ones(4), reduction="none")
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.log_softmax(cp.asarray(x), out=np.empty((4, 9), np.float32))


def test_criterion_on_gpu(reference):
    x = make_logits((8, 12), np.float64)
    y = make_target(8, 12, ignore="some")
    crit = fastce.CrossEntropyLoss(label_smoothing=0.2)
    loss = crit(cp.asarray(x), cp.asarray(y))
    g = crit.backward()
    K.assert_close(cp.asnumpy(loss), reference.cross_entropy(x, y, label_smoothing=0.2),
                   what="criterion loss", **K.tol(np.float64))
    K.assert_close(cp.asnumpy(g), reference.cross_entropy_backward(x, y, label_smoothing=0.2),
                   what="criterion grad", scale_atol=True, **K.tol(np.float64))


def test_describe_and_show_config(capsys):
    d = fcuda.describe()
    assert isinstance(d, str) and "CuPy" in d and "sm_" in d
    fastce.show_config()
    assert "CuPy" in capsys.readouterr().out


def test_kernels_come_from_the_package_sources():
    from fastce.cuda import _api as A
    b = A.cupy_backend()
    for cu, names in A.KERNEL_FILES.items():
        for n in names:  # compiles (NVRTC, cached by CuPy) and finds every kernel
            b.module(cu, A.compile_options(n)).get_function(n)
