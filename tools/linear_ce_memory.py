"""Peak extra memory of one ``fastce.linear_cross_entropy(_with_grad)`` call (Linux).

Run in a fresh process per measurement (the BLAS keeps its buffers once touched)::

    python tools/linear_ce_memory.py N H V [--grad] [--bias] [--chunk C | --budget B] [--noscipy]

Prints one JSON line: ``extra_rss_MB`` = peak resident set during the call (``VmHWM``,
reset through ``/proc/self/clear_refs``) minus the resident set before it minus the bytes
of the returned gradients; ``tracemalloc_extra_MB`` = NumPy's allocations in the same call
(tracemalloc sees NumPy's buffers, not the BLAS's); ``buffer_MB`` = the formula's logits
buffer, ``min(chunk, N) * V * itemsize``.  A tiny call first imports what the call
imports (SciPy's BLAS) and starts the BLAS threads, outside the measurement.  The figures
and their analysis are in BENCHMARKS.md ("Linear CE memory").
"""
import argparse
import json
import sys
import time
import tracemalloc

import numpy as np


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("N", type=int)
    p.add_argument("H", type=int)
    p.add_argument("V", type=int)
    p.add_argument("--grad", action="store_true", help="linear_cross_entropy_with_grad")
    p.add_argument("--bias", action="store_true")
    p.add_argument("--chunk", type=int, help="chunk_size")
    p.add_argument("--budget", type=int, help="memory_budget in bytes")
    p.add_argument("--noscipy", action="store_true", help="the NumPy-only d_weight path")
    p.add_argument("--f64", action="store_true", help="float64 instead of float32")
    a = p.parse_args(argv)

    import fastce
    import fastce._linear_call as lc
    if a.noscipy:
        lc._USE_SCIPY = False
    dt = np.dtype(np.float64 if a.f64 else np.float32)
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((a.N, a.H), dtype=dt)
    weight = rng.standard_normal((a.V, a.H), dtype=dt) / np.sqrt(a.H).astype(dt)
    bias = rng.standard_normal(a.V, dtype=dt) if a.bias else None
    target = rng.integers(0, a.V, a.N)
    tiny = np.ones((4, 3), dt)
    fastce.linear_cross_entropy_with_grad(tiny, tiny, np.zeros(4, np.int64), chunk_size=1,
                                          bias=np.zeros(4, dt))
    kw = {"bias": bias, "chunk_size": a.chunk, "memory_budget": a.budget}
    chunk = a.chunk or max(1, (a.budget or 64 * 2**20) // (a.V * dt.itemsize))
    if a.grad:
        def call():
            return fastce.linear_cross_entropy_with_grad(hidden, weight, target, **kw)
        out_bytes = hidden.nbytes + weight.nbytes + (bias.nbytes if bias is not None else 0)
    else:
        def call():
            return fastce.linear_cross_entropy(hidden, weight, target, **kw)
        out_bytes = 0

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    rss0 = _status_bytes("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - t0
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _status_bytes("VmHWM")
    del result
    mb = 1e6
    print(json.dumps({
        "args": " ".join(sys.argv[1:] if argv is None else argv), "chunk": chunk,
        "seconds": round(seconds, 2), "rss_before_MB": round(rss0 / mb, 1),
        "hwm_MB": round(hwm / mb, 1), "outputs_MB": round(out_bytes / mb, 1),
        "extra_rss_MB": round((hwm - rss0 - out_bytes) / mb, 1),
        "tracemalloc_extra_MB": round((tm_peak - out_bytes) / mb, 1),
        "buffer_MB": round(min(chunk, a.N) * a.V * dt.itemsize / mb, 1),
    }))


if __name__ == "__main__":
    main()
