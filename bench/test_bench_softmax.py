"""Benchmarks: logsumexp, log_softmax and softmax over the class axis.

fastce (allocating, and with a reused ``out=`` buffer) vs torch vs NumPy user code.
"""
import pytest

import fastce
from fastce.bench import numpy_log_softmax, numpy_logsumexp, numpy_softmax


@pytest.mark.parametrize("impl", ["fastce", "fastce-out", "torch", "numpy"])
def test_logsumexp(bench, case, nthreads, impl):
    x = case.x
    if impl == "fastce":
        def fn():
            return fastce.logsumexp(x, axis=1, n_threads=nthreads)
    elif impl == "fastce-out":
        out = case.row_buf

        def fn():
            return fastce.logsumexp(x, axis=1, out=out, n_threads=nthreads)
    elif impl == "torch":
        torch, xt = case.torch, case.xt

        def fn():
            return torch.logsumexp(xt, 1)
    else:
        def fn():
            return numpy_logsumexp(x)
    bench("lse", impl, fn)


@pytest.mark.parametrize("impl", ["fastce", "fastce-out", "torch", "numpy"])
def test_log_softmax(bench, case, nthreads, impl):
    x = case.x
    if impl == "fastce":
        def fn():
            return fastce.log_softmax(x, axis=1, n_threads=nthreads)
    elif impl == "fastce-out":
        out = case.buf

        def fn():
            return fastce.log_softmax(x, axis=1, out=out, n_threads=nthreads)
    elif impl == "torch":
        torch, xt = case.torch, case.xt

        def fn():
            return torch.log_softmax(xt, 1)
    else:
        def fn():
            return numpy_log_softmax(x)
    bench("log_softmax", impl, fn)


@pytest.mark.parametrize("impl", ["fastce", "fastce-out", "torch", "numpy"])
def test_softmax(bench, case, nthreads, impl):
    x = case.x
    if impl == "fastce":
        def fn():
            return fastce.softmax(x, axis=1, n_threads=nthreads)
    elif impl == "fastce-out":
        out = case.buf

        def fn():
            return fastce.softmax(x, axis=1, out=out, n_threads=nthreads)
    elif impl == "torch":
        torch, xt = case.torch, case.xt

        def fn():
            return torch.softmax(xt, 1)
    else:
        def fn():
            return numpy_softmax(x)
    bench("softmax", impl, fn)
