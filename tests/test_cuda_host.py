"""The GPU path's host side, on the CPU: no CuPy, no GPU needed.

- dispatch: ``fastce.cuda.is_cupy_call`` (with a stand-in ``cupy`` module), the lazy
  import of CuPy, ``describe``;
- planning: kernel choice and launch shapes (``plan_rows``), the (A, C, B) stride
  algebra against NumPy, overlap extents against ``np.shares_memory``;
- launch arguments: ``pack_args``, the signatures parsed from ``kernel_params.h`` and the
  kernels declared with them, and what ``Ops`` passes to the kernels (a recording backend
  that runs nothing);
- the kernel text: ``read_source`` expands the ``#include`` lines (row.h, kernel_params.h)
  into the one text NVRTC compiles, and a built package has every file it reads;
- the ``.cu`` files compile with ``nvcc`` (sm_80, sm_90; no register spills; the entry
  points are exactly the kernels the host code names) and with NVRTC, CuPy's compiler,
  when either is available.
The kernels themselves run on the CPU in test_cuda_emulated.py and on a GPU in
test_cupy.py.
"""
import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import require_in_ci
from fastce.cuda import _api as A

#: the repository (this test file's), whether fastce runs from it or is installed
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CU_FILES = sorted(A.KERNEL_FILES)


# ------------------------------------------------------------------ dispatch
@pytest.fixture
def fake_cupy(monkeypatch):
    """A stand-in ``cupy`` module in sys.modules whose ndarray is a plain class."""
    mod = types.ModuleType("cupy")

    class ndarray:  # noqa: N801 - mirrors cupy.ndarray
        pass

    mod.ndarray = ndarray
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod


def test_is_cupy_call_without_cupy(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert A.is_cupy_call(np.ones(3), None, [1, 2]) is False
    assert "cupy" not in sys.modules, "is_cupy_call must not import cupy"


def test_is_cupy_call_with_cupy(fake_cupy):
    g = fake_cupy.ndarray()
    assert A.is_cupy_call(np.ones(2)) is False
    assert A.is_cupy_call(g, None, 3.0) is True
    assert A.is_cupy_call(None, g) is True
    with pytest.raises(TypeError, match=r"logits on the GPU .* but weight on the host"):
        A.is_cupy_call(g, None, np.ones(3), names=["logits", "target", "weight"])
    with pytest.raises(TypeError, match=r"arg1 on the GPU .* but arg0, arg2 on the host"):
        A.is_cupy_call(np.ones(1), g, np.ones(1))


def test_cpu_api_dispatches_to_cuda(fake_cupy):
    """fastce's public functions hand CuPy arrays to fastce.cuda (fastce._api._cuda_dispatch)."""
    import fastce
    from fastce import _api as cpu_api
    from fastce import cuda
    g = fake_cupy.ndarray()
    assert cpu_api._cuda_dispatch("cross_entropy", g, g, None) is cuda.cross_entropy
    assert cpu_api._cuda_dispatch("logsumexp", np.ones(2), None) is None
    with pytest.raises(TypeError, match="mix of CuPy and NumPy"):
        cpu_api._cuda_dispatch("cross_entropy", g, np.zeros(2, np.int64), None)
    for name in ("logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad",
                 "cross_entropy_backward", "nll_loss"):
        assert callable(getattr(cuda, name))
        assert getattr(fastce, name) is not getattr(cuda, name)


def test_importing_fastce_does_not_import_cupy(tmp_path):
    code = ("import sys, fastce, fastce.cuda; "
            "import numpy as np; fastce.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64)); "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    # cwd: python -c puts the working directory first on sys.path, and the repository root
    # would shadow the installed fastce with the uncompiled source tree
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_describe_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    assert A.describe() is None
    from fastce import _config
    assert _config._config_dict()["gpu"] is None


# ------------------------------------------------------------------ planning
@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("C", [1, 2, 5, 31, 32, 33, 64, 65, 100, 512, 513, 1000, 1024, 1025, 4096,
                               4097, 8192, 8193, 16383, 16384, 32767, 32768, 128256, 262144])
@pytest.mark.parametrize("n_rows", [1, 3, 263, 264, 65536])
def test_plan_rows_invariants(itemsize, C, n_rows):
    p = A.plan_rows(n_rows, C, itemsize, row_step=C, class_stride=1, elementwise=True, sm_count=132)
    suf = "f32" if itemsize == 4 else "f64"
    assert p.kernel.endswith(suf)
    assert p.kernel in A.FILE_OF_KERNEL
    assert p.block % 32 == 0 and 32 <= p.block <= 1024
    assert 1 <= p.grid <= 132 * 64
    m = re.match(r"fastce_rows_(warp|block|thread)(\d*)_", p.kernel)
    kind, vpt = m.group(1), int(m.group(2) or 0)
    if kind == "warp":
        assert 32 * vpt >= C and (vpt == 1 or 16 * vpt < C), "smallest VPT that holds the row"
        assert C <= A.WARP_MAX_C[itemsize]
        assert p.grid == min(-(-n_rows // (p.block // 32)), 132 * 64)
    elif kind == "block" and vpt:
        assert vpt * p.block >= C and p.block <= 512, "cached rows fit the registers"
    elif kind == "block":
        assert C > 16 * 512
    if p.n_parts > 1:
        assert kind == "block" and vpt == 0
        assert n_rows < 2 * 132 and C >= A.CHUNK_MIN_C
        assert p.chunk_len * p.n_parts >= C > p.chunk_len * (p.n_parts - 1), "chunks cover the row"
        assert p.n_parts <= A.MAX_PARTS and p.grid_y2 == p.n_parts
        assert [ph for _, _, ph in p.launches] == [1, 2]
    else:
        assert [ph for _, _, ph in p.launches] == [0]


def test_plan_rows_reference_shapes():
    def k(n, c, **kw):
        args = dict(row_step=c, class_stride=1, elementwise=True, sm_count=132)
        args.update(kw)
        return A.plan_rows(n, c, 4, **args)
    assert k(65536, 10).kernel == "fastce_rows_warp1_f32"
    assert k(8192, 1000).kernel == "fastce_rows_warp32_f32"
    assert k(4096, 32000).kernel == "fastce_rows_block0_f32" and k(4096, 32000).n_parts == 1
    assert k(512, 128256).n_parts == 1
    p = k(1, 262144)
    assert p.n_parts == 64 and p.launches[0][0] == (1, 64, 1)
    assert k(1, 262144, elementwise=False).grid_y2 == 1, "forward-only phase 2 is one block per row"
    # Fortran-ordered short rows: a thread per row (coalesced); C-ordered: a warp per row
    assert k(1000, 10, row_step=1, class_stride=1000).kernel == "fastce_rows_thread_f32"
    assert k(1000, 100, row_step=1, class_stride=1000).kernel == "fastce_rows_warp4_f32"


def _layouts():
    rng = np.random.default_rng(0)
    base = np.arange(4 * 5 * 6 * 7, dtype=np.float64).reshape(4, 5, 6, 7)
    yield "C", base
    yield "F", np.asfortranarray(base)
    yield "sliced", base[::2, 1:, ::-1, 2:5]
    yield "transposed", base.transpose(2, 0, 3, 1)
    yield "2d sliced", base.reshape(20, 42)[1::3, ::-2]
    yield "2d F", np.asfortranarray(base.reshape(20, 42))
    yield "1d", base.reshape(-1)[5:100:7]
    yield "broadcast", np.broadcast_to(rng.standard_normal(7), (3, 5, 7))


@pytest.mark.parametrize("name,arr", list(_layouts()), ids=[n for n, _ in _layouts()])
def test_rows3_strides_match_numpy(name, arr):
    es = A.element_strides(arr.strides, arr.itemsize)
    for axis in range(arr.ndim):
        st = A.rows3_strides(arr.shape, es, axis)
        a, c, b = (int(np.prod(arr.shape[:axis])), arr.shape[axis], int(np.prod(arr.shape[axis + 1:])))
        if st is None:
            assert arr.ndim > 2, "1-D and 2-D arrays always have an (A, C, B) view"
            continue
        view = np.lib.stride_tricks.as_strided(arr, (a, c, b), [s * arr.itemsize for s in st])
        assert np.array_equal(view, arr.reshape(a, c, b)), (name, axis)
        red = tuple(np.delete(np.array(arr.shape), axis))
        st2 = A.rows2_strides(red, tuple(np.delete(np.array(es), axis)), axis)
        assert st2 == (st[0], st[2])


def test_collapse_strides():
    assert A.collapse_strides((), ()) == 0
    assert A.collapse_strides((1, 1), (5, 9)) == 0
    assert A.collapse_strides((3, 4), (4, 1)) == 1
    assert A.collapse_strides((3, 1, 4), (8, 99, 2)) == 2
    assert A.collapse_strides((3, 4), (1, 3)) is None
    assert A.collapse_strides((3, 4), (-4, -1)) == -1
    assert A.element_strides((8, 3), 4) is None


@pytest.mark.parametrize("seed", range(40))
def test_overlap_is_conservative(seed):
    rng = np.random.default_rng(seed)
    buf = np.zeros((12, 10))
    def view():
        r0, c0 = rng.integers(0, 6, 2)
        rs, cs = rng.choice([1, 2, 3, -1]), rng.choice([1, 2, -2])
        v = buf[r0:r0 + 6, c0:c0 + 4]
        return v[::rs, ::cs]
    a, b = view(), view()
    ea = A.byte_extent(a.__array_interface__["data"][0], a.shape, a.strides, a.itemsize)
    eb = A.byte_extent(b.__array_interface__["data"][0], b.shape, b.strides, b.itemsize)
    if np.shares_memory(a, b):
        assert A.extents_overlap(ea, eb)
    assert A.extents_overlap(ea, ea)
    assert not A.extents_overlap(ea, None)
    assert A.byte_extent(0, (0, 3), (8, 8), 8) is None


# ------------------------------------------------------------------ launch arguments
def test_pack_args_types_and_order():
    arr = np.zeros(3)
    null = np.uintp(0)
    vals = {n: (arr if k == "ptr" else 1) for n, k in A.FINALIZE_SIGNATURE}
    vals["out"] = None
    packed = A.pack_args(A.FINALIZE_SIGNATURE, vals, null)
    assert packed[0] is arr and packed[-1] is null
    assert [type(v) for v in packed[1:4]] == [np.int64, np.float64, np.int32]
    with pytest.raises(KeyError):
        A.pack_args(A.FINALIZE_SIGNATURE, dict(vals, bogus=1), null)
    vals.pop("n")
    with pytest.raises(KeyError):
        A.pack_args(A.FINALIZE_SIGNATURE, vals, null)


#: the kernel_params.h list each kernel takes, by name prefix (first match)
FAMILY_OF_PREFIX = (("fastce_rows_", "ROWS"), ("fastce_target_scan", "SCAN"),
                    ("fastce_nll_backward_", "NLL_BACKWARD"), ("fastce_nll_", "NLL"),
                    ("fastce_finalize_", "FINALIZE"), ("fastce_bce_", "BCE"))


def kernel_family(kernel):
    return next(f for p, f in FAMILY_OF_PREFIX if kernel.startswith(p))


def host_signature(kernel):
    """The signature the host code packs a launch of ``kernel`` with."""
    from fastce.cuda._bce import BCE_SIGNATURE
    from fastce.cuda._nll import NLL_BACKWARD_SIGNATURE
    return {"ROWS": A.ROWS_SIGNATURE, "SCAN": A.SCAN_SIGNATURE, "NLL": A.NLL_SIGNATURE,
            "FINALIZE": A.FINALIZE_SIGNATURE, "NLL_BACKWARD": NLL_BACKWARD_SIGNATURE,
            "BCE": BCE_SIGNATURE}[kernel_family(kernel)]


def _raw(name):
    with open(os.path.join(A.HERE, name), encoding="utf-8") as f:
        return f.read()


def test_signatures_are_the_header_lists():
    """The host's signatures are kernel_params.h's lists, and the list of every family is
    what the C declarations say (types of the header as written, in order)."""
    sigs = A.kernel_signatures()
    assert set(sigs) == {f for _, f in FAMILY_OF_PREFIX}
    for k in A.FILE_OF_KERNEL:
        assert host_signature(k) == sigs[kernel_family(k)], k
    assert A.ROWS_SIGNATURE[:3] == (("x", "ptr"), ("n_rows", "i64"), ("C", "i64"))
    assert A.ROWS_SIGNATURE[-2:] == (("mode", "i32"), ("phase", "i32"))
    assert A.FINALIZE_SIGNATURE == (("row_loss", "ptr"), ("n", "i64"), ("denom", "f64"),
                                    ("mean", "i32"), ("out", "ptr"))
    for fam, sig in sigs.items():
        names = [n for n, _ in sig]
        assert len(set(names)) == len(names), fam


def test_parse_kernel_params():
    text = ("#define FCE_A_FIELDS(X, T) \\\n    X(const T *, x) /* c */ X(long long, n) \\\n"
            "    X(int, m) X(double, d)\n#define FCE_B_FIELDS(X, T) X(void *, p)\n")
    assert A.parse_kernel_params(text) == {
        "A": (("x", "ptr"), ("n", "i64"), ("m", "i32"), ("d", "f64")), "B": (("p", "ptr"),)}
    with pytest.raises(ValueError, match="unsupported parameter type 'float'"):
        A.parse_kernel_params("#define FCE_A_FIELDS(X, T) X(float, f)\n")
    with pytest.raises(ValueError, match="FCE_A_FIELDS is not a list"):
        A.parse_kernel_params("#define FCE_A_FIELDS(X, T) X(int, a) Y(int, b)\n")


def test_every_kernel_is_declared_with_its_family_list():
    """Each kernel's parameters are FCE_PARAMS of the list the host packs its launch with
    (the emulator checks the compiled types: test_cuda_emulated.py)."""
    rows = _raw("rows.cu")
    assert "NAME(FCE_PARAMS(FCE_ROWS_FIELDS, S, O, fce_io<S>::T))" in rows
    assert "FCE_MEMBERS(FCE_ROWS_FIELDS, S, O, T)" in rows
    assert "p = {FCE_ARGS(FCE_ROWS_FIELDS, S, O, fce_io<S>::T)}" in rows
    declared = {}
    for cu in ("reduce.cu", "bce.cu"):
        for name, fam in re.findall(r"\b(fastce_\w+)\(FCE_PARAMS\(FCE_(\w+)_FIELDS,", _raw(cu)):
            declared[name] = fam
    assert declared == {k: kernel_family(k) for k in A.FILE_OF_KERNEL if not k.startswith("fastce_rows_")}
    for cu in CU_FILES:
        assert not re.search(r"\b(FCE_ROWS_PARAMS|FCE_NLL_PARAMS|FASTCE_BCE_PARAMS)\b", _raw(cu))


# ------------------------------------------------------------------ the text NVRTC compiles
ROW_FUNCTIONS = ("fce_hard_loss", "fce_hard_coef", "fce_soft_loss", "fce_soft_coef", "fce_needs_tail")


@pytest.mark.parametrize("cu", CU_FILES)
def test_source_is_one_text(cu):
    """read_source gives NVRTC one text: every #include "..." expanded once (row.h, the CPU
    path's row formulas; kernel_params.h), nothing left for an include path to find."""
    src = A.read_source(cu)
    assert not re.search(r'^\s*#\s*include', src, re.M)
    params = _raw("kernel_params.h")
    assert src.count(params) == 1
    row_h = os.path.join(REPO, "include", "fastce", "row.h")  # the CPU path's header
    with open(row_h, encoding="utf-8") as f:
        row = f.read()
    if cu == "rows.cu":
        assert src.count(row) == 1
        for fn in ROW_FUNCTIONS:  # defined (type name(...) {) once, by row.h; rows.cu calls them
            assert len(re.findall(rf"\b(?:int|double|void)\s+{fn}\([^;{{]*\)\s*\{{", src)) == 1, fn
        for fn in ROW_FUNCTIONS[:4]:
            assert re.search(rf"\b{fn}\(&rp,", src), fn
    else:
        assert "FASTCE_ROW_H" not in src
    # #line keeps the compiler's messages on the files' own lines
    lines = src.splitlines()
    i = lines.index('#line 1 "kernel_params.h"')
    assert lines[i + 1] == params.splitlines()[0]


def test_cupy_backend_compiles_that_text(fake_cupy):
    """CupyBackend hands NVRTC exactly read_source's text, with its options, once per module."""
    made = []

    class RawModule:
        def __init__(self, code, options):
            made.append((code, options))

    sys.modules["cupy"].RawModule = RawModule
    b = A.CupyBackend()
    for k in ("fastce_rows_warp1_f32", "fastce_rows_block0_f32", "fastce_rows_thread_bf16", "fastce_bce_f64"):
        b.module(A.FILE_OF_KERNEL[k], A.compile_options(k))
    assert made == [(A.read_source("rows.cu"), ("--std=c++11", "-DFCE_ROWS_SET=1")),
                    (A.read_source("rows.cu"), ("--std=c++11", "-DFCE_ROWS_SET=4")),
                    (A.read_source("bce.cu"), ("--std=c++11",))]


def test_source_include_errors(tmp_path):
    (tmp_path / "k.cu").write_text('#include "a.h"\nint k;\n#include "a.h"\n')
    (tmp_path / "a.h").write_text('#include "b.h"\nint a;\n')
    (tmp_path / "b.h").write_text("int b;\n")
    src = A.read_source("k.cu", (str(tmp_path),))
    assert src.count("int a;") == 1 and src.count("int b;") == 1 and "#include" not in src
    assert src.endswith('#line 2 "k.cu"\nint k;\n#line 4 "k.cu"\n')
    (tmp_path / "bad.cu").write_text('#include "missing.h"\n')
    with pytest.raises(FileNotFoundError, match="'missing.h'"):
        A.read_source("bad.cu", (str(tmp_path),))


def test_installed_package_has_the_kernel_sources(tmp_path):
    """What read_source needs is in the package: the .cu files and kernel_params.h as
    package data, row.h copied in by setup.py's build_py. An installed fastce (CI) is
    checked as installed (its venv may lie inside the repository); an in-place build
    through a build_py tree (what a wheel is built from). Either directory alone gives the
    text the repository's sources give."""
    repo_dirs = (os.path.join(REPO, "fastce", "cuda"), os.path.join(REPO, "include", "fastce"))
    here = os.path.realpath(A.HERE)
    # exactly the source tree's fastce/cuda: CI's venv (.venv-ci) lies inside the repository
    if here == os.path.realpath(repo_dirs[0]):
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                           cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        built = str(tmp_path / "fastce" / "cuda")
    else:
        built = here
    for cu in CU_FILES:
        assert A.read_source(cu, (built,)) == A.read_source(cu, repo_dirs), cu


class RecordingBackend:
    """Runs nothing: records launches; the target scan 'finds' every target valid."""

    name = "recording"
    array_name = "numpy.ndarray"

    def __init__(self, sm_count=132, norm=7.0):
        self.xp = np
        self.null = np.uintp(0)
        self.launches = []
        self._sm = sm_count
        self.norm = norm

    def is_array(self, a):
        return isinstance(a, np.ndarray)

    def address(self, a):
        return a.__array_interface__["data"][0]

    def to_host(self, a):
        return np.array(a)

    def sm_count(self):
        return self._sm

    def launch(self, kernel, grid, block, args):
        if kernel == "fastce_target_scan":
            args[-1][:] = [-1.0, self.norm, 3.0, 11.0]
        self.launches.append((kernel, grid, block, args))

    def rows_args(self, i=-1):
        rows = [l for l in self.launches if l[0].startswith("fastce_rows")]
        k, g, b, args = rows[i]
        return k, dict(zip([n for n, _ in A.ROWS_SIGNATURE], args))


def test_ops_passes_strides_and_pointers():
    b = RecordingBackend()
    ops = A.Ops(b)
    big = np.zeros((10, 30), np.float32)
    x = big[1::2, ::3]                      # (5, 10), strides (60, 3) elements
    out = np.zeros((10, 5), np.float32).T   # (5, 10) F-order
    r = ops.log_softmax(x, out=out)
    assert r is out
    k, a = b.rows_args()
    assert a["x"] is x and a["out"] is out, "strided views go to the kernel without copies"
    assert (a["n_rows"], a["C"], a["B"], a["xa"], a["xc"], a["xb"]) == (5, 10, 1, 60, 3, 0)
    assert (a["oa"], a["oc"]) == (1, 5)
    assert a["mode"] == A.MODE_LOG_SOFTMAX and a["row_out"] is b.null and a["target"] is b.null
    assert k == "fastce_rows_warp1_f32"


def test_ops_copies_layouts_without_a_view():
    b = RecordingBackend()
    ops = A.Ops(b)
    x = np.zeros((4, 5, 6), np.float64).transpose(1, 0, 2)  # axis 2: rows (5, 4) do not collapse
    ops.softmax(x, axis=2)
    _, a = b.rows_args()
    assert a["x"] is not x and a["x"].flags.c_contiguous
    lse_out = np.zeros((2, 4, 3)).transpose(2, 1, 0)  # (3, 4, 2): the (4, 2) part does not collapse
    ops.logsumexp(np.zeros((3, 5, 4, 2)), axis=1, out=lse_out)
    _, a = b.rows_args()
    assert a["row_out"] is not lse_out and (a["ra"], a["rb"]) == (8, 1), \
        "a temporary, copied into out afterwards"


def test_ops_cross_entropy_arguments():
    b = RecordingBackend(norm=4.0)
    ops = A.Ops(b)
    x = np.zeros((6, 9), np.float32)
    t = np.array([1, 2, -100, 3, 4, 5], np.int32)
    w = np.arange(1, 10, dtype=np.float32)
    loss, g = ops.cross_entropy_with_grad(x, t, weight=w, reduction="mean", grad_output=2.0,
                                          label_smoothing=0.1)
    names = [l[0] for l in b.launches]
    assert names == ["fastce_target_scan", "fastce_rows_warp1_f32", "fastce_finalize_f32"]
    _, a = b.rows_args()
    assert a["target"].dtype == np.int32 and a["target_is64"] == 1 - 1, "int32 targets read as is"
    assert a["weight"].dtype == np.float64 and a["W"] == 11.0 and a["eps"] == np.float64(0.1)
    assert a["gout"] is b.null and a["gscale"] == 2.0 / 4.0, "'mean' folds 1 / sum w_y into the scale"
    assert a["row_loss"].dtype == np.float64 and a["row_out"] is b.null
    assert a["out"] is g and g.shape == x.shape and g.dtype == x.dtype
    fin = dict(zip([n for n, _ in A.FINALIZE_SIGNATURE], b.launches[-1][3]))
    assert fin["denom"] == 4.0 and fin["mean"] == 1 and fin["out"] is loss and loss.shape == ()
    # 'none': per-row losses straight in the logits' dtype, per-row grad_output, no finalize
    b.launches.clear()
    go = np.linspace(1, 2, 6)
    loss, g = ops.cross_entropy_with_grad(x, t.astype(np.uint8), reduction="none", grad_output=go)
    _, a = b.rows_args()
    assert a["target"].dtype == np.int64 and a["target_is64"] == 1
    assert a["row_out"] is loss and loss.shape == (6,) and loss.dtype == np.float32
    assert a["gout_s"] == 1 and np.array_equal(a["gout"], go) and a["gscale"] == 1.0
    assert [l[0] for l in b.launches][-1].startswith("fastce_rows")
    # a 0-d device grad_output is read by the kernel (stride 0): no host sync for it
    b.launches.clear()
    ops.cross_entropy_backward(x, t, np.array(3.0), reduction="sum")
    _, a = b.rows_args()
    assert a["gout_s"] == 0 and a["gout"].size == 1 and a["gscale"] == 1.0
    assert a["row_loss"] is b.null and a["row_out"] is b.null, "backward computes no loss"
    # in place: the gradient goes into the logits buffer
    loss, g = ops.cross_entropy_with_grad(x, t, inplace=True)
    assert g is x


def test_ops_ignore_index_outside_int64():
    b = RecordingBackend()
    A.Ops(b).cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_index=2 ** 70)
    _, a = b.rows_args()
    assert a["ignore_index"] == -(2 ** 63)


# ------------------------------------------------------------------ compilation
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("cu", CU_FILES)
def test_nvcc_compiles(cu, tmp_path):
    """Every kernel compiles standalone for sm_80 and sm_90 (float32 and float64), without
    register spills, and the file defines exactly the kernels the host code launches."""
    src = tmp_path / cu  # the text NVRTC gets (read_source), compiled with no include path
    src.write_text(A.read_source(cu))
    cmd = [NVCC, "-c", "-Xptxas", "-v", "-o", str(tmp_path / "k.o"), str(src)]
    for arch in ("80", "90"):
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower(), r.stderr
    spills = re.findall(r"(\d+) bytes spill stores", r.stderr)
    assert spills and all(n == "0" for n in spills), r.stderr
    for arch in ("80", "90"):
        entries = set(re.findall(rf"Compiling entry function '(\w+)' for 'sm_{arch}'", r.stderr))
        assert entries == set(A.KERNEL_FILES[cu]), arch


def _find_nvrtc():
    cands = []
    if os.environ.get("FASTCE_NVRTC"):
        cands.append(os.environ["FASTCE_NVRTC"])
    for sp in sys.path:
        cands += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib", "libnvrtc.so*")))
        cands += sorted(glob.glob(os.path.join(sp, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            cands += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))
    lib = ctypes.util.find_library("nvrtc")
    if lib:
        cands.append(lib)
    for c in cands:
        if "builtins" in c:
            continue
        try:
            return ctypes.CDLL(c)
        except OSError:
            continue
    return None


# every module CuPy builds: a .cu file with the extra options of its kernels (rows.cu: one
# module per dtype family, FCE_ROWS_SET)
NVRTC_MODULES = sorted({(cu, A.compile_options(k)) for cu, ks in A.KERNEL_FILES.items() for k in ks})


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("cu,extra", NVRTC_MODULES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_nvrtc_compiles(cu, extra, arch):
    """The exact text CuPy's RawModule hands to NVRTC, with its options, compiles."""
    lib = _find_nvrtc()
    if lib is None:
        # the test extra installs nvidia-cuda-nvrtc-cu12 on Linux: in CI a miss is a failure
        require_in_ci("libnvrtc not found (set FASTCE_NVRTC, or pip install nvidia-cuda-nvrtc-cu12)")
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), A.read_source(cu).encode(), cu.encode(),
                                  0, None, None) == 0
    opts = [f"-arch={arch}", *A.CupyBackend.options, *extra]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value + 1)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode()
    assert "warning" not in log.value.decode().lower(), log.value.decode()
