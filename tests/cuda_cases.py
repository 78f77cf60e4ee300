"""The GPU path's test matrix, shared by the emulated run (tests/test_cuda_emulated.py,
CPU only) and the real one (tests/test_cupy.py, CuPy + GPU).

A *harness* gives the functions under test and moves arrays:

    h.ops       object with logsumexp, log_softmax, softmax, cross_entropy,
                cross_entropy_with_grad, cross_entropy_backward, nll_loss
    h.dev(a, layout="C")   a NumPy array as a device array with that layout
                           ("C", "F" or "sliced": a strided view of a larger buffer)
    h.host(a)   a device array (or 0-d result) as NumPy
    h.is_dev(a) whether a is a device array of the harness
    h.shares(a, b)   whether two device arrays share memory

Shapes are picked so that every kernel shape of fastce/cuda/rows.cu runs (thread per
row, warp per row for every VPT, cached and streaming blocks, chunked rows).
"""
import numpy as np
import pytest

from conftest import IGNORE_INDEX, assert_close, make_logits, make_target, make_weight

# (N, C): warp1/thread, warp2, warp4, warp16, warp32 (f64: block8), block8, block16,
# streaming block, chunked rows (few long rows)
ROW_SHAPES = [(7, 5), (9, 33), (5, 100), (4, 300), (3, 1000), (3, 2500), (2, 6000), (2, 9000)]
LONG_SHAPES = [(3, 33000)]
DTYPES = (np.float32, np.float64)


def tol(dtype):
    return (dict(rtol=2e-5, atol=2e-6) if np.dtype(dtype) == np.float32
            else dict(rtol=1e-11, atol=1e-12))


def layout_on(xp_asarray, a, layout, fill=np.nan):
    """``a`` on the device with a layout, built from a host buffer of the same shape as
    conftest.with_layout's (so the strides match the CPU tests')."""
    a = np.asarray(a)
    if layout == "C":
        return xp_asarray(np.array(a, order="C"))
    if layout == "F":
        f = xp_asarray(np.asfortranarray(a))
        return f
    if a.ndim == 1:
        big = np.full(3 * a.shape[0] + 2, fill, dtype=a.dtype)
        big[1:1 + 3 * a.shape[0]:3] = a
        return xp_asarray(big)[1:1 + 3 * a.shape[0]:3]
    n, c = a.shape
    big = np.full((2 * n + 1, 3 * c + 2), fill, dtype=a.dtype)
    big[1:1 + 2 * n:2, 1:1 + 3 * c:3] = a
    return xp_asarray(big)[1:1 + 2 * n:2, 1:1 + 3 * c:3]


def what(fn, **kw):
    return fn + "(" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")"


# ------------------------------------------------------------------ row functions
def check_row_functions(h, reference, shape, dtype, layout):
    x = make_logits(shape, dtype, seed=1)
    xd = h.dev(x, layout)
    case = dict(shape=shape, dtype=np.dtype(dtype).name, layout=layout)
    t = tol(dtype)
    lse = h.ops.logsumexp(xd)
    assert h.is_dev(lse)
    assert h.host(lse).dtype == dtype
    assert_close(h.host(lse), reference.logsumexp(x), what=what("logsumexp", **case), **t)
    ls = h.ops.log_softmax(xd)
    assert h.is_dev(ls) and ls.shape == x.shape and ls.dtype == dtype
    assert_close(h.host(ls), reference.log_softmax(x), what=what("log_softmax", **case), **t)
    sm = h.ops.softmax(xd)
    assert_close(h.host(sm), reference.softmax(x), what=what("softmax", **case), **t)
    assert np.array_equal(h.host(xd), x), "input modified"


def check_row_outputs(h, reference, shape, dtype, out_layout):
    """out= with any layout (strided outputs go through the kernels' strides)."""
    x = make_logits(shape, dtype, seed=2)
    xd = h.dev(x, "C")
    out = h.dev(np.zeros(shape, dtype), out_layout)
    r = h.ops.log_softmax(xd, out=out)
    assert r is out
    assert_close(h.host(out), reference.log_softmax(x), what=f"log_softmax out {out_layout}",
                 **tol(dtype))
    if len(shape) == 2:
        o1 = h.dev(np.zeros(shape[0], dtype), out_layout if out_layout != "F" else "C")
        r = h.ops.logsumexp(xd, out=o1)
        assert r is o1
        assert_close(h.host(o1), reference.logsumexp(x), what="logsumexp out", **tol(dtype))


def check_axes(h, reference, dtype):
    x = make_logits((3, 4, 5), dtype, seed=3)
    xd = h.dev(x)
    for axis in (0, 1, 2, -1):
        assert_close(h.host(h.ops.logsumexp(xd, axis)), reference.logsumexp(x, axis),
                     what=f"logsumexp axis={axis}", **tol(dtype))
        assert_close(h.host(h.ops.log_softmax(xd, axis)), reference.log_softmax(x, axis),
                     what=f"log_softmax axis={axis}", **tol(dtype))
        assert_close(h.host(h.ops.softmax(xd, axis)), reference.softmax(x, axis),
                     what=f"softmax axis={axis}", **tol(dtype))
    # a transposed (non-collapsible) view
    xt = xd.transpose(1, 0, 2)
    assert_close(h.host(h.ops.log_softmax(xt, 2)), reference.log_softmax(np.transpose(x, (1, 0, 2)), 2),
                 what="log_softmax transposed", **tol(dtype))


def check_special_values(h, reference, shape, dtype):
    """-inf classes are legal; an all -inf row gives lse -inf and nan log-softmax;
    nan and +inf rows give nan; other rows unaffected."""
    n, c = shape
    x = make_logits((max(n, 5), c), dtype, seed=4)
    x[0, ::3] = -np.inf           # masked classes
    x[1, :] = -np.inf             # all masked
    x[2, c // 2] = np.nan
    x[3, c - 1] = np.inf
    x[4, 0] = np.inf
    x[4, c // 2] = np.inf
    xd = h.dev(x)
    with np.errstate(invalid="ignore"):
        assert_close(h.host(h.ops.logsumexp(xd)), reference.logsumexp(x), what=f"lse special {shape}",
                     **tol(dtype))
        assert_close(h.host(h.ops.log_softmax(xd)), reference.log_softmax(x),
                     what=f"log_softmax special {shape}", **tol(dtype))
        assert_close(h.host(h.ops.softmax(xd)), reference.softmax(x), what=f"softmax special {shape}",
                     **tol(dtype))
        y = make_target(x.shape[0], c, seed=4)
        y[0] = 1  # a finite class of the masked row
        for eps in (0.0, 0.2):
            loss = h.ops.cross_entropy(xd, h.dev(y), reduction="none", label_smoothing=eps)
            assert_close(h.host(loss), reference.cross_entropy(x, y, reduction="none", label_smoothing=eps),
                         what=f"ce special eps={eps} {shape}", **tol(dtype))
        g = h.ops.cross_entropy_backward(xd, h.dev(y), reduction="sum")
        assert_close(h.host(g), reference.cross_entropy_backward(x, y, reduction="sum"),
                     what=f"grad special {shape}", scale_atol=True, **tol(dtype))
        # return_lse: logsumexp's lse, +inf for the +inf rows (the kernels give nan there)
        for scale in (1.0, -1.0):
            _, lse = h.ops.cross_entropy(xd, h.dev(y), reduction="none", return_lse=True,
                                         logit_scale=scale)
            assert_close(h.host(lse), reference.logsumexp(scale * x), what=f"ce lse x{scale} {shape}",
                         **tol(dtype))
        lse = h.ops.cross_entropy_with_grad(xd, h.dev(y), reduction="none", return_lse=True)[2]
        assert_close(h.host(lse), reference.logsumexp(x), what=f"ce+grad lse {shape}", **tol(dtype))
    lse0 = h.host(h.ops.logsumexp(xd))[0]
    assert np.isfinite(lse0), "masked classes must not give nan"


# ------------------------------------------------------------------ cross-entropy
def check_cross_entropy(h, reference, shape, dtype, layout, *, weight, ignore, eps, reduction,
                        target_dtype=np.int64):
    n = shape[0] if len(shape) == 2 else 1
    c = shape[-1]
    x = make_logits(shape, dtype, seed=5)
    y = make_target(n, c, ignore=ignore, seed=5, dtype=target_dtype)
    if len(shape) == 1:
        y = y.reshape(())
    w = make_weight(c, weight)
    case = dict(shape=shape, dtype=np.dtype(dtype).name, layout=layout, weight=weight, ignore=ignore,
                eps=eps, reduction=reduction, target=np.dtype(target_dtype).name)
    xd, yd = h.dev(x, layout), h.dev(y)
    wd = None if w is None else h.dev(w)
    kw = dict(weight=wd, reduction=reduction, label_smoothing=eps)
    rkw = dict(weight=w, reduction=reduction, label_smoothing=eps)
    t = tol(dtype)
    loss = h.ops.cross_entropy(xd, yd, **kw)
    assert h.is_dev(loss)
    hl = h.host(loss)
    assert hl.dtype == dtype
    rl = reference.cross_entropy(x, y, **rkw)
    assert_close(hl, rl, what=what("cross_entropy", **case), **t)
    go = 1.0 if reduction != "none" else np.linspace(0.5, 1.5, int(np.prod(np.shape(y)))).reshape(np.shape(y))
    god = go if reduction != "none" else h.dev(go)
    loss2, grad = h.ops.cross_entropy_with_grad(xd, yd, grad_output=god, **kw)
    assert_close(h.host(loss2), rl, what=what("with_grad loss", **case), **t)
    rg = reference.cross_entropy_backward(x, y, go, **rkw)
    assert grad.shape == x.shape and grad.dtype == dtype
    assert_close(h.host(grad), rg, what=what("with_grad grad", **case), scale_atol=True, **t)
    g2 = h.ops.cross_entropy_backward(xd, yd, god, **kw)
    assert_close(h.host(g2), rg, what=what("backward", **case), scale_atol=True, **t)
    assert np.array_equal(h.host(xd), x, equal_nan=True), "logits modified"
    nl = h.ops.nll_loss(h.dev(reference.log_softmax(x, -1).astype(dtype), layout), yd, weight=wd,
                        reduction=reduction)
    if eps == 0.0:
        assert_close(h.host(nl), rl, what=what("nll_loss", **case), **t)


def check_grad_output_scalar_device(h, reference, dtype):
    x = make_logits((6, 11), dtype, seed=6)
    y = make_target(6, 11, ignore="some", seed=6)
    g0 = h.dev(np.array(2.5))
    for red in ("mean", "sum"):
        g = h.ops.cross_entropy_backward(h.dev(x), h.dev(y), g0, reduction=red)
        assert_close(h.host(g), reference.cross_entropy_backward(x, y, 2.5, reduction=red),
                     what=f"device 0-d grad_output {red}", scale_atol=True, **tol(dtype))


def check_inplace_and_out(h, reference, shape, dtype):
    x = make_logits(shape, dtype, seed=7)
    y = make_target(shape[0], shape[1], ignore="some", seed=7)
    w = make_weight(shape[1], "random")
    rl = reference.cross_entropy(x, y, weight=w, label_smoothing=0.1)
    rg = reference.cross_entropy_backward(x, y, weight=w, label_smoothing=0.1)
    xd = h.dev(x)
    loss, g = h.ops.cross_entropy_with_grad(xd, h.dev(y), weight=h.dev(w), label_smoothing=0.1,
                                            inplace=True)
    assert g is xd or h.shares(g, xd)
    assert_close(h.host(loss), rl, what=f"inplace loss {shape}", **tol(dtype))
    assert_close(h.host(g), rg, what=f"inplace grad {shape}", scale_atol=True, **tol(dtype))
    for layout in ("C", "F", "sliced"):
        out = h.dev(np.zeros(shape, dtype), layout)
        xd = h.dev(x)
        loss, g = h.ops.cross_entropy_with_grad(xd, h.dev(y), weight=h.dev(w), label_smoothing=0.1,
                                                out=out)
        assert g is out
        assert_close(h.host(out), rg, what=f"out= {layout} {shape}", scale_atol=True, **tol(dtype))
        assert np.array_equal(h.host(xd), x)


def check_kdim(h, reference, dtype):
    """(N, C, d1, d2) logits with (N, d1, d2) targets, against the flattened reference."""
    n, c, d1, d2 = 3, 7, 2, 5
    x = make_logits((n, c, d1, d2), dtype, seed=8)
    y = make_target(n * d1 * d2, c, ignore="some", seed=8).reshape(n, d1, d2)
    w = make_weight(c, "random")
    x2 = np.moveaxis(x, 1, -1).reshape(-1, c)
    y2 = y.reshape(-1)
    for red in ("mean", "sum", "none"):
        loss = h.host(h.ops.cross_entropy(h.dev(x), h.dev(y), weight=h.dev(w), reduction=red,
                                          label_smoothing=0.05))
        ref = reference.cross_entropy(x2, y2, weight=w, reduction=red, label_smoothing=0.05)
        if red == "none":
            ref = ref.reshape(n, d1, d2)
        assert_close(loss, ref, what=f"k-dim ce {red}", **tol(dtype))
    g = h.host(h.ops.cross_entropy_backward(h.dev(x), h.dev(y), weight=h.dev(w), label_smoothing=0.05))
    rg = reference.cross_entropy_backward(x2, y2, weight=w, label_smoothing=0.05)
    rg = np.moveaxis(rg.reshape(n, d1, d2, c), -1, 1)
    assert_close(g, rg, what="k-dim grad", scale_atol=True, **tol(dtype))


def check_edge_batches(h, dtype):
    c = 5
    x = h.dev(np.zeros((0, c), dtype))
    y = h.dev(np.zeros(0, np.int64))
    assert np.isnan(h.host(h.ops.cross_entropy(x, y)))
    assert h.host(h.ops.cross_entropy(x, y, reduction="sum")) == 0
    assert h.host(h.ops.cross_entropy(x, y, reduction="none")).shape == (0,)
    assert h.ops.cross_entropy_backward(x, y).shape == (0, c)
    assert h.host(h.ops.logsumexp(x)).shape == (0,)
    xa = make_logits((4, c), dtype)
    ya = make_target(4, c, ignore="all")
    loss, g = h.ops.cross_entropy_with_grad(h.dev(xa), h.dev(ya))
    assert np.isnan(h.host(loss)), "all ignored 'mean' is nan like torch"
    assert not np.any(h.host(g)), "ignored rows have a zero gradient"
    e = h.ops.logsumexp(h.dev(np.zeros((3, 0), dtype)))
    assert np.all(h.host(e) == -np.inf)
    one = h.ops.logsumexp(h.dev(make_logits((c,), dtype)))
    assert one.shape == ()


def check_bad_target(h, dtype):
    import pytest
    x = make_logits((6, 4), dtype)
    for bad in (4, -1, 1000):
        y = make_target(6, 4)
        y[3] = bad
        xd = h.dev(x)
        with pytest.raises(IndexError, match=rf"target\[3\] = {bad} is out of bounds for 4 classes"):
            h.ops.cross_entropy_with_grad(xd, h.dev(y), inplace=True)
        assert np.array_equal(h.host(xd), x), "logits modified although the call failed"
    y = make_target(6, 4, ignore="some")
    y[4] = 9
    with pytest.raises(IndexError, match=r"target\[4\] = 9"):
        h.ops.nll_loss(h.dev(x), h.dev(y))


def check_deterministic(h, dtype):
    for shape in ((64, 300), (2, 9000), (3, 33000)):
        x = h.dev(make_logits(shape, dtype, seed=9))
        y = h.dev(make_target(shape[0], shape[1], seed=9))
        a = h.ops.cross_entropy_with_grad(x, y, label_smoothing=0.1)
        b = h.ops.cross_entropy_with_grad(x, y, label_smoothing=0.1)
        assert h.host(a[0]).tobytes() == h.host(b[0]).tobytes()
        assert h.host(a[1]).tobytes() == h.host(b[1]).tobytes()




# ------------------------------------------------------------------ LLM options, probabilities, half
# Oracle: the CPU path (fastce on NumPy arrays; itself checked against torch, finite
# differences and the float64 reference in test_llm_options.py), plus identities that do
# not depend on it (shares add up, one-hot probabilities equal class indices, lse).
def _cpu():
    import fastce
    return fastce


def _dev_kw(h, kw):
    return {k: (h.dev(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


def check_against_cpu(h, x, y, layout="C", *, grad=True, out_tol=None, **kw):
    """Loss, gradient and lse of the GPU path equal the CPU path's, for any options."""
    cpu = _cpu()
    t = out_tol or tol(np.float32 if x.dtype.itemsize <= 4 else np.float64)
    gkw = {k: kw.pop(k) for k in ("grad_dtype",) if k in kw}  # gradient-only options
    case = dict(**gkw, shape=x.shape, dtype=x.dtype.name, layout=layout,
                **{k: (v if not isinstance(v, np.ndarray) else f"array{v.shape}") for k, v in kw.items()})
    xd, yd, dkw = h.dev(x, layout), h.dev(y, layout if y.shape == x.shape else "C"), _dev_kw(h, kw)
    loss, lse = h.ops.cross_entropy(xd, yd, return_lse=True, **dkw)
    rloss, rlse = cpu.cross_entropy(x, y, return_lse=True, **kw)
    assert h.host(loss).dtype == np.asarray(rloss).dtype, case
    assert_close(h.host(loss), rloss, what=what("loss vs CPU", **case), **t)
    assert h.host(lse).dtype == np.float64 and lse.shape == rlse.shape
    assert_close(h.host(lse), rlse, what=what("lse vs CPU", **case), **tol(np.float32))
    if not grad:
        return
    red = kw.get("reduction", "mean")
    go = 0.75 if red != "none" else np.linspace(0.5, 1.5, rlse.size).reshape(rlse.shape)
    god = go if red != "none" else h.dev(go)
    loss2, g = h.ops.cross_entropy_with_grad(xd, yd, grad_output=god, **dkw, **gkw)
    rloss2, rg = cpu.cross_entropy_with_grad(x, y, grad_output=go, **kw, **gkw)
    assert_close(h.host(loss2), rloss2, what=what("with_grad loss vs CPU", **case), **t)
    assert h.host(g).dtype == rg.dtype and g.shape == rg.shape
    gt = out_tol or tol(rg.dtype if rg.dtype.itemsize >= 4 else np.float32)
    assert_close(h.host(g).astype(np.float64), rg.astype(np.float64),
                 what=what("grad vs CPU", **case), scale_atol=True, **gt)
    if "lse" not in kw:  # backward reusing the forward's lse gives the same gradient
        g2 = h.ops.cross_entropy_backward(xd, yd, god, lse=lse, **dkw, **gkw)
        assert_close(h.host(g2).astype(np.float64), rg.astype(np.float64),
                     what=what("backward(lse=) vs CPU", **case), scale_atol=True, **gt)
    assert np.array_equal(h.host(xd), x, equal_nan=True), "logits modified"


def check_llm_options(h, reference, shape, dtype, layout, *, z, cap, eps, weight, reduction):
    x = make_logits(shape, dtype, seed=21)
    y = make_target(shape[0], shape[1], ignore="some", seed=21)
    kw = dict(z_loss=z, softcap=cap, label_smoothing=eps, reduction=reduction)
    if weight:
        kw["weight"] = make_weight(shape[1], "random")
    check_against_cpu(h, x, y, layout, **kw)
    # an independent check of the lse: float64 reference of the capped logits
    xc = x.astype(np.float64) if cap is None else cap * np.tanh(x.astype(np.float64) / cap)
    _, lse = h.ops.cross_entropy(h.dev(x, layout), h.dev(y), return_lse=True, **_dev_kw(h, kw))
    ref = reference.logsumexp(xc)  # every row's, ignored rows included
    assert_close(h.host(lse), ref, what=f"lse of capped logits {shape}", **tol(dtype))


def check_zloss_identity(h, reference, dtype):
    """'none' loss with z_loss = plain loss + z * lse**2 (rows not ignored)."""
    x = make_logits((9, 40), dtype, seed=22)
    y = make_target(9, 40, ignore="some", seed=22)
    z = 1e-2
    plain = h.host(h.ops.cross_entropy(h.dev(x), h.dev(y), reduction="none"))
    withz = h.host(h.ops.cross_entropy(h.dev(x), h.dev(y), reduction="none", z_loss=z))
    lse = reference.logsumexp(x)
    kept = y != IGNORE_INDEX
    assert_close(withz[kept], plain[kept] + z * lse[kept] ** 2, what="z-loss term", **tol(dtype))
    assert np.all(withz[~kept] == 0)


SHARD_OPTIONS = [dict(weight=False, eps=0.0, z=0.0, cap=None, reduction="mean"),
                 dict(weight=True, eps=0.1, z=1e-3, cap=None, reduction="sum"),
                 dict(weight=True, eps=0.2, z=1e-3, cap=10.0, reduction="none")]


def check_shards(h, reference, shape, dtype, *, n_shards, weight, eps, z, cap, reduction):
    """A vocabulary split in shards: the shares add up to the full loss and the gradient
    slices concatenate to the full gradient; each equals the CPU path's share."""
    n, c = shape
    x = make_logits(shape, dtype, seed=23)
    y = make_target(n, c, ignore="some", seed=23)
    w = make_weight(c, "random") if weight else None
    kw = dict(label_smoothing=eps, z_loss=z, softcap=cap, reduction=reduction)
    if w is not None:
        kw["weight"] = w
    if reduction == "none":
        kw["grad_output"] = np.linspace(0.5, 1.5, n)
    full_loss, full_g = (h.host(v) for v in h.ops.cross_entropy_with_grad(h.dev(x), h.dev(y), **_dev_kw(h, kw)))
    bounds = np.linspace(0, c, n_shards + 1).astype(int)
    parts = [x[:, lo:hi] for lo, hi in zip(bounds, bounds[1:])]
    lses = [h.host(h.ops.logsumexp(h.dev(p if cap is None else (cap * np.tanh(p.astype(np.float64) / cap)).astype(dtype))))
            for p in parts]
    glse = np.logaddexp.reduce(np.stack(lses).astype(np.float64), axis=0)
    total, grads = 0.0, []
    for (lo, hi), p in zip(zip(bounds, bounds[1:]), parts):
        skw = dict(kw, lse=glse, class_start=int(lo), num_classes=c)
        loss, g = h.ops.cross_entropy_with_grad(h.dev(p), h.dev(y), **_dev_kw(h, skw))
        rloss, rg = _cpu().cross_entropy_with_grad(p, y, **skw)
        case = f"shard [{lo}, {hi}) of {c} {kw}"
        assert_close(h.host(loss), rloss, what="share vs CPU " + case, **tol(dtype))
        assert_close(h.host(g), rg, what="slice vs CPU " + case, scale_atol=True, **tol(dtype))
        total = total + h.host(loss).astype(np.float64)
        grads.append(h.host(g))
    t = tol(dtype) if cap is None else dict(rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-5)
    assert_close(total, full_loss, what=f"shares add up {kw}", **t)
    assert_close(np.concatenate(grads, axis=1), full_g, what=f"slices concatenate {kw}",
                 scale_atol=True, **t)


def check_soft_targets(h, reference, shape, dtype, layout, *, weight, eps, reduction, z=0.0, cap=None):
    x = make_logits(shape, dtype, seed=24)
    rng = np.random.default_rng(24)
    p = rng.random(shape)
    p /= p.sum(axis=-1, keepdims=True)
    kw = dict(label_smoothing=eps, reduction=reduction, z_loss=z, softcap=cap)
    if weight:
        kw["weight"] = make_weight(shape[-1], "random")
    check_against_cpu(h, x, p.astype(dtype), layout, **kw)


def check_one_hot_equals_indices(h, reference, dtype):
    """Probabilities that are one-hot rows give the class-index loss ('sum') and gradient."""
    x = make_logits((6, 300), dtype, seed=25)
    y = make_target(6, 300, seed=25)
    onehot = np.eye(300, dtype=dtype)[y]
    w = make_weight(300, "random")
    for eps in (0.0, 0.3):
        a, ga = h.ops.cross_entropy_with_grad(h.dev(x), h.dev(onehot), weight=h.dev(w),
                                              label_smoothing=eps, reduction="sum")
        rl = reference.cross_entropy(x, y, weight=w, label_smoothing=eps, reduction="sum")
        rg = reference.cross_entropy_backward(x, y, weight=w, label_smoothing=eps, reduction="sum")
        assert_close(h.host(a), rl, what=f"one-hot loss eps={eps}", **tol(dtype))
        assert_close(h.host(ga), rg, what=f"one-hot grad eps={eps}", scale_atol=True, **tol(dtype))


HALF_TOL = dict(rtol=1e-2, atol=1e-3)  # half outputs: one rounding of a float32 value


def half_dtypes():
    """float16, and ml_dtypes' bfloat16 when installed."""
    out = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        out.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return out


def check_half(h, reference, shape, hdtype, layout):
    """float16/bfloat16 logits: computed in float32 like the CPU path; loss and lse in
    float32, softmax and the gradient in the logits' dtype or float32 (grad_dtype)."""
    cpu = _cpu()
    x = make_logits(shape, np.float32, seed=26).astype(hdtype)
    y = make_target(shape[0], shape[1], ignore="some", seed=26)
    xd = h.dev(x, layout)
    x32 = x.astype(np.float32)
    t32 = tol(np.float32)
    lse = h.ops.logsumexp(xd)
    assert h.host(lse).dtype == np.float32
    assert_close(h.host(lse), reference.logsumexp(x32), what=f"half lse {shape}", **t32)
    sm = h.ops.softmax(xd)
    assert sm.dtype == hdtype
    assert_close(h.host(sm).astype(np.float64), reference.softmax(x32), what=f"half softmax {shape}",
                 scale_atol=True, **HALF_TOL)
    check_against_cpu(h, x, y, layout, label_smoothing=0.1, z_loss=1e-3, out_tol=HALF_TOL)
    check_against_cpu(h, x, y, layout, grad_dtype=np.float32, softcap=20.0)
    # the half gradient is the float32 one rounded once
    _, g32 = h.ops.cross_entropy_with_grad(xd, h.dev(y), grad_dtype=np.float32)
    _, gh = h.ops.cross_entropy_with_grad(xd, h.dev(y))
    assert gh.dtype == hdtype and h.host(g32).dtype == np.float32
    assert np.array_equal(h.host(gh).view(np.uint16), h.host(g32).astype(hdtype).view(np.uint16))
    # in place
    xi = h.dev(x)
    loss, gi = h.ops.cross_entropy_with_grad(xi, h.dev(y), inplace=True)
    assert h.shares(gi, xi)
    assert np.array_equal(h.host(gi).view(np.uint16), h.host(gh).view(np.uint16))
    assert_close(h.host(loss), cpu.cross_entropy(x, y), what="half inplace loss", **t32)


def check_half_conversions(h, hdtype):
    """Finite half values (a spread of bit patterns) load exactly (the lse of a one-class row is the value), and
    float32 -> half stores round to nearest even like NumPy/ml_dtypes: log_softmax of
    [x, 0] in half equals the float32 kernel's result rounded by NumPy (both compute
    the same float32 arithmetic; results span normal and subnormal halves)."""
    # every 11th bit pattern, and all of the smallest magnitudes (f16 subnormals) of both signs
    bits = np.unique(np.concatenate([np.arange(0, 1 << 16, 11), np.arange(0x400),
                                     0x8000 + np.arange(0x400)])).astype(np.uint16)
    v = bits.view(hdtype)
    v = v[np.isfinite(v.astype(np.float32))]
    # Fortran order: the thread-per-row kernel (one GPU thread, one emulated fiber, per row)
    lse = h.host(h.ops.logsumexp(h.dev(v.reshape(-1, 1), "F")))
    assert np.array_equal(lse, v.astype(np.float32)), "half -> float32 load"
    x = np.stack([v.astype(np.float32), np.zeros(v.size, np.float32)], axis=1).astype(hdtype)
    ls = h.host(h.ops.log_softmax(h.dev(x, "F")))
    ref32 = h.host(h.ops.log_softmax(h.dev(x.astype(np.float32), "F")))
    assert np.array_equal(ls.view(np.uint16), ref32.astype(hdtype).view(np.uint16)), \
        "float32 -> half store: round to nearest even"
    # exact ties: the gradient of rows [0, -inf] with target 1 and reduction='none' is
    # [grad_output, -grad_output] in float32, rounded once to half
    rng = np.random.default_rng(28)
    low = 13 if hdtype == np.float16 else 16
    mags = rng.integers(0x33000000 if hdtype == np.float16 else 0x00800000, 0x47800000, 4000,
                        dtype=np.uint32)
    ties = (mags >> low << low) | (1 << (low - 1))
    g32 = np.concatenate([ties, mags, [0x477fe000, 0x477ff000, 0x477fefff]]).view(np.float32)
    g32 = np.concatenate([g32, -g32])
    x = np.zeros((g32.size, 2), hdtype)
    x[:, 1] = -np.inf
    y = np.ones(g32.size, np.int64)
    _, g = h.ops.cross_entropy_with_grad(h.dev(x, "F"), h.dev(y), reduction="none",
                                         grad_output=h.dev(g32.astype(np.float64)))
    with np.errstate(over="ignore"):  # 65520 rounds to inf: intended
        want = g32.astype(hdtype).view(np.uint16)
    assert np.array_equal(h.host(g)[:, 0].view(np.uint16), want), \
        "float32 -> half store of exact ties and overflow"


# ------------------------------------------------------------------ outputs whose elements overlap
def as_strided_dev(base, shape, strides):
    """``as_strided`` of a device array: NumPy's for the emulator (keeping its array
    subclass), CuPy's on a GPU."""
    if isinstance(base, np.ndarray):
        return np.lib.stride_tricks.as_strided(base, shape, strides, subok=True)
    import cupy
    return cupy.lib.stride_tricks.as_strided(base, shape, strides)


#: (function, args from (x, y), the output's shape); rows overlap (row stride of one element)
#: or, for the per-row lse, every element is the same one (stride 0)
SELF_OVERLAP_CALLS = [
    ("softmax", lambda x, y: (x,), (6, 40), (1, 1)),
    ("log_softmax", lambda x, y: (x,), (6, 40), (1, 1)),
    ("logsumexp", lambda x, y: (x,), (6,), (0,)),
    ("cross_entropy_with_grad", lambda x, y: (x, y), (6, 40), (1, 1)),
    ("cross_entropy_backward", lambda x, y: (x, y), (6, 40), (40, 1)),
]


def check_self_overlapping_out(h, fn, make, shape, elem_strides, dtype):
    """An out= whose elements share memory is refused, as on the CPU (same class, same
    message), before anything is written: two threads would store to one address."""
    import fastce
    x = make_logits((6, 40), dtype, seed=44)
    y = make_target(6, 40, seed=44)
    item = np.dtype(dtype).itemsize
    strides = tuple(s * item for s in elem_strides)
    if fn == "cross_entropy_backward":  # rows apart, but columns overlap the next row
        strides = (strides[0] // 2, strides[1])
    host_base = np.zeros(400, dtype)
    with pytest.raises(ValueError) as cpu:
        getattr(fastce, fn)(*make(x, y), out=np.lib.stride_tricks.as_strided(host_base, shape, strides))
    base = h.dev(host_base)
    out = as_strided_dev(base, shape, strides)
    args = [h.dev(a) for a in make(x, y)]
    with pytest.raises(ValueError) as gpu:
        getattr(h.ops, fn)(*args, out=out)
    assert str(gpu.value) == str(cpu.value), (fn, str(cpu.value), str(gpu.value))
    assert "out has elements that share memory" in str(gpu.value)
    assert not h.host(base).any(), f"{fn}: written before the refusal"
    # the same call with a distinct-element out of the same shape works (the check is not
    # a blanket refusal of strided outputs)
    ok = h.dev(np.zeros(shape, dtype), "sliced" if len(shape) == 2 else "C")
    getattr(h.ops, fn)(*args, out=ok)
    assert h.host(ok).any(), fn


class OptionTests:
    """Option tests that run unchanged on the emulator and on a GPU: a test module
    subclasses this (``class TestOptions(K.OptionTests)``) and provides the ``h`` fixture.
    The per-kernel-shape tests stay in the modules (their shape lists differ)."""

    @pytest.mark.parametrize("z,cap", [(0.0, None), (1e-2, None), (0.0, 5.0), (1e-3, 30.0)])
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("weight,eps", [(False, 0.0), (True, 0.2)])
    def test_llm_options_forms(self, h, reference, z, cap, reduction, weight, eps):
        check_llm_options(h, reference, (10, 37), np.float64, "C", z=z, cap=cap, eps=eps,
                          weight=weight, reduction=reduction)

    @pytest.mark.parametrize("shape", [(10, 37), (3, 2500), (2, 40000)], ids=str)
    @pytest.mark.parametrize("opts", [dict(logit_scale=0.5), dict(logit_scale=-2.0, softcap=4.0),
                                      dict(num_items=17.0, z_loss=1e-2, label_smoothing=0.1),
                                      dict(logit_scale=1.5, num_items=3, z_loss=1e-3)],
                             ids=["scale", "scale-cap", "num_items-z-smooth", "scale-num_items"])
    def test_logit_scale_and_num_items(self, h, reference, shape, opts):
        """The two options added through the contract: loss, gradient and lse equal the CPU
        path's (itself checked against torch's composed formulas) in every kernel shape."""
        x = make_logits(shape, np.float64, seed=35)
        y = make_target(shape[0], shape[1], ignore="some", seed=35)
        check_against_cpu(h, x, y, weight=make_weight(shape[1], "random"), **opts)

    @pytest.mark.parametrize("shape", [(10, 37), (3, 2500), (2, 40000)], ids=str)
    @pytest.mark.parametrize("magnitude", [1e16, -1e30])
    def test_huge_magnitudes(self, h, reference, shape, magnitude):
        """lse travels as (max, log sum): x - lse is exact at any magnitude in every
        kernel shape (a rounded lse gave softmax [1, 1] for [1e16, 1e16])."""
        d = np.round(make_logits(shape, np.float64, seed=41))
        x = magnitude + d * np.spacing(magnitude)
        y = make_target(shape[0], shape[1], ignore="some", seed=41)
        xd = h.dev(x)
        assert_close(h.host(h.ops.log_softmax(xd)), reference.log_softmax(x), rtol=1e-14, atol=1e-14,
                     what=f"log_softmax at {magnitude:g}")
        assert_close(h.host(h.ops.softmax(xd)), reference.softmax(x), rtol=1e-14, atol=1e-16,
                     what=f"softmax at {magnitude:g}")
        # lse=None: no backward from a returned lse, a float64 that at 1e16 cannot hold
        # the log-sum (its ulp is 2); the fused forms carry (max, log sum) instead
        check_against_cpu(h, x, y, lse=None)

    @pytest.mark.parametrize("shape", [(10, 37), (3, 2500), (2, 40000)], ids=str)
    @pytest.mark.parametrize("magnitude", [1e16, -1e30])
    def test_smoothing_and_probabilities_at_huge_magnitudes(self, h, reference, shape, magnitude):
        """The smoothing and probability-target sums measure from a score of the row
        (fce_ref), as the CPU path's from the max: loss and gradient equal the CPU path's
        at any magnitude in every kernel shape (measured from 0, sum w x at 1e16 cancelled
        against W lse and lost the smoothing term)."""
        d = np.round(make_logits(shape, np.float64, seed=43))
        x = magnitude + d * np.spacing(magnitude)
        y = make_target(shape[0], shape[1], ignore="some", seed=43)
        check_against_cpu(h, x, y, weight=make_weight(shape[1], "random"), label_smoothing=0.1,
                          lse=None)
        p = np.random.default_rng(43).dirichlet(np.ones(shape[1]), size=shape[0])
        check_against_cpu(h, x, p, label_smoothing=0.1, lse=None)

    @pytest.mark.parametrize("shape,layout", [((10, 37), "C"), ((3, 2500), "C"), ((3, 9000), "C"),
                                              ((40, 10), "F")], ids=str)
    def test_dominated_rows_keep_their_tail(self, h, reference, shape, layout):
        """A row dominated by one score (sum exp(x - max) < 1 + 2^-20) takes
        log1p(tail) in the warp, block (registers and streaming) and thread kernels, as on
        the CPU: lse - max and the max class's log-softmax keep their relative accuracy
        (log(sum) gave 0 for logsumexp([0, -40]))."""
        x = make_logits(shape, np.float64, seed=44) - 45.0
        x[np.arange(shape[0]), np.arange(shape[0]) % shape[1]] = 0.0
        cpu = _cpu()
        xd = h.dev(x, layout)
        want = cpu.logsumexp(x)
        assert (want > 0).all() and (want < 1e-12).all()  # the case: tails below an ulp of 1
        assert_close(h.host(h.ops.logsumexp(xd)), want, rtol=1e-13, atol=0, what=f"lse {shape}")
        ls = h.host(h.ops.log_softmax(xd))
        top = ls[np.arange(shape[0]), np.arange(shape[0]) % shape[1]]
        assert_close(top, -want, rtol=1e-13, atol=0, what=f"log_softmax of the max {shape}")
        y = np.arange(shape[0]) % shape[1]
        assert_close(h.host(h.ops.cross_entropy(xd, h.dev(y), reduction="none")), want, rtol=1e-13,
                     atol=0, what=f"loss of the max class {shape}")

    def test_mean_over_zero_total_weight_is_nan(self, h, reference):
        x = make_logits((4, 5), np.float64, seed=42)
        w = np.array([0.0, 0.0, 1.0, 2.0, 3.0])
        y = np.array([0, 1, 0, 1])  # every target weighs 0: torch's 0 / 0
        for eps in (0.0, 0.1):
            assert np.isnan(h.host(h.ops.cross_entropy(h.dev(x), h.dev(y), weight=h.dev(w),
                                                       label_smoothing=eps)))

    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
    def test_zloss_identity(self, h, reference, dtype):
        check_zloss_identity(h, reference, dtype)

    @pytest.mark.parametrize("shape,n_shards", [((8, 37), 3), ((3, 2500), 2), ((2, 40000), 4)],
                             ids=str)
    @pytest.mark.parametrize("opts", SHARD_OPTIONS, ids=["plain", "weight-smooth-z", "all-none"])
    def test_vocabulary_shards(self, h, reference, shape, n_shards, opts):
        check_shards(h, reference, shape, np.float64, n_shards=n_shards, **opts)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    @pytest.mark.parametrize("weight,eps", [(False, 0.0), (True, 0.0), (True, 0.25)])
    def test_soft_targets_forms(self, h, reference, reduction, weight, eps):
        check_soft_targets(h, reference, (11, 23), np.float64, "C", weight=weight, eps=eps,
                           reduction=reduction)

    def test_soft_targets_kdim(self, h, reference):
        x = make_logits((3, 7, 2, 5), np.float64, seed=27)
        p = np.random.default_rng(27).random(x.shape)
        p /= p.sum(axis=1, keepdims=True)
        check_against_cpu(h, x, p, label_smoothing=0.1, reduction="none")

    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
    def test_one_hot_equals_indices(self, h, reference, dtype):
        check_one_hot_equals_indices(h, reference, dtype)

    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
    @pytest.mark.parametrize("fn,make,shape,elem_strides", SELF_OVERLAP_CALLS,
                             ids=[c[0] for c in SELF_OVERLAP_CALLS])
    def test_self_overlapping_out_refused(self, h, fn, make, shape, elem_strides, dtype):
        check_self_overlapping_out(h, fn, make, shape, elem_strides, dtype)
