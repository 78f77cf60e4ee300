"""The oracle checked: fastce.reference (float64 NumPy) against torch (float64).

Everything else in the suite compares fastce with the reference, so the reference itself
must agree with torch.  Two documented differences, both contract decisions:

* ``logsumexp`` of a row holding ``+inf``: torch gives ``+inf``, the fastce contract ``nan``
  (same as the loss of such a row).
* the gradient of an ignored row whose logits hold nan/inf: torch propagates nan through
  ``log_softmax``'s backward, the fastce contract says ignored rows have gradient 0.
"""
import numpy as np
import pytest

from conftest import (
    IGNORE_INDEX,
    make_logits,
    make_target,
    make_weight,
    shape_id,
    torch_cross_entropy,
)

RTOL = 1e-12  # float64 reference vs float64 torch
ATOL = 1e-13

REDUCTIONS = ("mean", "sum", "none")
WEIGHTS = (None, "random")
IGNORES = ("none", "some", "all")
SMOOTHINGS = (0.0, 0.1, 1.0)
SHAPES = [(0, 5), (1, 1), (1, 7), (6, 1), (6, 5), (9, 17), (4, 70), (3, 1000)]

pytestmark = pytest.mark.torch


def _grad_output(reduction, target, seed=3):
    if reduction == "none":
        return np.random.default_rng(seed).uniform(-2, 2, size=np.shape(target))
    return 0.75


def _check(actual, desired, what):
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=ATOL, equal_nan=True,
                               err_msg=what)


# ----------------------------------------------------------------------------- row-wise
@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (5, 1), (5, 8), (3, 33), (2, 1000)],
                         ids=shape_id)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_rowwise_vs_torch(torch, reference, shape, axis):
    x = make_logits(shape, np.float64)
    tx = torch.tensor(x)
    case = f"shape={shape} axis={axis}"
    _check(reference.logsumexp(x, axis), torch.logsumexp(tx, axis).numpy(), f"logsumexp {case}")
    _check(reference.log_softmax(x, axis), torch.log_softmax(tx, axis).numpy(),
           f"log_softmax {case}")
    _check(reference.softmax(x, axis), torch.softmax(tx, axis).numpy(), f"softmax {case}")


def test_rowwise_1d_returns_scalar(reference):
    x = make_logits((9,), np.float64)
    lse = reference.logsumexp(x)
    assert isinstance(lse, np.float64)
    np.testing.assert_allclose(lse, np.log(np.sum(np.exp(x))), rtol=RTOL)
    assert reference.log_softmax(x).shape == (9,)


def test_rowwise_extremes_vs_torch(torch, reference):
    x = np.array([
        [1e4, -1e4, 0.0, 3.0],            # huge spread
        [-np.inf, 2.0, -np.inf, 1.0],      # masked classes
        [-np.inf, -np.inf, 5.0, -np.inf],  # one live class
        [-np.inf] * 4,                     # all masked: lse -inf, log_softmax nan
        [1.0, np.nan, 2.0, 3.0],           # nan row
        [-1e4, -1e4, -1e4, -1e4],
    ])
    tx = torch.tensor(x)
    _check(reference.logsumexp(x), torch.logsumexp(tx, 1).numpy(), "logsumexp extremes")
    _check(reference.log_softmax(x), torch.log_softmax(tx, 1).numpy(), "log_softmax extremes")
    _check(reference.softmax(x), torch.softmax(tx, 1).numpy(), "softmax extremes")
    assert reference.logsumexp(x)[3] == -np.inf


def test_logsumexp_plus_inf_like_torch(torch, reference):
    """+inf (no nan) gives logsumexp +inf, like torch; a nan row gives nan; log-softmax of a
    row holding +inf is nan throughout (x - inf), like torch."""
    x = np.array([[1.0, np.inf, 0.0], [0.0, 1.0, 2.0], [np.inf, np.nan, 0.0]])
    lse = reference.logsumexp(x)
    want = torch.logsumexp(torch.tensor(x), 1).numpy()
    assert lse[0] == np.inf == want[0] and np.isfinite(lse[1]) and np.isnan(lse[2])
    assert np.isnan(want[2])
    assert np.isnan(reference.log_softmax(x)[0]).all()


# ----------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=lambda e: f"ls={e}")
@pytest.mark.parametrize("ignore", IGNORES, ids=lambda s: f"ignore={s}")
@pytest.mark.parametrize("weight_kind", WEIGHTS, ids=lambda w: f"w={w}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_vs_torch(torch, reference, reduction, weight_kind, ignore,
                                label_smoothing, shape):
    n, c = shape
    x = make_logits(shape, np.float64)
    t = make_target(n, c, ignore)
    w = make_weight(c, weight_kind)
    g = _grad_output(reduction, t)
    kw = dict(weight=w, ignore_index=IGNORE_INDEX, reduction=reduction,
              label_smoothing=label_smoothing)
    case = f"shape={shape} {kw | {'weight': weight_kind}} ignore={ignore}"
    loss_t, grad_t = torch_cross_entropy(torch, x, t, g, **kw)
    loss_r, grad_r = reference.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    _check(loss_r, loss_t, f"loss {case}")
    _check(grad_r, grad_t, f"grad {case}")
    _check(reference.cross_entropy(x, t, **kw), loss_r, f"cross_entropy vs with_grad {case}")
    _check(reference.cross_entropy_backward(x, t, g, **kw), grad_r,
           f"cross_entropy_backward vs with_grad {case}")
    if reduction == "none":
        assert np.shape(loss_r) == (n,)
    else:
        assert isinstance(loss_r, np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=lambda e: f"ls={e}")
def test_cross_entropy_1d_vs_torch(torch, reference, reduction, label_smoothing):
    x = make_logits((7,), np.float64)
    t = np.array(4)
    g = np.array(-1.5) if reduction == "none" else 2.0
    kw = dict(weight=make_weight(7, "random"), reduction=reduction,
              label_smoothing=label_smoothing)
    loss_t, grad_t = torch_cross_entropy(torch, x, t, g, **kw)
    loss_r, grad_r = reference.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    assert np.shape(loss_r) == () and grad_r.shape == (7,)
    _check(loss_r, loss_t, f"1-D loss {kw}")
    _check(grad_r, grad_t, f"1-D grad {kw}")


@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=lambda e: f"ls={e}")
def test_cross_entropy_masked_and_nonfinite_vs_torch(torch, reference, label_smoothing):
    """-inf classes, nan and +inf rows; nothing ignored (see the module docstring)."""
    x = make_logits((6, 5), np.float64)
    x[:, 3] = -np.inf           # a masked class everywhere
    x[1, 0] = np.nan
    x[4, 2] = np.inf
    t = np.array([0, 1, 2, 4, 1, 0])
    kw = dict(reduction="none", label_smoothing=label_smoothing)
    g = np.ones(6)
    loss_t, grad_t = torch_cross_entropy(torch, x, t, g, **kw)
    loss_r, grad_r = reference.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    _check(loss_r, loss_t, f"loss {kw}")
    _check(grad_r, grad_t, f"grad {kw}")
    assert np.isnan(loss_r[[1, 4]]).all() and np.isnan(grad_r[[1, 4]]).all()
    healthy = [0, 2, 3, 5]
    assert np.isfinite(grad_r[healthy]).all()
    # smoothing puts weight on the masked class: torch (and we) give +inf there
    assert (np.isfinite(loss_r[healthy]) if label_smoothing == 0
            else np.isposinf(loss_r[healthy])).all()


def test_ignored_nonfinite_row_has_zero_grad(torch, reference):
    """Contract: an ignored row has loss 0 and gradient 0 even if its logits are nan."""
    x = make_logits((3, 4), np.float64)
    x[1, 2] = np.nan
    t = np.array([0, IGNORE_INDEX, 3])
    loss_r, grad_r = reference.cross_entropy_with_grad(x, t, reduction="none",
                                                       grad_output=np.ones(3))
    loss_t, _ = torch_cross_entropy(torch, x, t, np.ones(3), reduction="none")
    _check(loss_r, loss_t, "loss with an ignored nan row")
    assert loss_r[1] == 0 and np.all(grad_r[1] == 0) and np.isfinite(grad_r).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", WEIGHTS, ids=lambda w: f"w={w}")
@pytest.mark.parametrize("shape", [(6, 5), (1, 3), (0, 3)], ids=shape_id)
def test_nll_loss_vs_torch(torch, reference, shape, weight_kind, reduction):
    n, c = shape
    logp = reference.log_softmax(make_logits(shape, np.float64))
    t = make_target(n, c, "some")
    w = make_weight(c, weight_kind)
    expected = torch.nn.functional.nll_loss(
        torch.tensor(logp), torch.tensor(t), weight=None if w is None else torch.tensor(w),
        reduction=reduction).numpy()
    _check(reference.nll_loss(logp, t, weight=w, reduction=reduction), expected,
           f"nll_loss shape={shape} w={weight_kind} {reduction}")


# ----------------------------------------------------------------------------- gradient
@pytest.mark.parametrize("label_smoothing", SMOOTHINGS, ids=lambda e: f"ls={e}")
@pytest.mark.parametrize("weight_kind", WEIGHTS, ids=lambda w: f"w={w}")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_gradient_finite_differences(reference, reduction, weight_kind,
                                               label_smoothing):
    x = make_logits((4, 5), np.float64)
    t = make_target(4, 5, "some")
    kw = dict(weight=make_weight(5, weight_kind), reduction=reduction,
              label_smoothing=label_smoothing)
    g = _grad_output(reduction, t)

    def objective(z):
        return float(np.sum(np.asarray(g) * reference.cross_entropy(z, t, **kw)))

    h = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        fd[idx] = (objective(x + e) - objective(x - e)) / (2 * h)
    np.testing.assert_allclose(reference.cross_entropy_backward(x, t, g, **kw), fd,
                               rtol=1e-6, atol=1e-8, err_msg=f"finite differences {kw}")


# ----------------------------------------------------------------------------- errors
def test_reference_errors(reference):
    x = np.zeros((3, 4))
    with pytest.raises(IndexError, match="4"):
        reference.cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="reduction"):
        reference.cross_entropy(x, np.array([0, 1, 1]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        reference.cross_entropy(x, np.array([0, 1, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="shape"):
        reference.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="weight"):
        reference.cross_entropy(x, np.array([0, 1, 1]), weight=np.ones(3))


# ------------------------------------------------------ vocabulary shards and linear CE
SHARD_OPTIONS = [
    dict(),
    dict(weight="random", label_smoothing=0.2),
    dict(label_smoothing=0.1, z_loss=1e-2, softcap=3.0),
    dict(weight="random", logit_scale=0.5, z_loss=1e-3),
]


def _shard_kw(opts, V):
    kw = dict(opts)
    if kw.get("weight") == "random":
        kw["weight"] = make_weight(V, "random")
    return kw


def _check_partition(reference, x, t, g, bounds, kw):
    """The shares of the class ranges ``bounds`` (each given the global lse) add up to the
    whole-vocabulary loss, and their gradients are the columns of its gradient."""
    V = x.shape[-1]
    xc = x * kw.get("logit_scale", 1.0)
    if kw.get("softcap"):
        xc = kw["softcap"] * np.tanh(xc / kw["softcap"])
    lse = reference.logsumexp(xc, axis=-1)
    shares = [reference.cross_entropy(x[..., a:b], t, lse=lse, class_start=a, num_classes=V, **kw)
              for a, b in bounds]
    grads = [reference.cross_entropy_backward(x[..., a:b], t, g, lse=lse, class_start=a,
                                              num_classes=V, **kw) for a, b in bounds]
    what = f"{x.ndim}-D {kw}"
    _check(np.sum(shares, axis=0), reference.cross_entropy(x, t, **kw), f"loss {what}")
    _check(np.concatenate(grads, axis=-1), reference.cross_entropy_backward(x, t, g, **kw),
           f"gradient {what}")


@pytest.mark.parametrize("opts", SHARD_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shards_add_up_to_the_whole_vocabulary(reference, opts, reduction):
    """The reference's shard share (its own formula, from a given lse) is specified so that
    the shares of a partition add up to the full loss and their gradients are its columns:
    checked against the reference's whole-vocabulary call (log_softmax-based)."""
    rng = np.random.default_rng(11)
    N, V = 10, 29
    x = rng.standard_normal((N, V)) * 4
    t = rng.integers(0, V, N)
    t[[1, 6]] = IGNORE_INDEX
    kw = dict(_shard_kw(opts, V), reduction=reduction)
    g = _grad_output(reduction, t)
    _check_partition(reference, x, t, g, [(0, 1), (1, 12), (12, 29)], kw)


SOFT_SHARD_OPTIONS = SHARD_OPTIONS + [
    dict(weight="random", label_smoothing=0.3, z_loss=1e-2, softcap=2.5, logit_scale=1.4),
    dict(z_loss=1e-2, num_items=6.5),
]


@pytest.mark.parametrize("opts,reduction", [(o, r) for o in SOFT_SHARD_OPTIONS for r in REDUCTIONS
                                             if r == "mean" or "num_items" not in o],
                         ids=lambda v: v if isinstance(v, str) else ",".join(v) or "plain")
def test_soft_shards_add_up_to_the_whole_vocabulary(reference, opts, reduction):
    """Probability targets over shards: each shard gets the full target rows and the global
    lse; the shares add up to the whole-vocabulary loss (smoothing over the global V, the
    z-term once, from the shard of class 0) and the gradients are its columns."""
    rng = np.random.default_rng(13)
    N, V = 9, 31
    x = rng.standard_normal((N, V)) * 3
    t = rng.dirichlet(np.full(V, 0.3), N)
    t[2] = 0.0  # a row with no target mass (only smoothing and z remain)
    t[4] *= 1.5  # a row whose mass is not 1 (torch does not normalise either)
    kw = dict(_shard_kw(opts, V), reduction=reduction)
    g = _grad_output(reduction, np.zeros(N))
    bounds = [(0, 1), (1, 14), (14, 31)]
    _check_partition(reference, x, t, g, bounds, kw)
    _check_partition(reference, x[5], t[5], 0.75, bounds, kw)  # 1-D logits, the full row


def test_soft_shard_vs_torch(torch, reference):
    """The soft shard's shares against torch's probability-target loss on the whole row."""
    rng = np.random.default_rng(14)
    N, V = 7, 23
    x = rng.standard_normal((N, V)) * 2
    t = rng.dirichlet(np.ones(V), N)
    w = make_weight(V, "random")
    lse = reference.logsumexp(x, axis=1)
    bounds = [(0, 10), (10, 23)]
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w),
                                            label_smoothing=0.2)
    ref.backward()
    kw = dict(weight=w, label_smoothing=0.2, num_classes=V, lse=lse)
    loss = sum(reference.cross_entropy(x[:, a:b], t, class_start=a, **kw) for a, b in bounds)
    grad = np.concatenate([reference.cross_entropy_backward(x[:, a:b], t, class_start=a, **kw)
                           for a, b in bounds], axis=1)
    _check(loss, ref.item(), "loss vs torch")
    _check(grad, xt.grad.numpy(), "gradient vs torch")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opts", SHARD_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fastce_shards_vs_reference(reference, opts, reduction, dtype):
    import fastce
    rng = np.random.default_rng(12)
    N, V, a, b = 12, 40, 9, 31
    x = (rng.standard_normal((N, V)) * 4).astype(dtype)
    t = rng.integers(0, V, N)
    t[3] = IGNORE_INDEX
    kw = dict(_shard_kw(opts, V), reduction=reduction)
    xc = x.astype(np.float64) * kw.get("logit_scale", 1.0)
    if kw.get("softcap"):
        xc = kw["softcap"] * np.tanh(xc / kw["softcap"])
    lse = reference.logsumexp(xc, axis=1)
    shard = np.ascontiguousarray(x[:, a:b])
    fkw = dict(kw, weight=None if kw.get("weight") is None else kw["weight"].astype(dtype))
    loss, grad = fastce.cross_entropy_with_grad(shard, t, lse=lse, class_start=a, num_classes=V, **fkw)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == "float32" else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(loss, reference.cross_entropy(shard, t, lse=lse, class_start=a,
                                                             num_classes=V, **fkw), **tol)
    np.testing.assert_allclose(grad, reference.cross_entropy_backward(
        shard, t, lse=lse, class_start=a, num_classes=V, **fkw), **tol)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_reference(torch, reference, reduction, bias):
    """The reference's linear CE against torch's autograd of F.linear + F.cross_entropy,
    and fastce's (float64) against the reference."""
    import fastce
    rng = np.random.default_rng(13)
    N, H, V = 17, 6, 23
    h = rng.standard_normal((N, H))
    W = rng.standard_normal((V, H))
    bvec = rng.standard_normal(V) if bias else None
    t = rng.integers(0, V, N)
    t[4] = IGNORE_INDEX
    kw = dict(reduction=reduction, label_smoothing=0.1)
    g = _grad_output(reduction, t)
    ref = reference.linear_cross_entropy_with_grad(h, W, t, bias=bvec, grad_output=g, **kw)
    th, tW = torch.tensor(h, requires_grad=True), torch.tensor(W, requires_grad=True)
    tb = torch.tensor(bvec, requires_grad=True) if bias else None
    tl = torch.nn.functional.cross_entropy(torch.nn.functional.linear(th, tW, tb), torch.tensor(t), **kw)
    tl.backward(torch.tensor(g))
    _check(ref[0], tl.detach().numpy(), "loss vs torch")
    _check(ref[1], th.grad.numpy(), "d_hidden vs torch")
    _check(ref[2], tW.grad.numpy(), "d_weight vs torch")
    if bias:
        _check(ref[3], tb.grad.numpy(), "d_bias vs torch")
    else:
        assert ref[3] is None
    _check(reference.linear_cross_entropy(h, W, t, bias=bvec, **kw), ref[0], "loss alone")
    fc = fastce.linear_cross_entropy_with_grad(h, W, t, bias=bvec, grad_output=g, chunk_size=5, **kw)
    for got, want, what in zip(fc, ref, ("loss", "d_hidden", "d_weight", "d_bias")):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12, err_msg=f"fastce {what}")
