"""GPU benchmarks: fastce's CUDA kernels vs torch on the GPU, next to the HBM floors.

Skipped (with the reason) without CuPy and a GPU.  Every timed call ends with a
stream synchronisation, so the times are wall-clock per call, launch overhead included.

    gpu-read-floor    cupy.max(x, axis=1): one streaming read of the logits
    gpu-copy-floor    cupy.copyto(buf, x): one read and one write
    fastce            fastce on cupy arrays ('mean'; fwd+bwd writes into a reused buffer
                      or in place)
    torch             torch.nn.functional.cross_entropy on the same memory (DLPack);
                      fwd+bwd through autograd

Reference shapes (float32), docs/design.md §5:
(65536, 10), (8192, 1000), (4096, 32000), (512, 128256), (1, 262144).

    pytest bench/test_bench_cuda.py --benchmark-group-by=param:shape,param:op
"""
import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="CuPy is not installed: no GPU benchmarks")
try:
    if cp.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("CuPy sees no GPU", allow_module_level=True)
except Exception as exc:
    pytest.skip(f"CuPy sees no usable GPU: {type(exc).__name__}: {exc}", allow_module_level=True)

import fastce  # noqa: E402

SHAPES = [(65536, 10), (8192, 1000), (4096, 32000), (512, 128256), (1, 262144)]


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def data(request):
    n, c = request.param
    rng = cp.random.default_rng(0)
    x = (rng.standard_normal((n, c), dtype=cp.float32) * 3)
    y = rng.integers(0, c, n).astype(cp.int64)
    fastce.cross_entropy_with_grad(x, y)  # compile + warm the kernels outside the timing
    cp.cuda.Device().synchronize()
    return request.param, x, y, cp.empty_like(x), cp.empty_like(x)


def _run(benchmark, fn, setup=None):
    sync = cp.cuda.Device().synchronize

    def call():
        fn()
        sync()
    if setup is None:
        benchmark.pedantic(call, rounds=30, warmup_rounds=3, iterations=1)
    else:
        def prep():
            setup()
            sync()
            return (), {}
        benchmark.pedantic(call, setup=prep, rounds=30, warmup_rounds=3)


def _info(benchmark, shape, op, impl, x):
    benchmark.extra_info.update(shape=f"{shape[0]}x{shape[1]}", op=op, impl=impl,
                                bytes=int(x.nbytes), device=cp.cuda.runtime.getDeviceProperties(
                                    cp.cuda.Device().id)["name"].decode())


@pytest.mark.parametrize("op", ["read-floor", "copy-floor"])
def test_gpu_floor(benchmark, data, op):
    shape, x, y, buf, _ = data
    _info(benchmark, shape, op, "cupy", x)
    if op == "read-floor":
        _run(benchmark, lambda: cp.max(x, axis=1))
    else:
        _run(benchmark, lambda: cp.copyto(buf, x))


@pytest.mark.parametrize("impl", ["fastce", "torch"])
def test_gpu_ce_fwd(benchmark, data, impl):
    shape, x, y, _, _ = data
    _info(benchmark, shape, "ce-fwd", impl, x)
    if impl == "fastce":
        _run(benchmark, lambda: fastce.cross_entropy(x, y))
        return
    torch = _torch_cuda()
    if torch is None:
        pytest.skip("torch with CUDA is not available")
    xt, yt = torch.from_dlpack(x), torch.from_dlpack(y)
    _run(benchmark, lambda: torch.nn.functional.cross_entropy(xt, yt))


@pytest.mark.parametrize("impl", ["fastce-out", "fastce-inplace", "torch-autograd"])
def test_gpu_ce_fwdbwd(benchmark, data, impl):
    shape, x, y, buf, scratch = data
    _info(benchmark, shape, "ce-fwdbwd", impl, x)
    if impl == "fastce-out":
        _run(benchmark, lambda: fastce.cross_entropy_with_grad(x, y, out=buf))
    elif impl == "fastce-inplace":
        _run(benchmark, lambda: fastce.cross_entropy_with_grad(scratch, y, inplace=True),
             setup=lambda: cp.copyto(scratch, x))
    else:
        torch = _torch_cuda()
        if torch is None:
            pytest.skip("torch with CUDA is not available")
        xt, yt = torch.from_dlpack(x), torch.from_dlpack(y)
        leaf = xt.detach().requires_grad_(True)

        def step():
            leaf.grad = None
            torch.nn.functional.cross_entropy(leaf, yt).backward()
        _run(benchmark, step)


def test_gpu_results_match_torch(data):
    """The benchmarked calls compute the right thing (vs torch on the GPU)."""
    torch = _torch_cuda()
    if torch is None:
        pytest.skip("torch with CUDA is not available")
    shape, x, y, buf, _ = data
    loss, g = fastce.cross_entropy_with_grad(x, y, out=buf)
    leaf = torch.from_dlpack(x).detach().requires_grad_(True)
    tl = torch.nn.functional.cross_entropy(leaf, torch.from_dlpack(y))
    tl.backward()
    np.testing.assert_allclose(float(loss), tl.item(), rtol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(g), leaf.grad.cpu().numpy(), rtol=1e-4,
                               atol=1e-6 * float(leaf.grad.abs().max()))


# ------------------------------------------------------------------ option forms, fwd+bwd
FORMS = ["float16", "probabilities", "zloss-softcap"]


def _form_inputs(form, x, y):
    """fastce's inputs and keyword arguments for one option form."""
    if form == "float16":
        return x.astype(cp.float16), y, {}
    if form == "probabilities":
        p = cp.exp(x - x.max(axis=1, keepdims=True))
        return x, p / p.sum(axis=1, keepdims=True), {}
    return x, y, dict(z_loss=1e-4, softcap=30.0)


def _torch_form_step(torch, form, leaf, target):
    """One torch fwd+bwd of the same loss (eager: torch has no fused z-loss/softcap)."""
    F = torch.nn.functional
    if form != "zloss-softcap":
        return lambda: F.cross_entropy(leaf, target).backward()

    def step():
        xc = 30.0 * torch.tanh(leaf / 30.0)
        (F.cross_entropy(xc, target) + 1e-4 * torch.logsumexp(xc, 1).square().mean()).backward()
    return step


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("impl", ["fastce-inplace", "torch-autograd"])
def test_gpu_options_fwdbwd(benchmark, data, form, impl):
    shape, x, y, _, _ = data
    xf, target, kw = _form_inputs(form, x, y)
    _info(benchmark, shape, f"fwdbwd-{form}", impl, xf)
    if impl == "fastce-inplace":
        scratch = cp.empty_like(xf)
        fastce.cross_entropy_with_grad(cp.copy(xf), target, inplace=True, **kw)  # compile
        _run(benchmark, lambda: fastce.cross_entropy_with_grad(scratch, target, inplace=True, **kw),
             setup=lambda: cp.copyto(scratch, xf))
        return
    torch = _torch_cuda()
    if torch is None:
        pytest.skip("torch with CUDA is not available")
    leaf = torch.from_dlpack(xf).detach().requires_grad_(True)
    step = _torch_form_step(torch, form, leaf, torch.from_dlpack(target))

    def run():
        leaf.grad = None
        step()
    _run(benchmark, run)
