"""LLM-training options of the cross-entropy functions: z_loss, softcap, return_lse / lse=
reuse, vocabulary shards (class_start / num_classes), grad_dtype and half-precision logits.

The oracle is torch autograd in float64 on the composed formula (docs/design.md §1)::

    x'   = c * tanh(x / c)                       (softcap c; x' = x without it)
    loss = F.cross_entropy(x', t, weight, ignore_index, label_smoothing, reduction) + Z
    Z    = z * lse(x')_i**2 per row not ignored (every row for probability targets);
           'none': added per row; 'sum': summed; 'mean': averaged over those rows,
           unweighted (the cross-entropy term keeps torch's normaliser).

Cases: the full option product on small shapes (C <= 32 and C > 32 take different code
paths; K-dim; N = 0) in C and Fortran order; 1000 and 70000 classes (N = 2: the split
path) and K-dim with every option on, on every ISA; float16 / bfloat16 logits; shards of
an uneven 4-way split of the vocabulary; argument errors; bitwise determinism over threads.
"""
import contextlib
import functools
import itertools

import ml_dtypes  # in the 'test' extra
import numpy as np
import pytest

import fastce
from conftest import IGNORE_INDEX, assert_close, dtype_id, make_logits, make_weight, require_torch

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF_DTYPES = (F16, BF16)

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")
WEIGHTS = (None, "random")
IGNORES = ("none", "some", "all")
SMOOTHINGS = (0.0, 0.1, 1.0)
TARGET_KINDS = ("index", "prob")
# (z_loss, softcap): each alone and both together
Z_SOFTCAP = ((1e-2, None), (0.0, 4.0), (1e-2, 4.0))

# fastce vs torch in float64 on the same values: |fast - torch| <= atol + rtol |torch|;
# for gradients atol is relative to max|torch grad| ('mean' scales by 1/N)
TOL = {
    np.float32: dict(loss=dict(rtol=1e-5, atol=1e-6), grad=dict(rtol=1e-5, atol=1e-6)),
    np.float64: dict(loss=dict(rtol=1e-12, atol=1e-12), grad=dict(rtol=1e-12, atol=1e-13)),
}
SMALL_SHAPES = [(9,), (6, 7), (4, 32), (3, 33), (2, 7, 3), (2, 40, 2, 2), (0, 7)]
LARGE_SHAPES = [(16, 1000), (2, 70000), (2, 1000, 3)]

ids_zs = lambda zs: f"z={zs[0]}-softcap={zs[1]}"  # noqa: E731


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def torch_one_thread(torch):
    """torch on one thread while it computes a reference: on a 2-core machine torch's and
    fastce's OpenMP workers spin-wait for each other between interleaved calls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def class_axis(shape):
    return 0 if len(shape) == 1 else 1


def target_shape(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def layout_copy(a, layout):
    return np.asfortranarray(a) if layout == "F" else np.ascontiguousarray(a)


def make_inputs(dtype, shape, *, kind="index", weight=None, ignore="none", reduction="mean",
                seed=0, scale=3.0):
    """Logits (in ``dtype``, half included), target, grad_output and weights of one case.

    Class indices: rows whose flat index is 1 mod 3 are ignored ('some'), or all rows
    ('all'). Probabilities: random rows normalised to 1, a few exact zeros, in the compute
    dtype. Weights and grad_output are exactly representable in the compute dtype.
    """
    cdtype = np.float32 if np.dtype(dtype) in HALF_DTYPES else dtype
    rng = np.random.default_rng([seed, len(shape), *shape])
    c = shape[class_axis(shape)]
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if kind == "prob":
        p = rng.uniform(0, 1, shape)
        p[p < 0.15] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            p = p / p.sum(axis=class_axis(shape), keepdims=True)
        t = np.nan_to_num(p).astype(cdtype)
    else:
        t = rng.integers(0, c, size=target_shape(shape)).astype(np.int64)
        flat = t.reshape(-1)
        if ignore == "some":
            flat[1::3] = IGNORE_INDEX
        elif ignore == "all":
            flat[:] = IGNORE_INDEX
    g = rng.uniform(-2, 2, size=target_shape(shape)).astype(cdtype) if reduction == "none" else 0.75
    return x, t, g, make_weight(c, weight, dtype=cdtype, seed=seed)


def torch_llm_loss(torch, x, t, g=1.0, *, weight=None, ignore_index=IGNORE_INDEX,
                   reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The composed loss (module docstring) in float64: (loss, autograd gradient, per-row
    lse of the capped logits, ignored rows included), as NumPy."""
    F = torch.nn.functional
    with torch_one_thread(torch):
        xt = torch.tensor(np.asarray(x).astype(np.float64), requires_grad=True)
        soft = np.asarray(t).dtype.kind == "f"
        tt = torch.tensor(np.asarray(t).astype(np.float64 if soft else np.int64))
        wt = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
        xc = softcap * torch.tanh(xt / softcap) if softcap else xt
        ce = F.cross_entropy(xc, tt, weight=wt, ignore_index=ignore_index, reduction=reduction,
                             label_smoothing=label_smoothing)
        lse = torch.logsumexp(xc, dim=class_axis(x.shape))
        valid = torch.ones_like(lse, dtype=torch.bool) if soft else tt != ignore_index
        z_rows = torch.where(valid, z_loss * lse ** 2, torch.zeros_like(lse))
        if reduction == "none":
            loss = ce + z_rows
        elif reduction == "sum":
            loss = ce + z_rows.sum()
        else:
            loss = ce + z_rows.sum() / valid.sum()
        loss.backward(torch.as_tensor(np.asarray(g, dtype=np.float64)).reshape(loss.shape))
        # every row's lse, ignored rows included: only their loss is masked
        return loss.detach().numpy(), xt.grad.numpy(), lse.detach().numpy()


@functools.lru_cache(maxsize=None)
def reference_case(dtype, shape, kind, weight, ignore, reduction, label_smoothing, z_loss,
                   softcap, seed=0):
    """(inputs, kwargs, torch loss, torch grad, torch lse) of one case; torch runs once."""
    torch = require_torch()
    x, t, g, w = make_inputs(dtype, shape, kind=kind, weight=weight, ignore=ignore,
                             reduction=reduction, seed=seed)
    kw = dict(weight=w, ignore_index=IGNORE_INDEX, reduction=reduction,
              label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    loss, grad, lse = torch_llm_loss(torch, x, t, g, **kw)
    for a in (x, t, np.asarray(g), w, loss, grad, lse):
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    return (x, t, g), kw, loss, grad, lse


def describe(dtype, shape, kind, weight, ignore, reduction, ls, z, softcap, layout="C", isa=None):
    s = (f"{np.dtype(dtype).name} shape={shape} layout={layout} target={kind} reduction={reduction} "
         f"w={weight} ignore={ignore} ls={ls} z_loss={z} softcap={softcap}")
    return s if isa is None else f"{s} isa={isa}"


def check_loss(loss, want, dtype, reduction, tshape, what):
    """Type, shape and value of a loss returned in ``dtype`` (float32 for half logits)."""
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == tshape and loss.dtype == dtype, \
            f"{what}: 'none' loss {type(loss).__name__} {np.shape(loss)} {getattr(loss, 'dtype', '')}"
    else:
        assert type(loss) is np.dtype(dtype).type, f"{what}: loss type {type(loss)}, want {dtype}"
    assert_close(loss, want, what=f"loss of {what}", **TOL[dtype]["loss"])


def check_lse(lse, want, shape, dtype, what):
    """return_lse: float64, the target's shape, every row's lse (ignored rows too: only
    their loss is masked); as accurate as the dtype the logits are computed in."""
    assert isinstance(lse, np.ndarray) and lse.dtype == np.float64 and lse.shape == target_shape(shape), \
        f"{what}: lse {type(lse).__name__} {getattr(lse, 'dtype', '')} {np.shape(lse)}"
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(want), err_msg=f"nan rows of lse, {what}")
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert_close(lse, want, rtol=tol, atol=tol, what=f"lse of {what}")


def run_and_check(case, layout, what, *, n_threads=None):
    """Every entry point on one reference case vs torch: cross_entropy (with return_lse),
    cross_entropy_with_grad (with return_lse), cross_entropy_backward without and with the
    returned lse, and CrossEntropyLoss."""
    (x, t, g), kw, loss_want, grad_want, lse_want = case
    dtype = x.dtype.type
    x = layout_copy(x, layout)
    if t.dtype.kind == "f":
        t = layout_copy(t, layout)
    tshape = target_shape(x.shape)
    before = [np.array(a, copy=True) for a in (x, t, g)]

    loss, lse = fastce.cross_entropy(x, t, **kw, return_lse=True, n_threads=n_threads)
    check_loss(loss, loss_want, dtype, kw["reduction"], tshape, f"cross_entropy: {what}")
    check_lse(lse, lse_want, x.shape, dtype, f"cross_entropy(return_lse=True): {what}")
    assert fastce.cross_entropy(x, t, **kw, n_threads=n_threads).tobytes() == np.asarray(loss).tobytes(), \
        f"return_lse changed the loss: {what}"

    loss2, grad, lse2 = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g, return_lse=True,
                                                       n_threads=n_threads)
    check_loss(loss2, loss_want, dtype, kw["reduction"], tshape, f"cross_entropy_with_grad: {what}")
    check_lse(lse2, lse_want, x.shape, dtype, f"cross_entropy_with_grad(return_lse=True): {what}")
    assert grad.dtype == dtype and grad.shape == x.shape, f"grad {grad.dtype} {grad.shape}: {what}"
    assert_close(grad, grad_want, scale_atol=True, what=f"grad of cross_entropy_with_grad: {what}",
                 **TOL[dtype]["grad"])

    grad_b = fastce.cross_entropy_backward(x, t, g, **kw, n_threads=n_threads)
    assert_close(grad_b, grad_want, scale_atol=True, what=f"cross_entropy_backward: {what}",
                 **TOL[dtype]["grad"])
    grad_lse = fastce.cross_entropy_backward(x, t, g, **kw, lse=lse, n_threads=n_threads)
    assert_close(grad_lse, grad_b, scale_atol=True, rtol=TOL[dtype]["grad"]["rtol"],
                 atol=TOL[dtype]["grad"]["atol"], what=f"backward(lse=returned lse) vs without: {what}")

    crit = fastce.CrossEntropyLoss(**kw, n_threads=n_threads)
    np.testing.assert_array_equal(crit(x, t), loss, err_msg=f"CrossEntropyLoss vs cross_entropy: {what}")
    np.testing.assert_array_equal(crit.backward(g), grad_lse,
                                  err_msg=f"CrossEntropyLoss.backward vs backward(lse=): {what}")
    for name, a, b in zip(("logits", "target", "grad_output"), (x, t, g), before):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} modified: {what}")


# ----------------------------------------------------------------------------- z_loss / softcap
def _option_cases():
    cases = []
    for zs, kind, reduction, weight, ignore, ls in itertools.product(
            Z_SOFTCAP, TARGET_KINDS, REDUCTIONS, WEIGHTS, IGNORES, SMOOTHINGS):
        if kind == "prob" and ignore != "none":
            continue
        cases.append(pytest.param(zs, kind, reduction, weight, ignore, ls,
                                  id=f"{ids_zs(zs)}-target={kind}-{reduction}-w={weight}-"
                                     f"ignore={ignore}-ls={ls}"))
    return cases


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("zs, kind, reduction, weight, ignore, label_smoothing", _option_cases())
def test_z_loss_softcap_vs_torch(dtype, zs, kind, reduction, weight, ignore, label_smoothing):
    """The full option product on small shapes (1-D, C = 7, 32, 33, K-dim, N = 0), C and
    Fortran order: loss, gradient, lse and the lse-reusing backward vs torch."""
    z, softcap = zs
    for shape in SMALL_SHAPES:
        if len(shape) == 1 and ignore == "some":
            continue
        case = reference_case(dtype, shape, kind, weight, ignore, reduction, label_smoothing,
                              z, softcap)
        for layout in (("C",) if len(shape) == 1 else ("C", "F")):
            run_and_check(case, layout, describe(dtype, shape, kind, weight, ignore, reduction,
                                                 label_smoothing, z, softcap, layout))


@pytest.mark.torch
@pytest.mark.parametrize("kind", TARGET_KINDS, ids=lambda k: f"target={k}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_z_loss_softcap_every_isa(dtype, reduction, kind, isa):
    """Every option on (weight, ignored rows, smoothing, z_loss, softcap) on every ISA:
    small, large (1000 classes; 70000 classes with N = 2, the split path) and K-dim shapes,
    C and Fortran order, 1 and 2 threads."""
    ignore = "none" if kind == "prob" else "some"
    for shape in SMALL_SHAPES[1:] + LARGE_SHAPES:
        case = reference_case(dtype, shape, kind, "random", ignore, reduction, 0.1, 1e-2, 4.0)
        for layout, n_threads in (("C", 1), ("F", 2)):
            run_and_check(case, layout, describe(dtype, shape, kind, "random", ignore, reduction,
                                                 0.1, 1e-2, 4.0, layout, isa) + f" n_threads={n_threads}",
                          n_threads=n_threads)


@pytest.mark.torch
def test_z_loss_is_additive_and_unweighted(torch):
    """Spelled out on one case: the z-term under 'mean' is sum_i z lse_i**2 / (rows not
    ignored), whatever the class weights; under 'sum' the plain sum."""
    x, t, _, w = make_inputs(np.float64, (7, 11), weight="random", ignore="some")
    valid = t != IGNORE_INDEX
    lse = np.log(np.exp(x).sum(axis=1))
    z = 0.05
    for reduction, z_term in (("mean", np.sum(z * lse[valid] ** 2) / valid.sum()),
                              ("sum", np.sum(z * lse[valid] ** 2))):
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
        got = fastce.cross_entropy(x, t, **kw, z_loss=z) - fastce.cross_entropy(x, t, **kw)
        assert_close(got, z_term, rtol=1e-12, atol=1e-12, what=f"z-term alone, {reduction}")
    rows = fastce.cross_entropy(x, t, weight=w, reduction="none", z_loss=z) - \
        fastce.cross_entropy(x, t, weight=w, reduction="none")
    assert_close(rows, np.where(valid, z * lse ** 2, 0.0), rtol=1e-12, atol=1e-12,
                 what="z-term per row ('none'), 0 on ignored rows")


# ----------------------------------------------------------------------------- return_lse / lse
@pytest.mark.parametrize("dtype", DTYPES + HALF_DTYPES, ids=dtype_id)
def test_return_lse_and_reuse(dtype, isa):
    """return_lse gives float64 per-row lse (target's shape, ignored rows included), the lse
    of the capped logits under softcap; backward(lse=...) equals backward without it,
    also when the lse comes as a Fortran-order copy or a list."""
    for shape, softcap in (((8, 13), None), ((8, 40), 5.0), ((3, 9, 4), 2.0), ((9,), None)):
        x, t, g, w = make_inputs(dtype, shape, ignore="some" if len(shape) > 1 else "none",
                                 reduction="none", weight="random")
        kw = dict(weight=w, reduction="none", label_smoothing=0.1, z_loss=1e-3, softcap=softcap)
        what = f"{np.dtype(dtype).name} shape={shape} softcap={softcap} isa={isa}"
        loss, lse = fastce.cross_entropy(x, t, **kw, return_lse=True)
        x64 = x.astype(np.float64)
        xc = softcap * np.tanh(x64 / softcap) if softcap else x64
        m = xc.max(axis=class_axis(shape), keepdims=True)
        want = np.log(np.exp(xc - m).sum(axis=class_axis(shape))) + m.squeeze(class_axis(shape))
        assert not np.isnan(lse).any(), f"ignored rows get their lse too: {what}"
        assert lse.dtype == np.float64 and lse.shape == target_shape(shape), what
        np.testing.assert_array_equal(np.isnan(lse), np.isnan(want), err_msg=what)
        tol = 1e-12 if dtype == np.float64 else 1e-6
        assert_close(lse, want, rtol=tol, atol=tol, what=f"return_lse: {what}")
        grad = fastce.cross_entropy_backward(x, t, g, **kw)
        for form, lse_given in (("array", lse), ("F-order copy", lse.copy(order="F")),
                                ("list", np.asarray(lse).tolist())):
            grad_lse = fastce.cross_entropy_backward(x, t, g, **kw, lse=lse_given)
            rt = 1e-12 if dtype == np.float64 else 1e-5
            assert grad_lse.dtype == grad.dtype
            assert_close(grad_lse, grad, rtol=rt, atol=rt, scale_atol=True,
                         what=f"backward(lse=returned lse as {form}) vs without: {what}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_criterion_with_z_loss_and_softcap(reduction, isa):
    """CrossEntropyLoss(z_loss=..., softcap=...) equals the functional forms: its loss is
    cross_entropy's (same bits), its backward is cross_entropy_backward given the forward's
    lse (same bits), and matches cross_entropy_with_grad (which finds the lse itself)."""
    for dtype, shape in ((np.float64, (6, 21)), (np.float32, (2, 9, 3)), (BF16, (5, 50))):
        x, t, g, w = make_inputs(dtype, shape, weight="random", ignore="some", reduction=reduction)
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, z_loss=0.02, softcap=3.0)
        what = f"{np.dtype(dtype).name} shape={shape} reduction={reduction} isa={isa}"
        crit = fastce.CrossEntropyLoss(**kw)
        loss = crit(x, t)
        loss_f, lse = fastce.cross_entropy(x, t, **kw, return_lse=True)
        assert type(loss) is type(loss_f), what
        np.testing.assert_array_equal(loss, loss_f, err_msg=f"criterion loss: {what}")
        grad = crit.backward(g)
        np.testing.assert_array_equal(grad, fastce.cross_entropy_backward(x, t, g, **kw, lse=lse),
                                      err_msg=f"criterion backward vs backward(lse=): {what}")
        loss_wg, grad_wg = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g)
        assert grad.dtype == grad_wg.dtype == x.dtype, what
        tol = TOL[np.float64 if dtype == np.float64 else np.float32]
        assert_close(loss, loss_wg, what=f"criterion vs with_grad loss: {what}", **tol["loss"])
        if dtype == BF16:  # both round a float32 gradient once: at most 1 ulp apart
            check_half_gradient(grad, grad_wg.astype(np.float64), dtype, f"criterion vs with_grad: {what}")
        else:
            assert_close(grad, grad_wg, scale_atol=True, what=f"criterion vs with_grad: {what}",
                         **tol["grad"])


# ----------------------------------------------------------------------------- vocabulary shards
SHARD_BOUNDS = {37: (0, 5, 17, 30, 37), 1000: (0, 100, 450, 801, 1000)}


def shard_lse(x, how, softcap=None):
    """The global per-row lse: in float64 from the full logits, or by np.logaddexp.reduce of
    every shard's fastce.logsumexp (no softcap)."""
    axis = class_axis(x.shape)
    if how == "float64":
        x64 = x.astype(np.float64)
        xc = softcap * np.tanh(x64 / softcap) if softcap else x64
        m = xc.max(axis=axis, keepdims=True)
        return np.log(np.exp(xc - m).sum(axis=axis)) + m.squeeze(axis)
    c = x.shape[axis]
    parts = [fastce.logsumexp(np.take(x, np.arange(s, e), axis=axis), axis=axis).astype(np.float64)
             for s, e in zip(SHARD_BOUNDS[c][:-1], SHARD_BOUNDS[c][1:])]
    return np.logaddexp.reduce(np.stack(parts), axis=0)


def _shard_cases():
    cases = []
    for w, ls, z, ignore, reduction in itertools.product(WEIGHTS, (0.0, 0.1), (0.0, 1e-2),
                                                          IGNORES, REDUCTIONS):
        cases.append(pytest.param(w, ls, z, ignore, reduction,
                                  id=f"w={w}-ls={ls}-z={z}-ignore={ignore}-{reduction}"))
    return cases


@pytest.mark.parametrize("weight, label_smoothing, z_loss, ignore, reduction", _shard_cases())
def test_shards_sum_to_unsharded(weight, label_smoothing, z_loss, ignore, reduction):
    """4 uneven shards: the loss shares sum to the unsharded loss and the gradient slices
    concatenate to the unsharded gradient (weight given as the full num_classes vector)."""
    for dtype, shape, layout, lse_how, softcap in (
            (np.float64, (6, 37), "C", "float64", None),
            (np.float64, (2, 37, 3), "F", "logaddexp", None),
            (np.float32, (5, 1000), "C", "logaddexp", None),
            (np.float32, (4, 37), "F", "float64", None),
            (np.float64, (5, 37), "C", "float64", 3.0)):
        x, t, g, w = make_inputs(dtype, shape, weight=weight, ignore=ignore, reduction=reduction)
        x = layout_copy(x, layout)
        c = shape[1]
        kw = dict(weight=w, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                  softcap=softcap)
        what = (f"{np.dtype(dtype).name} shape={shape} layout={layout} lse from {lse_how} "
                f"softcap={softcap} w={weight} ls={label_smoothing} z={z_loss} ignore={ignore} "
                f"{reduction}")
        loss_full, grad_full = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g)
        lse = shard_lse(x, lse_how, softcap)
        losses, grads = [], []
        for s, e in zip(SHARD_BOUNDS[c][:-1], SHARD_BOUNDS[c][1:]):
            xs = x[:, s:e]
            shard_kw = dict(**kw, class_start=s, num_classes=c, lse=lse)
            loss_s, grad_s = fastce.cross_entropy_with_grad(xs, t, **shard_kw, grad_output=g)
            np.testing.assert_array_equal(fastce.cross_entropy(xs, t, **shard_kw), loss_s,
                                          err_msg=f"shard [{s}:{e}] forward vs with_grad: {what}")
            np.testing.assert_array_equal(fastce.cross_entropy_backward(xs, t, g, **shard_kw), grad_s,
                                          err_msg=f"shard [{s}:{e}] backward vs with_grad: {what}")
            assert grad_s.shape == xs.shape and grad_s.dtype == dtype, what
            losses.append(np.asarray(loss_s, dtype=np.float64))
            grads.append(grad_s)
        tol = TOL[dtype]
        assert_close(np.sum(losses, axis=0), loss_full, what=f"sum of shard losses: {what}",
                     rtol=4 * tol["loss"]["rtol"], atol=4 * tol["loss"]["atol"])
        assert_close(np.concatenate(grads, axis=1), grad_full, scale_atol=True,
                     what=f"concatenated shard gradients: {what}", **tol["grad"])


def test_shard_errors():
    x, t, _, _ = make_inputs(np.float64, (4, 37))
    lse = shard_lse(x, "float64")
    xs = x[:, 5:17]
    cases = [
        ("missing lse", dict(class_start=5, num_classes=37), ValueError, "lse"),
        ("num_classes too small", dict(class_start=30, num_classes=37, lse=lse), ValueError,
         "num_classes"),
        ("negative class_start", dict(class_start=-1, num_classes=37, lse=lse), ValueError,
         "class_start"),
        ("class_start float", dict(class_start=5.0, num_classes=37, lse=lse), TypeError, "class_start"),
        ("num_classes float", dict(class_start=5, num_classes=37.0, lse=lse), TypeError, "num_classes"),
        ("class_start bool", dict(class_start=True, num_classes=37, lse=lse), TypeError, "class_start"),
        ("shard-sized weight", dict(class_start=5, num_classes=37, lse=lse, weight=np.ones(12)),
         ValueError, "weight"),
        ("lse of the wrong shape", dict(class_start=5, num_classes=37, lse=lse[:3]), ValueError, "lse"),
    ]
    for name, kw, exc, arg in cases:
        for fn in (fastce.cross_entropy, fastce.cross_entropy_with_grad, fastce.cross_entropy_backward):
            with pytest.raises(exc, match=arg):
                fn(xs, t, **kw)
    # a target beyond num_classes, and probability targets, which cannot be sharded
    with pytest.raises(IndexError, match="target"):
        fastce.cross_entropy(xs, np.array([0, 1, 37, 2]), class_start=5, num_classes=37, lse=lse)
    p = np.full(xs.shape, 1.0 / 12)
    for fn in (fastce.cross_entropy, fastce.cross_entropy_with_grad, fastce.cross_entropy_backward):
        with pytest.raises(ValueError, match="probability targets.*class_start"):
            fn(xs, p, class_start=5, num_classes=37, lse=lse)
    # num_classes equal to the shard's own C is no shard: lse stays optional
    assert np.isfinite(fastce.cross_entropy(x, t, class_start=0, num_classes=37))


# ----------------------------------------------------------------------------- half precision
def ulp_distance16(a, b):
    """Distance in units in the last place between two arrays of one 16-bit float dtype
    (the number of representable values between them; +0 and -0 coincide)."""
    def ordered(v):
        bits = np.ascontiguousarray(v).view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


# The float32 computation's own absolute error, relative to max|gradient| (as TOL's
# float32 'atol'): elements that are tiny through cancellation (say p_ic - eps/C) carry it.
HALF_F32_ATOL = 1e-6


def check_half_gradient(grad, want64, dtype, what):
    """Every element of a half-precision gradient is within 1 ulp (of ``dtype``) of the
    float64 gradient rounded to ``dtype``, or, where cancellation made the element tiny,
    within the float32 computation's absolute error ``HALF_F32_ATOL * max|want|``."""
    ulps = ulp_distance16(grad, want64.astype(dtype))
    if ulps.size == 0:
        return
    err = np.abs(grad.astype(np.float64) - want64)
    atol = HALF_F32_ATOL * float(np.max(np.abs(want64)))
    bad = (ulps > 1) & (err > atol)
    i = np.unravel_index(int(np.argmax(np.where(bad, ulps, -1))), grad.shape)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} gradient element(s) more than 1 ulp from torch's float64 "
        f"gradient rounded to {np.dtype(dtype).name} (and beyond the float32 error {atol:.2g}); "
        f"worst {ulps[i]} ulp at {tuple(int(k) for k in i)}: got {grad[i]!r}, float64 {want64[i]!r}")


HALF_SHAPES = [((6, 17), "C"), ((6, 17), "F"), ((8, 1000), "C"), ((8, 1000), "F"),
               ((2, 70000), "C"), ((3, 33, 5), "C"), ((3, 33, 5), "F"), ((9,), "C")]


@pytest.mark.torch
@pytest.mark.parametrize("options", ["plain", "all"], ids=lambda o: f"options={o}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_half_precision_vs_torch(torch, dtype, reduction, options, isa):
    """float16/bfloat16 logits: the loss is float32 and matches torch's float64 loss on the
    same half values; the default gradient has the logits' dtype and is within 1 ulp of
    torch's float64 gradient rounded to that dtype (see check_half_gradient for elements
    that cancellation makes tiny), and is exactly the float32 gradient
    (grad_dtype=np.float32) rounded once; the float32 gradient matches torch within float32
    tolerance; inplace=True gives the same bits."""
    for shape, layout in HALF_SHAPES:
        opts = dict(weight="random", ignore="some" if len(shape) > 1 else "none",
                    label_smoothing=0.1, z_loss=1e-2, softcap=6.0) if options == "all" else \
            dict(weight=None, ignore="none", label_smoothing=0.0, z_loss=0.0, softcap=None)
        x, t, g, w = make_inputs(dtype, shape, weight=opts["weight"], ignore=opts["ignore"],
                                 reduction=reduction)
        x = layout_copy(x, layout)
        kw = dict(weight=w, reduction=reduction, label_smoothing=opts["label_smoothing"],
                  z_loss=opts["z_loss"], softcap=opts["softcap"])
        what = f"{dtype.name} shape={shape} layout={layout} {reduction} {opts} isa={isa}"
        loss_t, grad_t, _ = torch_llm_loss(torch, x, t, g, **kw)

        loss, grad = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g)
        check_loss(loss, loss_t, np.float32, reduction, target_shape(shape), f"half: {what}")
        assert grad.dtype == dtype and grad.shape == shape, f"{what}: grad {grad.dtype} {grad.shape}"
        check_half_gradient(grad, grad_t, dtype, what)

        loss32, grad32 = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g,
                                                        grad_dtype=np.float32)
        np.testing.assert_array_equal(loss32, loss, err_msg=f"grad_dtype changed the loss: {what}")
        assert grad32.dtype == np.float32 and grad32.shape == shape, what
        assert_close(grad32, grad_t, scale_atol=True, what=f"grad_dtype=float32: {what}",
                     **TOL[np.float32]["grad"])
        assert np.array_equal(grad32.astype(dtype), grad, equal_nan=True), \
            f"{what}: the default gradient is not the float32 gradient rounded once"

        np.testing.assert_array_equal(fastce.cross_entropy_backward(x, t, g, **kw), grad,
                                      err_msg=f"backward vs with_grad: {what}")
        np.testing.assert_array_equal(
            fastce.cross_entropy_backward(x, t, g, **kw, grad_dtype=np.float32), grad32,
            err_msg=f"backward(grad_dtype=float32) vs with_grad: {what}")
        xi = np.ascontiguousarray(x).copy()
        loss_i, grad_i = fastce.cross_entropy_with_grad(xi, t, **kw, grad_output=g, inplace=True)
        assert np.shares_memory(grad_i, xi) and grad_i.dtype == dtype, f"inplace: {what}"
        np.testing.assert_array_equal(loss_i, loss, err_msg=f"inplace loss: {what}")
        np.testing.assert_array_equal(xi, grad, err_msg=f"inplace gradient: {what}")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_half_precision_rowwise_functions(dtype, isa):
    """softmax/log_softmax on half inputs return the input dtype (within 1 ulp of the float64
    result rounded); logsumexp returns float32, any layout and axis."""
    for shape, axis, layout in (((7, 19), -1, "C"), ((7, 19), 0, "F"), ((3, 1000), -1, "F"),
                                ((4, 40, 3), 1, "C")):
        x = make_inputs(dtype, shape)[0]
        x = layout_copy(x, layout)
        x64 = x.astype(np.float64)
        m = x64.max(axis=axis, keepdims=True)
        lse = np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True)) + m
        what = f"{dtype.name} shape={shape} axis={axis} layout={layout} isa={isa}"
        for name, want in (("softmax", np.exp(x64 - lse)), ("log_softmax", x64 - lse)):
            got = getattr(fastce, name)(x, axis=axis)
            assert got.dtype == dtype and got.shape == shape, f"{name}: {what}: {got.dtype}"
            ulps = ulp_distance16(got, want.astype(dtype))
            assert ulps.max() <= 1, f"{name}: {ulps.max()} ulp from float64 rounded: {what}"
            out = np.empty(shape, dtype=dtype)
            assert getattr(fastce, name)(x, axis=axis, out=out) is out
            np.testing.assert_array_equal(out, got, err_msg=f"{name} out=: {what}")
        got = fastce.logsumexp(x, axis=axis)
        assert got.dtype == np.float32 and got.shape == lse.squeeze(axis).shape, f"logsumexp: {what}"
        assert_close(got, lse.squeeze(axis), rtol=1e-6, atol=1e-6, what=f"logsumexp: {what}")
    s = fastce.logsumexp(np.arange(5).astype(dtype))
    assert type(s) is np.float32, f"1-D logsumexp of {dtype.name}: {type(s)}"


def test_grad_dtype_errors():
    xh, t, _, _ = make_inputs(F16, (4, 9))
    x32 = xh.astype(np.float32)
    for x, grad_dtype, kwargs, exc in (
            (xh, np.float64, {}, ValueError),                         # half: float16 or float32 only
            (make_inputs(BF16, (4, 9))[0], np.float16, {}, ValueError),
            (xh, np.float32, dict(inplace=True), ValueError),         # in place keeps the logits' dtype
            (x32, np.float64, {}, ValueError),                        # float32 logits: float32 only
            (x32, np.float16, {}, ValueError),
            (xh, "not a dtype", {}, TypeError)):
        for fn in (fastce.cross_entropy_with_grad, fastce.cross_entropy_backward):
            with pytest.raises(exc, match="grad_dtype"):
                fn(x.copy(), t, grad_dtype=grad_dtype, **kwargs)
    for fn in (fastce.cross_entropy_with_grad, fastce.cross_entropy_backward):
        assert fn(xh, t, grad_dtype=np.float16)[-1].dtype == np.float16
        assert fn(x32, t, grad_dtype="float32")[-1].dtype == np.float32
    with pytest.raises(TypeError, match="out"):  # out must have grad_dtype
        fastce.cross_entropy_backward(xh, t, grad_dtype=np.float32, out=np.empty((4, 9), np.float16))


# ----------------------------------------------------------------------------- argument errors
BAD_OPTIONS = [
    ("z_loss=-1", dict(z_loss=-1.0), ValueError, "z_loss"),
    ("z_loss=nan", dict(z_loss=float("nan")), ValueError, "z_loss"),
    ("z_loss=inf", dict(z_loss=float("inf")), ValueError, "z_loss"),
    ("z_loss=str", dict(z_loss="0.1"), TypeError, "z_loss"),
    ("z_loss=True", dict(z_loss=True), TypeError, "z_loss"),
    ("softcap=0", dict(softcap=0.0), ValueError, "softcap"),
    ("softcap=-2", dict(softcap=-2.0), ValueError, "softcap"),
    ("softcap=nan", dict(softcap=float("nan")), ValueError, "softcap"),
    ("softcap=inf", dict(softcap=float("inf")), ValueError, "softcap"),
    ("softcap=str", dict(softcap="30"), TypeError, "softcap"),
    ("lse-shape=(3,)", dict(lse=np.zeros(3)), ValueError, "lse"),
    ("lse-shape=(4,1)", dict(lse=np.zeros((4, 1))), ValueError, "lse"),
    ("lse-dtype=complex", dict(lse=np.zeros(4, dtype=complex)), TypeError, "lse"),
    ("lse-dtype=bool", dict(lse=np.zeros(4, dtype=bool)), TypeError, "lse"),
    ("class_start=1.5", dict(class_start=1.5), TypeError, "class_start"),
    ("num_classes=str", dict(num_classes="9"), TypeError, "num_classes"),
    ("num_classes<C", dict(num_classes=3), ValueError, "num_classes"),
    ("class_start<0", dict(class_start=-2), ValueError, "class_start"),
]


@pytest.mark.parametrize("kw, exc, arg", [pytest.param(k, e, a, id=i) for i, k, e, a in BAD_OPTIONS])
def test_bad_option_values(kw, exc, arg):
    x, t, _, _ = make_inputs(np.float64, (4, 9))
    for fn in (fastce.cross_entropy, fastce.cross_entropy_with_grad, fastce.cross_entropy_backward):
        with pytest.raises(exc, match=arg):
            fn(x, t, **kw)
    if "z_loss" in kw or "softcap" in kw:
        with pytest.raises(exc, match=arg):
            fastce.CrossEntropyLoss(**kw)


def test_lse_with_probability_targets_and_return_lse_forms():
    """lse= is accepted for probability targets (the rows are re-read anyway) and the
    gradient is unchanged; return_lse on a 1-D logit vector gives a 0-d lse."""
    x, p, _, _ = make_inputs(np.float64, (5, 8), kind="prob")
    lse = fastce.cross_entropy(x, p, return_lse=True)[1]
    np.testing.assert_allclose(fastce.cross_entropy_backward(x, p, lse=lse),
                               fastce.cross_entropy_backward(x, p), rtol=1e-12, atol=1e-15)
    loss, lse1 = fastce.cross_entropy(x[0], np.int64(3), return_lse=True)
    assert isinstance(lse1, np.ndarray) and lse1.shape == () and lse1.dtype == np.float64


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", (np.float32,) + HALF_DTYPES, ids=dtype_id)
def test_bitwise_identical_across_threads(dtype, reduction, isa):
    """z_loss + softcap (+ weights, ignored rows, smoothing) give the same bits for 1, 2 and
    3 threads: loss, gradient (both dtypes) and lse."""
    for shape, layout in (((1000, 37), "F"), ((3, 32000), "C"), ((2, 70000), "C"), ((64, 300, 2), "C")):
        x, t, g, w = make_inputs(dtype, shape, weight="random", ignore="some", reduction=reduction)
        x = layout_copy(x, layout)
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, z_loss=1e-3, softcap=8.0,
                  grad_output=g, return_lse=True)
        runs = {n: (fastce.cross_entropy_with_grad(x, t, **kw, n_threads=n),
                    fastce.cross_entropy_with_grad(x, t, **kw, grad_dtype=np.float32, n_threads=n)[1])
                for n in (1, 2, 3)}
        (loss1, grad1, lse1), grad32_1 = runs[1]
        for n in (2, 3):
            (loss, grad, lse), grad32 = runs[n]
            what = f"n_threads={n} vs 1: {np.dtype(dtype).name} shape={shape} layout={layout} " \
                   f"{reduction} isa={isa}"
            assert np.asarray(loss).tobytes() == np.asarray(loss1).tobytes(), f"loss differs: {what}"
            assert grad.tobytes() == grad1.tobytes(), f"gradient differs: {what}"
            assert grad32.tobytes() == grad32_1.tobytes(), f"float32 gradient differs: {what}"
            assert lse.tobytes() == lse1.tobytes(), f"lse differs: {what}"


# ----------------------------------------------------------------------------- split rows
SPLIT_C = 70001  # >= 65536 classes with fewer than 16 rows: rows are split into chunks
SPLIT_LAYOUTS = ("C", "F", "strided", "float16", "bfloat16")
SPLIT_OPTIONS = {
    "plain": {},
    "softcap": dict(softcap=4.0, z_loss=1e-3),
    "logit_scale": dict(logit_scale=0.7, label_smoothing=0.1),
    "weight+smoothing": dict(label_smoothing=0.1, weight="random", reduction="sum"),
    "probabilities": dict(label_smoothing=0.05, reduction="none"),
    "ignored": dict(reduction="none", z_loss=1e-3),
}


def split_rows_case(dtype, layout, option):
    """Three rows of SPLIT_C classes in the given layout (one row dominated by its max: the
    log1p tail, chunk by chunk), float64 copies of the same values, and the options."""
    x64 = make_logits((3, SPLIT_C), np.float64, seed=7)
    x64[1] = -40.0
    x64[1, SPLIT_C - 2] = 0.0
    store = dtype if layout in ("C", "F", "strided") else np.dtype(layout if layout == "float16" else BF16)
    x = x64.astype(store)
    x64 = x.astype(np.float64)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=1)[:, ::2]
    kw = dict(SPLIT_OPTIONS[option])
    if kw.get("weight") == "random":
        kw["weight"] = make_weight(SPLIT_C, "random")
    if option == "probabilities":
        p = np.random.default_rng(3).random((3, SPLIT_C))
        t = (p / p.sum(axis=1, keepdims=True)).astype(np.float32 if x.dtype.itemsize == 2 else x.dtype)
    else:
        t = np.array([5, SPLIT_C - 2, IGNORE_INDEX if option == "ignored" else 40000])
    return x, x64, t, kw


# half-precision logits compute in float32: one case each
SPLIT_CASES = [(d, lay) for d in DTYPES for lay in SPLIT_LAYOUTS
               if d == np.float32 or lay in ("C", "F", "strided")]


@pytest.mark.parametrize("option", SPLIT_OPTIONS)
@pytest.mark.parametrize("dtype,layout", SPLIT_CASES,
                         ids=[f"{dtype_id(d)}-{lay}" for d, lay in SPLIT_CASES])
def test_split_rows_every_path(dtype, layout, option):
    """Huge rows go through fixed-size chunks on every path, also when the chunks must be
    gathered (strided), converted (half precision) or transformed (softcap, logit_scale):
    the loss, lse and gradient of the float64 reference, bitwise the same on 1 and 2
    threads. The gradient of half-precision logits is rounded to their dtype once."""
    from fastce import reference

    x, x64, t, kw = split_rows_case(dtype, layout, option)
    t64 = t.astype(np.float64) if t.dtype.kind == "f" else t
    want_loss, want_grad = reference.cross_entropy_with_grad(x64, t64, **kw)
    xt = x64 * kw.get("logit_scale", 1.0)
    if "softcap" in kw:
        xt = kw["softcap"] * np.tanh(xt / kw["softcap"])
    want_lse = reference.logsumexp(xt, axis=1)
    results = [fastce.cross_entropy_with_grad(x, t, **kw, return_lse=True, n_threads=n)
               for n in (1, 2)]
    (loss, grad, lse), (loss2, grad2, lse2) = results
    what = f"{np.dtype(dtype).name} {layout} {option}"
    assert np.array_equal(grad, grad2) and np.array_equal(np.asarray(loss), np.asarray(loss2)) \
        and np.array_equal(lse, lse2), f"1 and 2 threads differ: {what}"
    f64 = dtype == np.float64 and layout in ("C", "F", "strided")
    tol = 1e-12 if f64 else 2e-6
    grad_tol = 1e-12 if f64 else (2e-6 if x.dtype.itemsize > 2 else 2 ** -8 if layout == "bfloat16" else 2 ** -11)
    assert_close(loss, want_loss, rtol=tol, atol=tol, what=f"loss: {what}")
    assert_close(lse, want_lse, rtol=tol, atol=1e-15, what=f"lse (the tail row too): {what}")
    assert_close(np.asarray(grad, np.float64), want_grad, rtol=grad_tol, atol=grad_tol,
                 what=f"gradient: {what}", scale_atol=True)


def test_split_rows_when_a_row_of_scratch_is_too_big():
    """Many rows (16, >= the split's row limit) whose transformed row would take more than
    16 MiB of scratch per thread are split too; the loss is the reference's."""
    from fastce import reference

    C = (1 << 24) // 12 + 1  # 3 * C float32 > 16 MiB
    x = make_logits((16, C), np.float32, seed=5)
    t = np.arange(16) * 1000
    got = fastce.cross_entropy(x, t, softcap=6.0, reduction="none")
    want = reference.cross_entropy(x.astype(np.float64), t, softcap=6.0, reduction="none")
    assert_close(got, want, rtol=2e-6, atol=2e-6, what="16 rows of 1.4 M classes, softcap")
