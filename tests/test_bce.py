"""binary_cross_entropy_with_logits, ..._with_grad and BCEWithLogitsLoss.

Oracles: ``fastce.reference`` (float64 NumPy, torch's formula literally), itself checked
against torch's float64 autograd here; and torch directly.

Cases: dtype x reduction x weight kind (None, (C,), (N, 1), full, scalar) x pos_weight
kind (None, (C,)) x shape (empty, 1-D, odd 2-D, 3-D) x layout (C, F, sliced) x every ISA,
each run with n_threads 1 and 2 (bitwise identical); every length 1..70 (every SIMD
tail); rows longer than the 8192-element work item; exotic broadcasts; 0-d logits;
extreme logits (+-1e4, +-inf, nan) against torch; small losses without cancellation;
the log1p/softplus accuracy contract; finite differences; out= / inplace memory sharing;
inputs untouched; the criterion class; every argument error; and the C kernel itself
(tests/c/test_bce.c) on every table, NEON included (cross-compiled, run under qemu-user).
"""
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import fastce
from conftest import DTYPES, LAYOUTS, assert_close, dtype_id, require_in_ci

REDUCTIONS = ("mean", "sum", "none")
WEIGHT_KINDS = (None, "C", "N1", "full", "scalar")
POS_KINDS = (None, "C")
SHAPES = [(0,), (0, 5), (1,), (17,), (1, 1), (7, 13), (5, 33), (2, 3, 11)]

# |fast - reference| <= atol * max|reference| + rtol * |reference|
TOL = {
    np.float32: dict(rtol=2e-5, atol=2e-6),
    np.float64: dict(rtol=1e-12, atol=1e-13),
}
FWD = fastce.binary_cross_entropy_with_logits
FUSED = fastce.binary_cross_entropy_with_logits_with_grad


def kind_id(prefix):
    return lambda k: f"{prefix}={k}"


def shape_str(shape):
    return "shape=" + "x".join(map(str, shape)) if shape else "shape=()"


# ----------------------------------------------------------------------------- inputs
def make_x(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng([seed, len(shape), *shape, 1])
    return np.array(rng.standard_normal(shape) * scale, dtype=dtype)


def make_y(shape, dtype, seed=0):
    """Soft labels in [0, 1], with some exact 0s and 1s."""
    rng = np.random.default_rng([seed, len(shape), *shape, 2])
    y = rng.uniform(0.0, 1.0, size=shape)
    y[rng.uniform(size=shape) < 0.25] = 0.0
    y[rng.uniform(size=shape) < 0.25] = 1.0
    return np.array(y, dtype=dtype)


def operand_shape(kind, shape):
    return {"C": shape[-1:], "N1": shape[:-1] + (1,), "full": shape, "scalar": ()}[kind]


def make_operand(kind, shape, dtype, seed=0):
    """Positive weights of the given broadcast kind, exactly representable in dtype."""
    if kind is None:
        return None
    s = operand_shape(kind, shape)
    rng = np.random.default_rng([seed, len(shape), *shape, 3, len(kind)])
    return rng.uniform(0.25, 2.0, size=s).astype(dtype)


def with_layout_nd(a, layout, fill=np.nan):
    """C-contiguous, Fortran-order, or a view with stride 2 on every axis (the skipped
    elements hold ``fill``, so reading outside the view shows up as nan)."""
    a = np.asarray(a)
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    big = np.full(tuple(2 * d + 1 for d in a.shape), fill, dtype=a.dtype)
    view = big[tuple(slice(1, 1 + 2 * d, 2) for d in a.shape)]
    view[...] = a
    return view


def grad_output_for(reduction, shape, seed=5):
    if reduction != "none":
        return 0.75
    return np.random.default_rng([seed, *shape]).uniform(-2.0, 2.0, size=shape)


def ref_call(reference, x, y, w, pw, reduction, g):
    f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    return reference.binary_cross_entropy_with_logits_with_grad(
        f64(x), f64(y), weight=f64(w), pos_weight=f64(pw), reduction=reduction, grad_output=g)


def check_against(got_loss, got_grad, want_loss, want_grad, dtype, what):
    tol = TOL[np.dtype(dtype).type]
    assert np.asarray(got_loss).dtype == dtype, f"{what}: loss dtype {np.asarray(got_loss).dtype}"
    assert got_grad.dtype == dtype, f"{what}: grad dtype {got_grad.dtype}"
    assert_close(got_loss, want_loss, what=f"loss: {what}", scale_atol=True, **tol)
    assert_close(got_grad, want_grad, what=f"grad: {what}", scale_atol=True, **tol)


def torch_bce(torch, x, y, w=None, pw=None, reduction="mean", g=1.0):
    """Loss and autograd gradient of torch's F.binary_cross_entropy_with_logits in float64."""
    t = lambda a: None if a is None else torch.tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    tx = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        tx, t(y), weight=t(w), pos_weight=t(pw), reduction=reduction)
    loss.backward(torch.as_tensor(np.asarray(g, dtype=np.float64)).reshape(loss.shape))
    return loss.detach().numpy(), tx.grad.numpy()


# ----------------------------------------------------------------------------- the oracle
@pytest.mark.parametrize("pos_kind", POS_KINDS, ids=kind_id("pw"))
@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS, ids=kind_id("w"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(17,), (7, 13), (2, 3, 11), (0, 4)], ids=shape_str)
def test_reference_vs_torch(torch, reference, shape, reduction, weight_kind, pos_kind):
    x, y = make_x(shape, np.float64), make_y(shape, np.float64)
    w, pw = make_operand(weight_kind, shape, np.float64), make_operand(pos_kind, shape, np.float64, 1)
    g = grad_output_for(reduction, shape)
    want = torch_bce(torch, x, y, w, pw, reduction, g)
    got = ref_call(reference, x, y, w, pw, reduction, g)
    what = f"reference vs torch {shape} {reduction} w={weight_kind} pw={pos_kind}"
    assert_close(got[0], want[0], rtol=1e-13, atol=1e-14, what=what, scale_atol=True)
    assert_close(got[1], want[1], rtol=1e-13, atol=1e-14, what=what, scale_atol=True)


# ----------------------------------------------------------------------------- main matrix
@pytest.mark.parametrize("layout", LAYOUTS, ids=kind_id("layout"))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_str)
@pytest.mark.parametrize("pos_kind", POS_KINDS, ids=kind_id("pw"))
@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS, ids=kind_id("w"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_vs_reference(reference, dtype, reduction, weight_kind, pos_kind, shape, layout, isa):
    x = with_layout_nd(make_x(shape, dtype), layout)
    y = with_layout_nd(make_y(shape, dtype), layout)
    w = make_operand(weight_kind, shape, dtype)
    if weight_kind == "full":
        w = with_layout_nd(w, layout)
    pw = make_operand(pos_kind, shape, dtype, seed=1)
    g = grad_output_for(reduction, shape)
    if reduction == "none":
        g = with_layout_nd(g, layout)
    inputs = [a for a in (x, y, w, pw, g) if isinstance(a, np.ndarray)]
    before = [a.copy() for a in inputs]
    what = (f"{dtype_id(dtype)} {reduction} w={weight_kind} pw={pos_kind} shape={shape} "
            f"layout={layout} isa={isa}")

    want_loss, want_grad = ref_call(reference, x, y, w, pw, reduction, g)
    runs = []
    for n_threads in (1, 2):
        loss, grad = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g,
                           n_threads=n_threads)
        check_against(loss, grad, want_loss, want_grad, dtype, f"{what} n_threads={n_threads}")
        loss_only = FWD(x, y, weight=w, pos_weight=pw, reduction=reduction, n_threads=n_threads)
        assert np.array_equal(np.asarray(loss_only), np.asarray(loss), equal_nan=True), \
            f"forward-only loss != fused loss: {what}"
        runs.append((np.asarray(loss).tobytes(), grad.tobytes()))
        if reduction == "none":
            assert loss.shape == shape, f"{what}: 'none' loss shape {loss.shape}"
        else:
            assert isinstance(loss, np.generic) and loss.dtype == dtype, f"{what}: {type(loss)}"
        assert grad.shape == shape
    assert runs[0] == runs[1], f"results differ between n_threads=1 and 2: {what}"
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b, err_msg=f"input modified: {what}")


@pytest.mark.parametrize("pos_kind", POS_KINDS, ids=kind_id("pw"))
@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS, ids=kind_id("w"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(17,), (7, 13), (2, 3, 11)], ids=shape_str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_vs_torch(torch, dtype, shape, reduction, weight_kind, pos_kind, isa):
    """fastce against torch's float64 autograd on the same (dtype-rounded) inputs."""
    x, y = make_x(shape, dtype), make_y(shape, dtype)
    w, pw = make_operand(weight_kind, shape, dtype), make_operand(pos_kind, shape, dtype, seed=1)
    g = grad_output_for(reduction, shape)
    want_loss, want_grad = torch_bce(torch, x, y, w, pw, reduction, g)
    loss, grad = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g)
    check_against(loss, grad, want_loss, want_grad, dtype,
                  f"vs torch {dtype_id(dtype)} {shape} {reduction} w={weight_kind} pw={pos_kind} isa={isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_every_length(reference, dtype, isa):
    """Lengths 1..70 (every tail of the 4/8/16-lane paths, flat and row-wise), C and sliced."""
    for c in range(1, 71):
        for shape, pw_kind in (((c,), None), ((3, c), "C"), ((2, c), None)):
            for layout in ("C", "sliced"):
                x = with_layout_nd(make_x(shape, dtype, seed=c), layout)
                y = with_layout_nd(make_y(shape, dtype, seed=c), layout)
                pw = make_operand(pw_kind, shape, dtype, seed=c)
                w = make_operand("C", shape, dtype, seed=c + 1)
                for reduction in ("sum", "none"):
                    g = grad_output_for(reduction, shape)
                    got = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g,
                                n_threads=2)
                    want = ref_call(reference, x, y, w, pw, reduction, g)
                    check_against(*got, *want, dtype, f"{dtype_id(dtype)} {shape} pw={pw_kind} "
                                                      f"{layout} {reduction} isa={isa}")


BIG_CASES = [
    # (shape, weight kind, pos_weight kind, layout): rows longer than one work item, tiling
    # of (C,) operands with a partial last row, per-row scalars, gathered Fortran rows
    ((20001,), None, None, "C"),
    ((20001,), "scalar", "full", "sliced"),
    ((3, 9000), "C", "C", "C"),
    ((3, 9000), "N1", "C", "F"),
    ((1000, 7), "C", "C", "C"),
    ((1001, 7), "N1", None, "C"),
    ((5, 8193), "full", "C", "sliced"),
    ((64, 300), "C", "C", "F"),
    ((40, 3, 70), "N1", "C", "C"),
]


@pytest.mark.parametrize("case", BIG_CASES, ids=lambda c: f"{shape_str(c[0])},w={c[1]},pw={c[2]},{c[3]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_large_and_deterministic(reference, dtype, case, isa):
    shape, wk, pk, layout = case
    x = with_layout_nd(make_x(shape, dtype), layout)
    y = with_layout_nd(make_y(shape, dtype), layout)
    w, pw = make_operand(wk, shape, dtype), make_operand(pk, shape, dtype, seed=1)
    for reduction in REDUCTIONS:
        g = grad_output_for(reduction, shape)
        want = ref_call(reference, x, y, w, pw, reduction, g)
        results = []
        for n_threads in (1, 2, 3, 4):
            loss, grad = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g,
                               n_threads=n_threads)
            results.append((np.asarray(loss).tobytes(), grad.tobytes()))
        check_against(loss, grad, *want, dtype, f"{dtype_id(dtype)} {case} {reduction} isa={isa}")
        assert all(r == results[0] for r in results), \
            f"not bitwise identical across n_threads 1..4: {case} {reduction} isa={isa}"


EXOTIC = [
    # (logits shape, weight shape, pos_weight shape)
    ((4, 3, 5), (4, 1, 5), None),       # no (rows, C) view: materialised
    ((4, 3, 5), (3, 1), (3, 5)),
    ((4, 3, 5), None, (4, 1, 1)),
    ((6, 5), (1, 1), (6, 1)),           # pos_weight one per row
    ((6, 5), (1, 5), (1,)),
    ((5,), (1,), (5,)),
    ((2, 1, 4), (2, 1, 4), (1, 4)),
]


@pytest.mark.parametrize("case", EXOTIC, ids=lambda c: f"x={c[0]},w={c[1]},pw={c[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_broadcast_shapes(torch, reference, dtype, case, isa):
    shape, ws, ps = case
    rng = np.random.default_rng(7)
    x, y = make_x(shape, dtype), make_y(shape, dtype)
    w = None if ws is None else rng.uniform(0.25, 2, ws).astype(dtype)
    pw = None if ps is None else rng.uniform(0.25, 2, ps).astype(dtype)
    for reduction in REDUCTIONS:
        g = grad_output_for(reduction, shape)
        got = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g, n_threads=2)
        check_against(*got, *ref_call(reference, x, y, w, pw, reduction, g), dtype,
                      f"{case} {reduction} vs reference")
        check_against(*got, *torch_bce(torch, x, y, w, pw, reduction, g), dtype,
                      f"{case} {reduction} vs torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_broadcast_view_inputs(reference, dtype, isa):
    """Inputs that are themselves zero-stride views (np.broadcast_to) are read correctly."""
    shape = (9, 21)
    x = np.broadcast_to(make_x((21,), dtype), shape)
    y = np.broadcast_to(make_y((9, 1), dtype), shape)
    w = np.broadcast_to(np.asarray(1.5, dtype), shape)
    g = np.broadcast_to(np.asarray(0.5), shape)
    for reduction in REDUCTIONS:
        gg = g if reduction == "none" else 2.0
        got = FUSED(x, y, weight=w, reduction=reduction, grad_output=gg, n_threads=2)
        check_against(*got, *ref_call(reference, x, y, w, None, reduction, gg), dtype,
                      f"broadcast views {reduction}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_negative_strides_and_unaligned(reference, dtype, isa):
    """Reversed views (negative strides) and a misaligned buffer give the same results."""
    shape = (23, 37)
    x0, y0 = make_x(shape, dtype), make_y(shape, dtype)
    pw = make_operand("C", shape, dtype)
    buf = np.zeros(x0.nbytes + 1, np.uint8)
    xu = np.ndarray(shape, dtype=dtype, buffer=buf, offset=1)
    xu[...] = x0
    assert not xu.flags.aligned
    cases = {"reversed": (x0[::-1, ::-1], y0[::-1, ::-1]), "reversed rows": (x0[::-1], y0),
             "unaligned": (xu, y0)}
    for name, (x, y) in cases.items():
        for reduction in REDUCTIONS:
            g = grad_output_for(reduction, shape)
            got = FUSED(x, y, pos_weight=pw, reduction=reduction, grad_output=g, n_threads=2)
            check_against(*got, *ref_call(reference, x, y, None, pw, reduction, g), dtype,
                          f"{name} {reduction} isa={isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_0d_and_empty(torch, dtype):
    x, y = np.asarray(1.5, dtype), np.asarray(0.25, dtype)
    for reduction in REDUCTIONS:
        loss, grad = FUSED(x, y, weight=2.0, pos_weight=3.0, reduction=reduction,
                           grad_output=np.asarray(1.0))
        want = torch_bce(torch, x, y, 2.0, 3.0, reduction)
        check_against(loss, grad, *want, dtype, f"0-d {reduction}")
        assert grad.shape == () and np.shape(loss) == ()
    for shape in ((0,), (3, 0), (0, 4, 2)):
        x, y = np.zeros(shape, dtype), np.zeros(shape, dtype)
        assert np.isnan(FWD(x, y)) and FWD(x, y).dtype == dtype  # torch: mean of nothing
        assert FWD(x, y, reduction="sum") == 0
        assert FWD(x, y, reduction="none").shape == shape
        loss, grad = FUSED(x, y, pos_weight=np.ones(shape[-1], dtype))
        assert np.isnan(loss) and grad.shape == shape and grad.dtype == dtype


# ----------------------------------------------------------------------------- numerics
EXTREMES = np.array([1e4, -1e4, np.inf, -np.inf, np.nan, 100.0, -100.0, 88.0, -88.0, 1e30,
                     -1e30, 0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 40.0, -40.0, 709.0, -709.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extreme_logits_vs_torch(torch, dtype, isa):
    """Every extreme logit against every kind of target: same nan/inf pattern as torch,
    same finite values; each element's result depends on that element only."""
    xs = EXTREMES.astype(dtype)
    ys = np.array([0.0, 1.0, 0.5, 0.01], dtype)
    x = np.repeat(xs, len(ys)).reshape(-1, len(ys))   # (len(xs), 4): every (x, y) pair
    y = np.tile(ys, (len(xs), 1))
    pw = np.array([3.0, 0.5, 1.0, 2.0], dtype)
    for w, p in ((None, None), (np.full(4, 0.5, dtype), pw)):
        g = grad_output_for("none", x.shape)
        loss, grad = FUSED(x, y, weight=w, pos_weight=p, reduction="none", grad_output=g)
        want_loss, want_grad = torch_bce(torch, x, y, w, p, "none", g)
        what = f"{dtype_id(dtype)} isa={isa} pw={'set' if p is not None else None}"
        np.testing.assert_array_equal(np.isnan(loss), np.isnan(want_loss), err_msg=f"nan pattern: {what}")
        np.testing.assert_array_equal(np.isinf(loss), np.isinf(want_loss), err_msg=f"inf pattern: {what}")
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad), err_msg=f"grad nan: {what}")
        assert np.all(np.isfinite(grad[np.isfinite(x)])), what
        # finite logits, |x| <= 1e4: finite loss
        ok = np.abs(x) <= 1e4
        assert np.all(np.isfinite(loss[ok])), what
        # Allowed absolute error: torch's own cancellation in (1 - y) x + lw softplus(-x)
        # (a few float64 ulp of |x|; fastce does not cancel), plus fastce's flush of
        # exp(-|x|) below the smallest normal number of the dtype.
        flush = np.finfo(dtype).tiny
        slack = 4 * np.finfo(np.float64).eps * np.where(np.isfinite(x), np.abs(x), 0) * 3 + flush
        for got, want, name in ((loss, want_loss, "loss"), (grad, want_grad, "grad")):
            fin = np.isfinite(want)
            np.testing.assert_array_equal(got[~fin], want[~fin], err_msg=f"{name}: {what}")
            err = np.abs(got[fin].astype(np.float64) - want[fin])
            bound = (1e-6 if dtype == np.float32 else 1e-13) * np.abs(want[fin]) + slack[fin]
            assert np.all(err <= bound), (f"{name}: {what}: x={x[fin][err > bound]} "
                                          f"y={y[fin][err > bound]} got={got[fin][err > bound]} "
                                          f"want={want[fin][err > bound]}")
        # reductions: nan anywhere makes the sum nan, as in torch
        assert np.isnan(FWD(x, y, weight=w, pos_weight=p))
        row = slice(0, 2)  # only +-1e4: finite
        assert_close(FWD(x[row], y[row], weight=w, pos_weight=p, reduction="sum"),
                     torch_bce(torch, x[row], y[row], w, p, "sum")[0], rtol=1e-6, atol=0, what=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_small_losses_keep_relative_accuracy(reference, dtype, isa):
    """x << 0 with y = 0 (and x >> 0 with y = 1): the loss is ~exp(-|x|); torch's
    (1 - y) x + softplus(-x) cancels to 0 in float32, fastce keeps every digit."""
    xs = -np.linspace(0.0, 80.0, 801).astype(dtype)
    for x, y in ((xs, np.zeros_like(xs)), (-xs, np.ones_like(xs))):
        loss = FWD(x, y, reduction="none")
        want = np.log1p(np.exp(-np.abs(x.astype(np.float64))))
        assert_close(loss, want, rtol=5e-7 if dtype == np.float32 else 2e-15, atol=0,
                     what=f"small losses {dtype_id(dtype)} isa={isa}")
        # and the gradient (sigmoid(x) - y) keeps its relative accuracy too
        _, grad = FUSED(x, y, reduction="sum")
        e = np.exp(-np.abs(x.astype(np.float64)))
        want_g = np.where(y == 0, e / (1 + e), -e / (1 + e))
        assert_close(grad, want_g, rtol=5e-7 if dtype == np.float32 else 2e-15, atol=0,
                     what=f"small gradients {dtype_id(dtype)} isa={isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_softplus_accuracy(dtype, isa):
    """The accuracy contract of bce_impl.h: with y = 0 and x <= 0 the loss is exactly the
    kernel's log1p(exp(x)); its error is <= 4 ulp against an extended-precision value."""
    lo = -87.0 if dtype == np.float32 else -708.0
    x = np.concatenate([np.linspace(lo, 0.0, 200001), -np.geomspace(1e-30, 1.0, 20001)]).astype(dtype)
    got = FWD(x, np.zeros_like(x), reduction="none")
    ld = np.longdouble
    want = np.log1p(np.exp(x.astype(ld)))
    ulp = np.abs(got.astype(ld) - want) / np.spacing(want.astype(dtype)).astype(ld)
    worst = float(np.max(ulp))
    print(f"\nsoftplus(-|x|) {dtype_id(dtype)} isa={isa}: max error {worst:.2f} ulp")
    assert worst <= 4.0, f"softplus max error {worst:.2f} ulp > 4 ({dtype_id(dtype)}, isa={isa})"


@pytest.mark.parametrize("pos_kind", POS_KINDS, ids=kind_id("pw"))
@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS, ids=kind_id("w"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_finite_differences(reduction, weight_kind, pos_kind, isa):
    shape = (3, 5)
    x, y = make_x(shape, np.float64, seed=3), make_y(shape, np.float64, seed=3)
    w, pw = make_operand(weight_kind, shape, np.float64), make_operand(pos_kind, shape, np.float64, 1)
    g = grad_output_for(reduction, shape)

    def objective(xx):  # the scalar whose gradient is grad: sum(g * loss) for 'none'
        loss = FWD(xx, y, weight=w, pos_weight=pw, reduction=reduction)
        return float(np.sum(np.asarray(g) * loss))

    _, grad = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g)
    h = 1e-6
    fd = np.empty(shape)
    for idx in np.ndindex(shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = (objective(xp) - objective(xm)) / (2 * h)
    assert_close(grad, fd, rtol=1e-6, atol=1e-7, scale_atol=True,
                 what=f"finite differences {reduction} w={weight_kind} pw={pos_kind} isa={isa}")


# ----------------------------------------------------------------------------- out / inplace
@pytest.mark.parametrize("out_layout", LAYOUTS, ids=kind_id("out"))
@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 11), (20001,)], ids=shape_str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_out(dtype, shape, out_layout, isa):
    x, y = make_x(shape, dtype), make_y(shape, dtype)
    pw = make_operand("C", shape, dtype)
    for reduction in REDUCTIONS:
        g = grad_output_for(reduction, shape)
        loss0, grad0 = FUSED(x, y, pos_weight=pw, reduction=reduction, grad_output=g)
        out = with_layout_nd(np.full(shape, 123.0, dtype), out_layout)
        loss, grad = FUSED(x, y, pos_weight=pw, reduction=reduction, grad_output=g, out=out)
        assert grad is out and np.shares_memory(grad, out), f"out= not returned ({out_layout})"
        np.testing.assert_array_equal(out, grad0, err_msg=f"out= {out_layout} {reduction}")
        np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss0))


@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 11), (20001,), ()], ids=shape_str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_inplace(dtype, shape, isa):
    y = make_y(shape, dtype)
    w = make_operand("N1" if shape else "scalar", shape, dtype)
    for reduction in REDUCTIONS:
        g = grad_output_for(reduction, shape)
        x = make_x(shape, dtype)
        loss0, grad0 = FUSED(x, y, weight=w, reduction=reduction, grad_output=g)
        loss, grad = FUSED(x, y, weight=w, reduction=reduction, grad_output=g, inplace=True)
        assert np.shares_memory(grad, x) and grad.shape == shape, "inplace gradient not in logits"
        np.testing.assert_array_equal(x, grad0, err_msg=f"inplace {reduction}")
        np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss0))


# ----------------------------------------------------------------------------- criterion
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_criterion(torch, dtype, reduction, isa):
    shape = (6, 11)
    x, y = make_x(shape, dtype), make_y(shape, dtype)
    w, pw = make_operand("N1", shape, dtype), make_operand("C", shape, dtype, 1)
    crit = fastce.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction=reduction, n_threads=2)
    with pytest.raises(RuntimeError, match="before"):
        crit.backward()
    g = grad_output_for(reduction, shape)
    loss = crit(x, y)
    grad = crit.backward(g)
    loss0, grad0 = FUSED(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss0))
    np.testing.assert_array_equal(grad, grad0)  # the backward-only kernel gives the same bits
    check_against(loss, grad, *torch_bce(torch, x, y, w, pw, reduction, g), dtype, f"criterion {reduction}")
    out = np.empty_like(x)
    assert crit.backward(g, out=out) is out
    np.testing.assert_array_equal(out, grad0)
    grad = crit.backward(g, inplace=True)
    assert np.shares_memory(grad, x)
    np.testing.assert_array_equal(x, grad0)
    with pytest.raises(RuntimeError, match="before"):
        crit.backward(g)  # the logits were consumed


# ----------------------------------------------------------------------------- dtypes
def test_mixed_input_dtypes():
    shape = (4, 9)
    x = make_x(shape, np.float32)
    y64 = make_y(shape, np.float64)
    loss = FWD(x, y64)
    assert loss.dtype == np.float32
    assert loss == FWD(x, y64.astype(np.float32))
    assert FWD(x, y64.astype(np.float16)).dtype == np.float32
    w_int = np.arange(1, 10)
    np.testing.assert_array_equal(FWD(x, y64, weight=w_int, reduction="none"),
                                  FWD(x, y64, weight=w_int.astype(np.float32), reduction="none"))
    assert FWD(x.tolist(), y64.tolist(), pos_weight=[2.0] * 9).dtype == np.float64  # lists -> float64


# ----------------------------------------------------------------------------- errors
def test_errors():
    x, y = make_x((4, 3), np.float64), make_y((4, 3), np.float64)
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        FWD(x, y[:, :2])
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 3\)"):
        FUSED(x, y[0])
    with pytest.raises(TypeError, match="target"):
        FWD(x, (y > 0.5).astype(np.int64))
    with pytest.raises(RuntimeError, match="target"):  # torch raises RuntimeError here
        FWD(x, (y > 0.5).astype(np.int64))
    with pytest.raises(RuntimeError, match="weight"):  # and here
        FWD(x, y, weight=np.ones(4))
    with pytest.raises(TypeError, match="target"):
        FWD(x, y > 0.5)
    with pytest.raises(TypeError, match="logits"):
        FWD(x.astype(np.int32), y)
    with pytest.raises(TypeError, match="logits"):
        FWD(x.astype(np.float16), y)
    with pytest.raises(ValueError, match=r"weight of shape \(4,\)"):
        FWD(x, y, weight=np.ones(4))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(2, 4, 3\)"):
        FWD(x, y, pos_weight=np.ones((2, 4, 3)))  # would enlarge the loss: torch refuses too
    with pytest.raises(TypeError, match="weight"):
        FWD(x, y, weight=np.ones(3, bool))
    with pytest.raises(TypeError, match="pos_weight"):
        FWD(x, y, pos_weight=np.ones(3, complex))
    with pytest.raises(ValueError, match="reduction"):
        FWD(x, y, reduction="avg")
    with pytest.raises(TypeError, match="n_threads"):
        FWD(x, y, n_threads=True)
    with pytest.raises(TypeError, match="n_threads"):
        FWD(x, y, n_threads=2.0)
    with pytest.raises(ValueError, match="n_threads"):
        FWD(x, y, n_threads=0)
    with pytest.raises(ValueError, match="grad_output"):
        FUSED(x, y, grad_output=np.ones(3))
    with pytest.raises(TypeError, match="grad_output"):
        FUSED(x, y, grad_output=True)
    with pytest.raises(ValueError, match="out has shape"):
        FUSED(x, y, out=np.empty((3, 4)))
    with pytest.raises(TypeError, match="out has dtype"):
        FUSED(x, y, out=np.empty((4, 3), np.float32))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        FUSED(x, y, out=ro)
    with pytest.raises(ValueError, match="overlaps the input 'logits'"):
        FUSED(x, y, out=x)
    with pytest.raises(ValueError, match="overlaps the input 'target'"):
        FUSED(x, y, out=y)
    with pytest.raises(ValueError, match="exclusive"):
        FUSED(x, y, out=np.empty_like(x), inplace=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        FUSED(np.asfortranarray(x), y, inplace=True)
    with pytest.raises(ValueError, match="ndarray"):
        FUSED(x.tolist(), y, inplace=True)
    xr = x.copy()
    xr.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        FUSED(xr, y, inplace=True)
    both = np.stack([x, y])
    with pytest.raises(ValueError, match="target"):
        FUSED(both[0], both[0], inplace=True)
    with pytest.raises(ValueError, match="reduction"):
        fastce.BCEWithLogitsLoss(reduction="mean ")
    with pytest.raises(TypeError, match="weight"):
        fastce.BCEWithLogitsLoss(weight="abc")
    np.testing.assert_array_equal(x, make_x((4, 3), np.float64))  # nothing was modified


# ----------------------------------------------------------------------------- C kernel, every ISA
ROOT = pathlib.Path(__file__).resolve().parents[1]
C_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wextra", "-Iinclude"]
C_SOURCES = ["tests/c/test_bce.c", "src/dispatch.c", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src").glob("isa_*.c"))]


def _run_c(cmd, what):
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}"


def test_c_kernel_every_isa(tmp_path):
    """bce_block against a long double reference on every table this machine reaches:
    natively, and (with Debian's gcc-aarch64-linux-gnu and qemu-user, as in tests/c/run.sh)
    the NEON table under qemu. Missing cross tools skip the NEON part (after the native
    run), or fail it in CI (CI=true)."""
    cc = (os.environ.get("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        cc = "gcc"
    assert shutil.which(cc), "no C compiler on PATH (set CC)"
    exe = str(tmp_path / "test_bce-native")
    _run_c([cc, *C_FLAGS, *C_SOURCES, "-o", exe, "-lm"], "native build")
    _run_c([exe], "native run")
    xcc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if os.uname().machine in ("aarch64", "arm64"):
        return  # the native run covered NEON
    if not (xcc and qemu):
        require_in_ci("native ISAs passed; NEON not tested: aarch64-linux-gnu-gcc / qemu-aarch64 "
                      "not found (Debian: apt-get install gcc-aarch64-linux-gnu "
                      "libc6-dev-arm64-cross qemu-user)")
    exe = str(tmp_path / "test_bce-aarch64")
    _run_c([xcc, "-static", *C_FLAGS, *C_SOURCES, "-o", exe, "-lm"], "aarch64 build")
    _run_c([qemu, exe, "24"], "aarch64 run under qemu")
