"""linear_cross_entropy and linear_cross_entropy_with_grad (fused linear + cross-entropy,
chunked over rows) against torch autograd on the composed formula

    loss = F.cross_entropy(h @ W.T + b, t, ...) + z * lse**2   (z-term: summed over the rows
                                                                not ignored; 'mean' divides
                                                                it by their count too)

and against ``torch.nn.functional.linear_cross_entropy`` where the options overlap; peak
memory (tracemalloc) scaling with the chunk, not with N; argument errors.

Tolerances (stated once, used throughout):

* float64 vs torch float64 autograd: rtol 1e-12, atol 1e-12 (gradients: atol relative to
  the largest reference entry).
* float32 vs the float64 oracle: loss rtol 2e-6; gradients rtol 1e-4 with atol 2e-6 x the
  largest reference entry (the logits carry float32 GEMM rounding, ~sqrt(H) eps; d_weight
  additionally sums N rows in float32 inside BLAS).
* float32 vs torch float32 (same formula, its own float32 rounding): twice the above.
"""
import math

import numpy as np
import pytest

import fastce
import fastce._linear_call as L  # the chunked sweeps and their knobs
from conftest import assert_close
from fastce import _validation as FV
from fastce.bench import peak_extra_tracemalloc

REDUCTIONS = ("mean", "sum", "none")
IGNORES = ("none", "some", "all")
IGNORE_INDEX = -100

TOL64 = dict(loss=dict(rtol=1e-12, atol=1e-12), grad=dict(rtol=1e-12, atol=1e-12))
TOL32 = dict(loss=dict(rtol=2e-6, atol=1e-7), grad=dict(rtol=1e-4, atol=2e-6))
TOL32_TORCH = dict(loss=dict(rtol=4e-6, atol=2e-7), grad=dict(rtol=2e-4, atol=4e-6))


# ----------------------------------------------------------------------------- inputs
def make_inputs(n, h, v, dtype=np.float64, *, bias=True, ignore="none", seed=0,
                ignore_index=IGNORE_INDEX):
    """hidden (n, h), weight (v, h), bias (v,) or None, target (n,); logits of std ~2."""
    rng = np.random.default_rng([seed, n, h, v])
    hid = rng.standard_normal((n, h)).astype(dtype)
    w = (rng.standard_normal((v, h)) * (2.0 / math.sqrt(h))).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    t = rng.integers(0, v, size=n)
    if ignore == "some":
        t[1::3] = ignore_index
    elif ignore == "all":
        t[:] = ignore_index
    return hid, w, b, t


def torch_oracle(torch, hid, w, b, t, *, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                 grad_output=1.0, ignore_index=IGNORE_INDEX, dtype=np.float64):
    """Loss and (d_hidden, d_weight, d_bias) by torch autograd on the composed formula,
    computed in ``dtype``; returned as NumPy arrays."""
    F = torch.nn.functional
    ht = torch.tensor(np.asarray(hid, dtype=dtype), requires_grad=True)
    wt = torch.tensor(np.asarray(w, dtype=dtype), requires_grad=True)
    bt = None if b is None else torch.tensor(np.asarray(b, dtype=dtype), requires_grad=True)
    tt = torch.tensor(np.asarray(t, dtype=np.int64))
    logits = F.linear(ht, wt, bt)
    loss = F.cross_entropy(logits, tt, reduction=reduction, ignore_index=ignore_index,
                           label_smoothing=label_smoothing)
    if z_loss:
        keep = (tt != ignore_index).to(logits.dtype)
        zrow = z_loss * torch.logsumexp(logits, dim=1) ** 2 * keep
        if reduction == "none":
            loss = loss + zrow
        elif reduction == "sum":
            loss = loss + zrow.sum()
        else:
            loss = loss + zrow.sum() / keep.sum().clamp(min=1)  # all ignored: CE gives nan already
    go = torch.as_tensor(np.broadcast_to(np.asarray(grad_output, dtype=dtype), loss.shape).copy())
    if hid.shape[0] or reduction != "none":
        loss.backward(go)
    grads = [x.grad if x is not None and x.grad is not None else
             (None if x is None else torch.zeros_like(x)) for x in (ht, wt, bt)]
    return (loss.detach().numpy(),) + tuple(None if g is None else g.numpy() for g in grads)


def check_all(got, want, tol, what):
    names = ("loss", "d_hidden", "d_weight", "d_bias")
    assert len(got) == 4
    for name, a, d in zip(names, got, want):
        if d is None:
            assert a is None, f"{what}: {name} should be None"
            continue
        kind = "loss" if name == "loss" else "grad"
        assert np.asarray(a).dtype == np.asarray(got[0]).dtype or name == "loss"
        assert_close(a, d, **tol[kind], what=f"{what}: {name}", scale_atol=kind == "grad")


def case_id(**kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


# ----------------------------------------------------------------------------- float64: every option
@pytest.mark.parametrize("chunk_size", [1, 3, 5, None, 64], ids=lambda c: f"chunk={c}")
@pytest.mark.parametrize("z_loss", [0.0, 1e-3], ids=lambda z: f"z={z}")
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=lambda e: f"ls={e}")
@pytest.mark.parametrize("ignore", IGNORES, ids=lambda s: f"ignore={s}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [False, True], ids=lambda b: f"bias={b}")
def test_every_option_float64(torch, bias, reduction, ignore, label_smoothing, z_loss, chunk_size):
    """N=10 rows: chunk 3 does not divide N (and, with ignored rows, the 7 computed rows),
    5 divides N, 64 > N, None is the memory-budget default."""
    hid, w, b, t = make_inputs(10, 6, 13, bias=bias, ignore=ignore)
    kw = dict(bias=b, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
              chunk_size=chunk_size)
    what = case_id(bias=bias, reduction=reduction, ignore=ignore, ls=label_smoothing, z=z_loss,
                   chunk=chunk_size)
    copies = [None if a is None else a.copy() for a in (hid, w, b, t)]
    got = fastce.linear_cross_entropy_with_grad(hid, w, t, **kw)
    want = torch_oracle(torch, hid, w, b, t, reduction=reduction, label_smoothing=label_smoothing,
                        z_loss=z_loss)
    check_all(got, want, TOL64, what)
    fwd = fastce.linear_cross_entropy(hid, w, t, **kw)
    assert_close(fwd, want[0], **TOL64["loss"], what=f"{what}: forward-only loss")
    for a, c in zip((hid, w, b, t), copies):  # inputs untouched
        if a is not None:
            np.testing.assert_array_equal(a, c, err_msg=f"{what}: an input was modified")
    if ignore == "all" and reduction == "mean":
        assert np.isnan(got[0]) and np.isnan(fwd)
    if ignore != "none":  # ignored rows: zero gradient, zero 'none' loss
        rows = t == IGNORE_INDEX
        assert not got[1][rows].any()
        if reduction == "none":
            assert not got[0][rows].any()


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [False, True], ids=lambda b: f"bias={b}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_tiny_batches(torch, n, reduction, bias, dtype):
    """N=0 ('mean' -> nan, 'sum' -> 0, 'none' -> empty; zero gradients) and N=1."""
    hid, w, b, t = make_inputs(n, 5, 7, dtype, bias=bias)
    got = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, reduction=reduction,
                                                label_smoothing=0.1, z_loss=1e-3, chunk_size=4)
    want = torch_oracle(torch, hid, w, b, t, reduction=reduction, label_smoothing=0.1,
                        z_loss=1e-3, dtype=np.float64)
    check_all(got, want, TOL64 if dtype == np.float64 else TOL32, case_id(n=n, reduction=reduction))
    assert got[1].shape == (n, 5) and got[2].shape == (7, 5)
    assert all(g is None or g.dtype == dtype for g in got[1:])
    fwd = fastce.linear_cross_entropy(hid, w, t, bias=b, reduction=reduction,
                                      label_smoothing=0.1, z_loss=1e-3)
    if reduction == "none":
        assert fwd.shape == (n,) and fwd.dtype == dtype
    else:
        assert isinstance(fwd, dtype) and isinstance(got[0], dtype)
    if n == 0:
        assert (np.isnan(fwd) if reduction == "mean" else np.all(fwd == 0))
        assert not got[2].any() and (got[3] is None or not got[3].any())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_output(torch, reduction):
    """A non-unit upstream gradient: a scalar for 'mean'/'sum'; per row (or a scalar for
    every row) for 'none'."""
    hid, w, b, t = make_inputs(9, 4, 11, ignore="some")
    if reduction == "none":
        gos = [np.linspace(-1.5, 2.0, 9), 0.75]
    else:
        gos = [2.5, np.float64(-0.5), np.array(3.0)]
    for go in gos:
        got = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, reduction=reduction,
                                                    z_loss=1e-3, label_smoothing=0.1,
                                                    chunk_size=2, grad_output=go)
        want = torch_oracle(torch, hid, w, b, t, reduction=reduction, z_loss=1e-3,
                            label_smoothing=0.1, grad_output=go)
        check_all(got, want, TOL64, case_id(reduction=reduction, grad_output=go))


@pytest.mark.parametrize("ignore_index", [-1, 3, 10**12])
def test_other_ignore_index(torch, ignore_index):
    """Any int: a valid class id (3) is then ignored wherever it is the target."""
    hid, w, b, t = make_inputs(12, 5, 8)
    t[::4] = ignore_index if ignore_index != 3 else 3
    for reduction in REDUCTIONS:
        got = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, reduction=reduction,
                                                    ignore_index=ignore_index, chunk_size=5)
        want = torch_oracle(torch, hid, w, b, t, reduction=reduction, ignore_index=ignore_index)
        check_all(got, want, TOL64, case_id(ignore_index=ignore_index, reduction=reduction))


@pytest.mark.parametrize("layout", ["F", "sliced", "reversed", "int-target32"])
def test_layouts(torch, layout):
    """Fortran-order, strided and reversed hidden / weight / bias give the same results."""
    hid, w, b, t = make_inputs(11, 7, 9, ignore="some")
    want = torch_oracle(torch, hid, w, b, t, label_smoothing=0.1, z_loss=1e-3)
    if layout == "F":
        args = np.asfortranarray(hid), np.asfortranarray(w), b, t
    elif layout == "sliced":
        big_h = np.full((22, 15), np.nan)
        big_h[::2, 1::2] = hid
        big_w = np.full((18, 14), np.nan)
        big_w[::2, ::2] = w
        big_b = np.full(27, np.nan)
        big_b[::3] = b
        args = big_h[::2, 1::2], big_w[::2, ::2], big_b[::3], t
    elif layout == "reversed":
        args = hid[::-1, ::-1].copy()[::-1, ::-1], w[::-1].copy()[::-1], b[::-1].copy()[::-1], t
    else:
        args = hid, w, b, t.astype(np.int32)
    for chunk in (1, 4, None):
        got = fastce.linear_cross_entropy_with_grad(args[0], args[1], args[3], bias=args[2],
                                                    label_smoothing=0.1, z_loss=1e-3,
                                                    chunk_size=chunk)
        check_all(got, want, TOL64, case_id(layout=layout, chunk=chunk))
        assert got[1].flags.c_contiguous and got[2].flags.c_contiguous


def test_numpy_only_path(torch, monkeypatch):
    """Without SciPy's BLAS the weight gradient goes through blocked NumPy matmuls; force
    that path and several blocks."""
    hid, w, b, t = make_inputs(20, 6, 50, ignore="some")
    monkeypatch.setattr(L, "_USE_SCIPY", False)
    monkeypatch.setattr(L, "_ACC_BLOCK_BYTES", 7 * 6 * 8)  # blocks of 7 classes (50 = 7*7 + 1)
    for reduction in REDUCTIONS:
        for chunk in (1, 6, None):
            got = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, reduction=reduction,
                                                        z_loss=1e-3, chunk_size=chunk)
            want = torch_oracle(torch, hid, w, b, t, reduction=reduction, z_loss=1e-3)
            check_all(got, want, TOL64, case_id(path="numpy-only", reduction=reduction, chunk=chunk))


def test_threads_bitwise():
    """n_threads (fastce's kernels) does not change a single bit."""
    hid, w, b, t = make_inputs(40, 16, 300, np.float32, ignore="some")
    kw = dict(bias=b, label_smoothing=0.1, z_loss=1e-3, chunk_size=7)
    one = fastce.linear_cross_entropy_with_grad(hid, w, t, n_threads=1, **kw)
    two = fastce.linear_cross_entropy_with_grad(hid, w, t, n_threads=2, **kw)
    for a, c in zip(one, two):
        np.testing.assert_array_equal(a, c)


# ----------------------------------------------------------------------------- float32
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [1, 17, None], ids=lambda c: f"chunk={c}")
def test_float32(torch, reduction, chunk_size):
    """float32 vs the float64 oracle (TOL32) and vs torch in float32 (TOL32_TORCH)."""
    hid, w, b, t = make_inputs(100, 64, 1000, np.float32, ignore="some")
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    got = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, chunk_size=chunk_size, **kw)
    assert all(g.dtype == np.float32 for g in got[1:])
    assert np.asarray(got[0]).dtype == np.float32
    what = case_id(dtype="float32", reduction=reduction, chunk=chunk_size)
    check_all(got, torch_oracle(torch, hid, w, b, t, **kw), TOL32, what + " vs float64")
    check_all(got, torch_oracle(torch, hid, w, b, t, dtype=np.float32, **kw), TOL32_TORCH,
              what + " vs torch float32")
    fwd = fastce.linear_cross_entropy(hid, w, t, bias=b, chunk_size=chunk_size, **kw)
    assert_close(fwd, got[0], rtol=1e-6, atol=1e-7, what=what + ": forward-only vs with_grad")


def _max_rel_err(a, ref):
    return float(np.max(np.abs(a.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def test_float32_accumulation_accuracy(torch):
    """d_weight and d_bias accumulate over 256 chunks of 8 rows: the float32 error stays
    within a small factor of torch's unfused float32 backward (one GEMM over all rows), so
    accumulating d_weight in float32 loses nothing that torch keeps."""
    hid, w, b, t = make_inputs(2048, 32, 200, np.float32, seed=3)
    ref = torch_oracle(torch, hid, w, b, t, reduction="sum")
    ours = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, reduction="sum", chunk_size=8)
    theirs = torch_oracle(torch, hid, w, b, t, reduction="sum", dtype=np.float32)
    for k, name in ((1, "d_hidden"), (2, "d_weight"), (3, "d_bias")):
        e_ours, e_torch = _max_rel_err(ours[k], ref[k]), _max_rel_err(theirs[k], ref[k])
        assert e_ours <= 4 * e_torch + 2e-6, (name, e_ours, e_torch)
    assert abs(float(ours[0]) - float(ref[0])) <= 2e-6 * abs(float(ref[0]))


# ----------------------------------------------------------------------------- torch's own op
def _torch_lce(torch, hid, w, b, t, dtype, options, **kw):
    F = torch.nn.functional
    ht = torch.tensor(np.asarray(hid, dtype=dtype), requires_grad=True)
    wt = torch.tensor(np.asarray(w, dtype=dtype), requires_grad=True)
    bt = None if b is None else torch.tensor(np.asarray(b, dtype=dtype), requires_grad=True)
    loss = F.linear_cross_entropy(ht, wt, torch.tensor(t), linear_bias=bt, options=options, **kw)
    loss.backward(torch.ones_like(loss))
    return (loss.detach().numpy(), ht.grad.numpy(), wt.grad.numpy(),
            None if bt is None else bt.grad.numpy())


@pytest.mark.parametrize("chunked", [False, True], ids=lambda c: f"torch_chunked={c}")
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1], ids=lambda e: f"ls={e}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [False, True], ids=lambda b: f"bias={b}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_vs_torch_linear_cross_entropy(torch, dtype, bias, reduction, label_smoothing, chunked):
    """``torch.nn.functional.linear_cross_entropy`` (reference path ``options=None``, and its
    chunked path ``LinearCrossEntropyOptions(batch_chunk_size=8)``, which itself falls back
    to the reference path for label smoothing) on the options both take."""
    if not hasattr(torch.nn.functional, "linear_cross_entropy"):
        pytest.skip(f"torch {torch.__version__} has no linear_cross_entropy")
    hid, w, b, t = make_inputs(30, 16, 70, dtype, bias=bias, ignore="some")
    options = None
    if chunked:
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8, chunking_method=None)
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the chunked path warns when it falls back
        want = _torch_lce(torch, hid, w, b, t, dtype, options, ignore_index=IGNORE_INDEX, **kw)
    got = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, chunk_size=8, **kw)
    tol = TOL64 if dtype == np.float64 else TOL32_TORCH
    if dtype == np.float64 and chunked:
        tol = dict(loss=dict(rtol=1e-10, atol=1e-12), grad=dict(rtol=1e-10, atol=1e-12))
    check_all(got, want, tol, case_id(dtype=np.dtype(dtype).name, bias=bias, reduction=reduction,
                                      ls=label_smoothing, chunked=chunked))


# ----------------------------------------------------------------------------- memory
def _outputs_nbytes(n, h, v, itemsize, bias):
    return (n * h + v * h + (v if bias else 0)) * itemsize


@pytest.fixture(scope="module")
def warm():
    """One call first: imports (SciPy's BLAS) are allocations tracemalloc would count."""
    hid, w, b, t = make_inputs(4, 3, 5, np.float32)
    for dt in (np.float32, np.float64):
        fastce.linear_cross_entropy_with_grad(hid.astype(dt), w.astype(dt), t, bias=b.astype(dt))
        fastce.linear_cross_entropy(hid.astype(dt), w.astype(dt), t, bias=b.astype(dt))


@pytest.mark.parametrize("ignore", ["none", "some"], ids=lambda s: f"ignore={s}")
@pytest.mark.parametrize("chunk_size,n", [(1, 48), (8, 256), (64, 512)], ids=lambda c: str(c))
def test_peak_memory_scales_with_chunk(warm, chunk_size, n, ignore):
    """Peak extra bytes (tracemalloc; outputs excluded) = the (chunk, V) logits buffer plus
    O(chunk * H + V + N), never N x V. V=20000, H=32 float32: the logits would be 3.7 to 39
    MiB; the buffer is 78 KiB at chunk 1, 5 MiB at chunk 64."""
    h, v = 32, 20000
    hid, w, b, t = make_inputs(n, h, v, np.float32, ignore=ignore)
    buf = chunk_size * v * 4
    slack = 3 * chunk_size * h * 4 + 3 * v * 8 + 64 * n + (256 << 10)
    block = 0
    if L._scipy_gemm(np.float32) is None:  # no SciPy: the weight gradient's temporary block
        block = min(v * h * 4, L._ACC_BLOCK_BYTES)  # weight-sized (V x H), not N x V
        slack += block
    full = n * v * 4
    extra_fb = peak_extra_tracemalloc(lambda: fastce.linear_cross_entropy_with_grad(
        hid, w, t, bias=b, chunk_size=chunk_size)) - _outputs_nbytes(n, h, v, 4, True)
    extra_f = peak_extra_tracemalloc(lambda: fastce.linear_cross_entropy(
        hid, w, t, bias=b, chunk_size=chunk_size))
    for name, extra in (("with_grad", extra_fb), ("forward", extra_f)):
        assert buf <= extra <= buf + slack, (name, extra, buf, slack)
        assert extra - (block if name == "with_grad" else 0) < full / 7, (name, extra, block, full)


def test_peak_memory_numpy_only_path(warm, monkeypatch):
    """Without SciPy the weight gradient adds one temporary of at most _ACC_BLOCK_BYTES."""
    monkeypatch.setattr(L, "_USE_SCIPY", False)
    n, h, v = 256, 32, 20000
    hid, w, b, t = make_inputs(n, h, v, np.float32)
    extra = peak_extra_tracemalloc(lambda: fastce.linear_cross_entropy_with_grad(
        hid, w, t, bias=b, chunk_size=16)) - _outputs_nbytes(n, h, v, 4, True)
    buf = 16 * v * 4
    block = min(v * h * 4, L._ACC_BLOCK_BYTES)
    assert extra <= buf + block + 3 * v * 8 + (512 << 10), (extra, buf, block)


def test_memory_budget_sets_chunk(warm):
    """chunk_size = max(1, memory_budget // (V * itemsize)); default 64 MiB."""
    v, h = 5000, 8
    assert FV.linear_chunk_rows(None, None, v, 4) == (64 << 20) // (v * 4)
    assert FV.linear_chunk_rows(None, 10 * v * 4 + 5, v, 4) == 10
    assert FV.linear_chunk_rows(None, 10 * v * 8 + 5, v, 8) == 10
    assert FV.linear_chunk_rows(None, 1, v, 4) == 1
    assert FV.linear_chunk_rows(None, 2.5e5, v, 8) == 6
    assert FV.linear_chunk_rows(7, None, v, 4) == 7
    hid, w, b, t = make_inputs(100, h, v, np.float32)
    for budget, rows in ((10 * v * 4 + 5, 10), (100, 1), (1 << 30, 100)):  # the buffer: min(chunk, N) rows
        extra = peak_extra_tracemalloc(lambda: fastce.linear_cross_entropy(
            hid, w, t, bias=b, memory_budget=budget))
        assert rows * v * 4 <= extra <= rows * v * 4 + 3 * v * 8 + (128 << 10), (budget, extra)
    a = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, memory_budget=10 * v * 4)
    c = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, chunk_size=10)
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- errors
def _ok():
    hid, w, b, t = make_inputs(6, 4, 5, np.float32)
    return dict(hidden=hid, weight=w, target=t, bias=b)


def _bad(**changes):
    kw = _ok()
    kw.update(changes)
    return kw


ERROR_CASES = [
    # (id, kwargs, exception, message regex)
    ("hidden-1d", _bad(hidden=np.zeros(4, np.float32)), ValueError, r"hidden must have shape \(N, H\)"),
    ("hidden-3d", _bad(hidden=np.zeros((2, 3, 4), np.float32)), ValueError, r"hidden must have shape \(N, H\)"),
    ("hidden-int", _bad(hidden=np.zeros((6, 4), np.int64)), TypeError, r"hidden must have dtype float32 or float64"),
    ("hidden-f16", _bad(hidden=np.zeros((6, 4), np.float16)), TypeError, r"hidden must have dtype"),
    ("weight-1d", _bad(weight=np.zeros(4, np.float32)), ValueError, r"weight must have shape \(V, H\)"),
    ("weight-H", _bad(weight=np.zeros((5, 3), np.float32)), ValueError, r"H=4 features .* weight must have shape \(V, 4\)"),
    ("weight-V0", _bad(weight=np.zeros((0, 4), np.float32), bias=None), ValueError, r"weight must have at least one row"),
    ("weight-dtype", _bad(weight=np.zeros((5, 4), np.float64)), TypeError, r"hidden and weight must have the same dtype.*float32.*float64"),
    ("weight-list-dtype", _bad(weight=[[1, 2, 3, 4]] * 5), TypeError, r"weight must have dtype float32 or float64"),
    ("bias-shape", _bad(bias=np.zeros(4, np.float32)), ValueError, r"bias must have shape \(5,\)"),
    ("bias-2d", _bad(bias=np.zeros((1, 5), np.float32)), ValueError, r"bias must have shape \(5,\)"),
    ("bias-dtype", _bad(bias=np.zeros(5, np.float64)), TypeError, r"bias must have the dtype of hidden and weight \(float32\)"),
    ("target-shape", _bad(target=np.zeros(5, np.int64)), ValueError, r"target must have shape \(6,\)"),
    ("target-2d", _bad(target=np.zeros((6, 1), np.int64)), ValueError, r"target must have shape \(6,\)"),
    ("target-float", _bad(target=np.zeros(6, np.float32)), TypeError, r"target must hold class indices"),
    ("target-bool", _bad(target=np.zeros(6, bool)), TypeError, r"target must hold class indices"),
    ("target-high", _bad(target=np.array([0, 1, 5, 0, 0, 0])), IndexError, r"target\[2\] = 5 is out of bounds for 5 classes"),
    ("target-neg", _bad(target=np.array([0, 1, 2, -1, 0, 0])), IndexError, r"target\[3\] = -1 is out of bounds"),
    ("chunk-0", _bad(chunk_size=0), ValueError, r"chunk_size must be >= 1, got 0"),
    ("chunk-neg", _bad(chunk_size=-3), ValueError, r"chunk_size must be >= 1, got -3"),
    ("chunk-float", _bad(chunk_size=2.0), TypeError, r"chunk_size must be a positive int or None"),
    ("chunk-bool", _bad(chunk_size=True), TypeError, r"chunk_size must be a positive int or None"),
    ("budget-0", _bad(memory_budget=0), ValueError, r"memory_budget must be a finite number of bytes > 0"),
    ("budget-neg", _bad(memory_budget=-1.5), ValueError, r"memory_budget must be a finite number of bytes > 0"),
    ("budget-nan", _bad(memory_budget=float("nan")), ValueError, r"memory_budget must be a finite"),
    ("budget-inf", _bad(memory_budget=float("inf")), ValueError, r"memory_budget must be a finite"),
    ("budget-str", _bad(memory_budget="64MiB"), TypeError, r"memory_budget must be a positive number of bytes"),
    ("chunk-and-budget", _bad(chunk_size=2, memory_budget=1 << 20), ValueError, r"pass chunk_size or memory_budget, not both"),
    ("reduction", _bad(reduction="avg"), ValueError, r"reduction must be one of"),
    ("label-smoothing", _bad(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]"),
    ("z-loss", _bad(z_loss=-1.0), ValueError, r"z_loss must be a finite float >= 0"),
    ("ignore-index", _bad(ignore_index=1.5), TypeError, r"ignore_index must be an int"),
    ("n-threads", _bad(n_threads=0), ValueError, r"n_threads must be >= 1"),
]


@pytest.mark.parametrize("fn", ["linear_cross_entropy", "linear_cross_entropy_with_grad"])
@pytest.mark.parametrize("kw,exc,match", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors(fn, kw, exc, match):
    kw = dict(kw)
    with pytest.raises(exc, match=match):
        getattr(fastce, fn)(kw.pop("hidden"), kw.pop("weight"), kw.pop("target"), **kw)


@pytest.mark.parametrize("reduction,go,match", [
    ("none", np.ones(5), r"grad_output must have the shape of the per-row loss \(6,\)"),
    ("mean", np.ones(6), r"grad_output must be a scalar for reduction='mean'"),
    ("sum", "x", r"grad_output must be a real number"),
])
def test_grad_output_errors(reduction, go, match):
    kw = _ok()
    with pytest.raises((ValueError, TypeError), match=match):
        fastce.linear_cross_entropy_with_grad(kw["hidden"], kw["weight"], kw["target"],
                                              bias=kw["bias"], reduction=reduction, grad_output=go)


def test_exported():
    assert "linear_cross_entropy" in fastce.__all__
    assert "linear_cross_entropy_with_grad" in fastce.__all__
    for fn in (fastce.linear_cross_entropy, fastce.linear_cross_entropy_with_grad):
        doc = fn.__doc__
        for section in ("Parameters\n", "Returns\n", "chunk_size", "memory_budget", "64 MiB"):
            assert section in doc, (fn.__name__, section)
