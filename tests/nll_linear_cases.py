"""The GPU path's nll_loss_backward and fused linear cross-entropy checks, shared by the
emulated run (test_cuda_emulated_nll_linear.py, CPU only) and the real one
(test_cupy_nll_linear.py, CuPy + GPU).

The harness is tests/cuda_cases.py's (``h.ops``, ``h.dev``, ``h.host``, ``h.is_dev``,
``h.shares``), its ``ops`` offering ``nll_loss_backward``, ``linear_cross_entropy`` and
``linear_cross_entropy_with_grad``.  Oracles: float64 formulas on NumPy (below, from
``fastce.reference``), and fastce's CPU functions on the same host inputs: nll_loss_backward
must match the CPU bit for bit (same float64 products, rounded once) except under weighted
'mean', whose normaliser the GPU scan sums in another order (a few ulp); the linear
cross-entropy within GEMM rounding.
"""

import numpy as np
import pytest

import fastce
from conftest import IGNORE_INDEX, assert_close, make_logits, make_target, make_weight
from cuda_cases import tol, what

# float32 linear cross-entropy: the logits carry GEMM rounding (~sqrt(H) eps), d_weight sums
# N rows in float32 (as tests/test_linear.py's TOL32)
LINEAR_TOL = {np.dtype(np.float32): dict(loss=dict(rtol=2e-6, atol=1e-7), grad=dict(rtol=1e-4, atol=2e-6)),
              np.dtype(np.float64): dict(loss=dict(rtol=1e-11, atol=1e-12),
                                         grad=dict(rtol=1e-10, atol=1e-12))}


# ------------------------------------------------------------------ nll_loss_backward
def nll_backward_oracle(shape, y, grad_output, weight, reduction):
    """float64 gradient of nll_loss w.r.t. log_probs of ``shape`` ((C,) or (N, C, d1, ...))."""
    full = tuple(shape) if len(shape) > 1 else (1,) + tuple(shape)
    yf = np.asarray(y).reshape((full[0],) + full[2:])
    w = np.ones(full[1]) if weight is None else np.asarray(weight, np.float64)
    idx = np.nonzero(yf != IGNORE_INDEX)
    cls = yf[idx]
    go = np.broadcast_to(np.asarray(grad_output, np.float64), yf.shape)[idx]
    with np.errstate(divide="ignore"):
        scale = 1.0 / w[cls].sum() if reduction == "mean" else 1.0
    g = np.zeros(full)
    g[(idx[0], cls) + idx[1:]] = -w[cls] * go * scale
    return g.reshape(shape)


def _nll_inputs(shape, dtype, ignore, weight, seed=21):
    axis = 0 if len(shape) == 1 else 1
    c = shape[axis]
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    lp = make_logits(shape, dtype, seed=seed)
    y = make_target(int(np.prod(tshape, dtype=np.int64)), c, ignore=ignore, seed=seed).reshape(tshape)
    return lp, y, make_weight(c, weight), tshape


def check_nll_backward(h, shape, dtype, layout, *, weight, ignore, reduction, go_form="host",
                       out_layout=None):
    """One call against the float64 oracle and, bit for bit, against the CPU function.

    go_form: 'host' (a Python float; per-row values for 'none'), 'device' (a 0-d or per-row
    device array)."""
    lp, y, w, tshape = _nll_inputs(shape, dtype, ignore, weight)
    go = 1.75 if reduction != "none" else np.linspace(0.5, 1.5, int(np.prod(tshape))).reshape(tshape)
    if reduction == "none" or go_form == "device":
        god = h.dev(np.asarray(go, np.float64))
    else:
        god = go
    case = what("nll_loss_backward", shape=shape, dtype=np.dtype(dtype).name, layout=layout,
                weight=weight, ignore=ignore, reduction=reduction, go=go_form, out=out_layout)
    lpd = h.dev(lp, layout)
    kw = dict(weight=None if w is None else h.dev(w), reduction=reduction)
    out = None
    if out_layout is not None:
        if out_layout == "kdim-transposed":  # (N, C, d1, d2) whose (d1, d2) do not collapse
            out = h.dev(np.full(shape[:2] + shape[2:][::-1], np.nan, dtype)).transpose(0, 1, 3, 2)
        else:
            out = h.dev(np.full(shape, np.nan, dtype), out_layout)
        kw["out"] = out
    g = h.ops.nll_loss_backward(lpd, h.dev(y), god, **kw)
    assert h.is_dev(g), case
    if out is not None:
        assert g is out, case
    assert g.shape == tuple(shape) and g.dtype == dtype, case
    gh = h.host(g)
    assert_close(gh, nll_backward_oracle(shape, y, go, w, reduction), what=case, scale_atol=True,
                 **tol(dtype))
    cpu = fastce.nll_loss_backward(lp, y, go, weight=w, reduction=reduction)
    if reduction == "mean" and w is not None:  # sum_i w[y_i]: the scan's order, not NumPy's
        assert_close(gh, cpu, what=f"{case} vs CPU", rtol=4 * np.finfo(dtype).eps, atol=0.0)
    else:
        np.testing.assert_array_equal(gh, cpu, err_msg=f"{case}: not the CPU path's bits")
    assert np.array_equal(h.host(lpd), lp), f"{case}: log_probs modified"


def check_nll_backward_half(h, dtype, ulps=0):
    """float16/bfloat16 log-probs: a gradient of that dtype, rounded once from float64 as on
    the CPU (``ulps``: rounding steps allowed where the device's cast rounds twice)."""
    for shape, reduction in (((7, 33), "mean"), ((3, 4, 2, 5), "none"), ((6,), "sum")):
        lp, y, w, tshape = _nll_inputs(shape, np.float32, "some", "random")
        lp = lp.astype(dtype)
        go = 1.5 if reduction != "none" else np.linspace(0.5, 1.5, int(np.prod(tshape))).reshape(tshape)
        god = go if reduction != "none" else h.dev(go)
        g = h.ops.nll_loss_backward(h.dev(lp), h.dev(y), god, weight=h.dev(w), reduction=reduction)
        assert h.is_dev(g) and g.dtype == lp.dtype and g.shape == shape
        cpu = fastce.nll_loss_backward(lp, y, go, weight=w, reduction=reduction)
        got = h.host(g).astype(np.float64)
        # weighted 'mean': the normaliser is summed in the scan's order (see check_nll_backward)
        eps = float(np.finfo(np.float16).eps) if dtype == np.float16 else 2.0 ** -7
        rtol = eps * (ulps + (reduction == "mean"))
        case = f"half {np.dtype(dtype).name} {shape} {reduction}"
        assert_close(got, cpu.astype(np.float64), what=case, rtol=rtol, atol=0.0)
        if len(shape) == 2:  # a strided out= (written by indexing, not through a view)
            out = h.dev(np.full(shape, np.nan, dtype), "F")
            r = h.ops.nll_loss_backward(h.dev(lp), h.dev(y), god, weight=h.dev(w),
                                        reduction=reduction, out=out)
            assert r is out
            np.testing.assert_array_equal(h.host(out), h.host(g), err_msg=f"{case} out=")


def check_nll_backward_edges(h, dtype):
    """Empty batches, every row ignored, a bad target (raised before anything is written)."""
    for shape in ((0, 5), (0, 4, 3)):
        lp, y, _, _ = _nll_inputs(shape, dtype, "none", None)
        for red in ("mean", "sum"):
            g = h.ops.nll_loss_backward(h.dev(lp), h.dev(y), reduction=red)
            assert g.shape == shape and g.dtype == dtype
        g = h.ops.nll_loss_backward(h.dev(lp), h.dev(y), h.dev(np.zeros(y.shape)), reduction="none")
        assert g.shape == shape
    lp, y, _, _ = _nll_inputs((6, 5), dtype, "all", None)
    out = h.dev(np.full((6, 5), np.nan, dtype))
    g = h.ops.nll_loss_backward(h.dev(lp), h.dev(y), out=out)
    assert not np.any(h.host(g)), "every row ignored: a zero gradient (no nan from 0/0)"
    lp, y, _, _ = _nll_inputs((6, 5), dtype, "some", None)
    for bad in (5, -1, 1000):
        yb = y.copy()
        yb[3] = bad
        out = h.dev(np.full((6, 5), 7.0, dtype))
        with pytest.raises(IndexError, match=rf"target\[3\] = {bad} is out of bounds for 5 classes"):
            h.ops.nll_loss_backward(h.dev(lp), h.dev(yb), out=out)
        assert np.all(h.host(out) == 7.0), "out written although the call failed"


# ------------------------------------------------------------------ linear cross-entropy
def make_linear_inputs(n, hdim, v, dtype, *, bias=True, ignore="none", seed=0):
    """hidden (n, hdim), weight (v, hdim), bias (v,) or None, target (n,); logits of std ~2."""
    rng = np.random.default_rng([seed, n, hdim, v])
    hid = rng.standard_normal((n, hdim)).astype(dtype)
    w = (rng.standard_normal((v, hdim)) * (2.0 / np.sqrt(hdim))).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    t = make_target(n, v, ignore=ignore, seed=seed)
    return hid, w, b, t


def linear_oracle(reference, hid, w, b, t, *, reduction, label_smoothing, grad_output):
    """float64 ``(loss, d_hidden, d_weight, d_bias)`` of ``cross_entropy(hid @ w.T + b, t)``."""
    h64, w64 = hid.astype(np.float64), w.astype(np.float64)
    logits = h64 @ w64.T + (0.0 if b is None else b.astype(np.float64))
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = reference.cross_entropy(logits, t, **kw)
        if reduction == "none":  # a scalar applies to every row
            grad_output = np.broadcast_to(grad_output, t.shape)
        g = reference.cross_entropy_backward(logits, t, grad_output, **kw) if len(t) else logits
    if reduction == "mean" and not np.any(t != IGNORE_INDEX):
        g = np.zeros_like(logits)  # nothing to scale: fastce gives zeros where torch has 0 * nan
    return loss, g @ w64, g.T @ h64, None if b is None else g.sum(0)


def linear_results(h, hid, w, b, t, go=None, **kw):
    """``(with_grad results, forward loss)`` of the ops under test, as NumPy."""
    dev = [None if a is None else h.dev(a) for a in (hid, w, b, t)]
    if go is not None:
        kw["grad_output"] = h.dev(go) if isinstance(go, np.ndarray) else go
    res = h.ops.linear_cross_entropy_with_grad(dev[0], dev[1], dev[3], bias=dev[2], **kw)
    assert len(res) == 4 and all(r is None or h.is_dev(r) for r in res)
    kw.pop("grad_output", None)
    fwd = h.ops.linear_cross_entropy(dev[0], dev[1], dev[3], bias=dev[2], **kw)
    assert h.is_dev(fwd)
    for a, d in zip((hid, w, b, t), dev):
        assert d is None or np.array_equal(h.host(d), a), "an input was modified"
    return [None if r is None else h.host(r) for r in res], h.host(fwd)


def check_linear(h, reference, *, n, hdim, v, dtype, bias, ignore, reduction, label_smoothing=0.0,
                 go_form="host", **chunking):
    dtype = np.dtype(dtype)
    hid, w, b, t = make_linear_inputs(n, hdim, v, dtype, bias=bias, ignore=ignore)
    if reduction == "none":
        go = np.linspace(0.5, 1.5, n) if go_form != "scalar" else 1.25
    else:
        go = np.array(1.25) if go_form == "device" else 1.25
    case = what("linear_cross_entropy", n=n, H=hdim, V=v, dtype=dtype.name, bias=bias, ignore=ignore,
                reduction=reduction, eps=label_smoothing, go=go_form, **chunking)
    kw = dict(reduction=reduction, label_smoothing=label_smoothing, **chunking)
    got, fwd = linear_results(h, hid, w, b, t, go, **kw)
    cpu = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, grad_output=go, **kw)
    ref = linear_oracle(reference, hid, w, b, t, reduction=reduction, label_smoothing=label_smoothing,
                        grad_output=go)
    tl = LINEAR_TOL[dtype]
    loss_shape = (n,) if reduction == "none" else ()
    assert fwd.shape == loss_shape and fwd.dtype == dtype, case
    for name, a, c, r in zip(("loss", "d_hidden", "d_weight", "d_bias"), got, cpu, ref):
        if r is None:
            assert a is None, f"{case}: {name} should be None"
            continue
        assert a.dtype == dtype and a.shape == np.shape(r), f"{case}: {name} {a.dtype} {a.shape}"
        t_ = tl["loss" if name == "loss" else "grad"]
        assert_close(a, r, what=f"{case}: {name} vs float64", scale_atol=name != "loss", **t_)
        assert_close(a, c, what=f"{case}: {name} vs CPU", scale_atol=name != "loss", **t_)
    assert_close(fwd, got[0], what=f"{case}: forward loss", **tl["loss"])
    if ignore != "none":
        rows = t == IGNORE_INDEX
        assert not got[1][rows].any(), f"{case}: ignored rows have a zero d_hidden"
    if ignore == "all" and reduction == "mean":
        assert np.isnan(got[0]) and np.isnan(fwd)


def check_linear_z_loss(h, reference, dtype):
    """z_loss passes through to the GPU cross-entropy: same results as the CPU path."""
    hid, w, b, t = make_linear_inputs(9, 8, 40, dtype, ignore="some")
    got, fwd = linear_results(h, hid, w, b, t, z_loss=1e-3, chunk_size=4)
    cpu = fastce.linear_cross_entropy_with_grad(hid, w, t, bias=b, z_loss=1e-3, chunk_size=4)
    tl = LINEAR_TOL[np.dtype(dtype)]
    for name, a, c in zip(("loss", "d_hidden", "d_weight", "d_bias"), got, cpu):
        assert_close(a, c, what=f"z_loss {name}", scale_atol=name != "loss",
                     **tl["loss" if name == "loss" else "grad"])
    assert_close(fwd, cpu[0], what="z_loss forward", **tl["loss"])


def check_linear_bad_target(h):
    hid, w, b, t = make_linear_inputs(6, 4, 9, np.float32, ignore="some")
    t[4] = 9
    with pytest.raises(IndexError, match=r"target\[4\] = 9 is out of bounds for 9 classes"):
        h.ops.linear_cross_entropy_with_grad(h.dev(hid), h.dev(w), h.dev(t))


# ------------------------------------------------------------------ the tests both files run
DT = dict(ids=lambda d: np.dtype(d).name)
DTYPES = (np.float32, np.float64)
LINEAR_VARIANTS = {
    "bias,ignore-some,eps,chunk8": dict(bias=True, ignore="some", label_smoothing=0.1, chunk_size=8),
    "nobias,default-budget": dict(bias=False, ignore="none"),
    "bias,ignore-all,chunk8": dict(bias=True, ignore="all", chunk_size=8),
}


class SharedTests:
    """Collected through a ``Test...`` subclass in each test file, which provides ``h``."""

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    @pytest.mark.parametrize("layout", ["C", "F", "sliced"])
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("weight", [None, "random"])
    @pytest.mark.parametrize("ignore", ["none", "some"])
    def test_nll_backward(self, h, dtype, layout, reduction, weight, ignore):
        check_nll_backward(h, (7, 33), dtype, layout, weight=weight, ignore=ignore,
                           reduction=reduction)

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    @pytest.mark.parametrize("shape", [(5,), (3, 4, 2, 5), (2, 3, 4), (4, 1000), (1500, 3)], ids=str)
    @pytest.mark.parametrize("reduction,go_form", [("mean", "host"), ("mean", "device"),
                                                   ("sum", "device"), ("none", "device")])
    def test_nll_backward_shapes_and_grad_output(self, h, dtype, shape, reduction, go_form):
        check_nll_backward(h, shape, dtype, "C", weight="random", ignore="some",
                           reduction=reduction, go_form=go_form)

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    @pytest.mark.parametrize("out_layout,shape", [
        ("C", (7, 33)), ("F", (7, 33)), ("sliced", (7, 33)), ("C", (3, 4, 2, 5)),
        ("kdim-transposed", (3, 4, 2, 5))])
    def test_nll_backward_out(self, h, dtype, out_layout, shape):
        for reduction in ("mean", "none"):
            check_nll_backward(h, shape, dtype, "C", weight="random", ignore="some",
                               reduction=reduction, out_layout=out_layout)

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    def test_nll_backward_edges(self, h, dtype):
        check_nll_backward_edges(h, dtype)

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("variant", list(LINEAR_VARIANTS))
    def test_linear(self, h, reference, dtype, reduction, variant):
        check_linear(h, reference, n=37, hdim=16, v=300, dtype=dtype, reduction=reduction,
                     **LINEAR_VARIANTS[variant])

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    @pytest.mark.parametrize("chunking", [dict(memory_budget=300 * 8 * 5 + 7), dict(chunk_size=1),
                                          dict(chunk_size=13), dict(chunk_size=64)], ids=str)
    def test_linear_chunking(self, h, reference, dtype, chunking):
        """A memory budget of 5 float64 rows (10 float32 rows) forces several chunks."""
        check_linear(h, reference, n=13, hdim=8, v=300, dtype=dtype, bias=True, ignore="some",
                     reduction="mean", label_smoothing=0.05, **chunking)

    @pytest.mark.parametrize("reduction,go_form", [("mean", "device"), ("sum", "device"),
                                                   ("none", "scalar")])
    def test_linear_grad_output_forms(self, h, reference, reduction, go_form):
        check_linear(h, reference, n=11, hdim=8, v=50, dtype=np.float64, bias=True, ignore="some",
                     reduction=reduction, go_form=go_form, chunk_size=4)

    @pytest.mark.parametrize("n", [0, 1])
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_linear_tiny_batches(self, h, reference, n, reduction):
        check_linear(h, reference, n=n, hdim=5, v=7, dtype=np.float32, bias=True, ignore="none",
                     reduction=reduction, chunk_size=4)

    @pytest.mark.parametrize("dtype", DTYPES, **DT)
    def test_linear_z_loss(self, h, reference, dtype):
        check_linear_z_loss(h, reference, dtype)

    def test_linear_bad_target(self, h):
        check_linear_bad_target(h)
