"""Benchmarks: cross-entropy forward, fused forward + backward, and nll_loss.

fastce vs torch (``F.cross_entropy``; forward + backward through autograd, as a
training step runs it) vs NumPy user code, all with reduction='mean'.
"""
import numpy as np
import pytest

import fastce
from fastce.bench import numpy_cross_entropy, numpy_cross_entropy_with_grad, numpy_nll_loss


@pytest.mark.parametrize("impl", ["fastce", "torch", "numpy"])
def test_ce_fwd(bench, case, nthreads, impl):
    x, y = case.x, case.y
    if impl == "fastce":
        def fn():
            return fastce.cross_entropy(x, y, n_threads=nthreads)
    elif impl == "torch":
        F, xt, yt = case.F, case.xt, case.yt

        def fn():
            return F.cross_entropy(xt, yt)
    else:
        def fn():
            return numpy_cross_entropy(x, y)
    bench("ce-fwd", impl, fn)


@pytest.mark.parametrize("impl", ["fastce-out", "fastce-inplace", "fastce-alloc", "torch-autograd", "numpy"])
def test_ce_fwdbwd(bench, case, nthreads, impl):
    """Loss and gradient of the logits.

    fastce-out: the gradient goes into a reused buffer; fastce-inplace: into the logits
    themselves (a copy of x, refilled before every call outside the timed region);
    fastce-alloc: a fresh gradient array per call; torch-autograd: ``loss.backward()``
    on a leaf sharing x's memory, with ``.grad`` released before every call (untimed).
    """
    x, y = case.x, case.y
    setup = None
    if impl == "fastce-out":
        out = case.buf

        def fn():
            return fastce.cross_entropy_with_grad(x, y, out=out, n_threads=nthreads)
    elif impl == "fastce-inplace":
        scratch = case.scratch

        def setup():
            np.copyto(scratch, x)

        def fn():
            return fastce.cross_entropy_with_grad(scratch, y, inplace=True, n_threads=nthreads)
    elif impl == "fastce-alloc":
        def fn():
            return fastce.cross_entropy_with_grad(x, y, n_threads=nthreads)
    elif impl == "torch-autograd":
        F, xg, yt = case.F, case.xg, case.yt

        def setup():
            xg.grad = None

        def fn():
            loss = F.cross_entropy(xg, yt)
            loss.backward()
            return loss
    else:
        def fn():
            return numpy_cross_entropy_with_grad(x, y)
    try:
        bench("ce-fwdbwd", impl, fn, setup)
    finally:
        if impl == "torch-autograd":
            case.xg.grad = None  # do not keep an N x C gradient alive between benchmarks


@pytest.mark.parametrize("impl", ["fastce", "torch", "numpy"])
def test_nll_loss(bench, case, nthreads, impl):
    """nll_loss on given log-probabilities (fastce.nll_loss has no n_threads: the
    ``nthreads`` fixture sets fastce's default instead)."""
    y = case.y
    if impl == "fastce":
        logp = case.logp

        def fn():
            return fastce.nll_loss(logp, y)
    elif impl == "torch":
        F, logpt, yt = case.F, case.logpt, case.yt

        def fn():
            return F.nll_loss(logpt, yt)
    else:
        logp = case.logp

        def fn():
            return numpy_nll_loss(logp, y)
    bench("nll", impl, fn)
