"""Benchmarks: minibatch shapes, where the fixed cost of a call decides.

The shapes of ``fastce.bench.MINIBATCH_SHAPES`` (float32), at the thread counts of the
suite: fastce ``cross_entropy`` and ``cross_entropy_with_grad`` (gradient into a reused
``out=``) against torch's ``F.cross_entropy`` forward and forward + backward (autograd,
the same tensors every call, the gradient released before each call), and the cost of
one NumPy ufunc call, ``np.add(a, b, out=c)`` on arrays of the logits' size.  At
(32, 10) also the option-heavy call (class weights, label smoothing, z-loss) next to the
plain one, for both libraries (torch composes the z-loss from its own ops).

Calls take microseconds, so every round is a loop of many calls (``iterations``), as
:mod:`timeit` does.  Groups: ``mb-{op}-{N}x{C}-float32-t{threads}``, op in ``fwd``,
``fwdbwd``, ``opts-fwdbwd``.
"""
import math
import os
import time

import numpy as np
import pytest

import fastce
from fastce.bench import MINIBATCH_SHAPES, make_inputs

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

SMOOTHING, Z_LOSS = 0.1, 1e-4


def _quick(config):
    return bool(config.getoption("--bench-quick", default=False)) or os.environ.get(
        "FASTCE_BENCH_QUICK", "") not in ("", "0")


class MiniCase:
    """Inputs of one minibatch shape, shared by every implementation."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.label = f"{shape[0]}x{shape[1]}"
        self.x, self.y = make_inputs(shape, "float32", seed=0)
        self.buf = np.empty_like(self.x)
        self.a, self.b, self.c = self.x.copy(), self.x.copy(), np.empty_like(self.x)
        self.weight = np.linspace(0.5, 1.5, shape[1], dtype=np.float32)
        if torch is not None:
            self.xt = torch.from_numpy(self.x)
            self.xg = torch.from_numpy(self.x.copy()).requires_grad_(True)
            self.yt = torch.from_numpy(self.y)
            self.wt = torch.from_numpy(self.weight)

    def need_torch(self):
        if torch is None:
            pytest.skip("torch is not installed")


@pytest.fixture(scope="module", params=MINIBATCH_SHAPES, ids=[f"{n}x{c}" for n, c in MINIBATCH_SHAPES])
def mcase(request):
    return MiniCase(request.param)


@pytest.fixture
def mbench(benchmark, nthreads, request):
    """``mbench(case, op, impl, fn)``: time ``fn`` in loops of many calls."""
    target = 0.02 if _quick(request.config) else 0.5

    def run(case, op, impl, fn):
        benchmark.group = f"mb-{op}-{case.label}-float32-t{nthreads}"
        benchmark.extra_info.update(op=f"mb-{op}", impl=impl, shape=list(case.shape), dtype="float32",
                                    threads=nthreads, nbytes=int(case.x.nbytes))
        time.sleep(0.03 if impl.startswith("torch") else 0.0)  # let the other runtime's threads sleep
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        per_call = max(time.perf_counter() - t0, 1e-7)
        iterations = max(1, math.ceil(2e-3 / per_call))  # rounds of ~2 ms: timer noise stays small
        rounds = max(3, min(200, math.ceil(target / (per_call * iterations))))
        if getattr(benchmark, "disabled", False):
            rounds = iterations = 1
        return benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)

    return run


def _torch_fb(case, **kw):
    def fn():
        case.xg.grad = None
        F.cross_entropy(case.xg, case.yt, **kw).backward()
    return fn


@pytest.mark.parametrize("impl", ["fastce", "torch", "numpy-ufunc"])
def test_mb_fwd(mbench, mcase, nthreads, impl):
    c = mcase
    if impl == "fastce":
        mbench(c, "fwd", impl, lambda: fastce.cross_entropy(c.x, c.y, n_threads=nthreads))
    elif impl == "torch":
        c.need_torch()
        mbench(c, "fwd", impl, lambda: F.cross_entropy(c.xt, c.yt))
    else:
        mbench(c, "fwd", impl, lambda: np.add(c.a, c.b, out=c.c))


@pytest.mark.parametrize("impl", ["fastce", "torch-autograd", "numpy-ufunc"])
def test_mb_fwdbwd(mbench, mcase, nthreads, impl):
    c = mcase
    if impl == "fastce":
        mbench(c, "fwdbwd", impl, lambda: fastce.cross_entropy_with_grad(c.x, c.y, out=c.buf, n_threads=nthreads))
    elif impl == "torch-autograd":
        c.need_torch()
        mbench(c, "fwdbwd", impl, _torch_fb(c))
    else:
        mbench(c, "fwdbwd", impl, lambda: np.add(c.a, c.b, out=c.c))


@pytest.fixture(scope="module")
def case_32x10():
    return MiniCase((32, 10))


@pytest.mark.parametrize("impl", ["fastce", "torch-autograd"])
@pytest.mark.parametrize("options", ["plain", "weight+smoothing+zloss"])
def test_mb_options_fwdbwd(mbench, case_32x10, nthreads, options, impl):
    """The per-call cost of the options: class weights, label smoothing and z-loss."""
    c = case_32x10
    opts = options != "plain"
    if impl == "fastce":
        kw = dict(weight=c.weight, label_smoothing=SMOOTHING, z_loss=Z_LOSS) if opts else {}
        mbench(c, "opts-fwdbwd", f"{impl}-{options}",
               lambda: fastce.cross_entropy_with_grad(c.x, c.y, out=c.buf, n_threads=nthreads, **kw))
        return
    c.need_torch()
    if not opts:
        mbench(c, "opts-fwdbwd", f"{impl}-{options}", _torch_fb(c))
        return
    # torch has no z_loss argument: the term (z_loss * lse**2 per row) is composed from its
    # own ops, as a training script would; the cost, not the weighting, is measured here

    def fn():
        c.xg.grad = None
        lse = torch.logsumexp(c.xg, 1)
        loss = F.cross_entropy(c.xg, c.yt, weight=c.wt, label_smoothing=SMOOTHING) + Z_LOSS * (lse * lse).mean()
        loss.backward()

    mbench(c, "opts-fwdbwd", f"{impl}-{options}", fn)
