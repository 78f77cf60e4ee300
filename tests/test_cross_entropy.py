"""cross_entropy, cross_entropy_with_grad, cross_entropy_backward, CrossEntropyLoss and
nll_loss against the float64 reference and against torch (loss and autograd gradient).

The full option product (dtype x reduction x weight x ignore x label_smoothing) runs on
small shapes for every ISA; layouts and thread counts are crossed with one option set that
exercises every term; 1000 and 32000 classes get targeted cases.  Every call also checks
that its inputs are left untouched.
"""
import numpy as np
import pytest

import fastce
from conftest import (
    DTYPES,
    EXTRA_LAYOUTS,
    IGNORE_INDEX,
    LAYOUTS,
    assert_close,
    check_results,
    dtype_id,
    make_logits,
    make_target,
    make_weight,
    shape_id,
    torch_cross_entropy,
    with_layout,
)

# vs the float64 reference: |fast - ref| <= atol + rtol |ref|; for gradients atol is
# relative to max|ref grad| (so that 'mean''s 1/N scaling keeps it meaningful)
TOL = {
    np.float32: dict(loss=dict(rtol=1e-5, atol=1e-6), grad=dict(rtol=1e-5, atol=1e-6)),
    np.float64: dict(loss=dict(rtol=1e-12, atol=1e-12), grad=dict(rtol=1e-12, atol=1e-13)),
}
# vs torch in the same dtype: both sides carry float32 rounding
TORCH_TOL = {
    np.float32: dict(loss=dict(rtol=2e-5, atol=2e-6), grad=dict(rtol=2e-5, atol=2e-6)),
    np.float64: dict(loss=dict(rtol=1e-12, atol=1e-12), grad=dict(rtol=1e-12, atol=1e-13)),
}

REDUCTIONS = ("mean", "sum", "none")
WEIGHTS = (None, "random")
IGNORES = ("none", "some", "all")
SMOOTHINGS = (0.0, 0.1, 1.0)
SMALL_SHAPES = [(0, 5), (1, 7), (6, 1), (5, 3), (7, 17), (3, 70)]

ids_w = lambda w: f"w={w}"                 # noqa: E731
ids_ls = lambda e: f"ls={e}"               # noqa: E731
ids_ign = lambda s: f"ignore={s}"          # noqa: E731


# ----------------------------------------------------------------------------- helpers
def make_case(dtype, shape, *, layout="C", weight=None, ignore="none", reduction="mean",
              label_smoothing=0.0, ignore_index=IGNORE_INDEX, seed=0):
    """Inputs and keyword arguments of one case.  Weights and grad_output are exactly
    representable in ``dtype`` so that fastce, torch and the reference see equal values."""
    n, c = (None, shape[0]) if len(shape) == 1 else shape
    x = with_layout(make_logits(shape, dtype, seed=seed), layout)
    if n is None:
        t = np.array(make_target(1, c, seed=seed)[0])
    else:
        t = make_target(n, c, ignore, seed=seed, ignore_index=ignore_index)
    if reduction == "none":
        g = np.random.default_rng([seed, 5]).uniform(-2, 2, size=t.shape).astype(dtype)
    else:
        g = 0.75
    kw = dict(weight=make_weight(c, weight, dtype=dtype, seed=seed), ignore_index=ignore_index,
              reduction=reduction, label_smoothing=label_smoothing)
    desc = (f"{dtype_id(dtype)} shape={shape} layout={layout} reduction={reduction} "
            f"w={weight} ignore={ignore} ls={label_smoothing} ignore_index={ignore_index}")
    return x, t, g, kw, desc


def _copies(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def run_all(x, t, g, kw, n_threads=None):
    """Every fastce entry point on one case; asserts inputs are left untouched.

    Returns a dict name -> (loss or None, grad or None).
    """
    before = _copies(x, t, g, kw["weight"])
    res = {
        "cross_entropy": (fastce.cross_entropy(x, t, **kw, n_threads=n_threads), None),
        "cross_entropy_with_grad": fastce.cross_entropy_with_grad(
            x, t, **kw, grad_output=g, n_threads=n_threads),
        "cross_entropy_backward": (None, fastce.cross_entropy_backward(
            x, t, g, **kw, n_threads=n_threads)),
    }
    crit = fastce.CrossEntropyLoss(**kw, n_threads=n_threads)
    loss = crit(x, t)
    res["CrossEntropyLoss"] = (loss, crit.backward(g))
    for name, a, b in zip(("logits", "target", "grad_output", "weight"),
                          (x, t, g, kw["weight"]), before):
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=f"{name} was modified by a call")
    return res


def check_vs_reference(reference, x, t, g, kw, desc, n_threads=None):
    dtype = x.dtype.type
    res = run_all(x, t, g, kw, n_threads)
    loss_r, grad_r = reference.cross_entropy_with_grad(
        x.astype(np.float64), t, grad_output=np.asarray(g, dtype=np.float64),
        **{**kw, "weight": None if kw["weight"] is None else kw["weight"].astype(np.float64)})
    check_results(res, loss_r, grad_r, dtype, np.shape(t), kw["reduction"], TOL[dtype], desc,
                  x.shape)
    return res


def check_vs_torch(torch, x, t, g, kw, desc, n_threads=None):
    dtype = x.dtype.type
    res = run_all(x, t, g, kw, n_threads)
    loss_t, grad_t = torch_cross_entropy(torch, x, t, g, **kw)
    check_results(res, loss_t, grad_t, dtype, np.shape(t), kw["reduction"], TORCH_TOL[dtype],
                  f"vs torch: {desc}", x.shape)


# ----------------------------------------------------------------------------- option product
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=shape_id)
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=ids_ls)
@pytest.mark.parametrize("ignore", IGNORES, ids=ids_ign)
@pytest.mark.parametrize("weight", WEIGHTS, ids=ids_w)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_options_vs_reference(reference, dtype, reduction, weight, ignore, label_smoothing,
                              shape, isa):
    x, t, g, kw, desc = make_case(dtype, shape, weight=weight, ignore=ignore,
                                  reduction=reduction, label_smoothing=label_smoothing)
    check_vs_reference(reference, x, t, g, kw, f"{desc} isa={isa}", n_threads=1)


@pytest.mark.parametrize("shape", [(7, 17), (33, 65), (4, 1000)], ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_layouts_and_threads_vs_reference(reference, dtype, reduction, layout, shape,
                                          n_threads, isa):
    x, t, g, kw, desc = make_case(dtype, shape, layout=layout, weight="random", ignore="some",
                                  reduction=reduction, label_smoothing=0.1)
    check_vs_reference(reference, x, t, g, kw, f"{desc} n_threads={n_threads} isa={isa}",
                       n_threads=n_threads)


@pytest.mark.parametrize("layout", EXTRA_LAYOUTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extra_layouts_vs_reference(reference, dtype, reduction, layout, isa):
    """Negative strides, unaligned data, read-only and broadcast logits; strided target,
    weight and grad_output; out= with negative strides and unaligned."""
    x, t, g, kw, desc = make_case(dtype, (9, 37), layout=layout, weight="random",
                                  ignore="some", reduction=reduction, label_smoothing=0.1)
    check_vs_reference(reference, x, t, g, kw, f"{desc} isa={isa}", n_threads=2)
    # strided target / weight / per-row grad_output
    t_s = with_layout(t, "sliced", fill=0)
    w_s = with_layout(kw["weight"], "sliced")
    g_s = with_layout(g, "sliced") if reduction == "none" else g
    check_vs_reference(reference, x, t_s, g_s, {**kw, "weight": w_s},
                       f"strided target/weight/grad_output, {desc} isa={isa}", n_threads=2)
    if layout in ("reversed", "unaligned"):
        out = with_layout(np.zeros(x.shape, dtype=dtype), layout)
        grad = fastce.cross_entropy_backward(x, t, g, **kw, out=out)
        assert grad is out
        assert_close(out, reference.cross_entropy_backward(x, t, g, **kw), scale_atol=True,
                     what=f"out={layout}: {desc} isa={isa}", **TOL[dtype]["grad"])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_every_class_count(reference, dtype, isa):
    """C = 1..70 (every SIMD tail), C and sliced layouts, all loss terms on."""
    for c in range(1, 71):
        for layout, reduction in (("C", "none"), ("sliced", "mean")):
            x, t, g, kw, desc = make_case(dtype, (5, c), layout=layout, weight="random",
                                          ignore="some", reduction=reduction,
                                          label_smoothing=0.1, seed=c)
            check_vs_reference(reference, x, t, g, kw, f"{desc} isa={isa}", n_threads=1)


@pytest.mark.parametrize("case", [
    pytest.param(dict(shape=(3, 32000), layout="C"), id="n=3,C=32000-C"),
    pytest.param(dict(shape=(3, 32000), layout="sliced"), id="n=3,C=32000-sliced"),
    pytest.param(dict(shape=(3, 32000), layout="F"), id="n=3,C=32000-F"),
    pytest.param(dict(shape=(64, 1000), layout="C"), id="n=64,C=1000-C"),
])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_large_vocab_vs_reference(reference, dtype, reduction, case, isa):
    x, t, g, kw, desc = make_case(dtype, case["shape"], layout=case["layout"], weight="random",
                                  ignore="some", reduction=reduction, label_smoothing=0.1)
    check_vs_reference(reference, x, t, g, kw, f"{desc} isa={isa}", n_threads=2)


# ----------------------------------------------------------------------------- vs torch
@pytest.mark.torch
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=ids_ls)
@pytest.mark.parametrize("ignore", IGNORES, ids=ids_ign)
@pytest.mark.parametrize("weight", WEIGHTS, ids=ids_w)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_options_vs_torch(torch, dtype, reduction, weight, ignore, label_smoothing, isa):
    x, t, g, kw, desc = make_case(dtype, (6, 11), weight=weight, ignore=ignore,
                                  reduction=reduction, label_smoothing=label_smoothing)
    check_vs_torch(torch, x, t, g, kw, f"{desc} isa={isa}")


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_large_vocab_vs_torch(torch, dtype, reduction, isa):
    x, t, g, kw, desc = make_case(dtype, (4, 32000), layout="sliced", weight="random",
                                  ignore="some", reduction=reduction, label_smoothing=0.1)
    check_vs_torch(torch, x, t, g, kw, f"{desc} isa={isa}", n_threads=2)


@pytest.mark.torch
@pytest.mark.parametrize("ignore_index", [0, 2, -1, 9],
                         ids=lambda i: f"ignore_index={i}")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_ignore_index_values_vs_torch(torch, dtype, ignore_index, isa):
    """ignore_index may be a valid class (0, 2), negative (-1) or beyond C (9 with C=5)."""
    x, t, g, kw, desc = make_case(dtype, (9, 5), weight="random", ignore="some",
                                  reduction="mean", label_smoothing=0.1,
                                  ignore_index=ignore_index)
    check_vs_torch(torch, x, t, g, kw, f"{desc} isa={isa}")


@pytest.mark.torch
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=ids_ls)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_1d_logits_vs_torch(torch, reference, dtype, reduction, label_smoothing, isa):
    """(C,) logits with a 0-d target: 'none' gives a 0-d loss, the gradient has shape (C,)."""
    for layout in LAYOUTS[::2]:  # C and sliced (F is C for 1-D)
        x, t, g, kw, desc = make_case(dtype, (13,), layout=layout, weight="random",
                                      reduction=reduction, label_smoothing=label_smoothing)
        if reduction == "none":
            g = np.asarray(g, dtype=dtype).reshape(())
        check_vs_torch(torch, x, t, g, kw, f"1-D {desc} isa={isa}")
        check_vs_reference(reference, x, t, g, kw, f"1-D {desc} isa={isa}")


# ----------------------------------------------------------------------------- gradient
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=ids_ls)
@pytest.mark.parametrize("ignore", ("none", "some"), ids=ids_ign)
@pytest.mark.parametrize("weight", WEIGHTS, ids=ids_w)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_finite_differences(reduction, weight, ignore, label_smoothing, isa):
    """fastce's float64 gradient against central differences of fastce's own loss."""
    x, t, g, kw, desc = make_case(np.float64, (4, 6), weight=weight, ignore=ignore,
                                  reduction=reduction, label_smoothing=label_smoothing)

    def objective(z):
        return float(np.sum(np.asarray(g) * fastce.cross_entropy(z, t, **kw, n_threads=1)))

    h = 1e-6
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        fd[idx] = (objective(x + e) - objective(x - e)) / (2 * h)
    grad = fastce.cross_entropy_backward(x, t, g, **kw, n_threads=1)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8,
                               err_msg=f"finite differences: {desc} isa={isa}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_grad_output_forms(dtype, reduction, isa):
    """grad_output scales the gradient linearly; scalars may be floats, ints, 0-d arrays
    or NumPy scalars; 'none' takes one value per row."""
    x, t, _, kw, desc = make_case(dtype, (8, 9), weight="random", ignore="some",
                                  reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        unit = np.ones(8, dtype=dtype)
        g_row = np.linspace(-2, 2, 8).astype(dtype)
        forms = [g_row, g_row.astype(np.float64)]
        expected_scale = g_row[:, None]
    else:
        unit = 1.0
        forms = [-2.5, np.array(-2.5), np.float32(-2.5), np.float64(-2.5)]
        expected_scale = -2.5
    base = fastce.cross_entropy_backward(x, t, unit, **kw)
    for g in forms:
        grad = fastce.cross_entropy_backward(x, t, g, **kw)
        what = f"grad_output={g!r} ({type(g).__name__}): {desc} isa={isa}"
        assert_close(grad, base * expected_scale, what=what, scale_atol=True,
                     **TOL[dtype]["grad"])
        _, grad2 = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g)
        np.testing.assert_array_equal(grad2, grad, err_msg=f"with_grad vs backward, {what}")
    if reduction != "none":
        grad = fastce.cross_entropy_backward(x, t, 3, **kw)  # a Python int
        assert_close(grad, 3 * base, what=f"int grad_output: {desc}", scale_atol=True,
                     **TOL[dtype]["grad"])


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("shape", [(1000, 37), (3, 32000)], ids=shape_id)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bitwise_identical_across_threads(dtype, reduction, shape, isa):
    x, t, g, kw, desc = make_case(dtype, shape, layout="sliced", weight="random",
                                  ignore="some", reduction=reduction, label_smoothing=0.1)
    runs = {n: run_all(x, t, g, kw, n_threads=n) for n in (1, 2, 3)}
    for n in (2, 3):
        for name, (loss, grad) in runs[n].items():
            loss1, grad1 = runs[1][name]
            what = f"{name} n_threads={n} vs 1: {desc} isa={isa}"
            if loss is not None:
                assert np.array_equal(loss, loss1), f"loss differs bitwise: {what}"
            if grad is not None:
                assert np.array_equal(grad, grad1), f"grad differs bitwise: {what}"


# ----------------------------------------------------------------------------- out= / inplace
@pytest.mark.parametrize("out_layout", LAYOUTS, ids=lambda s: f"out={s}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_out(reference, dtype, reduction, out_layout, isa):
    x, t, g, kw, desc = make_case(dtype, (9, 21), layout="F", weight="random", ignore="some",
                                  reduction=reduction, label_smoothing=0.1)
    _, grad_want = reference.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    loss_want = reference.cross_entropy(x, t, **kw)
    before = _copies(x, t, g, kw["weight"])
    crit = fastce.CrossEntropyLoss(**kw)
    crit(x, t)
    calls = {
        "cross_entropy_with_grad": lambda out: fastce.cross_entropy_with_grad(
            x, t, **kw, grad_output=g, out=out),
        "cross_entropy_backward": lambda out: (None, fastce.cross_entropy_backward(
            x, t, g, **kw, out=out)),
        "CrossEntropyLoss.backward": lambda out: (None, crit.backward(g, out=out)),
    }
    for name, call in calls.items():
        out = with_layout(np.full(x.shape, 7.0, dtype=dtype), out_layout)
        loss, grad = call(out)
        what = f"{name} out={out_layout}: {desc} isa={isa}"
        assert grad is out and np.shares_memory(grad, out), f"{what}: out not returned"
        assert_close(out, grad_want, what=what, scale_atol=True, **TOL[dtype]["grad"])
        if loss is not None:
            assert_close(loss, loss_want, what=what, **TOL[dtype]["loss"])
        for a, b in zip((x, t, g, kw["weight"]), before):
            np.testing.assert_array_equal(a, b, err_msg=f"input modified: {what}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_inplace(reference, dtype, reduction, isa):
    x0, t, g, kw, desc = make_case(dtype, (9, 21), weight="random", ignore="some",
                                   reduction=reduction, label_smoothing=0.1)
    loss_want, grad_want = reference.cross_entropy_with_grad(x0, t, grad_output=g, **kw)

    def crit_backward(x):
        crit = fastce.CrossEntropyLoss(**kw)
        loss = crit(x, t)
        return loss, crit.backward(g, inplace=True)

    calls = {
        "cross_entropy_with_grad": lambda x: fastce.cross_entropy_with_grad(
            x, t, **kw, grad_output=g, inplace=True),
        "cross_entropy_backward": lambda x: (None, fastce.cross_entropy_backward(
            x, t, g, **kw, inplace=True)),
        "CrossEntropyLoss.backward": crit_backward,
    }
    for name, call in calls.items():
        x = x0.copy()
        loss, grad = call(x)
        what = f"{name} inplace=True: {desc} isa={isa}"
        assert np.shares_memory(grad, x), f"{what}: grad does not share memory with logits"
        assert grad.shape == x.shape and grad.dtype == x.dtype
        assert_close(x, grad_want, what=what, scale_atol=True, **TOL[dtype]["grad"])
        if loss is not None:
            assert_close(loss, loss_want, what=f"loss of {what}", **TOL[dtype]["loss"])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_array_likes_and_target_dtypes(reference, dtype, isa):
    """Lists are converted with np.asarray; any integer target dtype gives the same result."""
    x, t, g, kw, desc = make_case(dtype, (6, 5), weight="random", label_smoothing=0.1)
    want = fastce.cross_entropy(x, t, **kw)
    for tt in (t.astype(np.int32), t.astype(np.uint8), t.astype(np.int16), t.tolist()):
        got = fastce.cross_entropy(x, tt, **kw)
        assert got == want, f"target as {type(tt).__name__}/{getattr(tt, 'dtype', '')}: {desc}"
    got = fastce.cross_entropy(x.tolist(), t, **{**kw, "weight": kw["weight"].tolist()})
    want64 = reference.cross_entropy(x, t, **kw)
    assert type(got) is np.float64, "list logits convert to float64"
    assert_close(got, want64, what=f"list logits: {desc}", **TOL[np.float64]["loss"])


# ----------------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=ids_ls)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_masked_classes(reference, dtype, label_smoothing, isa):
    """-inf logits are masked classes: finite loss and gradient without smoothing; with
    smoothing the loss is +inf (the uniform part weighs the masked class; torch agrees)
    and the gradient stays finite.  Never nan."""
    x, t, g, kw, desc = make_case(dtype, (6, 40), reduction="none",
                                  label_smoothing=label_smoothing)
    x = x.copy()
    masked = np.zeros(x.shape, dtype=bool)
    masked[:, ::3] = True
    masked[np.arange(6), t] = False   # never mask the target class
    x[masked] = -np.inf
    res = check_vs_reference(reference, x, t, g, kw, f"masked classes {desc} isa={isa}")
    for name, (loss, grad) in res.items():
        what = f"{name}: masked classes {desc} isa={isa}"
        if loss is not None:
            assert not np.isnan(loss).any(), f"{what}: nan loss {loss}"
            assert (np.isfinite(loss) if label_smoothing == 0 else np.isposinf(loss)).all(), \
                f"{what}: loss {loss}"
        if grad is not None:
            assert np.isfinite(grad).all(), f"{what}: non-finite gradient"
            if label_smoothing == 0:
                assert (grad[masked] == 0).all(), f"{what}: masked classes need gradient 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nonfinite_rows(reference, dtype, isa):
    """nan / +inf logits give nan loss and gradient in that row only ('none'); an ignored
    row stays 0 whatever its logits hold; 'mean'/'sum' become nan."""
    x, t, g, kw, desc = make_case(dtype, (8, 19), reduction="none", label_smoothing=0.1,
                                  weight="random")
    x = x.copy()
    t = t.copy()
    x[1, 4] = np.nan
    x[3, 7] = np.inf
    x[5, :] = np.nan
    x[6, 2] = np.nan
    t[6] = IGNORE_INDEX
    bad = [1, 3, 5]
    good = [0, 2, 4, 6, 7]
    res = check_vs_reference(reference, x, t, g, kw, f"nan/inf rows {desc} isa={isa}")
    for name, (loss, grad) in res.items():
        what = f"{name}: nan/inf rows {desc} isa={isa}"
        if loss is not None:
            assert np.isnan(loss[bad]).all() and np.isfinite(loss[good]).all(), \
                f"{what}: loss {loss}"
            assert loss[6] == 0, f"{what}: ignored nan row has loss {loss[6]}"
        if grad is not None:
            assert np.isnan(grad[bad]).all(), f"{what}: bad rows need nan gradient"
            assert np.isfinite(grad[good]).all(), f"{what}: nan leaked into healthy rows"
            assert (grad[6] == 0).all(), f"{what}: ignored row needs gradient 0"
    for reduction in ("mean", "sum"):
        loss = fastce.cross_entropy(x, t, **{**kw, "reduction": reduction})
        assert np.isnan(loss), f"{reduction} over nan rows gave {loss}"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_empty_and_all_ignored(dtype, reduction, isa):
    """N == 0 or every row ignored: 'mean' is nan (like torch), 'sum' 0, gradient 0."""
    for shape, ignore in (((0, 5), "none"), ((4, 5), "all")):
        x, t, g, kw, desc = make_case(dtype, shape, ignore=ignore, reduction=reduction,
                                      weight="random", label_smoothing=0.1)
        for name, (loss, grad) in run_all(x, t, g, kw).items():
            what = f"{name}: {desc} isa={isa}"
            if loss is not None:
                if reduction == "mean":
                    assert np.isnan(loss), f"{what}: 'mean' gave {loss}, want nan"
                else:
                    assert (np.asarray(loss) == 0).all(), f"{what}: loss {loss}, want 0"
            if grad is not None:
                assert grad.shape == shape and (grad == 0).all(), f"{what}: gradient {grad}"


# ----------------------------------------------------------------------------- nll_loss
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ignore", IGNORES, ids=ids_ign)
@pytest.mark.parametrize("weight", WEIGHTS, ids=ids_w)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nll_loss_vs_reference(reference, dtype, reduction, weight, ignore, layout):
    for shape in ((0, 4), (7, 13)):
        x, t, _, kw, desc = make_case(dtype, shape, layout=layout, weight=weight,
                                      ignore=ignore, reduction=reduction)
        del kw["label_smoothing"]
        logp = with_layout(reference.log_softmax(x.astype(np.float64)).astype(dtype), layout)
        before = _copies(logp, t)
        got = fastce.nll_loss(logp, t, **kw)
        want = reference.nll_loss(logp.astype(np.float64), t, **kw)
        if reduction == "none":
            assert got.dtype == dtype and got.shape == t.shape, f"nll_loss {desc}"
        else:
            assert type(got) is dtype, f"nll_loss {desc}: type {type(got)}"
        assert_close(got, want, what=f"nll_loss {desc}", **TOL[dtype]["loss"])
        for a, b in zip((logp, t), before):
            np.testing.assert_array_equal(a, b, err_msg=f"nll_loss modified an input: {desc}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nll_loss_1d_and_consistency(dtype, reduction):
    """nll_loss(log_softmax(x)) equals cross_entropy(x) (eps = 0), also for 1-D input."""
    for shape in ((13,), (10, 6)):
        x, t, _, kw, desc = make_case(dtype, shape, weight="random", ignore="some",
                                      reduction=reduction)
        del kw["label_smoothing"]
        got = fastce.nll_loss(fastce.log_softmax(x), t, **kw)
        want = fastce.cross_entropy(x, t, **kw)
        assert np.shape(got) == np.shape(want), desc
        assert_close(got, want, what=f"nll_loss(log_softmax) vs cross_entropy: {desc}",
                     rtol=10 * TOL[dtype]["loss"]["rtol"], atol=10 * TOL[dtype]["loss"]["atol"])


# ----------------------------------------------------------------------------- criterion
def test_criterion_backward_follows_last_call(reference, isa):
    crit = fastce.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    xa, ta, _, kw, _ = make_case(np.float64, (5, 8), reduction="sum", label_smoothing=0.1)
    xb, tb, _, _, _ = make_case(np.float64, (3, 8), reduction="sum", label_smoothing=0.1,
                                seed=9)
    crit(xa, ta)
    crit(xb, tb)
    g1 = crit.backward()
    g2 = crit.backward(2.0)
    assert_close(g1, reference.cross_entropy_backward(xb, tb, **kw), what="last call",
                 **TOL[np.float64]["grad"])
    np.testing.assert_array_equal(g2, 2 * g1, err_msg="second backward with grad_output=2")
