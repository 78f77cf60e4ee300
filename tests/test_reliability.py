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


def run_while_reconfiguring(work, n_workers, setters):
    """Run ``work(i)`` in ``n_workers`` threads while one thread per setter calls it with
    0, 1, 2, ... until the workers are done. Returns the exceptions the workers raised."""
    import threading

    stop = threading.Event()
    errors = []

    def flip(setter):
        k = 0
        while not stop.is_set():
            setter(k)
            k += 1

    def guarded(i):
        try:
            work(i)
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    flippers = [threading.Thread(target=flip, args=(f,)) for f in setters]
    workers = [threading.Thread(target=guarded, args=(i,)) for i in range(n_workers)]
    for th in flippers + workers:
        th.start()
    for th in workers:
        th.join()
    stop.set()
    for th in flippers:
        th.join()
    return errors


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


def test_huge_rows_take_bounded_scratch():
    """Rows too long for a row of scratch are split into chunks on every path (gathered,
    half precision, softcap, logit_scale, probability targets): the right result, with a
    resident set that grows by far less than one row (broadcast views: no memory behind
    the input). One row has more than 2**31 elements (64-bit chunk offsets)."""
    proc = run_child("""
        import resource, numpy as np, fastce
        C = 2**25 + 3  # a row of scratch would be 3 * C * 4 bytes = 384 MiB per thread
        zeros = lambda dt, shape: np.broadcast_to(dt(0), shape)
        calls = [
            ("strided", lambda: fastce.logsumexp(zeros(np.float32, (C,))), np.log(C)),
            ("float16", lambda: fastce.logsumexp(zeros(np.float16, (C,))), np.log(C)),
            ("float64", lambda: fastce.logsumexp(zeros(np.float64, (2, C)), axis=1)[1], np.log(C)),
            ("softcap", lambda: fastce.cross_entropy(zeros(np.float32, (1, C)), np.array([0]),
                                                     softcap=30.0), np.log(C)),
            ("logit_scale", lambda: fastce.cross_entropy(zeros(np.float32, (1, C)), np.array([0]),
                                                         logit_scale=2.0), np.log(C)),
            ("probabilities", lambda: fastce.cross_entropy(
                zeros(np.float32, (1, C)), np.broadcast_to(np.float32(1 / C), (1, C))), np.log(C)),
            ("2**31 + 7", lambda: fastce.cross_entropy(zeros(np.float32, (1, 2**31 + 7)),
                                                       np.array([0]), softcap=30.0),
             np.log(2.0**31 + 7)),
        ]
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name, call, want in calls:
            got = float(call())
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
            print(name, "ok" if abs(got - want) <= 1e-6 * want else f"{got} != {want}",
                  "bounded" if grown < 64 else f"grew {grown:.0f} MiB")
    """, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 7 and all(line.endswith(" ok bounded") for line in lines), proc.stdout


def test_scratch_that_cannot_be_allocated_is_a_memory_error():
    """Scratch that cannot be allocated (the chunk statistics of 2**60 broadcast elements)
    raises MemoryError before anything is written, instead of a NULL dereference."""
    proc = run_child("""
        import numpy as np, fastce
        x = np.broadcast_to(np.float32(0), (2**10, 2**50))
        calls = [
            lambda: fastce.logsumexp(x, axis=1),
            lambda: fastce.cross_entropy(x, np.zeros(2**10, np.int64), softcap=30.0),
        ]
        for call in calls:
            try:
                call()
                print("no error")
            except MemoryError as exc:
                print("MemoryError" if "scratch" in str(exc) else exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["MemoryError"] * 2, proc.stdout


def test_set_isa_during_calls_gives_one_isas_result():
    """Each call takes one snapshot of the kernel table: with other threads flipping
    set_isa, every result is bitwise one of the single-ISA results (the sweeps release the
    GIL, so the calls really overlap)."""
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
        got = []

        def work(_):
            for _ in range(8):
                got.append(("ce", fastce.cross_entropy(x, t, reduction="none", n_threads=2).tobytes()))
                got.append(("bce", fastce.binary_cross_entropy_with_logits(x, y, n_threads=2).tobytes()))

        errors = run_while_reconfiguring(work, 4, [lambda k: fastce.set_isa(isas[k % len(isas)])])
    finally:
        fastce.set_isa(before)
    assert not errors, errors
    assert len(got) == 64
    assert all(r in (want_ce if kind == "ce" else want_bce) for kind, r in got)


def _every_public_call():
    """Calls of every public computing function (both criteria included): each entry
    returns, per call it makes, the bytes of that call's results (fresh outputs every
    time). A call takes one kernel table; two calls may take two, so results are compared
    call by call. The shapes take every sweep: column blocks (C <= 32), rows, split rows,
    half precision."""
    rng = np.random.default_rng(7)
    x10 = rng.standard_normal((3000, 10)).astype(np.float32)
    t10 = rng.integers(0, 10, 3000)
    x700 = rng.standard_normal((300, 700))
    t700 = rng.integers(0, 700, 300)
    x_split = rng.standard_normal((2, 70_000)).astype(np.float32)
    t_split = np.array([3, 69_999])
    x16 = rng.standard_normal((64, 40)).astype(np.float16)
    w700 = rng.random(700) + 0.5
    p700 = rng.dirichlet(np.ones(700), 300)
    y = (rng.random((500, 33)) > 0.5).astype(np.float32)
    xb = rng.standard_normal((500, 33)).astype(np.float32)
    h = rng.standard_normal((200, 24)).astype(np.float32)
    W = rng.standard_normal((300, 24)).astype(np.float32)
    tl = rng.integers(0, 300, 200)
    lse700 = fastce.logsumexp(x700, axis=1)

    def b(*results):
        """one item per call: the bytes of its result (or of its tuple of results)"""
        return tuple(b"".join(np.asarray(a).tobytes() for a in (r if isinstance(r, tuple) else (r,)))
                     for r in results)

    # a criterion's backward reuses its forward's statistics: `between` runs in between
    def ce_criterion(between=None):
        crit = fastce.CrossEntropyLoss(weight=w700, label_smoothing=0.1)
        loss = crit(x700, t700)
        if between:
            between()
        return b(loss, crit.backward())

    def bce_criterion(between=None):
        crit = fastce.BCEWithLogitsLoss(pos_weight=np.full(33, 2.0, np.float32))
        loss = crit(xb, y)
        if between:
            between()
        return b(loss, crit.backward())

    return {
        "logsumexp": lambda: b(fastce.logsumexp(x700, axis=1), fastce.logsumexp(x10, axis=0)),
        "log_softmax": lambda: b(fastce.log_softmax(x10), fastce.log_softmax(x16)),
        "softmax": lambda: b(fastce.softmax(x_split), fastce.softmax(x700, axis=0)),
        "cross_entropy": lambda: b(
            fastce.cross_entropy(x10, t10, reduction="none"),
            fastce.cross_entropy(x700, t700, weight=w700, label_smoothing=0.2, z_loss=1e-3),
            fastce.cross_entropy(x_split, t_split, softcap=5.0),
            fastce.cross_entropy(x700, p700), fastce.cross_entropy(x16, t10[:64])),
        "cross_entropy_with_grad": lambda: b(
            fastce.cross_entropy_with_grad(x10, t10),
            fastce.cross_entropy_with_grad(x_split, t_split, label_smoothing=0.1),
            fastce.cross_entropy_with_grad(x700, p700, weight=w700)),
        "cross_entropy_backward": lambda: b(
            fastce.cross_entropy_backward(x700, t700, lse=lse700),
            fastce.cross_entropy_backward(x10, t10, np.linspace(0, 1, 3000), reduction="none")),
        "nll_loss": lambda: b(fastce.nll_loss(x700, t700, weight=w700)),
        "nll_loss_backward": lambda: b(fastce.nll_loss_backward(x700, t700, 0.5)),
        "binary_cross_entropy_with_logits": lambda: b(
            fastce.binary_cross_entropy_with_logits(xb, y, reduction="none")),
        "binary_cross_entropy_with_logits_with_grad": lambda: b(
            fastce.binary_cross_entropy_with_logits_with_grad(xb, y, pos_weight=np.float32(3.0))),
        "linear_cross_entropy": lambda: b(fastce.linear_cross_entropy(h, W, tl, chunk_size=64)),
        "linear_cross_entropy_with_grad": lambda: b(
            fastce.linear_cross_entropy_with_grad(h, W, tl, chunk_size=64)),
        "CrossEntropyLoss": ce_criterion,
        "BCEWithLogitsLoss": bce_criterion,
    }


def test_every_public_function_under_threads_and_reconfiguration():
    """Many Python threads call every public function at once while two others flip
    set_isa and set_num_threads: every call's result is bitwise one of its single-threaded
    results on the ISAs in play (results do not depend on the thread count)."""

    calls = _every_public_call()
    skip = {"ArgumentTypeError", "ArgumentValueError", "get_isa", "set_isa", "supported_isas",
            "get_num_threads", "set_num_threads", "show_config"}
    assert set(fastce.__all__) - skip == set(calls), "a public function is missing here"
    isas = fastce.supported_isas()
    isa0, threads0 = fastce.get_isa(), fastce.get_num_threads()
    want = {}  # (name, k): the k-th call's results on each ISA
    try:
        fastce.set_num_threads(1)
        for isa in isas:
            fastce.set_isa(isa)
            for name, call in calls.items():
                for k, r in enumerate(call()):
                    want.setdefault((name, k), set()).add(r)
        for name in ("CrossEntropyLoss", "BCEWithLogitsLoss"):  # forward on one ISA, backward on another
            for isa in isas:
                for isa2 in isas:
                    fastce.set_isa(isa)
                    want[name, 1].add(calls[name](lambda: fastce.set_isa(isa2))[1])
        got = []

        def work(seed):
            order = list(calls)
            np.random.default_rng(seed).shuffle(order)
            for _ in range(2):
                for name in order:
                    got.append((name, calls[name]()))

        errors = run_while_reconfiguring(work, 6, [lambda k: fastce.set_isa(isas[k % len(isas)]),
                                                   lambda k: fastce.set_num_threads(1 + k % 2)])
    finally:
        fastce.set_isa(isa0)
        fastce.set_num_threads(threads0)
    assert not errors, errors
    assert len(got) == 6 * 2 * len(calls)
    bad = sorted({(name, k) for name, rs in got for k, r in enumerate(rs) if r not in want[name, k]})
    assert not bad, f"results matching no single-ISA result: {bad}"
