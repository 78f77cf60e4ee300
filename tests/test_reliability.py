"""Runtime reliability: a forked child after a threaded call, huge thread counts, outputs
whose elements overlap. Crashes and hangs are tested in a child process with a timeout,
so that a regression fails the test instead of killing or stalling the suite."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastce


def run_child(code, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def test_forked_child_does_not_hang():
    """After a multi-threaded call, a fork-started worker runs serial instead of waiting in
    libgomp's barrier for threads that did not survive the fork."""
    proc = run_child("""
        import multiprocessing as mp
        import numpy as np, fastce
        x = np.zeros((2048, 4096), np.float32)
        t = np.zeros(2048, np.int64)
        first = fastce.cross_entropy(x, t, n_threads=2)
        with mp.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(fastce.cross_entropy, (x, t)).get(timeout=60)
            threads = pool.apply_async(fastce.get_num_threads).get(timeout=60)
        print(first == child, threads, fastce.get_num_threads() >= 1)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "1", "True"], proc.stdout


def test_huge_n_threads_is_clamped():
    """n_threads above the processors is clamped (as OpenMP's thread_limit), not millions
    of OS threads; above 2**20 it is an error naming the argument."""
    proc = run_child("""
        import numpy as np, fastce
        x = np.zeros((4096, 4096), np.float32)
        t = np.zeros(4096, np.int64)
        a = fastce.cross_entropy(x, t, n_threads=2**20)
        y = np.zeros((4096, 4096), np.float32)
        b = fastce.binary_cross_entropy_with_logits(x, y, n_threads=2**20)
        print(a == fastce.cross_entropy(x, t, n_threads=1),
              b == fastce.binary_cross_entropy_with_logits(x, y, n_threads=1))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"], proc.stdout
    with pytest.raises(ValueError, match="n_threads must be <= 1048576"):
        fastce.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64), n_threads=2**20 + 1)


@pytest.mark.parametrize("fn", ["softmax", "cross_entropy_with_grad", "bce"])
def test_out_with_overlapping_elements_is_refused(fn):
    x = np.random.default_rng(0).standard_normal((6, 40))
    base = np.zeros(80)
    out = np.lib.stride_tricks.as_strided(base, shape=(6, 40), strides=(8, 8))  # rows overlap
    with pytest.raises(ValueError, match="out has elements that share memory"):
        if fn == "softmax":
            fastce.softmax(x, out=out)
        elif fn == "cross_entropy_with_grad":
            fastce.cross_entropy_with_grad(x, np.arange(6), out=out)
        else:
            fastce.binary_cross_entropy_with_logits_with_grad(x, (x > 0).astype(float), out=out)
    assert not base.any()


def test_scratch_that_cannot_be_allocated_is_a_memory_error():
    """Rows too long for their scratch (broadcast views: no memory behind the input) raise
    MemoryError before anything is written, instead of a NULL dereference."""
    proc = run_child("""
        import numpy as np, fastce
        calls = [
            lambda: fastce.logsumexp(np.broadcast_to(np.float32(0), (2**36,))),
            lambda: fastce.cross_entropy(np.broadcast_to(np.float32(0), (1, 2**36)), np.array([0]),
                                         softcap=30.0),
            lambda: fastce.logsumexp(np.broadcast_to(np.float64(0), (3, 2**35)), axis=1),
        ]
        for call in calls:
            try:
                call()
                print("no error")
            except MemoryError as exc:
                print("MemoryError" if "scratch" in str(exc) else exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["MemoryError"] * 3, proc.stdout


def test_set_isa_during_calls_gives_one_isas_result():
    """Each call takes one snapshot of the kernel table: with other threads flipping
    set_isa, every result is bitwise one of the single-ISA results (the sweeps release the
    GIL, so the calls really overlap)."""
    import threading

    isas = fastce.supported_isas()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100_000, 10)).astype(np.float32)
    t = rng.integers(0, 10, 100_000)
    y = (x > 0).astype(np.float32)
    before = fastce.get_isa()
    want_ce, want_bce = set(), set()
    try:
        for isa in isas:
            fastce.set_isa(isa)
            want_ce.add(fastce.cross_entropy(x, t, reduction="none", n_threads=2).tobytes())
            want_bce.add(fastce.binary_cross_entropy_with_logits(x, y, n_threads=2).tobytes())
        stop = threading.Event()
        got, errors = [], []

        def flip():
            k = 0
            while not stop.is_set():
                fastce.set_isa(isas[k % len(isas)])
                k += 1

        def work():
            try:
                for _ in range(8):
                    got.append(("ce", fastce.cross_entropy(x, t, reduction="none", n_threads=2).tobytes()))
                    got.append(("bce", fastce.binary_cross_entropy_with_logits(x, y, n_threads=2).tobytes()))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        flipper = threading.Thread(target=flip)
        workers = [threading.Thread(target=work) for _ in range(4)]
        flipper.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        flipper.join()
    finally:
        fastce.set_isa(before)
    assert not errors, errors
    assert len(got) == 64
    assert all(r in (want_ce if kind == "ce" else want_bce) for kind, r in got)
