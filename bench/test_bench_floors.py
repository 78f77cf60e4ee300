"""Benchmarks: the memory-bandwidth floors.

floor-read: one streaming read of the logits (bounds every forward); floor-copy: one
read + write of the logits into a reused buffer (bounds the fused forward + backward).
Each is measured three ways; the fastest is the floor.
"""
import numpy as np
import pytest


@pytest.mark.parametrize("impl", ["numpy", "numpy-threads", "torch"])
def test_floor_read(bench, case, nthreads, impl, pool):
    x = case.x
    if impl == "numpy":
        def fn():
            return np.max(x, axis=1)
    elif impl == "numpy-threads":
        parts = np.array_split(x.reshape(-1), nthreads)

        def fn():
            return list(pool.map(np.max, parts))
    else:
        torch, xt = case.torch, case.xt

        def fn():
            return torch.amax(xt, 1)
    bench("floor-read", impl, fn)


@pytest.mark.parametrize("impl", ["numpy", "numpy-threads", "torch"])
def test_floor_copy(bench, case, nthreads, impl, pool):
    x = case.x
    if impl == "numpy":
        buf = case.buf

        def fn():
            return np.copyto(buf, x)
    elif impl == "numpy-threads":
        src = np.array_split(x.reshape(-1), nthreads)
        dst = np.array_split(case.buf.reshape(-1), nthreads)

        def fn():
            return list(pool.map(np.copyto, dst, src))
    else:
        xt, buft = case.xt, case.buft

        def fn():
            return buft.copy_(xt)
    bench("floor-copy", impl, fn)
