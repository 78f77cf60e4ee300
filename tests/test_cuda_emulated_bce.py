"""The GPU path's binary cross-entropy with logits (fastce/cuda/bce.cu, fastce/cuda/_bce.py),
run on the CPU.

``tests/cuda_emu`` compiles ``bce.cu`` (with ``reduce.cu``'s final reduction) against a
fiber-per-thread emulation of CUDA blocks, warps and barriers; ``fastce.cuda._bce.BceOps``
drives it exactly as it drives CuPy.  The public ``fastce.binary_cross_entropy_with_logits*``
and ``BCEWithLogitsLoss`` send the harness's "device arrays" (``EmuArray``, a NumPy
subclass) to that emulated GPU path, so the dispatch in ``fastce._bce`` runs too.  The
matrix is tests/cuda_bce_cases.py's, against the float64 reference; the same matrix runs on
a real GPU in tests/test_cupy_bce.py.

What this proves: the kernel's arithmetic, strided and broadcast indexing (the odometer),
special values, the fixed-order reductions and barrier placement (every case in both
thread orders gives the same bits), the host planning and the error behaviour.  Not: GPU
timing, CUDA's own expf/log1pf (the emulator uses the host's libm), or the GPU memory
model.  Compilation by nvcc (sm_80, sm_90, no spills) and NVRTC is tested in
tests/test_cuda_host.py, which covers every file of KERNEL_FILES, bce.cu included.

Also here, without any compiler: the planning (``bce_dims``) against NumPy's indexing, the
kernel signature (kernel_params.h's list, in the launch's operand naming), the .cu naming
rules, and the CuPy/NumPy mixing errors of the dispatch (with a stand-in ``cupy`` module).
"""
import itertools
import re
import sys

import numpy as np
import pytest

import cuda_bce_cases as K
from test_cuda_emulated import EmuHarness as CeEmuHarness
from test_cuda_host import _raw, fake_cupy  # noqa: F401 (a fixture)

pytest.importorskip("fastce._kernels")
import fastce  # noqa: E402
from fastce.cuda import _api as A  # noqa: E402
from fastce.cuda import _bce as B  # noqa: E402

#: what the BCE path launches (a subset of KERNEL_FILES: quick to build)
EMU_KERNELS = {"reduce.cu": ("fastce_finalize_f32", "fastce_finalize_f64"), "bce.cu": A.KERNEL_FILES["bce.cu"]}


@pytest.fixture(scope="module")
def emu_dll():
    import cuda_emu
    try:
        return cuda_emu.build(EMU_KERNELS)
    except cuda_emu.EmulatorUnavailable as exc:
        pytest.skip(f"CUDA emulator unavailable: {exc}")


class EmuArray(np.ndarray):
    """A NumPy array the test treats as a device array of the emulated GPU."""


class EmuHarness(CeEmuHarness):
    """tests/test_cuda_emulated.py's harness (backend, host, is_dev, shares), with
    ``BceOps`` and the routing of fastce's BCE functions, for cuda_bce_cases."""

    fns = fastce
    array_name = "numpy.ndarray"

    def __init__(self, dll, order=0):
        super().__init__(dll, order)
        self.ops = B.BceOps(self.backend)

    def route(self, monkeypatch):
        """Send every fastce BCE call with an EmuArray argument to the emulated GPU path."""
        def gpu_ops(**arrays):
            return self.ops if any(isinstance(a, EmuArray) for a in arrays.values()) else None
        monkeypatch.setattr(fastce._bce, "_gpu_ops", gpu_ops)
        return self

    @staticmethod
    def to_dev(a):
        return np.array(a, copy=True, order="K").view(EmuArray)

    def dev(self, a, layout="C"):
        return K.layout_on(self.to_dev, a, layout)


@pytest.fixture
def h(emu_dll, monkeypatch):
    """Threads scheduled first to last; test_same_bits_for_both_thread_orders covers the
    reversed schedule."""
    return EmuHarness(emu_dll).route(monkeypatch)


# ------------------------------------------------------------------ the matrix
class TestEmulated(K.BceMatrix):
    pass


def test_read_only_out_refused(h):
    """NumPy arrays can be read-only (the emulator's "device" arrays): refused as on the CPU."""
    x, y = h.dev(K.make_x((3, 4), np.float32)), h.dev(K.make_y((3, 4), np.float32))
    out = h.dev(np.zeros((3, 4), np.float32))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, out=out)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="needs writeable logits"):
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, inplace=True)


# ------------------------------------------------------------------ thread orders, launches
@pytest.mark.parametrize("case", [((7, 13), "C", "C", "N1"), ((3, 1000), "F", "full", "C"),
                                  ((2, 3, 2, 3, 2), "strided", "C", "scalar"), ((20001,), "C", None, None)],
                         ids=str)
@pytest.mark.parametrize("dtype", K.DTYPES, **K.DTYPE_IDS)
def test_same_bits_for_both_thread_orders(emu_dll, monkeypatch, dtype, case):
    """Scheduling each block's threads last-to-first gives the same bits: no result depends
    on a missing barrier, and the reduction tree is fixed."""
    shape, layout, wk, pk = case
    res = []
    for order in (0, 1):
        h = EmuHarness(emu_dll, order).route(monkeypatch)
        x, y = h.dev(K.make_x(shape, dtype), layout), h.dev(K.make_y(shape, dtype), layout)
        kw = dict(weight=None if wk is None else h.dev(K.make_operand(wk, shape, dtype), layout),
                  pos_weight=None if pk is None else h.dev(K.make_operand(pk, shape, dtype, 1)))
        with K.max_blocks(3):
            loss, g = fastce.binary_cross_entropy_with_logits_with_grad(x, y, **kw)
            rows = fastce.binary_cross_entropy_with_logits(x, y, reduction="none", **kw)
            total = fastce.binary_cross_entropy_with_logits(x, y, reduction="sum", **kw)
        res.append([np.asarray(a).tobytes() for a in (loss, g, rows, total)])
    assert res[0] == res[1]


def _launch_args(h):
    """Record every launch's arguments by name (the EmuBackend records names only)."""
    calls = []
    launch = h.backend.launch

    def recording(kernel, grid, block, args):
        if kernel.startswith("fastce_bce"):
            calls.append((kernel, grid, dict(zip([n for n, _ in B.BCE_SIGNATURE], args))))
        launch(kernel, grid, block, args)
    h.backend.launch = recording
    return calls


def test_launch_sequence(h):
    """A reduced loss: one sweep and the final reduction; 'none' and backward: one sweep."""
    x, y = h.dev(K.make_x((16, 50), np.float32)), h.dev(K.make_y((16, 50), np.float32))
    fastce.binary_cross_entropy_with_logits_with_grad(x, y)
    assert [k for k, _, _ in h.backend.launches] == ["fastce_bce_f32", "fastce_finalize_f32"]
    assert h.backend.launches[0][1:] == ((4, 1, 1), (256, 1, 1))  # 800 elements
    del h.backend.launches[:]
    fastce.binary_cross_entropy_with_logits(x.astype(np.float64).view(EmuArray), y, reduction="none")
    assert [k for k, _, _ in h.backend.launches] == ["fastce_bce_f64"]


def test_broadcast_operands_are_read_in_place(h):
    """weight (C,), pos_weight (N, 1), strided logits and target, an F-ordered out=: the
    kernel reads and writes the caller's memory (no copy, no tiling), with zero strides
    along broadcast axes."""
    n, c = 6, 10
    calls = _launch_args(h)
    x, y = h.dev(K.make_x((n, c), np.float32), "strided"), h.dev(K.make_y((n, c), np.float32), "strided")
    w, pw = h.dev(np.linspace(0.5, 2, c).astype(np.float32)), h.dev(np.ones((n, 1), np.float32))
    out = h.dev(np.zeros((n, c), np.float32), "F")
    fastce.binary_cross_entropy_with_logits_with_grad(x, y, weight=w, pos_weight=pw, out=out)
    (_, _, a), = calls
    addr = h.backend.address
    for name, arr in (("x", x), ("y", y), ("w", w), ("pw", pw), ("grad", out)):
        assert addr(a[name]) == addr(arr), f"{name} was copied"
    assert (a["n1"], a["n2"], a["n3"]) == (1, n, c)
    assert [a[f"w_s{k}"] for k in range(4)] == [0, 0, 0, 1]
    assert [a[f"pw_s{k}"] for k in range(4)] == [0, 0, 1, 0]
    assert [a[f"x_s{k}"] for k in range(4)] == [0, 0, 2 * (2 * c + 1), 2]
    assert [a[f"grad_s{k}"] for k in range(4)] == [0, 0, 1, n]
    assert not isinstance(a["ge"], np.ndarray) and not isinstance(a["le"], np.ndarray)


def test_misaligned_operands_are_copied(h, reference):
    """NumPy allows what CuPy arrays never are: logits at an odd address, a target whose
    stride is no multiple of its item size, an out= at an odd address.  The kernel is only
    given aligned elements (copies; the gradient through a temporary), results unchanged."""
    calls = _launch_args(h)
    shape = (5, 6)
    x0, y0 = K.make_x(shape, np.float32), K.make_y(shape, np.float32)

    def odd(a, offset=1, stride=4):
        buf = np.zeros(a.size * stride + 8, np.uint8)
        v = np.ndarray(a.shape, a.dtype, buffer=buf, offset=offset,
                       strides=(stride * a.shape[1], stride)).view(EmuArray)
        v[...] = a
        return v

    x, y, out = odd(x0), odd(y0, 0, 6), odd(np.zeros(shape, np.float32))
    loss, grad = fastce.binary_cross_entropy_with_logits_with_grad(x, y, out=out)
    assert grad is out
    (_, _, a), = calls
    for name in ("x", "y", "grad"):
        assert h.backend.address(a[name]) % 4 == 0 and a[name].strides[-1] % 4 == 0, name
    K.check_against(h.host(loss), h.host(out), *K.ref_call(reference, x0, y0, None, None, "mean", 1.0),
                    np.float32, "misaligned operands")


def test_contiguous_calls_walk_one_axis(h):
    """C- and F-ordered logits with a scalar weight: one flat walk (no division per element)."""
    calls = _launch_args(h)
    for layout in ("C", "F"):
        x, y = h.dev(K.make_x((5, 7, 3), np.float64), layout), h.dev(K.make_y((5, 7, 3), np.float64), layout)
        fastce.binary_cross_entropy_with_logits(x, y, weight=2.0, reduction="none")
        a = calls[-1][2]
        assert (a["n1"], a["n2"], a["n3"]) == (1, 1, 105) and a["n"] == 105, layout
        assert a["x_s3"] == a["y_s3"] == a["le_s3"] == 1 and a["w_s3"] == 0, layout


# ------------------------------------------------------------------ planning (pure Python)
def _walk_offsets(shape, plan):
    """Element offsets of every operand at each step of the planned walk."""
    dims, strides = plan
    out = []
    for idx in itertools.product(*[range(n) for n in dims]):
        out.append([sum(i * s for i, s in zip(idx, st)) for st in strides])
    return out


def _random_operand(rng, shape, broadcast):
    """A view of ``shape`` whose values are their own element positions in its buffer: a
    buffer laid out in a random axis order, sliced with steps 1, 2 or -1 (and, for a
    broadcast operand, some axes cut to length 1 and broadcast back)."""
    full = [2 * n + 1 for n in shape]
    perm = rng.permutation(len(shape))
    buf = np.arange(int(np.prod(full))).reshape([full[p] for p in perm]).transpose(np.argsort(perm))
    a = buf[tuple(slice(None, None, int(rng.choice([1, 2, -1]))) for _ in shape)]
    a = a[tuple(slice(0, 1 if broadcast and rng.random() < 0.5 else n) for n in shape)]
    return np.broadcast_to(a, shape)


@pytest.mark.parametrize("seed", range(60))
def test_bce_dims_matches_numpy(seed):
    """For random shapes, layouts and broadcasts, the planned geometry walks every element
    once, in C order over ``walk_axes``, and each operand's offset is NumPy's."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 4, int(rng.integers(0, 6))))
    ops = [_random_operand(rng, shape, k > 0) for k in range(3)]
    axes = B.walk_axes(shape, ops[0].strides)
    es = [tuple(s // a.itemsize for s in a.strides) for a in ops]
    plan = B.bce_dims(shape, axes, es, max_dims=6)
    assert plan is not None and len(plan[0]) == 6 and int(np.prod(plan[0])) == int(np.prod(shape))
    if len(shape) <= B.BCE_MAX_DIMS:
        assert B.bce_dims(shape, axes, es) is not None
    dims, strides = plan
    walked = [a.transpose(axes).reshape(-1) for a in ops]  # values = buffer positions
    for k, idx in enumerate(itertools.product(*[range(n) for n in dims])):
        for a, st, w in zip(ops, strides, walked):
            assert a[(0,) * a.ndim] + sum(i * s for i, s in zip(idx, st)) == w[k], (seed, k)


def test_bce_dims_collapses():
    # C-contiguous operands: one axis; a (C,) weight: (N, C); F order walks reversed axes
    shape = (4, 5, 6)
    c = (30, 6, 1)
    assert B.bce_dims(shape, (0, 1, 2), [c, c]) == ((1, 1, 1, 120), [(0, 0, 0, 1)] * 2)
    assert B.bce_dims(shape, (0, 1, 2), [c, (0, 0, 1)]) == ((1, 1, 20, 6), [(0, 0, 6, 1), (0, 0, 0, 1)])
    f = (1, 4, 20)
    assert B.walk_axes(shape, f) == (2, 1, 0)
    assert B.bce_dims(shape, (2, 1, 0), [f]) == ((1, 1, 1, 120), [(0, 0, 0, 1)])
    assert B.bce_dims((), (), [(), ()]) == ((1, 1, 1, 1), [(0, 0, 0, 0)] * 2)
    assert B.bce_dims((2, 1, 3), (0, 1, 2), [(3, 3, 1)]) == ((1, 1, 1, 6), [(0, 0, 0, 1)])
    five = (2, 3, 2, 3, 2)
    assert B.bce_dims(five, range(5), [(36, 12, 6, 2, 1), (4, 0, 2, 0, 1)]) is None
    assert B.bce_grid(1) == 1 and B.bce_grid(257) == 2 and B.bce_grid(10 ** 9) == B.BCE_MAX_BLOCKS


# ------------------------------------------------------------------ the .cu text
def test_signature_is_the_header_list():
    """BCE_SIGNATURE is kernel_params.h's FCE_BCE_FIELDS, in the operand naming that the
    launch fills (each operand, then its four strides), and bce.cu takes that list."""
    names = [n for n, _ in B.BCE_SIGNATURE]
    assert names[:4] == ["n", "n1", "n2", "n3"] and names[-2:] == ["gscale", "part"]
    assert names[4:-2] == [f"{p}{s}" for p in B.BCE_OPERANDS for s in ("", "_s0", "_s1", "_s2", "_s3")]
    assert B.BCE_SIGNATURE == A.kernel_signatures()["BCE"]
    src = _raw("bce.cu")
    assert set(A.KERNEL_FILES["bce.cu"]) == {"fastce_bce_f32", "fastce_bce_f64"}
    assert f"__launch_bounds__({B.BCE_BLOCK})" in src
    assert "fce_b_sweep(FCE_PARAMS(FCE_BCE_FIELDS, T))" in src


def test_cu_names_cannot_collide():
    """Every .cu file is one translation unit in the emulator: bce.cu's file-scope names
    carry its prefix, and each macro is guarded."""
    src = re.sub(r"/\*.*?\*/", "", _raw("bce.cu"), flags=re.S)  # kernel_params.h: its own guard
    macros = re.findall(r"^#define (\w+)", src, re.M)
    assert len(macros) >= 2
    for m in macros:
        assert m.startswith(("FCE_B_", "FASTCE_BCE_")), m
        assert f"#ifndef {m}\n#define {m}" in src, f"{m} is not guarded"
    names = set()
    for line in src.splitlines():
        if re.match(r"[A-Za-z_]", line):  # a file-scope declaration
            line = re.sub(r"__launch_bounds__\(\d+\)", "", line)
            m = re.search(r"struct (\w+)", line) or re.search(r"(\w+)\s*\(", line)
            if m:
                names.add(m.group(1))
    assert {"fce_b_num", "fce_b_elem", "fce_b_sweep", "fastce_bce_f32", "fastce_bce_f64"} <= names
    assert all(n.startswith(("fce_b_", "fastce_bce_")) for n in names), names


def test_all_kernel_files_build_together(emu_dll):
    """The emulator's full build (every .cu file in one translation unit) has no clash."""
    import cuda_emu
    cuda_emu.build(A.KERNEL_FILES)


# ------------------------------------------------------------------ dispatch and mixing
def test_mixing_cupy_and_numpy_names_the_arguments(fake_cupy):
    gx = fake_cupy.ndarray()
    x, y = K.make_x((3, 4), np.float32), K.make_y((3, 4), np.float32)
    with pytest.raises(TypeError, match=r"mix of CuPy and NumPy arrays: logits on the GPU .* but target on"):
        fastce.binary_cross_entropy_with_logits(gx, y)
    with pytest.raises(TypeError, match=r"pos_weight on the GPU .* but logits, target on the host"):
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=gx)
    with pytest.raises(TypeError, match=r"logits, target on the GPU .* but out on the host"):
        fastce.binary_cross_entropy_with_logits_with_grad(gx, gx, out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match=r"logits, target on the GPU .* but grad_output on the host"):
        fastce.binary_cross_entropy_with_logits_with_grad(gx, gx, reduction="none", grad_output=np.ones((3, 4)))
    with pytest.raises(TypeError, match=r"weight on the GPU .* but pos_weight on the host"):
        fastce.BCEWithLogitsLoss(weight=gx, pos_weight=np.ones(4))
    crit = fastce.BCEWithLogitsLoss(weight=np.ones(4))
    with pytest.raises(TypeError, match=r"logits, target on the GPU .* but weight on the host"):
        crit(gx, gx)
    # NumPy only: the CPU path, even with CuPy imported
    assert isinstance(fastce.binary_cross_entropy_with_logits(x, y), np.float32)


def test_gpu_ops_without_cupy_never_imports_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert fastce._bce._gpu_ops(logits=np.zeros(3)) is None
    assert "cupy" not in sys.modules


def test_mixing_inside_the_gpu_path(emu_dll):
    """Called directly on a backend whose arrays are not NumPy's, a NumPy argument is a
    TypeError naming it (Ops._asarray), before anything is launched."""
    import cuda_emu

    class Dev(np.ndarray):
        pass

    backend = cuda_emu.EmuBackend(emu_dll)
    backend.is_array = lambda a: isinstance(a, Dev)
    ops = B.BceOps(backend)
    x = K.make_x((3, 4), np.float32).view(Dev)
    y = K.make_y((3, 4), np.float32)
    for kw in (dict(target=y), dict(target=y.view(Dev), weight=np.ones(4)),
               dict(target=y.view(Dev), pos_weight=np.ones(4))):
        name = [k for k, v in kw.items() if not isinstance(v, Dev)][0]
        with pytest.raises(TypeError, match=f"the other arguments on the GPU .* but {name} on the host"):
            ops.binary_cross_entropy_with_logits(x, **kw)
    with pytest.raises(TypeError, match="but out on the host"):
        ops.binary_cross_entropy_with_logits_with_grad(x, y.view(Dev), out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="but grad_output on the host"):
        ops.binary_cross_entropy_with_logits_with_grad(x, y.view(Dev), grad_output=np.asarray(1.0))
    assert backend.launches == []
