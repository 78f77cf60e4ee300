"""Accuracy at every magnitude: the kernels' numerics contract (docs/design.md §2).

* The defects found against torch's and SciPy's answers, one test each, on every ISA.
* Shift invariance: adding a constant to every logit of a row changes no loss or
  gradient (the row works in x - max; only the z-term, a function of lse, moves).
* Large magnitudes against torch float64 autograd, which computes (x - max) - log(sum).
* Rows dominated by their max keep their tail (SciPy's log1p), in every sweep mode.
* SciPy's logsumexp / softmax / log_softmax test cases, ported to fastce's signatures.
* A property-based suite (hypothesis, derandomized, bounded) against torch float64
  autograd and fastce.reference over shapes, layouts, dtypes, options, magnitudes up to
  1e30 and -inf masks: loss, gradient and lse.
"""
import math

import numpy as np
import pytest

import fastce
from conftest import require_torch

from hypothesis import HealthCheck, given, settings, strategies as st

F32, F64 = np.float32, np.float64


def ulp_close(actual, desired, ulps, dtype, scale=None):
    """|actual - desired| <= ulps * eps(dtype) * max(|desired|, scale); nan/inf must match."""
    a = np.asarray(actual, dtype=F64)
    d = np.asarray(desired, dtype=F64)
    eps = np.finfo(dtype).eps
    ref = np.abs(d) if scale is None else np.maximum(np.abs(d), scale)
    fin = np.isfinite(d)
    assert np.array_equal(np.isnan(a), np.isnan(d)), (a, d)
    assert (a[~fin & ~np.isnan(d)] == d[~fin & ~np.isnan(d)]).all(), (a, d)
    err = np.abs(a[fin] - d[fin])
    bound = ulps * eps * np.broadcast_to(ref, d.shape)[fin]
    assert (err <= bound).all(), f"max error {err.max()} > bound {bound[np.argmax(err - bound)]}"


# ------------------------------------------------------------------ the reported defects
def test_softmax_of_huge_equal_logits(isa):
    """x - lse with lse rounded at the scale of x lost everything: [1., 1.]."""
    np.testing.assert_array_equal(fastce.softmax(np.array([1e16, 1e16])), [0.5, 0.5])
    np.testing.assert_array_equal(fastce.softmax(np.array([1e30, 1e30], F32)), [0.5, 0.5])
    np.testing.assert_allclose(fastce.log_softmax(np.array([1e16, 1e16])), [-np.log(2)] * 2,
                               rtol=1e-15)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("magnitude", [1e8, 1e12, 1e16, 1e30])
def test_cross_entropy_of_huge_equal_logits(isa, dtype, magnitude):
    x = np.full((3, 2), magnitude, dtype)
    for loss in (fastce.cross_entropy(x, np.array([0, 1, 0])),
                 fastce.cross_entropy_with_grad(x, np.array([0, 1, 0]))[0],
                 fastce.cross_entropy(x, np.array([0, 1, 0]), label_smoothing=0.2)):
        np.testing.assert_allclose(loss, np.log(2), rtol=4 * np.finfo(dtype).eps)
    grad = fastce.cross_entropy_with_grad(x, np.array([0, 1, 0]), reduction="sum")[1]
    np.testing.assert_allclose(grad, [[-0.5, 0.5], [0.5, -0.5], [-0.5, 0.5]], rtol=4 * np.finfo(dtype).eps)


def test_probability_targets_at_large_magnitude(isa):
    """Products t * x were formed in float32 and cancelled against lse: -20.97."""
    x = np.full((1, 4), -1e9, F32)
    t = np.array([[0.1, 0.2, 0.3, 0.4]], F32)
    np.testing.assert_allclose(fastce.cross_entropy(x, t), np.log(4), rtol=1e-6)
    np.testing.assert_allclose(fastce.cross_entropy(x, t, label_smoothing=0.3), np.log(4), rtol=1e-6)


def test_weighted_smoothing_of_one_class_is_zero(isa):
    """w * x in float32 against the weighted lse left 3.7e-5 where the loss is 0."""
    got = fastce.cross_entropy(np.float32([17640.523]), np.array(0), weight=np.array([1.848]),
                               label_smoothing=0.1)
    assert got == 0.0


@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_probability_targets_with_smoothing_and_a_masked_class(isa, torch, eps):
    """t' = (1 - eps) t + eps / C > 0 on a -inf logit: the loss is inf (torch), not nan."""
    x = np.array([-0.42, -0.056, -np.inf])
    t = np.array([0.0, 1.0, 0.0])
    want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t), label_smoothing=eps).item()
    assert want == np.inf
    assert fastce.cross_entropy(x, t, label_smoothing=eps) == np.inf
    # without smoothing, t = 0 on the -inf class gives 0 * inf = nan, as in torch
    assert np.isnan(fastce.cross_entropy(x, t))
    assert np.isnan(torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t)).item())


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mean_over_zero_total_weight_is_nan(isa, torch, eps):
    """torch's nll term is 0 / 0 = nan; the smoothing term's finite / 0 must not win."""
    x = np.array([1.764, 0.4])
    w = np.array([2.588, 0.0])
    tt = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.cross_entropy(tt, torch.tensor(1), weight=torch.tensor(w),
                                             label_smoothing=eps)
    want.backward()
    assert np.isnan(want.item())
    loss, grad = fastce.cross_entropy_with_grad(x, np.array(1), weight=w, label_smoothing=eps)
    assert np.isnan(loss) and np.isnan(fastce.cross_entropy(x, np.array(1), weight=w, label_smoothing=eps))
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(tt.grad.numpy()))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_logits_keep_float32_targets(isa, torch, half):
    """Probability targets of another dtype are not rounded to half precision."""
    dt = np.float16 if half == "float16" else pytest.importorskip("ml_dtypes").bfloat16
    x = np.array([[0.3, -1.2, 2.0]], dt)
    t = np.array([[0.123456, 0.3, 0.576544]])
    want = torch.nn.functional.cross_entropy(torch.tensor(x.astype(F32)), torch.tensor(t.astype(F32))).item()
    got = fastce.cross_entropy(x, t)
    assert got.dtype == F32
    np.testing.assert_allclose(got, want, rtol=2e-7)
    # targets given in the logits' own dtype are used as they are
    np.testing.assert_allclose(fastce.cross_entropy(x, t.astype(dt)),
                               torch.nn.functional.cross_entropy(torch.tensor(x.astype(F32)),
                                                                 torch.tensor(t.astype(dt).astype(F32))).item(),
                               rtol=2e-7)


def test_logsumexp_keeps_a_tiny_tail(isa):
    """SciPy's answer: max + log1p(the others), 4.25e-18 here, not 0."""
    assert fastce.logsumexp(np.array([0.0, -40.0])) == np.exp(-40.0)
    np.testing.assert_allclose(fastce.logsumexp(np.array([0.0, -40.0], F32)), np.exp(-40.0), rtol=1e-6)
    np.testing.assert_allclose(fastce.log_softmax(np.array([0.0, -40.0]))[0], -np.exp(-40.0), rtol=1e-15)


@pytest.mark.parametrize("c", [200, 3000, 70000, 140000])
def test_float64_sums_of_many_tiny_terms(isa, c):
    """Two classes at 0 and the rest at -40: every other term, exp(-40) = 4.2e-18, is below
    half an ulp of the running sums near 1. The float64 sums are compensated, so the lse
    is within 3 ulp of the exactly summed one in every sweep (uncompensated: 12-584 ulp;
    torch: 4-10). 140000 classes in one row take the split path."""
    x = np.full(c, -40.0)
    x[[5, c // 2]] = 0.0
    exact = math.log(math.fsum(np.exp(x)))
    t, p = np.array([5]), np.full((1, c), 1.0 / c)
    got = {"logsumexp": fastce.logsumexp(x),
           "loss": fastce.cross_entropy(x[None], t, reduction="none", return_lse=True)[1][0],
           "loss+grad": fastce.cross_entropy_with_grad(x[None], t, reduction="none",
                                                       return_lse=True)[2][0],
           "probabilities": fastce.cross_entropy(x[None], p, reduction="none", return_lse=True)[1][0]}
    for name, v in got.items():
        assert abs(v - exact) <= 3 * np.spacing(exact), f"{name}: {(v - exact) / np.spacing(exact)} ulp"


# ------------------------------------------------------------------ tails, every sweep mode
# (N, C, layout): rows C=100, fused rows, column blocks (small C, and Fortran order),
# split rows (C >= 65536, few rows)
SWEEPS = [(5, 100, "C"), (40, 10, "C"), (40, 100, "F"), (2, 70000, "C"), (3, 5, "F")]


@pytest.mark.parametrize("n,c,layout", SWEEPS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_dominated_rows_keep_their_tail(isa, reference, n, c, layout, dtype):
    """One logit 30-45 above the rest: lse - max, log p of the max class and the loss of a
    row whose target is the max keep full relative accuracy."""
    rng = np.random.default_rng([n, c])
    x = rng.uniform(-3, 0, size=(n, c))
    top = rng.integers(0, c, size=n)
    x[np.arange(n), top] = rng.uniform(30, 45, size=n)
    x = np.asarray(x.astype(dtype), order=layout)
    x64 = x.astype(F64)
    others = np.exp(x64 - x64.max(axis=1, keepdims=True))
    others[np.arange(n), top] = 0.0
    tail = np.log1p(others.sum(axis=1))  # lse - max, which lse itself cannot hold
    assert (tail > 0).all() and (tail < 2.0 ** -20).all()  # where log(sum) would lose it
    rtol = (64 + c / 100) * np.finfo(dtype).eps  # the tail is a sum of c float64 terms
    np.testing.assert_allclose(fastce.logsumexp(x, axis=1), reference.logsumexp(x64, axis=1),
                               rtol=2 * np.finfo(dtype).eps)
    lp = fastce.log_softmax(x, axis=1)
    np.testing.assert_allclose(-lp[np.arange(n), top], tail, rtol=rtol, atol=0)
    loss = fastce.cross_entropy(x, top, reduction="none")
    np.testing.assert_allclose(loss, tail, rtol=rtol, atol=0)
    _, lse = fastce.cross_entropy(x, top, reduction="none", return_lse=True)
    np.testing.assert_allclose(lse, reference.logsumexp(x64, axis=1), rtol=1e-15)
    grad_loss, grad = fastce.cross_entropy_with_grad(x, top, reduction="none")
    np.testing.assert_allclose(grad_loss, tail, rtol=rtol, atol=0)
    # in place: the tail comes from the exps written over the logits
    xi = np.ascontiguousarray(x)
    np.testing.assert_allclose(fastce.cross_entropy_with_grad(xi, top, reduction="none", inplace=True)[0],
                               tail, rtol=rtol, atol=0)


# ------------------------------------------------------------------ shift invariance
SHIFT_OPTIONS = [
    dict(),
    dict(label_smoothing=0.2),
    dict(weight="w", label_smoothing=0.3),
    dict(weight="w", ignore="some"),
    dict(soft=True),
    dict(soft=True, label_smoothing=0.1, weight="w"),
]


def _option_id(o):
    return "-".join(f"{k}={v}" for k, v in o.items()) or "plain"


@pytest.mark.parametrize("opts", SHIFT_OPTIONS, ids=_option_id)
@pytest.mark.parametrize("n,c,layout", SWEEPS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype,exponents", [(F32, (10, 21)), (F64, (20, 50))],
                         ids=["float32", "float64"])
def test_shift_invariance(isa, dtype, exponents, n, c, layout, opts):
    """x and x + K (K a power of two, both exact in dtype) give the same loss and gradient
    to 2 ulps: every quantity the row formula uses is a difference from the row max."""
    rng = np.random.default_rng([n, c, 3])
    d = (rng.integers(-24, 24, size=(n, c)) * 0.25).astype(dtype)  # exact next to 2**50 / 2**21
    w = rng.uniform(0.25, 2.0, size=c).astype(dtype) if opts.get("weight") else None
    if opts.get("soft"):
        t = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    else:
        t = rng.integers(0, c, size=n)
        if opts.get("ignore"):
            t[1::3] = -100
    kw = {k: v for k, v in opts.items() if k == "label_smoothing"}
    base = fastce.cross_entropy_with_grad(np.asarray(d, order=layout), t, weight=w, reduction="none", **kw)
    for e in exponents:
        x = np.asarray(d + dtype(2.0 ** e), order=layout)
        assert np.array_equal(x - dtype(2.0 ** e), d)
        loss, grad = fastce.cross_entropy_with_grad(x, t, weight=w, reduction="none", **kw)
        ulp_close(loss, base[0], 2, dtype, scale=np.finfo(dtype).tiny)
        ulp_close(grad, base[1], 2, dtype, scale=np.finfo(dtype).tiny)
        ulp_close(fastce.log_softmax(x, axis=1), fastce.log_softmax(np.asarray(d, order=layout), axis=1),
                  2, dtype, scale=np.finfo(dtype).tiny)


# ------------------------------------------------------------------ large magnitudes vs torch
@pytest.mark.parametrize("dtype,magnitude", [(F64, 1e16), (F64, -1e20), (F64, 1e30),
                                             (F32, 1e12), (F32, -1e30)],
                         ids=lambda v: str(v) if not isinstance(v, type) else v.__name__)
def test_large_magnitudes_against_torch_float64(isa, torch, dtype, magnitude):
    rng = np.random.default_rng(5)
    n, c = 7, 13
    spacing = np.spacing(dtype(magnitude))
    x = (dtype(magnitude) + (rng.integers(-6, 6, size=(n, c)) * spacing).astype(dtype)).astype(dtype)
    t = rng.integers(0, c, size=n)
    w = rng.uniform(0.5, 2.0, size=c)
    xt = torch.tensor(x.astype(F64), requires_grad=True)
    want = torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w),
                                             label_smoothing=0.1, reduction="sum")
    want.backward()
    loss, grad = fastce.cross_entropy_with_grad(x, t, weight=w.astype(dtype), label_smoothing=0.1,
                                                reduction="sum")
    tol = 32 * np.finfo(dtype).eps
    np.testing.assert_allclose(loss, want.item(), rtol=tol)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=tol, atol=tol)
    lp = torch.log_softmax(torch.tensor(x.astype(F64)), 1).numpy()
    np.testing.assert_allclose(fastce.log_softmax(x, axis=1), lp, rtol=tol, atol=tol)


# ------------------------------------------------------------------ SciPy's cases, ported
def test_scipy_logsumexp_cases(isa):
    """scipy/special/tests/test_logsumexp.py, the cases fastce's signature has."""
    from scipy import special

    a = np.arange(200, dtype=F64)
    np.testing.assert_allclose(fastce.logsumexp(a), np.log(np.sum(np.exp(a))), rtol=1e-14)
    # overflow of the plain formula
    np.testing.assert_allclose(fastce.logsumexp(np.array([1000.0, 1000.0])), 1000.0 + np.log(2.0), rtol=1e-15)
    np.testing.assert_allclose(fastce.logsumexp(np.full(1000, 10000.0)), 10000.0 + np.log(1000.0), rtol=1e-15)
    # underflow: tiny values summed in the log domain, along each axis
    x = np.full(1000, 1e-40)
    lx = np.log(x)
    X = np.vstack([x, x])
    LX = np.vstack([lx, lx])
    np.testing.assert_allclose(np.exp(fastce.logsumexp(LX, axis=0)), X.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(np.exp(fastce.logsumexp(LX, axis=1)), X.sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(np.exp(fastce.logsumexp(LX, axis=-1)), X.sum(axis=-1), rtol=1e-13)
    # special values
    assert fastce.logsumexp(np.array([np.inf, -np.inf])) == np.inf
    assert fastce.logsumexp(np.array([-np.inf, -np.inf])) == -np.inf
    assert np.isnan(fastce.logsumexp(np.array([1.0, np.inf, np.nan])))
    assert np.isnan(fastce.logsumexp(np.array([np.nan, -np.inf])))
    # the tails SciPy keeps (gh-18295 style): max + log1p(rest)
    for row in ([0.0, -40.0], [0.0, -800.0, -40.0], [3.5, 3.5 - 50, 3.5 - 60], [-1e300, -1e300 - 1e290]):
        r = np.array(row)
        np.testing.assert_allclose(fastce.logsumexp(r), special.logsumexp(r), rtol=1e-15, atol=0)
    # along every axis of a 3-D array, against SciPy
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4, 5)) * 30
    for ax in (0, 1, 2, -1):
        np.testing.assert_allclose(fastce.logsumexp(z, axis=ax), special.logsumexp(z, axis=ax), rtol=1e-14)


def test_scipy_softmax_cases(isa):
    """scipy/special/tests/test_softmax.py (softmax, log_softmax), ported."""
    from scipy import special

    expected = np.array([0.03205860328008499, 0.08714431874203256, 0.23688281808991013, 0.6439142598879722])
    x = np.arange(4, dtype=F64)
    np.testing.assert_allclose(fastce.softmax(x), expected, rtol=1e-13)
    np.testing.assert_allclose(fastce.softmax(x + 100), expected, rtol=1e-13)  # translation
    np.testing.assert_allclose(fastce.softmax(np.array([1000.0, 0.0]))[0], 1.0, rtol=0)
    x2 = np.arange(12, dtype=F64).reshape(3, 4)
    for ax in (0, 1):
        np.testing.assert_allclose(fastce.softmax(x2, axis=ax), special.softmax(x2, axis=ax), rtol=1e-13)
        np.testing.assert_allclose(fastce.log_softmax(x2, axis=ax), special.log_softmax(x2, axis=ax),
                                   rtol=1e-13)
    np.testing.assert_allclose(fastce.log_softmax(x), np.log(expected), rtol=1e-13)
    np.testing.assert_allclose(fastce.log_softmax(np.array([1000.0, 1.0])), [0.0, -999.0], rtol=1e-15,
                               atol=1e-300)
    np.testing.assert_allclose(fastce.log_softmax(np.array([1.0, 1e300, 1e300])),
                               special.log_softmax(np.array([1.0, 1e300, 1e300])), rtol=1e-15)
    # SciPy's log_softmax returns 0 for the first entry here; the exact value is kept
    np.testing.assert_allclose(fastce.log_softmax(np.array([0.0, -40.0])),
                               [-np.log1p(np.exp(-40.0)), -40.0 - np.log1p(np.exp(-40.0))], rtol=1e-15)


@pytest.mark.parametrize("fn", [fastce.logsumexp, fastce.softmax, fastce.log_softmax],
                         ids=lambda f: f.__name__)
def test_scipy_inputs_fastce_refuses_clearly(fn):
    """Integer, bool and complex inputs, and axis=None, raise the documented TypeError."""
    for bad in (np.arange(4), np.array([True, False]), np.array([1 + 2j, 3])):
        with pytest.raises(TypeError, match="x must have dtype float32, float64"):
            fn(bad)
    with pytest.raises(TypeError, match="axis must be an int, got None"):
        fn(np.ones((2, 3)), axis=None)
    with pytest.raises(ValueError, match="at least one dimension"):
        fn(np.float64(1.0))


# ------------------------------------------------------------------ property-based suite
MAX_EXAMPLES = 120


@st.composite
def ce_cases(draw):
    dtype = draw(st.sampled_from([F32, F64]))
    n = draw(st.integers(1, 6))
    c = draw(st.sampled_from([1, 2, 3, 5, 8, 17, 33, 40, 100]))
    exp_max = 30 if dtype is F64 else 30
    magnitude = draw(st.sampled_from([0.0] + [s * 10.0 ** k for k in (2, 8, 16, exp_max) for s in (1, -1)]))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    soft = draw(st.booleans()) and c > 1
    opts = dict(
        label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])),
        z_loss=draw(st.sampled_from([0.0, 0.0, 1e-4])) if magnitude == 0 else 0.0,
        softcap=draw(st.sampled_from([None, None, 5.0])) if magnitude == 0 else None,
        logit_scale=draw(st.sampled_from([1.0, 1.0, 0.5])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
    )
    weighted = draw(st.booleans())
    masks = draw(st.booleans()) and c > 1
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, n, c, magnitude, layout, soft, opts, weighted, masks, seed


def _build(case):
    dtype, n, c, magnitude, layout, soft, opts, weighted, masks, seed = case
    rng = np.random.default_rng(seed)
    spread = rng.standard_normal((n, c)) * 4.0
    if magnitude:  # logits K + d with d in whole spacings of K: exact in dtype
        step = float(np.spacing(dtype(abs(magnitude))))
        spread = np.round(spread) * max(step, 0.25)
    x = (np.float64(magnitude) + spread).astype(dtype)
    if masks:
        mask = rng.random((n, c)) < 0.3
        mask[np.arange(n), rng.integers(0, c, size=n)] = False  # every row keeps a finite logit
        x[mask] = -np.inf
    if soft:
        t = rng.dirichlet(np.ones(c), size=n)
        if masks:
            t[np.isneginf(x)] = 0.0
            t /= t.sum(axis=1, keepdims=True)
        t = t.astype(dtype)
    else:
        finite = np.isfinite(x)
        t = np.array([rng.choice(np.flatnonzero(finite[i])) for i in range(n)])
        if n > 2:
            t[1] = -100
    w = rng.uniform(0.25, 2.0, size=c).astype(dtype) if weighted else None
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        big = np.full((n, 2 * c), np.nan, dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    return x, t, w


def _torch_composed(torch, x, t, w, opts, soft):
    """Loss, gradient and lse from torch float64 autograd, options composed by hand."""
    xt = torch.tensor(np.ascontiguousarray(x, dtype=F64), requires_grad=True)
    xs = xt * opts["logit_scale"]
    if opts["softcap"]:
        xs = opts["softcap"] * torch.tanh(xs / opts["softcap"])
    tt = torch.tensor(np.asarray(t, dtype=F64 if soft else np.int64))
    wt = None if w is None else torch.tensor(w.astype(F64))
    red = opts["reduction"]
    ce = torch.nn.functional.cross_entropy(xs, tt, weight=wt, reduction="none",
                                           label_smoothing=opts["label_smoothing"])
    lse = torch.logsumexp(xs, 1)
    keep = torch.ones_like(lse, dtype=torch.bool) if soft else tt != -100
    z = torch.where(keep, opts["z_loss"] * lse ** 2, torch.zeros_like(lse))
    if red == "none":
        loss = ce + z
        loss.backward(torch.ones_like(loss))
    else:
        if red == "sum":
            total = ce.sum() + z.sum()
        else:
            norm = keep.sum() if soft else (wt[tt.clamp(min=0)] * keep if wt is not None else keep.double()).sum()
            total = ce.sum() / norm + z.sum() / keep.sum()
        total.backward()
        loss = total
    return loss.detach().numpy(), xt.grad.numpy(), lse.detach().numpy()


@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=ce_cases())
def test_property_against_torch_float64_and_reference(case):
    torch = require_torch()
    from fastce import reference

    dtype, n, c, magnitude, layout, soft, opts, weighted, masks, seed = case
    x, t, w = _build(case)
    x_before = x.copy()
    loss, grad, lse = fastce.cross_entropy_with_grad(x, t, weight=w, return_lse=True, **opts)
    np.testing.assert_array_equal(x, x_before)  # inputs untouched
    want_loss, want_grad, want_lse = _torch_composed(torch, x, t, w, opts, soft)
    ref_loss = reference.cross_entropy(x, t, weight=w, **opts)
    ref_grad = reference.cross_entropy_backward(x, t, weight=w, **opts)
    # float64 to ~1e-12 of the loss scale; float32 inputs are computed in float32 (the exps)
    # with float64 sums: ~1e-6 relative
    rtol = 1e-12 if dtype is F64 else 2e-6
    scale = 1.0 + np.nanmax(np.abs(np.where(np.isfinite(want_loss), want_loss, 0.0)))
    for got, want, what in ((loss, want_loss, "loss vs torch"), (loss, ref_loss, "loss vs reference")):
        np.testing.assert_allclose(np.asarray(got, F64), want, rtol=rtol, atol=rtol * scale, equal_nan=True,
                                   err_msg=f"{what}: {case}")
    gscale = 1.0 if opts["reduction"] != "mean" else 1.0 / n
    for got, want, what in ((grad, want_grad, "grad vs torch"), (grad, ref_grad, "grad vs reference")):
        np.testing.assert_allclose(np.asarray(got, F64), want, rtol=rtol, atol=4 * rtol * gscale * scale,
                                   equal_nan=True, err_msg=f"{what}: {case}")
    # lse: a float64 number at the scale of max(x)
    np.testing.assert_allclose(lse, want_lse, rtol=rtol, atol=rtol, err_msg=f"lse: {case}")
