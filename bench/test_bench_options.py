"""Benchmarks: the option-heavy forms, where torch takes its slow composite paths.

fastce vs torch on the same inputs, forward and forward + backward (autograd), for
label smoothing, probability targets, K-dimensional logits (class axis 1 with 8
positions per sample, the (N, C, d) layout of dense prediction), the LLM options
z-loss + softcap (torch composes them from its own ops, as a training script would),
and binary cross-entropy with logits.  Groups: ``{op}-{N}x{C}-{dtype}-t{threads}``.
"""
import numpy as np
import pytest

import fastce

Z_LOSS, SOFTCAP, SMOOTHING = 1e-4, 30.0, 0.1


def _soft_targets(case):
    """Row-normalised probabilities of the logits' shape, made once per case."""
    t = getattr(case, "_soft", None)
    if t is None:
        rng = np.random.default_rng(1)
        t = rng.random(case.x.shape).astype(case.x.dtype)
        t /= t.sum(axis=1, keepdims=True)
        case._soft = t
    return t


def _kdim(case):
    """(N/8, C, 8) C-contiguous logits and (N/8, 8) targets from the case's rows."""
    k = getattr(case, "_kdim", None)
    if k is None:
        n, c = case.x.shape
        if n % 8:
            pytest.skip("K-dim form needs N divisible by 8")
        xk = np.ascontiguousarray(case.x.reshape(n // 8, 8, c).transpose(0, 2, 1))
        k = case._kdim = (xk, case.y.reshape(n // 8, 8))
    return k


def _torch_loss(case, kind, xt):
    """torch's loss of the given (leaf) tensor for option set ``kind``."""
    torch, F = case.torch, case.F
    if kind == "smooth":
        return F.cross_entropy(xt, case.yt, label_smoothing=SMOOTHING)
    if kind == "soft":
        return F.cross_entropy(xt, case._soft_t)
    if kind == "kdim":
        return F.cross_entropy(xt, case._kdim_t)
    if kind == "zcap":
        xc = SOFTCAP * torch.tanh(xt / SOFTCAP)
        lse = torch.logsumexp(xc, 1)
        return F.cross_entropy(xc, case.yt) + Z_LOSS * (lse * lse).mean()
    raise ValueError(kind)


def _inputs(case, kind):
    """(logits, target, fastce kwargs) of option set ``kind``; torch tensors on the case."""
    torch = case.torch
    if kind == "soft":
        t = _soft_targets(case)
        case._soft_t = torch.from_numpy(t)
        return case.x, t, {}
    if kind == "kdim":
        xk, yk = _kdim(case)
        case._kdim_t = torch.from_numpy(yk)
        return xk, yk, {}
    if kind == "smooth":
        return case.x, case.y, {"label_smoothing": SMOOTHING}
    return case.x, case.y, {"z_loss": Z_LOSS, "softcap": SOFTCAP}


KINDS = ["smooth", "soft", "kdim", "zcap"]


@pytest.mark.parametrize("impl", ["fastce", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_ce_options_fwd(bench, case, nthreads, kind, impl):
    x, t, kw = _inputs(case, kind)
    if impl == "fastce":
        def fn():
            return fastce.cross_entropy(x, t, n_threads=nthreads, **kw)
    else:
        xt = case.torch.from_numpy(x)

        def fn():
            return _torch_loss(case, kind, xt)
    bench(f"ce-{kind}-fwd", impl, fn)


@pytest.mark.parametrize("impl", ["fastce-out", "torch-autograd"])
@pytest.mark.parametrize("kind", KINDS)
def test_ce_options_fwdbwd(bench, case, nthreads, kind, impl):
    x, t, kw = _inputs(case, kind)
    setup = None
    if impl == "fastce-out":
        out = np.empty_like(x)

        def fn():
            return fastce.cross_entropy_with_grad(x, t, out=out, n_threads=nthreads, **kw)
    else:
        xg = case.torch.from_numpy(x).requires_grad_()

        def setup():
            xg.grad = None

        def fn():
            loss = _torch_loss(case, kind, xg)
            loss.backward()
            return loss
    bench(f"ce-{kind}-fwdbwd", impl, fn, setup)


@pytest.mark.parametrize("impl", ["fastce", "torch"])
def test_bce_fwd(bench, case, nthreads, impl):
    x = case.x
    y = _soft_targets(case)
    if impl == "fastce":
        def fn():
            return fastce.binary_cross_entropy_with_logits(x, y, n_threads=nthreads)
    else:
        F, xt, yt = case.F, case.torch.from_numpy(x), case.torch.from_numpy(y)

        def fn():
            return F.binary_cross_entropy_with_logits(xt, yt)
    bench("bce-fwd", impl, fn)


@pytest.mark.parametrize("impl", ["fastce-out", "torch-autograd"])
def test_bce_fwdbwd(bench, case, nthreads, impl):
    x = case.x
    y = _soft_targets(case)
    setup = None
    if impl == "fastce-out":
        out = case.buf

        def fn():
            return fastce.binary_cross_entropy_with_logits_with_grad(x, y, out=out, n_threads=nthreads)
    else:
        F = case.F
        xg, yt = case.torch.from_numpy(x).requires_grad_(), case.torch.from_numpy(y)

        def setup():
            xg.grad = None

        def fn():
            loss = F.binary_cross_entropy_with_logits(xg, yt)
            loss.backward()
            return loss
    bench("bce-fwdbwd", impl, fn, setup)
