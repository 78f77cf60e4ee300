"""Benchmarks: fastce.torch (the torch front end) vs torch's own functions, and vs fastce's NumPy API.

Each benchmark times its implementations **interleaved** (one call of each in turn, the
order rotating every round), so that the ratios compare calls made under the same machine
state; on a loaded machine the ratios stay meaningful where separate runs would not.
pytest-benchmark records the first implementation's calls (``fastce.torch``); every
implementation's median and the ratios go into ``extra_info`` and into a table printed at
the end of the run:

``ce-fwd``      the loss, logits not requiring grad: ``fastce.torch.cross_entropy``,
                ``F.cross_entropy``, ``fastce.cross_entropy`` on the same memory (``numpy-api``)
``ce-fwdbwd``   ``loss.backward()`` on a leaf that requires grad (its ``.grad`` dropped
                before each call); ``numpy-api`` is ``fastce.cross_entropy_with_grad(x, t)``,
                which allocates its gradient as the wrapper must (the wrapper's gradient
                becomes ``.grad``, so no buffer can be reused across calls)
``lce-fwdbwd``  ``fastce.torch.linear_cross_entropy`` vs torch 2.13's ``F.linear_cross_entropy``
                (chunked: ``options=LinearCrossEntropyOptions()``) and the unfused
                ``F.cross_entropy(F.linear(h, W), t)``; gradients of hidden and weight;
                ``numpy-api`` is ``fastce.linear_cross_entropy_with_grad`` (NumPy's BLAS
                for the products, so not a wrapper-cost reference)

Ratios: ``torch/fastce.torch`` (> 1: fastce faster; target: >= 1 everywhere, >= 10 at
(4096, 32000) fwd+bwd) and ``fastce.torch/numpy-api`` (the wrapper's cost; target <= 1.10).

float32, reduction 'mean', random class-index targets. Shapes (the issue's grid): by
default (32, 10), (128, 10), (256, 100), (64, 1000); ``FASTCE_BENCH_TORCH_LARGE=1`` adds
(4096, 32000) and (512, 128256) (torch needs ~0.5 s and 1.5 GiB per fwd+bwd call at
4096 x 32000); ``FASTCE_BENCH_TORCH_SHAPES=NxC,...`` replaces them. Linear CE:
(256, 128, 8000) by default, (1024, 256, 32000) and (256, 256, 128256) with the large
set. Threads: bench/conftest.py's (1 and all cores; ``--bench-threads``); torch and fastce
get the same count. ``FASTCE_BENCH_TORCH_TIME``: seconds per benchmark (default 1).

    pytest bench/test_bench_torch.py --benchmark-only --bench-threads 1,2
    FASTCE_BENCH_TORCH_LARGE=1 pytest bench/test_bench_torch.py --benchmark-only --bench-threads 1,2
"""
import math
import os
import statistics
import time

import pytest

import fastce

torch = pytest.importorskip("torch")  # bench/ runs without torch too: skip this module then
F = torch.nn.functional
import fastce.torch as fce  # noqa: E402

SMALL = [(32, 10), (128, 10), (256, 100), (64, 1000)]
LARGE = [(4096, 32000), (512, 128256)]
LIN_SMALL = [(256, 128, 8000)]
LIN_LARGE = [(1024, 256, 32000), (256, 256, 128256)]


def _large():
    return os.environ.get("FASTCE_BENCH_TORCH_LARGE", "") not in ("", "0")


def _target_s():
    return float(os.environ.get("FASTCE_BENCH_TORCH_TIME", "1.0"))


def _shapes():
    text = os.environ.get("FASTCE_BENCH_TORCH_SHAPES")
    if text:
        return [tuple(int(d) for d in s.strip().split("x")) for s in text.split(",") if s.strip()]
    return SMALL + (LARGE if _large() else [])


def _lin_shapes():
    return LIN_SMALL + (LIN_LARGE if _large() else [])


@pytest.fixture
def nthreads(threads):
    """conftest's ``threads`` parameter (1 and all cores, or --bench-threads), for both libraries."""
    old_t, old_f = torch.get_num_threads(), fastce.get_num_threads()
    torch.set_num_threads(threads)
    fastce.set_num_threads(threads)
    yield threads
    torch.set_num_threads(old_t)
    fastce.set_num_threads(old_f)


_ROWS = []  # (op, shape, threads, {impl: median s}) for the summary table


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _ROWS:
        return
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:  # module teardown output is captured otherwise
        with capman.global_and_fixture_disabled():
            _print_summary()
    else:
        _print_summary()


def _print_summary():
    write = print
    load = _loadavg()
    write("")
    write(f"fastce.torch vs torch vs numpy-api, interleaved medians in us (load average at the end: {load})")
    write(f"{'op':<11} {'shape':<18} {'thr':>3} {'fastce.torch':>13} {'torch':>11} {'numpy-api':>10} "
          f"{'torch/fce':>10} {'fce/numpy':>10}")
    for op, shape, threads, med in _ROWS:
        f, t, n = med.get("fastce.torch"), med.get("torch"), med.get("numpy-api")
        t = t if t is not None else med.get("torch-lce-chunked")
        write(f"{op:<11} {'x'.join(map(str, shape)):<18} {threads:>3} {f * 1e6:>13.1f} "
              f"{t * 1e6:>11.1f} {n * 1e6:>10.1f} {t / f:>10.2f} {f / n:>10.2f}")
    _ROWS.clear()


def _loadavg():
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


_CACHE = {}


def _ce_inputs(shape):
    if shape not in _CACHE:
        _CACHE.clear()  # one large shape in memory at a time
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g) * 2
        t = torch.randint(0, shape[1], shape[:1], generator=g)
        _CACHE[shape] = (x, t)
    return _CACHE[shape]


def _interleaved(benchmark, impls, setup=None):
    """Time ``impls`` ({name: fn}, first = the recorded one) in rotating order; return medians.

    Each round calls every implementation once (``setup`` untimed before each call); a
    cheap call is repeated in batches so that the clock's resolution does not matter.
    """
    names = list(impls)
    for fn in impls.values():  # warm-up (and first-call allocations)
        if setup is not None:
            setup()
        fn()
    t0 = time.perf_counter()
    if setup is not None:
        setup()
    impls[names[0]]()
    once = max(time.perf_counter() - t0, 1e-7)
    batch = 1 if setup is not None else max(1, min(50, int(2e-4 / once)))
    rounds = max(3, min(2000, math.ceil(_target_s() / (once * batch * len(names)))))
    samples = {n: [] for n in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            fn = impls[name]
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[name].append((time.perf_counter() - t0) / batch)
    med = {n: statistics.median(v) for n, v in samples.items()}
    first = impls[names[0]]
    # pytest-benchmark's own table: a short run of the recorded implementation alone
    benchmark.pedantic(first, setup=setup, rounds=max(3, min(rounds, 30)), iterations=batch,
                       warmup_rounds=1)
    benchmark.extra_info.update({f"median_s[{n}]": v for n, v in med.items()})
    return med


def _record(benchmark, op, shape, nthreads, med, ref="torch"):
    benchmark.group = f"torch-{op}-{'x'.join(map(str, shape))}-t{nthreads}"
    benchmark.extra_info.update(op=op, shape=list(shape), dtype="float32", threads=nthreads,
                                load=_loadavg())
    f = med["fastce.torch"]
    benchmark.extra_info["torch/fastce.torch"] = med[ref] / f
    benchmark.extra_info["fastce.torch/numpy-api"] = f / med["numpy-api"]
    _ROWS.append((op, shape, nthreads, med))


@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: "x".join(map(str, s)))
def test_ce_fwd(benchmark, shape, nthreads):
    x, t = _ce_inputs(shape)
    xn, tn = x.numpy(), t.numpy()
    med = _interleaved(benchmark, {
        "fastce.torch": lambda: fce.cross_entropy(x, t),
        "torch": lambda: F.cross_entropy(x, t),
        "numpy-api": lambda: fastce.cross_entropy(xn, tn),
    })
    _record(benchmark, "ce-fwd", shape, nthreads, med)


@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: "x".join(map(str, s)))
def test_ce_fwdbwd(benchmark, shape, nthreads):
    x0, t = _ce_inputs(shape)
    xn, tn = x0.numpy(), t.numpy()
    x = x0.detach().requires_grad_()

    def setup():
        x.grad = None

    big = shape[0] * shape[1] >= 2**22  # batch=1 (setup per call) only where a call is long anyway
    impls = {
        "fastce.torch": lambda: fce.cross_entropy(x, t).backward(),
        "torch": lambda: F.cross_entropy(x, t).backward(),
        "numpy-api": lambda: fastce.cross_entropy_with_grad(xn, tn),
    }
    if not big:  # x.grad = None inside the timed call: a few hundred ns, the same for both
        impls["fastce.torch"] = lambda: (setup(), fce.cross_entropy(x, t).backward())
        impls["torch"] = lambda: (setup(), F.cross_entropy(x, t).backward())
    med = _interleaved(benchmark, impls, setup if big else None)
    assert x.grad is not None and x.grad.shape == x.shape
    _record(benchmark, "ce-fwdbwd", shape, nthreads, med)


@pytest.mark.parametrize("shape", _lin_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_linear_ce_fwdbwd(benchmark, shape, nthreads):
    n, hdim, v = shape
    g = torch.Generator().manual_seed(1)
    h = torch.randn(n, hdim, generator=g).requires_grad_()
    w = (torch.randn(v, hdim, generator=g) / math.sqrt(hdim)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    hn, wn, tn = h.detach().numpy(), w.detach().numpy(), t.numpy()
    opts = torch.nn.LinearCrossEntropyOptions()

    def setup():
        h.grad = w.grad = None

    med = _interleaved(benchmark, {
        "fastce.torch": lambda: fce.linear_cross_entropy(h, w, t).backward(),
        "torch-lce-chunked": lambda: F.linear_cross_entropy(h, w, t, options=opts).backward(),
        "torch-unfused": lambda: F.cross_entropy(F.linear(h, w), t).backward(),
        "numpy-api": lambda: fastce.linear_cross_entropy_with_grad(hn, wn, tn),
    }, setup)
    assert h.grad is not None and w.grad is not None
    _record(benchmark, "lce-fwdbwd", shape, nthreads, med, ref="torch-lce-chunked")
