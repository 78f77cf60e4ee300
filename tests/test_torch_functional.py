"""fastce.torch against torch.nn.functional: values and gradients over the option matrix."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import fastce
import fastce.torch as fce


TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-11, atol=1e-12)}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def logits(shape, dtype=torch.float64, seed=0, scale=3.0):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


def hard_target(shape, c, seed=1, ignore=True):
    t = torch.randint(0, c, shape, generator=_gen(seed))
    if ignore and t.numel() > 2:
        t.view(-1)[::3] = -100
    return t


def soft_target(shape, dtype, seed=2):
    return torch.softmax(torch.randn(shape, generator=_gen(seed), dtype=torch.float64), dim=1 if len(shape) > 1 else 0).to(dtype)


def loss_and_grads(fn, x, upstream=None, **kw):
    """(loss, d loss / d x) with a random upstream gradient for a non-scalar loss."""
    x = x.detach().requires_grad_()
    loss = fn(x, **kw)
    g = torch.ones_like(loss) if upstream is None else upstream
    (grad,) = torch.autograd.grad(loss, x, g)
    return loss.detach(), grad


def assert_close(a, b, dtype, **tol):
    torch.testing.assert_close(a, b, **(tol or TOL[dtype]), equal_nan=True)


def check_ce(x, target, dtype, ref_fn=None, **kw):
    """fastce.torch.cross_entropy vs torch (or ref_fn), loss and gradient, with upstream gradients."""
    ref_fn = ref_fn or F.cross_entropy
    upstream = None
    if kw.get("reduction") == "none":
        rows = x.shape[:1] + x.shape[2:] if x.dim() > 1 else ()
        upstream = torch.rand(rows, generator=_gen(7), dtype=torch.float64).to(dtype)
    la, ga = loss_and_grads(lambda v, **k: fce.cross_entropy(v, target, **k), x, upstream, **kw)
    lb, gb = loss_and_grads(lambda v, **k: ref_fn(v, target, **k), x, upstream, **kw)
    assert la.dtype == lb.dtype and la.shape == lb.shape
    assert_close(la, lb, dtype)
    assert_close(ga, gb, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 5, 3, 2)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_class_indices(dtype, shape, reduction):
    c = shape[0] if len(shape) == 1 else shape[1]
    x = logits(shape, dtype)
    tshape = () if len(shape) == 1 else shape[:1] + shape[2:]
    w = torch.rand(c, generator=_gen(3), dtype=dtype) + 0.5
    for weight, smooth, ignore in itertools.product((None, w), (0.0, 0.15), (False, True)):
        target = hard_target(tshape, c, ignore=ignore)
        check_ce(x, target, dtype, weight=weight, label_smoothing=smooth, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(7,), (6, 5), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_probabilities(dtype, shape, reduction):
    c = shape[0] if len(shape) == 1 else shape[1]
    x = logits(shape, dtype)
    target = soft_target(shape, dtype)
    w = torch.rand(c, generator=_gen(3), dtype=dtype) + 0.5
    for weight, smooth in itertools.product((None, w), (0.0, 0.2)):
        check_ce(x, target, dtype, weight=weight, label_smoothing=smooth, reduction=reduction)


def grads_wrt(fn, tensors, wanted, upstream_seed=7):
    """(loss, gradients of the ``wanted`` tensors) with a random upstream gradient."""
    args = [t.detach().clone().requires_grad_(w) for t, w in zip(tensors, wanted)]
    loss = fn(*args)
    up = torch.rand(loss.shape, generator=_gen(upstream_seed), dtype=torch.float64).to(loss.dtype)
    grads = torch.autograd.grad(loss, [a for a, w in zip(args, wanted) if w], up)
    return (loss.detach(),) + grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(7,), (6, 5), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_probability_target_gradients(dtype, shape, reduction):
    """d loss / d target (and d input with it), as torch's autograd gives them."""
    c = shape[0] if len(shape) == 1 else shape[1]
    x, target = logits(shape, dtype), soft_target(shape, dtype)
    w = torch.rand(c, generator=_gen(3), dtype=dtype) + 0.5
    for weight, smooth, wanted in itertools.product((None, w), (0.0, 0.2),
                                                    ((False, True), (True, True))):
        kw = dict(weight=weight, label_smoothing=smooth, reduction=reduction)
        got = grads_wrt(lambda a, b: fce.cross_entropy(a, b, **kw), (x, target), wanted)
        ref = grads_wrt(lambda a, b: F.cross_entropy(a, b, **kw), (x, target), wanted)
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert_close(a, b, dtype)


def soft_ext_ref(x, target, z_loss=0.0, softcap=None, logit_scale=1.0, reduction="mean",
                 num_items=None, **kw):
    """torch composition of fastce's extensions for probability targets (2-D)."""
    x = x * logit_scale
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    rows = F.cross_entropy(x, target, reduction="none", **kw) + z_loss * torch.logsumexp(x, 1) ** 2
    if reduction == "none":
        return rows
    return rows.sum() / (num_items if num_items is not None else 1 if reduction == "sum" else rows.numel())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_target_gradients_with_extensions(reduction):
    x, target = logits((8, 6)), soft_target((8, 6), torch.float64)
    w = torch.rand(6, generator=_gen(4), dtype=torch.float64) + 0.5
    cases = [dict(z_loss=1e-2, softcap=4.0, logit_scale=0.7, weight=w, label_smoothing=0.1)]
    if reduction == "mean":
        cases.append(dict(num_items=20.0, label_smoothing=0.1))
    for kw in cases:
        for wanted in ((False, True), (True, True)):
            got = grads_wrt(lambda a, b: fce.cross_entropy(a, b, reduction=reduction, **kw),
                            (x, target), wanted)
            ref = grads_wrt(lambda a, b: soft_ext_ref(a, b, reduction=reduction, **kw),
                            (x, target), wanted)
            for a, b in zip(got, ref):
                assert_close(a, b, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_probability_target_gradients_half(dtype):
    """Half logits and targets: the target's gradient has its dtype, from float32 math."""
    x, target = logits((9, 12), dtype), soft_target((9, 12), dtype)
    got = grads_wrt(lambda a, b: fce.cross_entropy(a, b, label_smoothing=0.1), (x, target), (True, True))
    ref = grads_wrt(lambda a, b: F.cross_entropy(a.float(), b.float(), label_smoothing=0.1),
                    (x, target), (True, True))
    assert got[1].dtype == got[2].dtype == dtype
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-4)


def test_target_gradients_not_requested():
    """Targets that do not require grad (or grad mode off) get nothing, and cost nothing extra."""
    x, target = logits((6, 5)), soft_target((6, 5), torch.float64)
    xr = x.clone().requires_grad_()
    loss = fce.cross_entropy(xr, target)
    (gx,) = torch.autograd.grad(loss, xr)
    assert_close(gx, torch.autograd.grad(F.cross_entropy(xr, target), xr)[0], torch.float64)
    with torch.no_grad():
        assert not fce.cross_entropy(x, target.clone().requires_grad_()).requires_grad
    y = torch.rand(6, 5, dtype=torch.float64).requires_grad_()
    loss = fce.binary_cross_entropy_with_logits(x, y)
    assert loss.requires_grad
    (gy,) = torch.autograd.grad(loss, y)
    assert_close(gy, torch.autograd.grad(F.binary_cross_entropy_with_logits(x, y), y)[0], torch.float64)


def test_cross_entropy_ignore_index_custom_and_all_ignored():
    x = logits((5, 4))
    t = torch.tensor([1, 3, 0, 3, 2])
    check_ce(x, t, torch.float64, ignore_index=3)
    check_ce(x, torch.full((5,), -100), torch.float64)  # nan, like torch
    assert torch.isnan(fce.cross_entropy(x, torch.full((5,), -100)))


def test_cross_entropy_legacy_reduction_args():
    x, t = logits((6, 5)), hard_target((6,), 5)
    with pytest.warns(UserWarning):
        a = fce.cross_entropy(x, t, size_average=False)
    with pytest.warns(UserWarning):
        b = F.cross_entropy(x, t, size_average=False)
    assert_close(a, b, torch.float64)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_non_contiguous_inputs(layout):
    base = logits((12, 10), torch.float32)
    if layout == "transposed":
        x = logits((10, 12), torch.float32).t()
    elif layout == "sliced":
        x = base[::2, 1:9]
    else:
        x = logits((1, 10), torch.float32).expand(12, 10)
    assert not x.is_contiguous()
    c = x.shape[1]
    target = hard_target(x.shape[:1], c)
    for reduction in ("mean", "none"):
        check_ce(x, target, torch.float32, reduction=reduction)
        check_ce(x, torch.softmax(logits(x.shape, torch.float32, seed=5), 1).t().contiguous().t(),
                 torch.float32, reduction=reduction)
    up = torch.rand(x.shape)
    la, ga = loss_and_grads(lambda v: fce.log_softmax(v, 1), x, up)
    lb, gb = loss_and_grads(lambda v: F.log_softmax(v, 1), x, up)
    assert_close(la, lb, torch.float32)
    assert_close(ga, gb, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_cross_entropy(dtype):
    """Half logits: computed in float32; the loss is float32 (torch: the half dtype)."""
    x = logits((33, 70), dtype)
    target = hard_target((33,), 70)
    for reduction in ("mean", "none"):
        up = torch.rand(33) if reduction == "none" else None
        la, ga = loss_and_grads(lambda v: fce.cross_entropy(v, target, reduction=reduction,
                                                            label_smoothing=0.1), x, up)
        # the float32 computation on the same (rounded) inputs is the reference
        lr, gr = loss_and_grads(lambda v: F.cross_entropy(v.float(), target, reduction=reduction,
                                                          label_smoothing=0.1), x, up)
        assert la.dtype == torch.float32 and ga.dtype == dtype
        torch.testing.assert_close(la, lr, rtol=1e-6, atol=1e-6, equal_nan=True)
        # gradient rounded once to the half dtype
        torch.testing.assert_close(ga.float(), gr.float(), rtol=2 ** -7, atol=1e-4)
        # torch's own half loss agrees to its precision
        lt = F.cross_entropy(x, target, reduction=reduction, label_smoothing=0.1)
        assert lt.dtype == dtype
        torch.testing.assert_close(la, lt.float(), rtol=2 ** -6, atol=2e-2, equal_nan=True)


def test_half_precision_softmax_family():
    x = logits((9, 40), torch.bfloat16)
    for ours, theirs in ((fce.log_softmax, F.log_softmax), (fce.softmax, F.softmax)):
        y = ours(x, 1)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), theirs(x.float(), 1), rtol=2 ** -7, atol=2e-2)
    assert fce.logsumexp(x, 1).dtype == torch.bfloat16


def z_ref(x, target, z_loss=0.0, softcap=None, logit_scale=1.0, reduction="mean", **kw):
    """torch composition of fastce's extensions: scale, softcap, then CE + z * lse**2."""
    x = x * logit_scale
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    ce = F.cross_entropy(x, target, reduction="none", **kw)
    valid = target != kw.get("ignore_index", -100)
    z = torch.where(valid, z_loss * torch.logsumexp(x, 1) ** 2, torch.zeros_like(ce))
    if reduction == "none":
        return ce + z
    if reduction == "sum":
        return ce.sum() + z.sum()
    w = kw.get("weight")
    denom = w[target[valid]].sum() if w is not None else valid.sum()
    return ce.sum() / denom + z.sum() / valid.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_z_loss_softcap_return_lse(reduction):
    x, t = logits((8, 6)), hard_target((8,), 6)
    w = torch.rand(6, generator=_gen(4), dtype=torch.float64) + 0.5
    check_ce(x, t, torch.float64, ref_fn=z_ref, z_loss=1e-2, softcap=4.0, weight=w,
             label_smoothing=0.1, reduction=reduction)
    loss, lse = fce.cross_entropy(x, t, return_lse=True, reduction=reduction)
    valid = t != -100
    assert_close(lse[valid], torch.logsumexp(x, 1)[valid], torch.float64)
    assert not lse.requires_grad


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_logit_scale(softcap):
    x, t = logits((8, 6)), hard_target((8,), 6)
    check_ce(x, t, torch.float64, ref_fn=z_ref, logit_scale=0.7, softcap=softcap, z_loss=1e-3)
    w = torch.randn(6, 4, dtype=torch.float64)
    h = torch.randn(8, 4, dtype=torch.float64)
    got = fce.linear_cross_entropy(h, w, t, logit_scale=0.7, softcap=softcap)
    assert_close(got, z_ref(h @ w.t(), t, logit_scale=0.7, softcap=softcap), torch.float64)


def test_num_items():
    x, t = logits((8, 6)), hard_target((8,), 6)
    check_ce(x, t, torch.float64, num_items=20.0,
             ref_fn=lambda v, tt, num_items, **k: F.cross_entropy(v, tt, reduction="sum") / num_items)
    # the torch front end and the NumPy API agree (z-loss included, whatever its normaliser)
    kw = dict(num_items=20.0, z_loss=1e-2, label_smoothing=0.1)
    assert_close(fce.cross_entropy(x, t, **kw), torch.tensor(fastce.cross_entropy(x.numpy(), t.numpy(), **kw)),
                 torch.float64)
    w = torch.randn(6, 4, dtype=torch.float64)
    h = torch.randn(8, 4, dtype=torch.float64)
    assert_close(fce.linear_cross_entropy(h, w, t, **kw),
                 torch.tensor(fastce.cross_entropy((h @ w.t()).numpy(), t.numpy(), **kw)), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 5, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(dtype, shape, reduction):
    c = shape[0] if len(shape) == 1 else shape[1]
    x = torch.log_softmax(logits(shape), dim=0 if len(shape) == 1 else 1).to(dtype)
    tshape = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = hard_target(tshape, c)
    up = torch.rand(tshape, dtype=dtype) if reduction == "none" else None
    for weight in (None, torch.rand(c, dtype=dtype) + 0.5):
        la, ga = loss_and_grads(lambda v: fce.nll_loss(v, target, weight, reduction=reduction), x, up)
        lb, gb = loss_and_grads(lambda v: F.nll_loss(v, target, weight, reduction=reduction), x, up)
        assert_close(la, lb, dtype)
        assert_close(ga, gb, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits(dtype, reduction):
    x = logits((6, 5), dtype)
    y = torch.rand((6, 5), generator=_gen(9), dtype=torch.float64).to(dtype)
    up = torch.rand((6, 5), dtype=dtype) if reduction == "none" else None
    opts = [dict(), dict(weight=torch.rand(5, dtype=dtype)), dict(pos_weight=torch.rand(5, dtype=dtype) * 3),
            dict(weight=torch.rand(6, 1, dtype=dtype), pos_weight=torch.rand(5, dtype=dtype))]
    for kw in opts:
        la, ga = loss_and_grads(lambda v: fce.binary_cross_entropy_with_logits(v, y, reduction=reduction, **kw), x, up)
        lb, gb = loss_and_grads(lambda v: F.binary_cross_entropy_with_logits(v, y, reduction=reduction, **kw), x, up)
        assert_close(la, lb, dtype)
        assert_close(ga, gb, dtype)
        # d loss / d target, alone and with d loss / d input
        for wanted in ((False, True), (True, True)):
            got = grads_wrt(lambda a, b: fce.binary_cross_entropy_with_logits(a, b, reduction=reduction, **kw),
                            (x, y), wanted)
            ref = grads_wrt(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction, **kw),
                            (x, y), wanted)
            for a, b in zip(got, ref):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert_close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((5, 6), 1), ((5, 6), 0), ((3, 4, 5), -1), ((3, 4, 5), 1)], ids=str)
def test_softmax_family(dtype, shape, dim):
    x = logits(shape, dtype)
    up = torch.rand(shape, dtype=dtype)
    for ours, theirs in ((fce.log_softmax, F.log_softmax), (fce.softmax, F.softmax)):
        la, ga = loss_and_grads(lambda v: ours(v, dim), x, up)
        lb, gb = loss_and_grads(lambda v: theirs(v, dim), x, up)
        assert_close(la, lb, dtype)
        assert_close(ga, gb, dtype)
    for keepdim in (False, True):
        ref = torch.logsumexp(x, dim, keepdim=keepdim)
        up = torch.rand(ref.shape, dtype=dtype)
        la, ga = loss_and_grads(lambda v: fce.logsumexp(v, dim, keepdim), x, up)
        lb, gb = loss_and_grads(lambda v: torch.logsumexp(v, dim, keepdim), x, up)
        assert_close(la, lb, dtype)
        assert_close(ga, gb, dtype)


def test_softmax_dtype_argument_and_implicit_dim():
    x = logits((4, 5), torch.float32)
    assert_close(fce.log_softmax(x, 1, dtype=torch.float64), F.log_softmax(x, 1, dtype=torch.float64),
                 torch.float64)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        y = fce.softmax(x)
    assert_close(y, torch.softmax(x, 1), torch.float32)


def linear_ref(h, w, t, b=None, reduction="mean", **kw):
    return F.cross_entropy(F.linear(h, w, b), t, reduction=reduction, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_linear_cross_entropy(dtype, reduction, chunk_size):
    n, hdim, v = 10, 6, 9
    h0 = torch.randn(n, hdim, generator=_gen(0), dtype=torch.float64).to(dtype)
    w0 = (torch.randn(v, hdim, generator=_gen(1), dtype=torch.float64) / 2).to(dtype)
    b0 = torch.randn(v, generator=_gen(2), dtype=torch.float64).to(dtype)
    t = hard_target((n,), v)
    cw = torch.rand(v, generator=_gen(3), dtype=dtype) + 0.5
    up = torch.rand(n, dtype=dtype) if reduction == "none" else torch.tensor(1.7, dtype=dtype)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for bias, weight, smooth in itertools.product((None, b0), (None, cw), (0.0, 0.1)):
        res = []
        for fn in (fce.linear_cross_entropy, linear_ref):
            h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            b = None if bias is None else bias.clone().requires_grad_()
            kw = dict(reduction=reduction, weight=weight, label_smoothing=smooth)
            if fn is fce.linear_cross_entropy:
                kw["chunk_size"] = chunk_size
            loss = fn(h, w, t, b, **kw)
            grads = torch.autograd.grad(loss, [h, w] + ([b] if b is not None else []), up)
            res.append((loss.detach(),) + grads)
        for a, r in zip(*res):
            torch.testing.assert_close(a, r, **tol)


def test_linear_cross_entropy_z_loss_softcap_lse_and_1d():
    h, w = torch.randn(7, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
    t = hard_target((7,), 11)
    for reduction in ("mean", "sum", "none"):
        kw = dict(z_loss=1e-2, softcap=2.5, label_smoothing=0.05, reduction=reduction)
        got, lse = fce.linear_cross_entropy(h, w, t, chunk_size=2, return_lse=True, **kw)
        assert_close(got, z_ref(h @ w.t(), t, **kw), torch.float64)
        valid = t != -100
        capped = 2.5 * torch.tanh((h @ w.t()) / 2.5)
        assert_close(lse[valid], torch.logsumexp(capped, 1)[valid], torch.float64)
        assert torch.isnan(lse[~valid]).all()
    # a single row: (H,) input, () target, like torch
    got = fce.linear_cross_entropy(h[0], w, torch.tensor(3), reduction="none")
    assert got.shape == () and torch.allclose(got, F.cross_entropy(h[0] @ w.t(), torch.tensor(3)))


def test_modules_match_torch():
    x, t = logits((6, 5), torch.float32), hard_target((6,), 5)
    w = torch.rand(5) + 0.5
    ours = fce.CrossEntropyLoss(weight=w, label_smoothing=0.1, reduction="sum")
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1, reduction="sum")
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert_close(ours(x, t), theirs(x, t), torch.float32)
    lp = torch.log_softmax(x, 1)
    assert_close(fce.NLLLoss(weight=w)(lp, t), torch.nn.NLLLoss(weight=w)(lp, t), torch.float32)
    y = torch.rand(6, 5)
    pw = torch.rand(5) * 2
    assert_close(fce.BCEWithLogitsLoss(pos_weight=pw)(x, y), torch.nn.BCEWithLogitsLoss(pos_weight=pw)(x, y),
                 torch.float32)
    torch.manual_seed(0)
    lin_ours = fce.LinearCrossEntropyLoss(4, 5, bias=True, label_smoothing=0.1, chunk_size=2)
    torch.manual_seed(0)
    lin_theirs = torch.nn.LinearCrossEntropyLoss(4, 5, bias=True, label_smoothing=0.1)
    h = torch.randn(6, 4)
    a, b = lin_ours(h, t), lin_theirs(h, t)
    assert_close(a, b, torch.float32, rtol=1e-5, atol=1e-6)
    a.backward()
    b.backward()
    assert_close(lin_ours.linear.weight.grad, lin_theirs.linear.weight.grad, torch.float32, rtol=1e-5, atol=1e-6)
    assert_close(lin_ours.linear.bias.grad, lin_theirs.linear.bias.grad, torch.float32, rtol=1e-5, atol=1e-6)
