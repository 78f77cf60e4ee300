"""The GPU path's binary cross-entropy-with-logits test matrix, shared by the emulated run
(tests/test_cuda_emulated_bce.py, CPU only) and the real one (tests/test_cupy_bce.py,
CuPy + GPU).  Inputs, tolerances and the float64 oracle are tests/test_bce.py's (the CPU
suite), so both paths meet the same bar.

A *harness* ``h`` gives the functions under test and moves arrays:

    h.fns          ``fastce`` itself: binary_cross_entropy_with_logits, ..._with_grad and
                   BCEWithLogitsLoss, which must send ``h``'s device arrays to the GPU path
    h.to_dev(a)    a NumPy array on the device, same memory order
    h.dev(a, layout="C")   a NumPy array on the device as "C", "F" or "strided" (a view with
                   stride 2 on every axis of a larger buffer whose other elements are nan)
    h.host(a)      a device array (or 0-d result) as NumPy
    h.is_dev(a)    whether a is a device array (a CPU-path result is not: its scalar
                   losses are NumPy scalars, the GPU path's 0-d arrays)
    h.shares(a, b) whether two device arrays share memory
    h.array_name   the device array type as messages spell it ("cupy.ndarray")

``BceMatrix`` (at the end) turns the matrix into pytest tests: a test module subclasses
it and provides the fixture ``h``.
"""
import contextlib

import numpy as np
import pytest

from conftest import assert_close
from test_bce import (EXTREMES, TOL, check_against, grad_output_for, make_operand, make_x, make_y,
                      ref_call, with_layout_nd)

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")
WEIGHT_KINDS = (None, "C", "N1", "full", "scalar")
POS_KINDS = (None, "C", "N1", "full", "scalar")  # pos_weight broadcasts like weight
SHAPES = [(0,), (0, 5), (1,), (17,), (1, 1), (5, 33), (2, 3, 11)]
LAYOUTS = ("C", "F", "strided")

# (logits shape, weight shape, pos_weight shape): broadcasts beyond (C,) / (N, 1)
BROADCASTS = [
    ((4, 3, 5), (4, 1, 5), None),
    ((4, 3, 5), (3, 1), (3, 5)),
    ((4, 3, 5), None, (4, 1, 1)),
    ((6, 5), (1, 1), (6, 1)),
    ((6, 5), (1, 5), (1,)),
    ((5,), (1,), (5,)),
    ((2, 1, 4), (2, 1, 4), (1, 4)),
    ((3, 1, 4, 1, 5), (4, 1, 5), (3, 1, 1, 1, 1)),
    # 5 axes that no 4-axis geometry describes: the weight is materialised
    ((2, 3, 2, 3, 2), (2, 1, 2, 1, 2), (3, 1, 1, 1)),
]


def layout_on(to_dev, a, layout):
    """``a`` on the device with a layout (0-d arrays are always "C")."""
    a = np.asarray(a)
    if layout == "C" or a.ndim == 0:
        return to_dev(np.array(a, order="C"))  # (np.ascontiguousarray makes 0-d arrays 1-d)
    if layout == "F":
        return to_dev(np.asfortranarray(a))
    assert layout == "strided", layout
    view = with_layout_nd(a, layout)
    return to_dev(view.base)[tuple(slice(1, 1 + 2 * d, 2) for d in a.shape)]


@contextlib.contextmanager
def max_blocks(k):
    """Cap the GPU path's grid at k blocks: every thread then walks many elements."""
    from fastce.cuda import _bce as B
    old = B.BceOps.max_blocks
    B.BceOps.max_blocks = k
    try:
        yield
    finally:
        B.BceOps.max_blocks = old


def _what(**kw):
    return " ".join(f"{k}={v}" for k, v in kw.items())


def _fused(h, x, y, **kw):
    return h.fns.binary_cross_entropy_with_logits_with_grad(x, y, **kw)


def _host_all(h, *arrays):
    return [None if a is None else h.host(a) for a in arrays]


# ------------------------------------------------------------------ the main matrix
def check_case(h, reference, shape, dtype, layout, weight_kind, pos_kind, reduction,
               w_shape=None, pw_shape=None):
    """Fused loss + gradient and the forward alone against the float64 reference; result
    kinds, shapes and dtypes; forward == fused loss bitwise; inputs untouched.  A weight of
    kind "full" (and the 'none' grad_output) takes the logits' layout."""
    x0, y0 = make_x(shape, dtype), make_y(shape, dtype)
    if w_shape is None:
        w0, pw0 = make_operand(weight_kind, shape, dtype), make_operand(pos_kind, shape, dtype, seed=1)
    else:  # explicit broadcast shapes
        rng = np.random.default_rng(7)
        w0, pw0 = (None if s is None else rng.uniform(0.25, 2, s).astype(dtype) for s in (w_shape, pw_shape))
    g0 = grad_output_for(reduction, shape)
    x, y = h.dev(x0, layout), h.dev(y0, layout)
    w = None if w0 is None else h.dev(w0, layout if weight_kind == "full" else "C")
    pw = None if pw0 is None else h.dev(pw0, layout if pos_kind == "full" else "C")
    g = h.dev(np.asarray(g0), layout) if reduction == "none" else g0
    what = _what(shape=shape, dtype=np.dtype(dtype).name, layout=layout, w=w_shape or weight_kind,
                 pw=pw_shape or pos_kind, reduction=reduction)
    loss, grad = _fused(h, x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g)
    assert h.is_dev(loss) and h.is_dev(grad), f"{what}: results {type(loss)}, {type(grad)}"
    assert loss.shape == (shape if reduction == "none" else ()), f"{what}: loss shape {loss.shape}"
    assert grad.shape == shape
    check_against(h.host(loss), h.host(grad), *ref_call(reference, x0, y0, w0, pw0, reduction, g0),
                  dtype, what)
    alone = h.fns.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction)
    assert h.is_dev(alone)
    assert h.host(alone).tobytes() == h.host(loss).tobytes(), f"{what}: forward-only != fused loss"
    for dev, host in ((x, x0), (y, y0), (w, w0), (pw, pw0)):
        if host is not None:
            np.testing.assert_array_equal(h.host(dev), host, err_msg=f"input modified: {what}")


def check_long(h, reference, dtype):
    """A grid capped at 2 blocks: every thread walks dozens of elements, so the odometer
    of bce.cu carries through every axis (and the ('mean') grid-sum has 2 partials)."""
    cases = [((20001,), None, None, "C"), ((3, 1000), "C", "N1", "F"), ((40, 3, 70), "N1", "C", "C"),
             ((5, 7, 13), "full", "scalar", "strided"), ((2, 3, 2, 3, 2), "C", "N1", "strided")]
    with max_blocks(2):
        for shape, wk, pk, layout in cases:
            for reduction in ("mean", "none"):
                check_case(h, reference, shape, dtype, layout, wk, pk, reduction)


# ------------------------------------------------------------------ out= / inplace
def check_out(h, dtype, shape, out_layout):
    """The gradient lands in out= of any layout (bitwise as without out=), and the loss
    does not change with where the gradient goes."""
    x, y = h.dev(make_x(shape, dtype)), h.dev(make_y(shape, dtype))
    pw = h.dev(make_operand("C", shape, dtype))
    for reduction in REDUCTIONS:
        g = grad_output_for(reduction, shape)
        g = h.dev(g) if reduction == "none" else g
        loss0, grad0 = _fused(h, x, y, pos_weight=pw, reduction=reduction, grad_output=g)
        out = h.dev(np.full(shape, 123.0, dtype), out_layout)
        loss, grad = _fused(h, x, y, pos_weight=pw, reduction=reduction, grad_output=g, out=out)
        what = _what(shape=shape, dtype=np.dtype(dtype).name, out=out_layout, reduction=reduction)
        assert grad is out, f"out= not returned: {what}"
        np.testing.assert_array_equal(h.host(out), h.host(grad0), err_msg=f"out=: {what}")
        assert h.host(loss).tobytes() == h.host(loss0).tobytes(), f"loss depends on out=: {what}"


def check_inplace(h, dtype, shape):
    y = h.dev(make_y(shape, dtype))
    w = h.dev(make_operand("N1" if shape else "scalar", shape, dtype))
    for reduction in REDUCTIONS:
        g = grad_output_for(reduction, shape)
        g = h.dev(np.asarray(g)) if reduction == "none" else g
        loss0, grad0 = _fused(h, h.dev(make_x(shape, dtype)), y, weight=w, reduction=reduction,
                              grad_output=g)
        x = h.dev(make_x(shape, dtype))
        loss, grad = _fused(h, x, y, weight=w, reduction=reduction, grad_output=g, inplace=True)
        what = _what(shape=shape, dtype=np.dtype(dtype).name, reduction=reduction)
        assert grad is x or h.shares(grad, x), f"inplace gradient not in logits: {what}"
        np.testing.assert_array_equal(h.host(x), h.host(grad0), err_msg=f"inplace: {what}")
        assert h.host(loss).tobytes() == h.host(loss0).tobytes(), what


# ------------------------------------------------------------------ grad_output, dtypes, edges
def check_grad_output_kinds(h, reference, dtype):
    """grad_output as a Python float or int, a NumPy scalar, a 0-d device array; for
    'none' a device array of another dtype and layout."""
    shape = (6, 11)
    x0, y0 = make_x(shape, dtype), make_y(shape, dtype)
    w0 = make_operand("C", shape, dtype)
    x, y, w = h.dev(x0), h.dev(y0), h.dev(w0)
    for reduction in ("mean", "sum"):
        want = ref_call(reference, x0, y0, w0, None, reduction, 2.5)
        for g in (2.5, np.float32(2.5), np.float64(2.5), h.dev(np.asarray(2.5))):
            got = _fused(h, x, y, weight=w, reduction=reduction, grad_output=g)
            check_against(*_host_all(h, *got), *want, dtype, f"grad_output={type(g).__name__} {reduction}")
        got = _fused(h, x, y, weight=w, reduction=reduction, grad_output=3)
        check_against(*_host_all(h, *got), *ref_call(reference, x0, y0, w0, None, reduction, 3.0),
                      dtype, f"int grad_output {reduction}")
    g0 = grad_output_for("none", shape)
    for g in (h.dev(g0, "F"), h.dev(g0.astype(dtype), "strided"), h.dev(g0.astype(np.float32))):
        got = _fused(h, x, y, weight=w, reduction="none", grad_output=g)
        want = ref_call(reference, x0, y0, w0, None, "none", h.host(g).astype(dtype))  # as given
        check_against(*_host_all(h, *got), *want, dtype,
                      f"'none' grad_output {h.host(g).dtype} {g.strides}")


def check_mixed_dtypes(h, reference):
    """float32 logits with float64 / float16 targets and integer weights (converted to the
    logits' dtype, as on the CPU path); lists next to device arrays."""
    shape = (4, 9)
    x0, y0 = make_x(shape, np.float32), make_y(shape, np.float64)
    x = h.dev(x0)
    loss = h.fns.binary_cross_entropy_with_logits(x, h.dev(y0))
    assert h.host(loss).dtype == np.float32
    assert h.host(loss) == h.host(h.fns.binary_cross_entropy_with_logits(x, h.dev(y0.astype(np.float32))))
    assert h.host(h.fns.binary_cross_entropy_with_logits(x, h.dev(y0.astype(np.float16)))).dtype == np.float32
    w_int = np.arange(1, 10)
    np.testing.assert_array_equal(
        h.host(h.fns.binary_cross_entropy_with_logits(x, h.dev(y0), weight=h.dev(w_int), reduction="none")),
        h.host(h.fns.binary_cross_entropy_with_logits(x, h.dev(y0), weight=h.dev(w_int.astype(np.float32)),
                                                      reduction="none")))
    got = h.fns.binary_cross_entropy_with_logits(x, y0.tolist(), pos_weight=[2.0] * 9, weight=2)
    want = reference.binary_cross_entropy_with_logits(x0, y0.astype(np.float32), weight=2.0,
                                                      pos_weight=np.full(9, 2.0))
    assert h.is_dev(got) and h.host(got).dtype == np.float32
    assert_close(h.host(got), want, what="lists and Python numbers", **TOL[np.float32])


def check_empty_and_0d(h, dtype):
    x, y = h.dev(np.asarray(1.5, dtype)), h.dev(np.asarray(0.25, dtype))
    for reduction in REDUCTIONS:
        loss, grad = _fused(h, x, y, weight=2.0, pos_weight=3.0, reduction=reduction,
                            grad_output=h.dev(np.asarray(1.0)))
        assert grad.shape == () and loss.shape == () and h.is_dev(loss)
        # l = w (lw softplus(-x) + (1 - y) x), dl/dx = w (lw sigmoid(x) - pw y), lw = 1.5
        want_l = 2.0 * (1.5 * np.log1p(np.exp(-1.5)) + 0.75 * 1.5)
        want_g = 2.0 * (1.5 / (1.0 + np.exp(-1.5)) - 0.75)
        check_against(h.host(loss), h.host(grad), want_l, want_g, dtype, f"0-d {reduction}")
    for shape in ((0,), (3, 0), (0, 4, 2)):
        x, y = h.dev(np.zeros(shape, dtype)), h.dev(np.zeros(shape, dtype))
        mean = h.fns.binary_cross_entropy_with_logits(x, y)
        assert h.is_dev(mean) and np.isnan(h.host(mean)) and h.host(mean).dtype == dtype
        assert h.host(h.fns.binary_cross_entropy_with_logits(x, y, reduction="sum")) == 0
        assert h.fns.binary_cross_entropy_with_logits(x, y, reduction="none").shape == shape
        loss, grad = _fused(h, x, y, pos_weight=h.dev(np.ones(shape[-1], dtype)))
        assert np.isnan(h.host(loss)) and grad.shape == shape and grad.dtype == dtype


# ------------------------------------------------------------------ numerics
def check_special_values(h, reference, dtype):
    """Every extreme logit against every kind of target (test_bce.py's EXTREMES): the
    reference's nan/inf pattern, finite gradients at +-inf, close finite values."""
    xs = EXTREMES.astype(dtype)
    ys = np.array([0.0, 1.0, 0.5, 0.01], dtype)
    x0 = np.repeat(xs, len(ys)).reshape(-1, len(ys))
    y0 = np.tile(ys, (len(xs), 1))
    pw0 = np.array([3.0, 0.5, 1.0, 2.0], dtype)
    for w0, p0 in ((None, None), (np.full(4, 0.5, dtype), pw0)):
        g0 = grad_output_for("none", x0.shape)
        dev = [None if a is None else h.dev(a) for a in (x0, y0, w0, p0, g0)]
        with np.errstate(invalid="ignore", over="ignore"):
            loss, grad = _host_all(h, *_fused(h, dev[0], dev[1], weight=dev[2], pos_weight=dev[3],
                                              reduction="none", grad_output=dev[4]))
            want_loss, want_grad = ref_call(reference, x0, y0, w0, p0, "none", g0)
        what = f"{np.dtype(dtype).name} pw={'set' if p0 is not None else None}"
        for got, want, name in ((loss, want_loss, "loss"), (grad, want_grad, "grad")):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} nan: {what}")
            np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{name} inf: {what}")
            fin = np.isfinite(want)
            np.testing.assert_array_equal(got[~fin], want[~fin], err_msg=f"{name}: {what}")
            # the reference (torch's formula) cancels in (1 - y) x + lw softplus(-x): a few
            # float64 ulp of |x|; exp(-|x|) below the dtype's smallest normal may be 0
            slack = 12 * np.finfo(np.float64).eps * np.abs(x0.astype(np.float64)) + np.finfo(dtype).tiny
            err = np.abs(got[fin].astype(np.float64) - want[fin])
            bound = (1e-6 if dtype == np.float32 else 1e-13) * np.abs(want[fin]) + slack[fin]
            assert np.all(err <= bound), (f"{name}: {what}: x={x0[fin][err > bound]} y={y0[fin][err > bound]} "
                                          f"got={got[fin][err > bound]} want={want[fin][err > bound]}")
        assert np.all(np.isfinite(grad[np.isfinite(x0)])), what
        assert np.isnan(h.host(h.fns.binary_cross_entropy_with_logits(dev[0], dev[1])))  # nan in the sum


def check_small_losses(h, dtype):
    """x << 0 with y = 0 (and x >> 0 with y = 1): the loss is ~exp(-|x|) and keeps its
    relative accuracy, the gradient (+-sigmoid(-|x|)) too (bce.cu: no cancellation)."""
    xs = -np.linspace(0.0, 80.0, 801).astype(dtype)
    rtol = 5e-7 if dtype == np.float32 else 2e-15
    for x0, y0 in ((xs, np.zeros_like(xs)), (-xs, np.ones_like(xs))):
        x, y = h.dev(x0), h.dev(y0)
        loss = h.host(h.fns.binary_cross_entropy_with_logits(x, y, reduction="none"))
        e = np.exp(-np.abs(x0.astype(np.float64)))
        np.testing.assert_allclose(loss, np.log1p(e), rtol=rtol, atol=0, err_msg="small losses")
        grad = h.host(_fused(h, x, y, reduction="sum")[1])
        np.testing.assert_allclose(grad, np.where(y0 == 0, e / (1 + e), -e / (1 + e)), rtol=rtol, atol=0,
                                   err_msg="small gradients")


def check_deterministic(h, dtype):
    """Same bits on every call; the loss bits do not depend on the gradient's destination
    (an out= of another layout that forces a walk-ordered temporary included)."""
    for shape in ((64, 300), (2, 3, 2, 3, 2)):
        x0 = make_x(shape, dtype)
        x, y = h.dev(x0, "F"), h.dev(make_y(shape, dtype), "F")
        pw = h.dev(make_operand("C", shape, dtype))
        with max_blocks(3):
            a = _fused(h, x, y, pos_weight=pw)
            b = _fused(h, x, y, pos_weight=pw)
            c = _fused(h, x, y, pos_weight=pw, out=h.dev(np.zeros(shape, dtype), "strided"))
            d = h.fns.binary_cross_entropy_with_logits(x, y, pos_weight=pw)
        for r in (b, c):
            assert h.host(r[0]).tobytes() == h.host(a[0]).tobytes(), shape
            assert h.host(r[1]).tobytes() == h.host(a[1]).tobytes(), shape
        assert h.host(d).tobytes() == h.host(a[0]).tobytes(), shape


# ------------------------------------------------------------------ the criterion
def check_criterion(h, reference, dtype, reduction):
    shape = (6, 11)
    x0, y0 = make_x(shape, dtype), make_y(shape, dtype)
    w0, pw0 = make_operand("N1", shape, dtype), make_operand("C", shape, dtype, 1)
    g0 = grad_output_for(reduction, shape)
    g = h.dev(g0) if reduction == "none" else g0
    x, y = h.dev(x0), h.dev(y0)
    crit = h.fns.BCEWithLogitsLoss(weight=h.dev(w0), pos_weight=h.dev(pw0), reduction=reduction, n_threads=2)
    with pytest.raises(RuntimeError, match="before"):
        crit.backward()
    loss = crit(x, y)
    grad = crit.backward(g)
    assert h.is_dev(loss) and h.is_dev(grad)
    check_against(h.host(loss), h.host(grad), *ref_call(reference, x0, y0, w0, pw0, reduction, g0), dtype,
                  f"criterion {reduction}")
    loss0, grad0 = _host_all(h, *_fused(h, x, y, weight=crit.weight, pos_weight=crit.pos_weight,
                                        reduction=reduction, grad_output=g))
    assert h.host(loss).tobytes() == loss0.tobytes()
    np.testing.assert_array_equal(h.host(grad), grad0)  # the backward-only launch: same bits
    out = h.dev(np.zeros(shape, dtype))
    assert crit.backward(g, out=out) is out
    np.testing.assert_array_equal(h.host(out), grad0)
    grad = crit.backward(g, inplace=True)
    assert grad is x or h.shares(grad, x)
    np.testing.assert_array_equal(h.host(x), grad0)
    with pytest.raises(RuntimeError, match="before"):
        crit.backward(g)  # the logits were consumed


# ------------------------------------------------------------------ errors: as the CPU path
FWD = "binary_cross_entropy_with_logits"
FUSED = "binary_cross_entropy_with_logits_with_grad"
#: (name, function, make(x, y) -> (args, kwargs)); an array passed twice is one device array
ERROR_CASES = [
    ("logits int", FWD, lambda x, y: ((x.astype(np.int32), y), {})),
    ("logits float16", FWD, lambda x, y: ((x.astype(np.float16), y), {})),
    ("target shape", FWD, lambda x, y: ((x, y[:, :2]), {})),
    ("target 1-d", FUSED, lambda x, y: ((x, y[0]), {})),
    ("target int", FWD, lambda x, y: ((x, (y > 0.5).astype(np.int64)), {})),
    ("target bool", FWD, lambda x, y: ((x, y > 0.5), {})),
    ("weight shape", FWD, lambda x, y: ((x, y), dict(weight=np.ones(4)))),
    ("pos_weight enlarges", FWD, lambda x, y: ((x, y), dict(pos_weight=np.ones((2, 4, 3))))),
    ("weight bool", FWD, lambda x, y: ((x, y), dict(weight=np.ones(3, bool)))),
    ("pos_weight complex", FWD, lambda x, y: ((x, y), dict(pos_weight=np.ones(3, complex)))),
    ("reduction", FWD, lambda x, y: ((x, y), dict(reduction="avg"))),
    ("n_threads bool", FWD, lambda x, y: ((x, y), dict(n_threads=True))),
    ("n_threads float", FWD, lambda x, y: ((x, y), dict(n_threads=2.0))),
    ("n_threads 0", FWD, lambda x, y: ((x, y), dict(n_threads=0))),
    ("grad_output vector, mean", FUSED, lambda x, y: ((x, y), dict(grad_output=np.ones(3)))),
    ("grad_output shape, none", FUSED, lambda x, y: ((x, y), dict(reduction="none", grad_output=np.ones(5)))),
    ("grad_output bool", FUSED, lambda x, y: ((x, y), dict(grad_output=True))),
    ("grad_output complex", FUSED, lambda x, y: ((x, y), dict(grad_output=1j))),
    ("out shape", FUSED, lambda x, y: ((x, y), dict(out=np.empty((3, 4))))),
    ("out dtype", FUSED, lambda x, y: ((x, y), dict(out=np.empty((4, 3), np.float32)))),
    ("out list", FUSED, lambda x, y: ((x, y), dict(out=np.zeros((4, 3)).tolist()))),
    ("out is logits", FUSED, lambda x, y: ((x, y), dict(out=x))),
    ("out is target", FUSED, lambda x, y: ((x, y), dict(out=y))),
    ("inplace and out", FUSED, lambda x, y: ((x, y), dict(out=np.empty((4, 3)), inplace=True))),
    ("inplace F", FUSED, lambda x, y: ((np.asfortranarray(x), y), dict(inplace=True))),
    ("inplace list", FUSED, lambda x, y: ((x.tolist(), y), dict(inplace=True))),
    ("inplace int", FUSED, lambda x, y: ((x.astype(np.int64), y), dict(inplace=True))),
    ("inplace target is logits", FUSED, lambda x, y: ((x, x), dict(inplace=True))),
]


def _captured(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


def check_error(h, name, fn, make):
    """The GPU path raises the CPU path's exception class with the CPU path's message (the
    device array type named as NumPy's), before writing anything."""
    import fastce
    x0, y0 = make_x((4, 3), np.float64), make_y((4, 3), np.float64)
    args, kw = make(x0, y0)
    cpu = _captured(lambda: getattr(fastce, fn)(*args, **kw))
    moved = {}

    def dev(a):  # one device array per host array, so that sharing is kept
        if not isinstance(a, np.ndarray):
            return a
        if id(a) not in moved:
            moved[id(a)] = h.to_dev(a)
        return moved[id(a)]

    dargs, dkw = [dev(a) for a in args], {k: dev(v) for k, v in kw.items()}
    before = [h.host(a).copy() for a in dargs + list(dkw.values()) if h.is_dev(a)]
    gpu = _captured(lambda: getattr(h.fns, fn)(*dargs, **dkw))
    assert type(gpu) is type(cpu), f"{name}: CPU {type(cpu).__name__}: {cpu}; GPU {type(gpu).__name__}: {gpu}"
    assert str(gpu).replace(h.array_name, "numpy.ndarray") == str(cpu), name
    after = [h.host(a) for a in dargs + list(dkw.values()) if h.is_dev(a)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: an argument was modified")


def check_criterion_errors(h):
    import fastce
    for w in (np.ones(3, bool), np.ones(3, complex)):
        cpu = _captured(lambda: fastce.BCEWithLogitsLoss(weight=w))
        gpu = _captured(lambda: h.fns.BCEWithLogitsLoss(weight=h.to_dev(w)))
        assert type(gpu) is type(cpu) and str(gpu) == str(cpu), (cpu, gpu)
    crit = h.fns.BCEWithLogitsLoss(weight=h.dev(np.ones(3)))
    x, y = h.dev(make_x((4, 5), np.float64)), h.dev(make_y((4, 5), np.float64))
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) does not broadcast to the logits' shape \(4, 5\)"):
        crit(x, y)


def check_self_overlapping_out(h, dtype):
    """out= (and the criterion's backward(out=)) whose elements share memory is refused
    with the CPU path's message, before anything is written."""
    import fastce
    from cuda_cases import as_strided_dev
    x0, y0 = make_x((6, 40), dtype), make_y((6, 40), dtype)
    item = np.dtype(dtype).itemsize
    for strides in ((item, item), (20 * item, item), (0, item)):
        with pytest.raises(ValueError) as cpu:
            fastce.binary_cross_entropy_with_logits_with_grad(
                x0, y0, out=np.lib.stride_tricks.as_strided(np.zeros(400, dtype), (6, 40), strides))
        x, y = h.dev(x0), h.dev(y0)
        base = h.dev(np.zeros(400, dtype))
        out = as_strided_dev(base, (6, 40), strides)
        with pytest.raises(ValueError) as gpu:
            _fused(h, x, y, out=out)
        assert str(gpu.value) == str(cpu.value), (strides, str(cpu.value), str(gpu.value))
        assert "out has elements that share memory" in str(gpu.value)
        crit = h.fns.BCEWithLogitsLoss(reduction="sum")
        crit(x, y)
        with pytest.raises(ValueError, match="out has elements that share memory"):
            crit.backward(out=out)
        assert not h.host(base).any(), f"strides {strides}: written before the refusal"


# ------------------------------------------------------------------ the matrix as tests
DTYPE_IDS = dict(ids=lambda d: np.dtype(d).name)


class BceMatrix:
    """The shared tests; sizes fit the emulator (a GPU module adds larger ones)."""

    @pytest.mark.parametrize("pos_kind", POS_KINDS, ids=lambda k: f"pw={k}")
    @pytest.mark.parametrize("weight_kind", WEIGHT_KINDS, ids=lambda k: f"w={k}")
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_options(self, h, reference, dtype, reduction, weight_kind, pos_kind):
        check_case(h, reference, (5, 7), dtype, "strided", weight_kind, pos_kind, reduction)

    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_shapes_and_layouts(self, h, reference, dtype, shape, layout):
        for reduction, wk, pk in (("mean", "full", "C"), ("none", "N1", "full"), ("sum", "scalar", None)):
            check_case(h, reference, shape, dtype, layout, wk, pk, reduction)

    @pytest.mark.parametrize("case", BROADCASTS, ids=lambda c: f"x={c[0]},w={c[1]},pw={c[2]}")
    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_broadcasts(self, h, reference, dtype, case):
        shape, ws, ps = case
        for reduction in REDUCTIONS:
            check_case(h, reference, shape, dtype, "C", None, None, reduction, w_shape=ws, pw_shape=ps)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_long_walks(self, h, reference, dtype):
        check_long(h, reference, dtype)

    @pytest.mark.parametrize("out_layout", LAYOUTS)
    @pytest.mark.parametrize("shape", [(7, 13), (2, 3, 11), (2, 3, 2, 3, 2)], ids=str)
    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_out(self, h, dtype, shape, out_layout):
        check_out(h, dtype, shape, out_layout)

    @pytest.mark.parametrize("shape", [(7, 13), (2, 3, 11), ()], ids=str)
    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_inplace(self, h, dtype, shape):
        check_inplace(h, dtype, shape)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_grad_output_kinds(self, h, reference, dtype):
        check_grad_output_kinds(h, reference, dtype)

    def test_mixed_dtypes(self, h, reference):
        check_mixed_dtypes(h, reference)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_empty_and_0d(self, h, dtype):
        check_empty_and_0d(h, dtype)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_special_values(self, h, reference, dtype):
        check_special_values(h, reference, dtype)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_small_losses(self, h, dtype):
        check_small_losses(h, dtype)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_deterministic(self, h, dtype):
        check_deterministic(h, dtype)

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_criterion(self, h, reference, dtype, reduction):
        check_criterion(h, reference, dtype, reduction)

    @pytest.mark.parametrize("name,fn,make", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
    def test_errors_match_cpu(self, h, name, fn, make):
        check_error(h, name, fn, make)

    def test_criterion_errors(self, h):
        check_criterion_errors(h)

    @pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
    def test_self_overlapping_out_refused(self, h, dtype):
        check_self_overlapping_out(h, dtype)
