"""fastce's CUDA kernels and GPU host code, run on the CPU.

``tests/cuda_emu`` compiles ``fastce/cuda/*.cu`` with the host C++ compiler against a
fiber-per-thread emulation of CUDA blocks, warps, shuffles and barriers, and
``fastce.cuda._api.Ops`` drives it exactly as it drives CuPy (validation, planning,
launch arguments, reductions).  The matrix of ``tests/cuda_cases.py`` runs against the
float64 NumPy reference; the same matrix runs on a real GPU in ``tests/test_cupy.py``.

What this proves and what it does not: the kernels' arithmetic, indexing, -inf/nan
handling, reductions and barrier placement (a __syncthreads or shuffle that not every
thread reaches is a reported deadlock; every case runs with the threads of a block
scheduled forward and backward, so a missing barrier changes the result).  Not: GPU
timing, occupancy, or inter-block memory ordering.
"""
import re

import numpy as np
import pytest

import cuda_cases as K
from conftest import make_logits, make_target

pytest.importorskip("fastce._kernels")
from fastce.cuda import _api as A  # noqa: E402


@pytest.fixture(scope="module")
def emu_dll():
    import cuda_emu
    try:
        return cuda_emu.build(A.KERNEL_FILES)
    except cuda_emu.EmulatorUnavailable as exc:
        pytest.skip(f"CUDA emulator unavailable: {exc}")


class EmuHarness:
    def __init__(self, dll, order, sm_count=4):
        import cuda_emu
        self.backend = cuda_emu.EmuBackend(dll, order=order, sm_count=sm_count)
        self.ops = A.Ops(self.backend)

    @staticmethod
    def dev(a, layout="C"):
        return K.layout_on(lambda b: np.array(b, copy=True, order="K"), a, layout)

    @staticmethod
    def host(a):
        return np.asarray(a)

    @staticmethod
    def is_dev(a):
        return isinstance(a, np.ndarray)

    @staticmethod
    def shares(a, b):
        return np.shares_memory(a, b)


@pytest.fixture
def h(emu_dll):
    """Threads scheduled first to last; test_same_bits_for_both_thread_orders covers the
    reversed schedule for every kernel shape."""
    return EmuHarness(emu_dll, 0)


# ------------------------------------------------------------------ the kernels' signatures
def test_compiled_kernels_take_the_host_signatures(emu_dll):
    """The kernels as compiled take, parameter by parameter, the C types that the host's
    signature packs (the lists are kernel_params.h's; a launch with another count fails)."""
    import cuda_emu
    from test_cuda_host import host_signature
    for k in A.FILE_OF_KERNEL:
        assert cuda_emu.kernel_signature(emu_dll, k) == [kind for _, kind in host_signature(k)], k
    backend = cuda_emu.EmuBackend(emu_dll)
    with pytest.raises(RuntimeError, match="takes 5 parameters, the launch passed 4"):
        backend.launch("fastce_finalize_f64", (1, 1, 1), (32, 1, 1), (np.zeros(1), np.int64(0), 1.0, 0))


# ------------------------------------------------------------------ row functions
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", K.ROW_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["C", "F", "sliced"])
def test_row_functions(h, reference, shape, dtype, layout):
    K.check_row_functions(h, reference, shape, dtype, layout)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", K.LONG_SHAPES + [(1, 5), (5,), (1000,)], ids=str)
def test_row_functions_long_and_1d(h, reference, shape, dtype):
    K.check_row_functions(h, reference, shape, dtype, "C")


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("out_layout", ["C", "F", "sliced"])
def test_row_outputs(h, reference, dtype, out_layout):
    K.check_row_outputs(h, reference, (6, 40), dtype, out_layout)
    K.check_row_outputs(h, reference, (3, 2500), dtype, out_layout)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_axes(h, reference, dtype):
    K.check_axes(h, reference, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(6, 5), (6, 100), (6, 1000), (5, 2500), (5, 6000), (5, 9000)],
                         ids=str)
def test_special_values(h, reference, shape, dtype):
    K.check_special_values(h, reference, shape, dtype)


def test_special_values_chunked(h, reference):
    K.check_special_values(h, reference, (2, 33000), np.float32)


def test_special_values_thread_kernel(emu_dll, reference):
    """F-ordered short rows take the thread-per-row kernel."""
    h = EmuHarness(emu_dll, 0)
    x = make_logits((40, 6), np.float64, seed=3)
    x[0, ::2] = -np.inf
    x[1] = -np.inf
    x[2, 3] = np.nan
    x[3, 1] = np.inf
    xf = h.dev(x, "F")
    with np.errstate(invalid="ignore"):
        K.assert_close(h.ops.log_softmax(xf), reference.log_softmax(x), what="thread special",
                       **K.tol(np.float64))
    assert h.backend.launches[-1][0] == "fastce_rows_thread_f64"


# ------------------------------------------------------------------ cross-entropy
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7, 5), (9, 33), (3, 1000), (3, 2500), (2, 9000)], ids=str)
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


@pytest.mark.parametrize("shape", [(5,), (3, 33000), (1, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_shapes(h, reference, shape, reduction):
    K.check_cross_entropy(h, reference, shape, np.float32, "C", weight="random", ignore="none",
                          eps=0.1, reduction=reduction)


@pytest.mark.parametrize("target_dtype", [np.int32, np.int64, np.uint8, np.int16, np.uint32])
def test_target_dtypes(h, reference, target_dtype):
    K.check_cross_entropy(h, reference, (12, 9), np.float64, "C", weight=None, ignore="none",
                          eps=0.0, reduction="mean", target_dtype=target_dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_grad_output_device_scalar(h, reference, dtype):
    K.check_grad_output_scalar_device(h, reference, dtype)


@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(8, 10), (4, 700), (3, 3000), (2, 9000), (2, 33000)], ids=str)
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


@pytest.mark.parametrize("shape,layout", [((40, 6), "F"), ((7, 5), "C"), ((9, 33), "sliced"),
                                          ((5, 300), "C"), ((3, 1000), "C"), ((3, 2500), "C"),
                                          ((2, 6000), "C"), ((2, 9000), "C"), ((3, 33000), "C")],
                         ids=str)
@pytest.mark.parametrize("dtype", K.DTYPES, ids=lambda d: np.dtype(d).name)
def test_same_bits_for_both_thread_orders(emu_dll, reference, shape, layout, dtype):
    """Scheduling a block's threads last-to-first gives the same bits: no result depends
    on a missing barrier, and the reduction trees are fixed."""
    res = []
    for order in (0, 1):
        h = EmuHarness(emu_dll, order)
        x0 = make_logits(shape, dtype, seed=11)
        x0[0, 1] = -np.inf
        x = h.dev(x0, layout)
        y = h.dev(make_target(shape[0], shape[1], ignore="some", seed=11))
        w = h.dev(np.linspace(0.5, 2.0, shape[1]))
        loss, g = h.ops.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.3)
        rows = h.ops.cross_entropy(x, y, weight=w, label_smoothing=0.3, reduction="none")
        p = np.abs(make_logits(shape, np.float64, seed=12))
        p = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
        ls, gs, lse = h.ops.cross_entropy_with_grad(x, h.dev(p, layout), z_loss=1e-3, softcap=10.0,
                                                    label_smoothing=0.1, return_lse=True)
        res.append((loss.tobytes(), g.tobytes(), rows.tobytes(), h.ops.logsumexp(x).tobytes(),
                    h.ops.softmax(x).tobytes(), ls.tobytes(), gs.tobytes(), lse.tobytes()))
    assert res[0] == res[1]


# ------------------------------------------------------------------ kernels actually used
@pytest.mark.parametrize("shape,layout,dtype,kernel,n_launch", [
    ((40, 6), "F", np.float32, "fastce_rows_thread_f32", 1),
    ((7, 5), "C", np.float32, "fastce_rows_warp1_f32", 1),
    ((3, 1000), "C", np.float32, "fastce_rows_warp32_f32", 1),
    ((3, 1000), "C", np.float64, "fastce_rows_block8_f64", 1),
    ((2, 6000), "C", np.float32, "fastce_rows_block16_f32", 1),
    ((2, 9000), "C", np.float32, "fastce_rows_block0_f32", 1),
    ((3, 33000), "C", np.float32, "fastce_rows_block0_f32", 2),
])
def test_kernel_paths(emu_dll, shape, layout, dtype, kernel, n_launch):
    h = EmuHarness(emu_dll, 0)
    h.ops.log_softmax(h.dev(make_logits(shape, dtype), layout))
    rows = [l for l in h.backend.launches if l[0].startswith("fastce_rows")]
    assert [l[0] for l in rows] == [kernel] * n_launch
    if n_launch == 2:
        assert rows[0][1][1] > 1, "phase 1 runs one block per chunk"


def test_cross_entropy_launch_sequence(emu_dll):
    """scan (validation + normaliser), one fused row sweep, the final reduction."""
    h = EmuHarness(emu_dll, 0)
    x = h.dev(make_logits((16, 50), np.float32))
    y = h.dev(make_target(16, 50))
    h.ops.cross_entropy_with_grad(x, y)
    assert [l[0] for l in h.backend.launches] == [
        "fastce_target_scan", "fastce_rows_warp2_f32", "fastce_finalize_f32"]


# ------------------------------------------------------------------ errors: same as the CPU path
def _same_error(cpu_call, gpu_call, same_message=True):
    with pytest.raises(Exception) as e_cpu:
        cpu_call()
    with pytest.raises(Exception) as e_gpu:
        gpu_call()
    assert type(e_gpu.value) is type(e_cpu.value), (e_cpu.value, e_gpu.value)
    if not same_message:
        return
    # NumPy 2 spells an index np.int64(2) in a list's repr; the GPU path prints plain ints
    cpu_msg = re.sub(r"np\.int64\((-?\d+)\)", r"\1", str(e_cpu.value))
    assert str(e_gpu.value) == cpu_msg


ERROR_CASES = [
    ("logits int", "cross_entropy", lambda x, y: (x.astype(np.int32), y), {}),
    ("target float", "cross_entropy", lambda x, y: (x, y.astype(np.float32)), {}),
    ("target bool", "cross_entropy", lambda x, y: (x, y > 2), {}),
    ("target shape", "cross_entropy", lambda x, y: (x, y[:-1]), {}),
    ("target value", "cross_entropy", lambda x, y: (x, np.where(np.arange(y.size) == 2, 7, y)), {}),
    ("target negative", "cross_entropy", lambda x, y: (x, np.where(np.arange(y.size) == 1, -5, y)), {}),
    ("reduction", "cross_entropy", lambda x, y: (x, y), dict(reduction="avg")),
    ("smoothing", "cross_entropy", lambda x, y: (x, y), dict(label_smoothing=1.5)),
    ("smoothing type", "cross_entropy", lambda x, y: (x, y), dict(label_smoothing="a")),
    ("ignore_index type", "cross_entropy", lambda x, y: (x, y), dict(ignore_index=1.5)),
    ("n_threads 0", "cross_entropy", lambda x, y: (x, y), dict(n_threads=0)),
    ("n_threads bool", "cross_entropy", lambda x, y: (x, y), dict(n_threads=True)),
    ("weight shape", "cross_entropy", lambda x, y: (x, y), dict(weight=np.ones(3))),
    ("weight bool", "cross_entropy", lambda x, y: (x, y), dict(weight=np.ones(7, bool))),
    ("0-d logits", "cross_entropy", lambda x, y: (x[0, 0], y), {}),
    ("no class", "cross_entropy", lambda x, y: (x[:, :0], y), {}),
    ("grad_output shape none", "cross_entropy_backward", lambda x, y: (x, y, np.ones(3)),
     dict(reduction="none")),
    ("grad_output vector mean", "cross_entropy_backward", lambda x, y: (x, y, np.ones(5)), {}),
    ("inplace and out", "cross_entropy_with_grad", lambda x, y: (x, y),
     dict(inplace=True, out=np.empty((5, 7), np.float32))),
    ("inplace F", "cross_entropy_with_grad", lambda x, y: (np.asfortranarray(x), y), dict(inplace=True)),
    ("out shape", "cross_entropy_with_grad", lambda x, y: (x, y), dict(out=np.empty((5, 6), np.float32))),
    ("out dtype", "cross_entropy_with_grad", lambda x, y: (x, y), dict(out=np.empty((5, 7)))),
    ("out overlaps", "cross_entropy_backward", lambda x, y: (x, y), dict(out="x")),
    ("lse axis", "logsumexp", lambda x, y: (x, 2), {}),
    ("lse axis type", "logsumexp", lambda x, y: (x, 0.5), {}),
    ("lse 0-d", "logsumexp", lambda x, y: (x[0, 0],), {}),
    ("lse out shape", "logsumexp", lambda x, y: (x,), dict(out=np.empty(4, np.float32))),
    ("softmax out dtype", "softmax", lambda x, y: (x,), dict(out=np.empty((5, 7)))),
    ("log_softmax int", "log_softmax", lambda x, y: (np.ones((2, 2), np.int64),), {}),
    ("nll target", "nll_loss", lambda x, y: (x, y[:2]), {}),
    ("z_loss negative", "cross_entropy", lambda x, y: (x, y), dict(z_loss=-1.0)),
    ("z_loss type", "cross_entropy", lambda x, y: (x, y), dict(z_loss="a")),
    ("softcap zero", "cross_entropy", lambda x, y: (x, y), dict(softcap=0.0)),
    ("softcap type", "cross_entropy", lambda x, y: (x, y), dict(softcap=True)),
    ("shard without lse", "cross_entropy", lambda x, y: (x, y), dict(class_start=2, num_classes=9)),
    ("shard too small", "cross_entropy", lambda x, y: (x, y), dict(class_start=3, num_classes=9)),
    ("shard start", "cross_entropy", lambda x, y: (x, y), dict(class_start=-1)),
    ("shard target", "cross_entropy", lambda x, y: (x, np.where(np.arange(y.size) == 2, 9, y)),
     dict(class_start=2, num_classes=9, lse=np.zeros(5))),
    ("lse shape", "cross_entropy", lambda x, y: (x, y), dict(lse=np.zeros(4))),
    ("lse dtype", "cross_entropy", lambda x, y: (x, y), dict(lse=np.zeros(5, bool))),
    ("soft ignore_index", "cross_entropy", lambda x, y: (x, np.full((5, 7), 1 / 7, np.float32)),
     dict(ignore_index=0)),
    ("soft shard", "cross_entropy", lambda x, y: (x, np.full((5, 7), 1 / 7, np.float32)),
     dict(class_start=2, num_classes=9, lse=np.zeros(5))),
    ("grad_dtype", "cross_entropy_with_grad", lambda x, y: (x, y), dict(grad_dtype=np.float16)),
    ("grad_dtype half inplace", "cross_entropy_with_grad", lambda x, y: (x.astype(np.float16), y),
     dict(grad_dtype=np.float32, inplace=True)),
    ("half out dtype", "cross_entropy_with_grad", lambda x, y: (x.astype(np.float16), y),
     dict(out=np.empty((5, 7), np.float32))),
    ("half lse out dtype", "logsumexp", lambda x, y: (x.astype(np.float16),),
     dict(out=np.empty(5, np.float16))),
    ("logits float128", "cross_entropy", lambda x, y: (x.astype(np.longdouble), y), {}),
]


@pytest.mark.parametrize("name,fn,make,kw", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_match_cpu(emu_dll, name, fn, make, kw):
    import fastce
    x = make_logits((5, 7), np.float32)
    y = make_target(5, 7)
    args = make(x, y)
    kw = dict(kw)
    if isinstance(kw.get("out"), str):
        kw["out"] = args[0]
    if fn == "nll_loss":
        kw.pop("n_threads", None)
    h = EmuHarness(emu_dll, 0)
    _same_error(lambda: getattr(fastce, fn)(*args, **kw), lambda: getattr(h.ops, fn)(*args, **kw))


# ------------------------------------------------------------------ LLM options, probabilities, half
# one shape per kernel: thread (F order), warp1, warp2, warp32, block8, block16, streaming, chunked
OPTION_SHAPES = [((40, 6), "F"), ((7, 5), "C"), ((9, 33), "sliced"), ((3, 1000), "C"),
                 ((3, 2500), "C"), ((2, 6000), "C"), ((2, 9000), "C"), ((3, 33000), "C")]


class TestOptions(K.OptionTests):
    """The shared option tests (forms, identities, shards) on this harness."""


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
                                          ((3, 2500), "C"), ((2, 9000), "C"), ((2, 40000), "C")],
                         ids=str)
@pytest.mark.parametrize("hdtype", K.half_dtypes(), ids=lambda d: d.name)
def test_half_precision(h, reference, shape, layout, hdtype):
    K.check_half(h, reference, shape, hdtype, layout)


@pytest.mark.parametrize("hdtype", K.half_dtypes(), ids=lambda d: d.name)
def test_half_conversions(h, hdtype):
    K.check_half_conversions(h, hdtype)


def test_half_kernels_are_compiled_apart():
    """A process compiles only the dtype families it uses (FCE_ROWS_SET)."""
    assert A.compile_options("fastce_rows_warp4_f32") == ("-DFCE_ROWS_SET=1",)
    assert A.compile_options("fastce_rows_block0_bf16f32") == ("-DFCE_ROWS_SET=4",)
    assert A.compile_options("fastce_target_scan") == ()
    assert A.rows_suffix(np.float16, np.float32) == "f16f32"
    assert A.rows_suffix(np.float16) == "f16"


# ------------------------------------------------------------------ the public API, end to end
class DevArray(np.ndarray):
    """Stand-in for ``cupy.ndarray``: a NumPy subclass, so the emulator backend runs it."""


@pytest.fixture
def fake_gpu(emu_dll, monkeypatch):
    """``fastce.*`` on DevArray inputs goes down the GPU path onto the emulator: a stand-in
    ``cupy`` module whose ndarray is DevArray, and the emulator as the CuPy backend."""
    import sys
    import types

    import cuda_emu
    mod = types.ModuleType("cupy")
    mod.ndarray = DevArray
    monkeypatch.setitem(sys.modules, "cupy", mod)
    backend = cuda_emu.EmuBackend(emu_dll, order=0, sm_count=4)
    monkeypatch.setattr(A, "_BACKEND", backend)
    # the emulator computes in NumPy; results come back as device arrays, as CuPy's do
    from fastce import cuda

    def on_device(fn):
        def call(*args, **kwargs):
            res = fn(*args, **kwargs)
            dev = (lambda v: v.view(DevArray) if isinstance(v, np.ndarray) else v)
            return tuple(map(dev, res)) if isinstance(res, tuple) else dev(res)
        return call

    for name in ("cross_entropy", "cross_entropy_with_grad", "cross_entropy_backward"):
        monkeypatch.setattr(cuda, name, on_device(getattr(cuda, name)))
    return lambda a: np.array(a).view(DevArray), backend


def test_public_api_dispatch_end_to_end(fake_gpu):
    """The public functions and criteria hand every option to the GPU path and return
    what the CPU path returns (each function's own matrix is elsewhere)."""
    import fastce
    dev, backend = fake_gpu
    x = make_logits((9, 40), np.float64, seed=30)
    y = make_target(9, 40, ignore="some", seed=30)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=20.0)
    t = K.tol(np.float64)
    got = fastce.cross_entropy_with_grad(dev(x), dev(y), return_lse=True, **kw)
    want = fastce.cross_entropy_with_grad(x, y, return_lse=True, **kw)
    for a, b, name in zip(got, want, ("loss", "grad", "lse")):
        K.assert_close(np.asarray(a), b, what=f"public {name}", scale_atol=name == "grad", **t)
    assert any(k.startswith("fastce_rows_") for k, *_ in backend.launches), "not run by the kernels"
    crit, ref = fastce.CrossEntropyLoss(**kw), fastce.CrossEntropyLoss(**kw)
    K.assert_close(np.asarray(crit(dev(x), dev(y))), ref(x, y), what="criterion loss", **t)
    K.assert_close(np.asarray(crit.backward()), ref.backward(), what="criterion grad",
                   scale_atol=True, **t)
    p = np.abs(x) / np.abs(x).sum(axis=1, keepdims=True)
    K.assert_close(np.asarray(fastce.cross_entropy(dev(x), dev(p))), fastce.cross_entropy(x, p),
                   what="public probabilities", **t)
    lp = fastce.log_softmax(x)
    K.assert_close(np.asarray(fastce.nll_loss_backward(dev(lp), dev(y))),
                   fastce.nll_loss_backward(lp, y), what="public nll_loss_backward", **t)
    bt = (x > 0).astype(np.float64)
    K.assert_close(np.asarray(fastce.binary_cross_entropy_with_logits(dev(x), dev(bt))),
                   fastce.binary_cross_entropy_with_logits(x, bt), what="public BCE", **t)
    hid, w = make_logits((9, 8), np.float64, seed=31), make_logits((40, 8), np.float64, seed=32)
    K.assert_close(np.asarray(fastce.linear_cross_entropy(dev(hid), dev(w), dev(y))),
                   fastce.linear_cross_entropy(hid, w, y), what="public linear CE", **t)
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.cross_entropy(dev(x), y)
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        fastce.cross_entropy(dev(x), dev(y), lse=np.zeros(9))
