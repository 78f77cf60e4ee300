"""Side-by-side benchmark of fastce against PyTorch and NumPy on the CPU.

Run it as ``python -m fastce.bench``.  On the built-in defaults it times, for each
reference shape (float32) and with all cores:

- fastce ``cross_entropy`` (the forward);
- fastce ``cross_entropy_with_grad`` (the fused forward + backward), once writing the
  gradient into a reused ``out=`` buffer and once with ``inplace=True`` on a copy of the
  logits made before each timed call (outside the timed region);
- torch ``F.cross_entropy`` forward, and forward + backward through autograd, with
  ``torch.set_num_threads`` set to the same thread count and tensors made by
  ``torch.from_numpy`` (no copies inside the timed region);
- float32 NumPy code as a user would write it (max, subtract, exp, sum, log, gather,
  and the gradient ``softmax - onehot``);
- the floors: one streaming read of the logits (``torch.amax(x, 1)``, ``np.max(x, 1)``
  and a threaded NumPy read; the fastest is the floor of the forward) and one read +
  write (``np.copyto`` / ``Tensor.copy_`` into a reused buffer; the floor of the fused
  forward + backward).

Every cell is warmed up, then timed call by call; the cells of one (shape, dtype,
threads) group are interleaved round by round so that drift on a shared machine hits
them all alike.  The number of timed calls adapts to the cost of a call (about half a
second per cell, between ``--min-repeat`` and ``--max-repeat`` calls) unless
``--repeat`` fixes it.  Reported times are medians.

Speed is a ratio: "speed-up" is ``torch time / fastce time`` and "fastce/floor" is
``fastce time / floor time``, both measured in the same run on the same inputs.
Memory is the peak of extra bytes allocated during one call: measured with
:mod:`tracemalloc` for fastce and NumPy (NumPy reports its buffers to it), and from the
process's resident-set high-water mark for torch (whose allocator tracemalloc cannot
see; Linux only, approximate for small shapes).

Examples
--------
::

    python -m fastce.bench                       # reference shapes, float32, all cores
    python -m fastce.bench --threads 1,2 --markdown
    python -m fastce.bench --shapes 4096x32000 --dtype float64 --repeat 5
    python -m fastce.bench --quick --json out.json --plot speedup.png
"""
import argparse
import datetime as _dt
import gc
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["REFERENCE_SHAPES", "QUICK_SHAPES", "MINIBATCH_SHAPES", "main", "bench_minibatch",
           "load_warning", "run_benchmarks", "format_tables", "make_inputs",
           "numpy_cross_entropy", "numpy_cross_entropy_with_grad", "numpy_logsumexp",
           "numpy_log_softmax", "numpy_softmax", "numpy_nll_loss"]

#: The reference shapes of ``docs/design.md`` §5, as (rows N, classes C).
REFERENCE_SHAPES = [(65536, 10), (8192, 1000), (4096, 32000), (512, 128256), (1, 262144)]
#: Small shapes for ``--quick``: the same spread of class counts, a few MB each.
QUICK_SHAPES = [(4096, 10), (256, 1000), (32, 32000), (4, 128256), (1, 65536)]

# Cell keys (also the keys of the JSON output).
FWD_CELLS = ("fastce_fwd", "torch_fwd", "numpy_fwd")
FB_CELLS = ("fastce_fb_out", "fastce_fb_inplace", "torch_fb", "numpy_fb")
READ_FLOORS = ("floor_read_torch", "floor_read_numpy", "floor_read_numpy_mt")
COPY_FLOORS = ("floor_copy_torch", "floor_copy_numpy", "floor_copy_numpy_mt")

_LABELS = {
    "fastce_fwd": "fastce cross_entropy",
    "torch_fwd": "torch F.cross_entropy",
    "numpy_fwd": "numpy forward",
    "fastce_fb_out": "fastce fused out=",
    "fastce_fb_inplace": "fastce fused inplace",
    "torch_fb": "torch fwd+bwd autograd",
    "numpy_fb": "numpy fwd+bwd",
    "floor_read_torch": "floor torch.amax(x, 1)",
    "floor_read_numpy": "floor np.max(x, axis=1)",
    "floor_read_numpy_mt": "floor threaded np.max",
    "floor_copy_torch": "floor Tensor.copy_",
    "floor_copy_numpy": "floor np.copyto",
    "floor_copy_numpy_mt": "floor threaded np.copyto",
}


# --------------------------------------------------------------------------------------
# NumPy as a user would write it (float32 stays float32)
# --------------------------------------------------------------------------------------
def numpy_cross_entropy(x, y):
    """Mean softmax cross-entropy written in plain NumPy, as a user would.

    Parameters
    ----------
    x : ndarray of shape (N, C)
        Logits.
    y : ndarray of shape (N,)
        Integer class targets in ``[0, C)``.

    Returns
    -------
    loss : NumPy scalar of ``x.dtype``
    """
    z = x - x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return np.mean(lse - z[np.arange(x.shape[0]), y])


def numpy_cross_entropy_with_grad(x, y):
    """Mean softmax cross-entropy and its gradient in plain NumPy, as a user would.

    Parameters
    ----------
    x : ndarray of shape (N, C)
        Logits.
    y : ndarray of shape (N,)
        Integer class targets in ``[0, C)``.

    Returns
    -------
    loss : NumPy scalar of ``x.dtype``
    grad : ndarray of shape (N, C)
        ``(softmax(x) - onehot(y)) / N``.
    """
    n = x.shape[0]
    rows = np.arange(n)
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) - z[rows, y])
    grad = e / s
    grad[rows, y] -= 1
    grad /= n
    return loss, grad


def numpy_logsumexp(x):
    """Row-wise log-sum-exp of a 2-D array in plain NumPy, as a user would write it."""
    m = x.max(axis=1, keepdims=True)
    return np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]


def numpy_log_softmax(x):
    """Row-wise log-softmax of a 2-D array in plain NumPy, as a user would write it."""
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def numpy_softmax(x):
    """Row-wise softmax of a 2-D array in plain NumPy, as a user would write it."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_nll_loss(log_probs, y):
    """Mean negative log-likelihood of the targets' log-probabilities in plain NumPy."""
    return -np.mean(log_probs[np.arange(log_probs.shape[0]), y])


# --------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------
def make_inputs(shape, dtype="float32", seed=0):
    """Random logits and targets, the same for every implementation.

    Parameters
    ----------
    shape : (int, int)
        (N, C).
    dtype : {"float32", "float64"}
    seed : int

    Returns
    -------
    x : C-contiguous ndarray of shape (N, C) and ``dtype``
        Standard normal times 4 (a spread like trained logits').
    y : ndarray of shape (N,), int64
        Targets drawn uniformly from ``[0, C)`` (torch wants int64).
    """
    n, c = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c), dtype=np.dtype(dtype).type)
    x *= 4
    y = rng.integers(0, c, size=n, dtype=np.int64)
    return x, y


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_shapes(text):
    """Parse ``"4096x32000,8x10"`` into ``[(4096, 32000), (8, 10)]``.

    Parameters
    ----------
    text : str
        Comma-separated ``NxC`` items, N >= 1 and C >= 1.

    Returns
    -------
    list of tuple of int
    """
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        try:
            n, c = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--shapes: expected items like 4096x32000, got {item!r}"
            ) from None
        if n < 1 or c < 1:
            raise argparse.ArgumentTypeError(f"--shapes: N and C must be >= 1, got {item!r}")
        shapes.append((n, c))
    if not shapes:
        raise argparse.ArgumentTypeError("--shapes: no shape given")
    return shapes


def _parse_threads(text):
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            t = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--threads: expected integers like 1,2, got {item!r}") from None
        if t < 1:
            raise argparse.ArgumentTypeError(f"--threads: must be >= 1, got {t}")
        out.append(t)
    if not out:
        raise argparse.ArgumentTypeError("--threads: no thread count given")
    return out


def _parse_dtypes(text):
    out = []
    for item in text.split(","):
        item = item.strip()
        if item not in ("float32", "float64"):
            raise argparse.ArgumentTypeError(f"--dtype: expected float32 or float64, got {item!r}")
        out.append(item)
    return out


def format_ms(ms):
    """Format a time in milliseconds with about three significant digits (``-`` for None)."""
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms >= 99.95:
        return f"{ms:.0f}"
    if ms >= 9.995:
        return f"{ms:.1f}"
    if ms >= 0.9995:
        return f"{ms:.2f}"
    return f"{ms:.3g}"


def format_ratio(r):
    """Format a ratio as ``12.3x`` (``-`` for None)."""
    if r is None or not math.isfinite(r):
        return "-"
    if r >= 99.95:
        return f"{r:.0f}x"
    if r >= 9.995:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def format_bytes(b):
    """Format a byte count with binary units (``-`` for None)."""
    if b is None:
        return "-"
    b = max(0, int(b))
    if b < 1024:
        return f"{b} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        b /= 1024.0
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if b >= 100 else f"{b:.1f} {unit}"
    return "-"  # pragma: no cover


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


# --------------------------------------------------------------------------------------
# Progress bar (stderr): tqdm when importable, else a small built-in one
# --------------------------------------------------------------------------------------
class _Progress:
    """A minimal progress bar on a stream; silent when disabled."""

    def __init__(self, total, enabled=True, stream=None, width=28):
        self.total = max(1, total)
        self.n = 0
        self.desc = ""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.t0 = time.perf_counter()
        self._last_len = 0
        self._render()

    def set_description(self, desc):
        self.desc = desc
        self._render()

    def update(self, k=1):
        self.n = min(self.total, self.n + k)
        self._render()

    def _render(self):
        if not self.enabled:
            return
        frac = self.n / self.total
        fill = int(round(frac * self.width))
        el = int(time.perf_counter() - self.t0)
        line = (
            f"{self.desc[:52]:<52} [{'#' * fill}{'.' * (self.width - fill)}] "
            f"{self.n}/{self.total} {el // 60}:{el % 60:02d}"
        )
        pad = max(0, self._last_len - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._last_len = len(line)

    def close(self):
        if self.enabled:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()


def _make_progress(total, enabled):
    if enabled:
        try:
            from tqdm.auto import tqdm  # optional
        except Exception:  # noqa: BLE001 - any import problem: fall back
            tqdm = None
        if tqdm is not None:
            return tqdm(total=total, file=sys.stderr, leave=False, unit="cell", dynamic_ncols=True)
    return _Progress(total, enabled=enabled)


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------
class Policy:
    """How many times to call each cell.

    Parameters
    ----------
    repeat : int or None
        Exact number of timed calls per cell; None adapts to the cost of a call.
    target : float
        Adaptive mode: aim for about this many seconds of timed calls per cell.
    min_repeat, max_repeat : int
        Adaptive mode: bounds on the number of timed calls.
    warmup : int
        Untimed calls before timing (an adaptive run adds short calibration calls).
    rounds : int
        The timed calls of each cell are split into this many blocks, interleaved with
        the other cells' blocks.
    switch_pause : float
        Seconds of sleep when the next block uses the other thread runtime (torch's
        OpenMP vs fastce's), so that the last one's spinning threads go to sleep.
    """

    def __init__(self, repeat=None, target=0.5, min_repeat=5, max_repeat=100, warmup=1, rounds=5,
                 switch_pause=0.03):
        self.rounds = rounds
        self.switch_pause = switch_pause
        self.repeat = repeat
        self.target = target
        self.min_repeat = min_repeat
        self.max_repeat = max(max_repeat, min_repeat)
        self.warmup = warmup


class _Cell:
    __slots__ = ("key", "fn", "setup", "times", "planned", "error", "per_call", "blocks")

    def __init__(self, key, fn, setup=None):
        self.key = key
        self.fn = fn
        self.setup = setup
        self.times = []
        self.planned = 0
        self.error = None
        self.per_call = 0.0
        self.blocks = []

    def once(self):
        if self.setup is not None:
            self.setup()
        t0 = time.perf_counter()
        self.fn()
        return time.perf_counter() - t0


def _family(key):
    """Which thread runtime a cell uses: torch ships its own OpenMP, fastce uses the system's."""
    return "torch" if key.startswith(("torch", "floor_read_torch", "floor_copy_torch")) else "other"


class _Switcher:
    """Sleeps when the next call belongs to the other thread runtime.

    After a parallel region, an OpenMP runtime's worker threads spin for a while (up to
    milliseconds with GNU libgomp's defaults) before they sleep; torch and fastce each
    have their own runtime, and on a machine with few cores the spinning threads of one
    slow the other down.  A pause at every switch lets them go to sleep first.
    """

    def __init__(self, pause):
        self.pause = pause
        self.last = None

    def __call__(self, key):
        fam = _family(key)
        if self.last is not None and fam != self.last and self.pause > 0:
            time.sleep(self.pause)
        self.last = fam


def _run_cells(cells, policy, progress, desc):
    """Warm up and calibrate every cell, then time them interleaved, block by block.

    The timed calls of each cell are split into ``policy.rounds`` blocks, and the blocks
    of all cells alternate, so that drift on a shared machine hits every cell alike.
    Within a block the calls run back to back.  The cells are ordered so that those
    using torch's thread pool run together, with a pause at each switch of runtime (see
    :class:`_Switcher`); a cheap cell also gets one untimed call before its block, to
    wake its own worker threads.
    """
    cells = sorted(cells, key=lambda c: _family(c.key) == "torch")  # stable: keeps the given order
    switch = _Switcher(policy.switch_pause)
    for cell in cells:
        progress.set_description(f"{desc} warm-up {cell.key}")
        switch(cell.key)
        try:
            for _ in range(max(1, policy.warmup)):
                t = cell.once()
            est = [t]
            if policy.repeat is not None:
                cell.planned = policy.repeat
            else:
                # Calibration: a few more untimed calls (short ones only) to estimate the cost.
                spent = t
                while spent < min(0.1, policy.target / 4) and len(est) < 20:
                    t = cell.once()
                    est.append(t)
                    spent += t
                want = math.ceil(policy.target / max(statistics.median(est), 1e-9))
                cell.planned = int(min(policy.max_repeat, max(policy.min_repeat, want)))
            cell.per_call = statistics.median(est)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            cell.error = f"{type(exc).__name__}: {exc}"
            cell.planned = 0
        progress.update(1)

    active = [c for c in cells if c.planned > 0]
    for cell in active:
        k = max(1, min(policy.rounds, cell.planned))
        q, r = divmod(cell.planned, k)
        cell.blocks = [q + (1 if i < r else 0) for i in range(k)]
    rounds = max((len(c.blocks) for c in active), default=0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            progress.set_description(f"{desc} round {r + 1}/{rounds}")
            for cell in active:
                if cell.error is not None or r >= len(cell.blocks):
                    continue
                switch(cell.key)
                try:
                    if cell.per_call < 0.01:
                        cell.once()
                    for _ in range(cell.blocks[r]):
                        cell.times.append(cell.once())
                except Exception as exc:  # noqa: BLE001
                    cell.error = f"{type(exc).__name__}: {exc}"
                if cell.error is not None or r == len(cell.blocks) - 1:
                    progress.update(1)
    finally:
        if gc_was_enabled:
            gc.enable()
    for cell in cells:
        if cell.planned == 0:
            progress.update(1)  # never timed: still one step of the bar


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _rss_peak_supported():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
        _proc_status_kib("VmRSS")
        return True
    except (OSError, KeyError, ValueError):
        return False


def peak_extra_tracemalloc(fn, setup=None):
    """Peak bytes allocated (as seen by tracemalloc) during one call of ``fn``.

    Parameters
    ----------
    fn : callable
        The call to measure; its result is dropped after the measurement.
    setup : callable, optional
        Run first, outside the measurement.

    Returns
    -------
    int
    """
    if setup is not None:
        setup()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    del result
    return max(0, peak - base)


def peak_extra_rss(fn, setup=None):
    """Peak growth of the resident set during one call of ``fn`` (Linux; approximate).

    Resets the kernel's high-water mark through ``/proc/self/clear_refs``, calls ``fn``
    and reads ``VmHWM``.  Memory the allocator reuses without new page faults is not
    counted, so small allocations can be missed; large ones (fresh ``mmap``) are seen.

    Returns
    -------
    int or None
        None where the high-water mark cannot be reset.
    """
    if setup is not None:
        setup()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_kib("VmRSS")
        result = fn()
        peak = _proc_status_kib("VmHWM")
    except (OSError, KeyError, ValueError):
        return None
    del result
    return max(0, peak - base) * 1024


def peak_extra_torch(torch, fn, setup=None):
    """Peak bytes held by torch's CPU allocator during one call of ``fn``.

    Replays the allocation and free events recorded by torch's profiler
    (``profile_memory=True``) in time order.  The profiler's own chatter on stderr is
    silenced for the duration of the call.

    Returns
    -------
    int or None
        None where the profiler gives no memory events (a torch without them).
    """
    if setup is not None:
        setup()
    sys.stderr.flush()
    saved = devnull = None
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    except OSError:
        saved = None
    try:
        with torch.autograd.profiler.profile(profile_memory=True) as prof:
            result = fn()
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if devnull is not None:
            os.close(devnull)
    del result
    try:
        events = [e for e in prof.kineto_results.events() if e.name() == "[memory]"
                  and "CPU" in str(e.device_type())]
    except Exception:  # noqa: BLE001 - private API: give up quietly
        return None
    if not events:
        return None
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _max_rel_diff(a, b, block_elems=1 << 22):
    """max|a - b| / max|b|, in row blocks (no N x C temporaries)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim < 2:
        den = float(np.max(np.abs(b))) if b.size else 0.0
        num = float(np.max(np.abs(a.astype(np.float64) - b))) if b.size else 0.0
        return num / den if den > 0 else num
    rows = max(1, block_elems // max(1, a.shape[1]))
    num = den = 0.0
    for i in range(0, a.shape[0], rows):
        aa = a[i : i + rows].astype(np.float64)
        bb = b[i : i + rows].astype(np.float64)
        num = max(num, float(np.max(np.abs(aa - bb))))
        den = max(den, float(np.max(np.abs(bb))))
    return num / den if den > 0 else num


# --------------------------------------------------------------------------------------
# One (shape, dtype) across thread counts
# --------------------------------------------------------------------------------------
def _bench_shape(shape, dtype, threads_list, policy, progress, *, torch, F, use_numpy,
                 measure_memory, rss_ok, seed):
    import fastce

    n, c = shape
    x, y = make_inputs(shape, dtype, seed)
    buf = np.empty_like(x)       # out= buffer of the fused call, destination of the copy floors
    scratch = np.empty_like(x)   # the logits copy that inplace=True overwrites
    np.copyto(buf, x)            # touch every page once, outside any timing
    np.copyto(scratch, x)

    if torch is not None:
        xt = torch.from_numpy(x)                       # shares memory, no copy
        xg = torch.from_numpy(x).requires_grad_(True)  # leaf for autograd
        yt = torch.from_numpy(y)
        buf_t = torch.from_numpy(buf)

    results = []
    for threads in threads_list:
        desc = f"{n}x{c} {dtype} t{threads}:"
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        flat_x = x.reshape(-1)
        flat_buf = buf.reshape(-1)
        x_parts = np.array_split(flat_x, threads)
        buf_parts = np.array_split(flat_buf, threads)

        def copy_to_scratch():
            np.copyto(scratch, x)

        holder = []

        def torch_fb_setup():
            xg.grad = None      # zero_grad(set_to_none=True): release the last gradient untimed
            holder.clear()

        def torch_fb():
            loss = F.cross_entropy(xg, yt)
            loss.backward()
            holder.append(loss)
            return loss

        cells = {
            "fastce_fwd": _Cell("fastce_fwd", lambda: fastce.cross_entropy(x, y, n_threads=threads)),
            "fastce_fb_out": _Cell(
                "fastce_fb_out",
                lambda: fastce.cross_entropy_with_grad(x, y, out=buf, n_threads=threads),
            ),
            "fastce_fb_inplace": _Cell(
                "fastce_fb_inplace",
                lambda: fastce.cross_entropy_with_grad(scratch, y, inplace=True, n_threads=threads),
                setup=copy_to_scratch,
            ),
            "floor_read_numpy": _Cell("floor_read_numpy", lambda: np.max(x, axis=1)),
            "floor_copy_numpy": _Cell("floor_copy_numpy", lambda: np.copyto(buf, x)),
        }
        if pool is not None:
            cells["floor_read_numpy_mt"] = _Cell(
                "floor_read_numpy_mt", lambda: list(pool.map(np.max, x_parts))
            )
            cells["floor_copy_numpy_mt"] = _Cell(
                "floor_copy_numpy_mt", lambda: list(pool.map(np.copyto, buf_parts, x_parts))
            )
        if torch is not None:
            cells["torch_fwd"] = _Cell("torch_fwd", lambda: F.cross_entropy(xt, yt))
            cells["torch_fb"] = _Cell("torch_fb", torch_fb, setup=torch_fb_setup)
            cells["floor_read_torch"] = _Cell("floor_read_torch", lambda: torch.amax(xt, 1))
            cells["floor_copy_torch"] = _Cell("floor_copy_torch", lambda: buf_t.copy_(xt))
        if use_numpy:
            cells["numpy_fwd"] = _Cell("numpy_fwd", lambda: numpy_cross_entropy(x, y))
            cells["numpy_fb"] = _Cell("numpy_fb", lambda: numpy_cross_entropy_with_grad(x, y))

        old_torch_threads = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(threads)
        notes = []
        check = {}
        memory = {}
        try:
            # Correctness check first (untimed; doubles as a first warm-up).
            progress.set_description(f"{desc} checking results")
            try:
                loss_f = fastce.cross_entropy(x, y, n_threads=threads)
                loss_g, grad_out = fastce.cross_entropy_with_grad(x, y, out=buf, n_threads=threads)
                if torch is not None:
                    loss_t = F.cross_entropy(xt, yt).item()
                    check["loss_rel_diff_vs_torch"] = abs(float(loss_f) - loss_t) / max(abs(loss_t), 1e-30)
                    xg.grad = None
                    F.cross_entropy(xg, yt).backward()
                    check["grad_rel_diff_vs_torch"] = _max_rel_diff(grad_out, xg.grad.numpy())
                    xg.grad = None
                check["fused_loss_rel_diff"] = abs(float(loss_g) - float(loss_f)) / max(abs(float(loss_f)), 1e-30)
                tol = 1e-4 if dtype == "float32" else 1e-10
                for k, v in check.items():
                    if not (v <= tol):
                        notes.append(f"{n}x{c} {dtype} t{threads}: {k} = {v:.3g} exceeds {tol:g}")
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{n}x{c} {dtype} t{threads}: result check failed: {type(exc).__name__}: {exc}")

            if measure_memory:
                progress.set_description(f"{desc} measuring memory")
                mem_cells = [k for k in ("fastce_fwd", "fastce_fb_out", "fastce_fb_inplace",
                                         "numpy_fwd", "numpy_fb") if k in cells]
                for k in mem_cells:
                    try:
                        memory[k] = {"tracemalloc": peak_extra_tracemalloc(cells[k].fn, cells[k].setup)}
                        if rss_ok and k.startswith("fastce"):
                            # Cross-check: C-level allocations are invisible to tracemalloc.
                            memory[k]["rss"] = peak_extra_rss(cells[k].fn, cells[k].setup)
                    except Exception as exc:  # noqa: BLE001
                        memory[k] = {"error": f"{type(exc).__name__}: {exc}"}
                for k in ("torch_fwd", "torch_fb"):
                    if k not in cells:
                        continue
                    try:
                        memory[k] = {"torch_profiler": peak_extra_torch(torch, cells[k].fn, cells[k].setup)}
                    except Exception as exc:  # noqa: BLE001
                        memory[k] = {"error": f"{type(exc).__name__}: {exc}"}
                holder.clear()
                if torch is not None:
                    xg.grad = None
                # O(N) contract: flag an N x C-sized allocation in the forward or in-place calls.
                nc_bytes = x.nbytes
                # (The resident set only sees large allocations: trust it from 64 MiB logits on.)
                for k in ("fastce_fwd", "fastce_fb_out", "fastce_fb_inplace"):
                    m = memory.get(k, {})
                    for method, min_bytes in (("tracemalloc", 1 << 20), ("rss", 64 << 20)):
                        b = m.get(method)
                        if b is not None and nc_bytes >= min_bytes and b >= nc_bytes // 4:
                            notes.append(
                                f"{n}x{c} {dtype} t{threads}: {_LABELS[k]} allocated {format_bytes(b)} "
                                f"({method}; logits are {format_bytes(nc_bytes)}): not O(N)"
                            )
                            break

            ordered = [cells[k] for k in (*FWD_CELLS, *FB_CELLS, *READ_FLOORS, *COPY_FLOORS) if k in cells]
            _run_cells(ordered, policy, progress, desc)
        finally:
            if torch is not None:
                torch.set_num_threads(old_torch_threads)
                xg.grad = None
            holder.clear()
            if pool is not None:
                pool.shutdown()

        times = {}
        for k, cell in cells.items():
            if cell.error is not None:
                notes.append(f"{n}x{c} {dtype} t{threads}: {_LABELS[k]} failed: {cell.error}")
                times[k] = {"error": cell.error}
            elif cell.times:
                ms = [t * 1e3 for t in cell.times]
                times[k] = {
                    "median_ms": statistics.median(ms),
                    "min_ms": min(ms),
                    "repeats": len(ms),
                    "samples_ms": ms,
                }
        results.append(_derive({
            "shape": [n, c],
            "dtype": dtype,
            "threads": threads,
            "times": times,
            "memory_bytes": memory,
            "check": check,
            "notes": notes,
        }))
    return results


def _median(rec, key):
    t = rec["times"].get(key)
    return None if t is None else t.get("median_ms")


def _derive(rec):
    """Add floors, speed-ups and floor ratios to one result record."""
    d = {}
    for kind, keys in (("read", READ_FLOORS), ("copy", COPY_FLOORS)):
        cand = {k: _median(rec, k) for k in keys if _median(rec, k) is not None}
        if cand:
            best = min(cand, key=cand.get)
            d[f"floor_{kind}_ms"] = cand[best]
            d[f"floor_{kind}_impl"] = best
            t_np, t_t = cand.get(f"floor_{kind}_numpy"), cand.get(f"floor_{kind}_torch")
            big = rec["shape"][0] * rec["shape"][1] * np.dtype(rec["dtype"]).itemsize >= (16 << 20)
            if big and t_np and t_t and max(t_np, t_t) / min(t_np, t_t) > 1.5:
                rec["notes"].append(
                    f"{rec['shape'][0]}x{rec['shape'][1]} {rec['dtype']} t{rec['threads']}: "
                    f"{kind} floors differ: torch {format_ms(t_t)} ms, numpy {format_ms(t_np)} ms"
                    + (f", threaded numpy {format_ms(cand[f'floor_{kind}_numpy_mt'])} ms"
                       if f"floor_{kind}_numpy_mt" in cand else "")
                    + f"; floor = {_LABELS[best]}"
                )
        else:
            d[f"floor_{kind}_ms"] = None
            d[f"floor_{kind}_impl"] = None
    f, t = _median(rec, "fastce_fwd"), _median(rec, "torch_fwd")
    d["fwd_speedup_vs_torch"] = _ratio(t, f)
    d["fwd_speedup_vs_numpy"] = _ratio(_median(rec, "numpy_fwd"), f)
    d["fwd_over_floor"] = _ratio(f, d["floor_read_ms"])
    tb = _median(rec, "torch_fb")
    for k, short in (("fastce_fb_out", "out"), ("fastce_fb_inplace", "inplace")):
        fk = _median(rec, k)
        d[f"fb_{short}_speedup_vs_torch"] = _ratio(tb, fk)
        d[f"fb_{short}_speedup_vs_numpy"] = _ratio(_median(rec, "numpy_fb"), fk)
        d[f"fb_{short}_over_floor"] = _ratio(fk, d["floor_copy_ms"])
    rec["derived"] = d
    return rec


# --------------------------------------------------------------------------------------
# Minibatch shapes: the per-call overhead, in microseconds
# --------------------------------------------------------------------------------------
#: Shapes of a training step's minibatch (N, C): the fixed cost of a call dominates.
MINIBATCH_SHAPES = [(1, 2), (32, 10), (128, 10), (256, 100), (64, 1000)]
MINI_CELLS = ("fastce_fwd", "torch_fwd", "fastce_fb", "torch_fb", "ufunc")
MINI_COLUMNS = ["shape", "dtype", "threads", "fastce fwd us", "torch fwd us", "torch/fastce fwd",
                "fastce fwd+bwd us", "torch fwd+bwd us", "torch/fastce fwd+bwd", "np.add us",
                "fwd/np.add", "fwd+bwd/np.add"]


def _autorange(fn, min_s):
    """Like :meth:`timeit.Timer.autorange`: loop length whose run takes >= ``min_s``.

    After one warm-up call; a single call is judged by the fastest of three, so that one
    preempted call on a busy machine does not make a microsecond call be timed alone."""
    fn()
    number = 1
    while True:
        t = math.inf
        for _ in range(3 if number == 1 else 1):
            t0 = time.perf_counter()
            for _ in itertools.repeat(None, number):
                fn()
            t = min(t, time.perf_counter() - t0)
        if t >= min_s or number >= 1 << 24:
            return number, t
        number *= max(2, min(10, int(math.ceil(min_s / max(t, 1e-9)))))


def _time_loops(cells, samples, min_s, pause):
    """Per-call medians in microseconds: ``samples`` loops of each cell, interleaved.

    Each sample is one timeit-style loop (``number`` back-to-back calls, the garbage
    collector off), so that a microsecond call is not swamped by the timer; the cells
    take turns sample by sample, with a pause when the thread runtime changes.
    """
    switch = _Switcher(pause)
    plan = {}
    for key, fn in cells.items():
        switch(key)
        fn()  # warm-up
        plan[key] = _autorange(fn, min_s)[0]
    per_call = {k: [] for k in cells}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(samples):
            for key, fn in cells.items():
                switch(key)
                number = plan[key]
                t0 = time.perf_counter()
                for _ in itertools.repeat(None, number):
                    fn()
                per_call[key].append((time.perf_counter() - t0) / number * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {k: {"median_us": statistics.median(v), "min_us": min(v), "number": plan[k],
                "samples_us": v} for k, v in per_call.items()}


def bench_minibatch(shapes=None, threads=(1,), *, torch=None, F=None, samples=11, min_s=0.01,
                    pause=0.03, progress=None, seed=0):
    """Time the minibatch shapes: fastce and torch, forward and forward + backward.

    Parameters
    ----------
    shapes : list of (int, int), optional
        Default :data:`MINIBATCH_SHAPES`.
    threads : sequence of int
        Thread counts (fastce ``n_threads``; ``torch.set_num_threads``).
    torch, F : modules, optional
        ``torch`` and ``torch.nn.functional``; None leaves torch out.
    samples : int
        Timed loops per cell; the median is reported.
    min_s : float
        Seconds per loop (the number of calls in a loop is chosen to reach it).
    pause : float
        Seconds of sleep when switching between torch's thread runtime and the others.
    progress : progress bar, optional
    seed : int

    Returns
    -------
    list of dict
        One record per (shape, threads): ``shape``, ``dtype`` (float32), ``threads``,
        ``times_us`` (per cell: median, min, loop length and samples in microseconds),
        ``derived`` (``fwd_speedup_vs_torch`` = torch / fastce, ``fb_speedup_vs_torch``,
        ``fwd_over_ufunc`` = fastce / ``np.add``, ``fb_over_ufunc``), ``check`` and
        ``notes``.  The cells are ``fastce.cross_entropy``,
        ``fastce.cross_entropy_with_grad`` (gradient into a reused ``out=`` buffer),
        torch's ``F.cross_entropy`` forward and forward + backward (autograd, the same
        tensors every call, the gradient released before each call as ``zero_grad``
        does), and ``np.add(a, b, out=c)`` on float32 arrays of the logits' size: the
        cost of one NumPy ufunc call, the least a NumPy-level call can cost.
    """
    import fastce

    out = []
    for shape in shapes or MINIBATCH_SHAPES:
        n, c = shape
        x, y = make_inputs(shape, "float32", seed)
        buf = np.empty_like(x)
        a, b, dst = x.copy(), x.copy(), np.empty_like(x)
        if torch is not None:
            xt = torch.from_numpy(x)
            xg = torch.from_numpy(x.copy()).requires_grad_(True)
            yt = torch.from_numpy(y)

            def torch_fb():
                xg.grad = None
                F.cross_entropy(xg, yt).backward()
        for t in threads:
            if progress is not None:
                progress.set_description(f"minibatch {n}x{c} t{t}")
            cells = {
                "fastce_fwd": lambda: fastce.cross_entropy(x, y, n_threads=t),
                "fastce_fb": lambda: fastce.cross_entropy_with_grad(x, y, out=buf, n_threads=t),
                "ufunc": lambda: np.add(a, b, out=dst),
            }
            if torch is not None:
                cells["torch_fwd"] = lambda: F.cross_entropy(xt, yt)
                cells["torch_fb"] = torch_fb
            cells = {k: cells[k] for k in MINI_CELLS if k in cells}
            rec = {"shape": [n, c], "dtype": "float32", "threads": t, "check": {}, "notes": []}
            old = torch.get_num_threads() if torch is not None else None
            try:
                if torch is not None:
                    torch.set_num_threads(t)
                    want = F.cross_entropy(xt, yt).item()
                    got = float(fastce.cross_entropy(x, y, n_threads=t))
                    rec["check"]["loss_rel_diff_vs_torch"] = abs(got - want) / max(abs(want), 1e-30)
                    if not rec["check"]["loss_rel_diff_vs_torch"] <= 1e-5:
                        rec["notes"].append(f"minibatch {n}x{c} t{t}: loss differs from torch's "
                                            f"by {rec['check']['loss_rel_diff_vs_torch']:.3g}")
                rec["times_us"] = _time_loops(cells, samples, min_s, pause)
            finally:
                if torch is not None:
                    torch.set_num_threads(old)
                    xg.grad = None
            med = {k: v["median_us"] for k, v in rec["times_us"].items()}
            rec["derived"] = {
                "fwd_speedup_vs_torch": _ratio(med.get("torch_fwd"), med["fastce_fwd"]),
                "fb_speedup_vs_torch": _ratio(med.get("torch_fb"), med["fastce_fb"]),
                "fwd_over_ufunc": _ratio(med["fastce_fwd"], med["ufunc"]),
                "fb_over_ufunc": _ratio(med["fastce_fb"], med["ufunc"]),
            }
            out.append(rec)
            if progress is not None:
                progress.update(1)
    return out


def format_us(us):
    """Format a time in microseconds with about three significant digits (``-`` for None)."""
    return format_ms(us)


def minibatch_rows(records):
    """Rows (lists of str) of the minibatch table, in the order of ``MINI_COLUMNS``."""
    rows = []
    for r in records:
        t = {k: v.get("median_us") for k, v in r["times_us"].items()}
        d = r["derived"]
        rows.append([f"{r['shape'][0]}x{r['shape'][1]}", r["dtype"], str(r["threads"]),
                     format_us(t.get("fastce_fwd")), format_us(t.get("torch_fwd")),
                     format_ratio(d["fwd_speedup_vs_torch"]),
                     format_us(t.get("fastce_fb")), format_us(t.get("torch_fb")),
                     format_ratio(d["fb_speedup_vs_torch"]),
                     format_us(t.get("ufunc")), format_ratio(d["fwd_over_ufunc"]),
                     format_ratio(d["fb_over_ufunc"])])
    return rows


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
FWD_COLUMNS = ["shape", "dtype", "threads", "fastce ms", "torch ms", "speed-up", "numpy ms",
               "floor ms", "fastce/floor"]
FB_COLUMNS = ["shape", "dtype", "threads", "out= ms", "inplace ms", "torch ms", "speed-up out=",
              "speed-up inplace", "numpy ms", "floor ms", "out=/floor", "inplace/floor"]
MEM_COLUMNS = ["shape", "dtype", "threads", "fastce fwd", "torch fwd", "numpy fwd", "fused out=",
               "fused inplace", "torch fwd+bwd", "numpy fwd+bwd"]


def _mem(rec, key, method):
    m = rec["memory_bytes"].get(key, {})
    if method == "torch":  # the allocator's own account; the resident set as a fallback
        return m["torch_profiler"] if m.get("torch_profiler") is not None else m.get("rss")
    return m.get(method)


def table_rows(results):
    """Rows (lists of strings) of the forward, forward + backward and memory tables.

    Parameters
    ----------
    results : list of dict
        Records as returned by :func:`run_benchmarks`.

    Returns
    -------
    fwd_rows, fb_rows, mem_rows : list of list of str
        Cells in the order of ``FWD_COLUMNS``, ``FB_COLUMNS`` and ``MEM_COLUMNS``.
    """
    fwd, fb, mem = [], [], []
    for r in results:
        d = r["derived"]
        head = [f"{r['shape'][0]}x{r['shape'][1]}", r["dtype"], str(r["threads"])]
        fwd.append(head + [
            format_ms(_median(r, "fastce_fwd")),
            format_ms(_median(r, "torch_fwd")),
            format_ratio(d["fwd_speedup_vs_torch"]),
            format_ms(_median(r, "numpy_fwd")),
            format_ms(d["floor_read_ms"]),
            format_ratio(d["fwd_over_floor"]),
        ])
        fb.append(head + [
            format_ms(_median(r, "fastce_fb_out")),
            format_ms(_median(r, "fastce_fb_inplace")),
            format_ms(_median(r, "torch_fb")),
            format_ratio(d["fb_out_speedup_vs_torch"]),
            format_ratio(d["fb_inplace_speedup_vs_torch"]),
            format_ms(_median(r, "numpy_fb")),
            format_ms(d["floor_copy_ms"]),
            format_ratio(d["fb_out_over_floor"]),
            format_ratio(d["fb_inplace_over_floor"]),
        ])
        if r["memory_bytes"]:
            mem.append(head + [
                format_bytes(_mem(r, "fastce_fwd", "tracemalloc")),
                format_bytes(_mem(r, "torch_fwd", "torch")),
                format_bytes(_mem(r, "numpy_fwd", "tracemalloc")),
                format_bytes(_mem(r, "fastce_fb_out", "tracemalloc")),
                format_bytes(_mem(r, "fastce_fb_inplace", "tracemalloc")),
                format_bytes(_mem(r, "torch_fb", "torch")),
                format_bytes(_mem(r, "numpy_fb", "tracemalloc")),
            ])
    return fwd, fb, mem


def _render_text(columns, rows):
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(columns)]
    left = {0, 1}  # shape and dtype left-aligned, numbers right-aligned

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(columns), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def _render_markdown(columns, rows):
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe_machine(m):
    """One line on the machine of a report: CPU model, ISA, cores."""
    cores = f"{m['physical_cores']} cores, " if m.get("physical_cores") else ""
    isas = ", ".join(m.get("isas") or []) or "?"
    return (f"{m['cpu']} ({m.get('arch', '?')}); fastce ISA {m['isa']} (CPU supports: {isas}); "
            f"{cores}{m.get('logical_cpus', '?')} logical CPUs, {m['cpus']} usable")


def describe_load(load):
    """One line on the load of a report: load averages before and after, other processes."""
    if not load:
        return "not recorded"

    def la(v):
        return "n/a" if v is None else " ".join(f"{x:.2f}" for x in v)

    text = f"load average (1, 5, 15 min) before {la(load.get('loadavg_before'))}, after {la(load.get('loadavg_after'))}"
    if load.get("others_cores_during_run") is not None:
        text += (f"; other processes used {load['others_cores_during_run']:.2f} CPUs during the run"
                 f" ({load.get('wall_s')} s)")
    return text


def format_tables(report, markdown=False):
    """Render a report (see :func:`run_benchmarks`) as text or Markdown.

    Parameters
    ----------
    report : dict
        The report: ``machine``, ``command``, ``date`` and ``results``.
    markdown : bool, default False
        Markdown tables (for BENCHMARKS.md) instead of aligned text.

    Returns
    -------
    str
    """
    results = report["results"]
    fwd_rows, fb_rows, mem_rows = table_rows(results)
    m = report["machine"]
    render = _render_markdown if markdown else _render_text
    out = []
    warning = report.get("load_warning")
    if markdown:
        out.append(f"Command: `{report['command']}`  ")
        out.append(f"Machine: {describe_machine(m)}.  ")
        out.append(f"Versions: fastce {m['fastce']}, numpy {m['numpy']}, torch {m['torch'] or 'not installed'}, "
                   f"Python {m['python']}; {m['platform']}.  ")
        out.append(f"Load: {describe_load(report.get('load'))}.  ")
        out.append(f"Date: {report['date']}.")
        if warning:
            out += ["", f"**{warning}**"]
        out.append("")
        out.append("**Forward** (`cross_entropy`, reduction='mean'; times are medians in ms)")
    else:
        out.append(f"command: {report['command']}")
        out.append(f"machine: {describe_machine(m)}")
        out.append(f"versions: fastce {m['fastce']} | numpy {m['numpy']} | torch {m['torch'] or 'not installed'} | "
                   f"Python {m['python']} | {m['platform']}")
        out.append(f"load: {describe_load(report.get('load'))}")
        out.append(f"date: {report['date']}")
        if warning:
            out += ["", warning]
        out.append("")
        out.append("Forward: cross_entropy, reduction='mean' (median ms)")
    out.append("")
    out.append(render(FWD_COLUMNS, fwd_rows))
    out.append("")
    if markdown:
        out.append("**Forward + backward** (`cross_entropy_with_grad` into a reused `out=` buffer, "
                   "and `inplace=True`; torch through autograd; times are medians in ms)")
    else:
        out.append("Forward + backward: cross_entropy_with_grad out= / inplace=True; torch autograd (median ms)")
    out.append("")
    out.append(render(FB_COLUMNS, fb_rows))
    out.append("")
    if mem_rows:
        if markdown:
            out.append("**Peak extra memory** per call (beyond the inputs and `out=`)")
        else:
            out.append("Peak extra memory per call (beyond the inputs and out=)")
        out.append("")
        out.append(render(MEM_COLUMNS, mem_rows))
        out.append("")
    if report.get("minibatch"):
        if markdown:
            out.append("**Minibatch shapes** (per-call overhead; times are medians in microseconds "
                       "of timeit-style loops)")
        else:
            out.append("Minibatch shapes: per-call overhead (median microseconds, timeit-style loops)")
        out.append("")
        out.append(render(MINI_COLUMNS, minibatch_rows(report["minibatch"])))
        out.append("")
    legend = [
        "speed-up = torch time / fastce time; fastce/floor = fastce time / floor time (same run, same inputs).",
        "floor: forward = fastest full read of the logits (torch.amax(x, 1), np.max(x, axis=1), threaded np.max); "
        "fwd+bwd = fastest read+write (Tensor.copy_, np.copyto, threaded np.copyto) into a reused buffer.",
        "memory: tracemalloc for fastce and numpy, torch's profiler (profile_memory=True) for torch.",
    ]
    if report.get("minibatch"):
        legend.append("minibatch: fastce fwd+bwd = cross_entropy_with_grad into a reused out=; torch fwd+bwd = "
                      "autograd on the same tensors (grad released before each call); np.add = np.add(a, b, out=c) "
                      "on float32 arrays of the logits' size, the cost of one NumPy ufunc call; "
                      "fwd/np.add = fastce time / np.add time.")
    if report["machine"]["torch"] is None:
        legend.append("torch is not installed: torch columns are shown as '-'.")
    elif report.get("torch_skipped"):
        legend.append("torch was skipped (--no-torch): torch columns are shown as '-'.")
    notes = [nt for r in [*results, *report.get("minibatch", [])] for nt in r["notes"]]
    if warning:
        notes.append(warning)
    prefix = "- " if markdown else ""
    out.extend(prefix + line for line in legend)
    if notes:
        out.append("")
        out.append("Notes:" if not markdown else "**Notes**")
        out.extend(("- " if markdown else "  ") + nt for nt in notes)
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------
def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speedup_figure(results):
    """The figure of :func:`plot_speedups` (a matplotlib ``Figure``; close it when done).

    Speed-up on a log axis (so 2x and 0.5x are as far from 1x), against the number of
    classes on a log axis.  The shapes label the x ticks, rotated, instead of
    annotations beside the points, which collide where the series run close together.
    """
    plt = _import_pyplot()
    if plt is None:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    series = [
        (axes[0], "fwd_speedup_vs_torch", "cross_entropy", "o-"),
        (axes[1], "fb_out_speedup_vs_torch", "fused out=", "o-"),
        (axes[1], "fb_inplace_speedup_vs_torch", "fused inplace", "s--"),
    ]
    keys = sorted({(r["dtype"], r["threads"]) for r in results})
    values = []
    for ax, field, name, style in series:
        for dtype, threads in keys:
            pts = sorted(
                (r["shape"][1], r["derived"][field])
                for r in results
                if r["dtype"] == dtype and r["threads"] == threads and r["derived"].get(field)
            )
            if not pts:
                continue
            values += [p[1] for p in pts]
            lab = f"{name}, {dtype}, {threads} thread{'s' if threads > 1 else ''}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=lab)
    # one tick per class count, labelled with every N measured there
    by_c = {}
    for r in results:
        by_c.setdefault(r["shape"][1], set()).add(r["shape"][0])
    ticks = sorted(by_c)
    labels = ["\n".join(f"{n}x{c}" for n in sorted(by_c[c])) for c in ticks]
    lo = min(values + [1.0]) / 1.25
    hi = max(values + [1.0]) * 1.25
    for ax, title in zip(axes, ("forward", "forward + backward")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        if ticks:
            ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            # vertical: a label is as wide as its line height, so C a factor 2 apart
            # (128256 and 262144 among the reference shapes) keep their labels apart
            ax.set_xticklabels(labels, rotation=90, fontsize=8)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}x" if f"{v:.2g}"[0] in "25" else ""))
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("shape N x C (log scale in C)")
        ax.set_title(f"fastce vs torch CPU: {title}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    axes[0].set_ylabel("speed-up vs torch (log scale)")
    fig.tight_layout()
    return fig


def plot_speedups(results, path):
    """Draw speed-up vs torch against the number of classes and save it.

    Parameters
    ----------
    results : list of dict
        Records as returned by :func:`run_benchmarks`.
    path : str
        Output image file (format from its extension, e.g. ``.png``).
    """
    fig = speedup_figure(results)
    try:
        fig.savefig(path, dpi=120)
    finally:
        _import_pyplot().close(fig)


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
def _cpu_model():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess

            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5).stdout.strip() or cpu
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return cpu


def _physical_cores():
    """Physical cores from /proc/cpuinfo (distinct (package, core) pairs), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = val.strip()
        elif key == "core id":
            cores.add((phys, val.strip()))
    return len(cores) or None


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        return None


def _busy_cpu_seconds():
    """CPU seconds all processes have been running (Linux /proc/stat, steal included), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = [int(v) for v in fields[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / hz


def _own_cpu_seconds():
    t = os.times()
    return t.user + t.system


class LoadMonitor:
    """How busy the machine is before and during a benchmark run.

    ``start()`` and ``stop()`` record the load average; on Linux they also read
    ``/proc/stat``, so that the CPU time taken by OTHER processes during the run (all
    busy time, hypervisor steal included, minus this process's own) is known.
    """

    def __init__(self):
        self.before = self.after = None
        self._t0 = self._busy0 = self._own0 = None
        self.wall_s = None
        self.others_cores = None

    def start(self):
        self.before = load_average()
        self._t0 = time.perf_counter()
        self._busy0 = _busy_cpu_seconds()
        self._own0 = _own_cpu_seconds()
        return self

    def stop(self):
        self.wall_s = time.perf_counter() - self._t0
        busy = _busy_cpu_seconds()
        if busy is not None and self._busy0 is not None and self.wall_s > 0:
            others = (busy - self._busy0) - (_own_cpu_seconds() - self._own0)
            self.others_cores = round(max(0.0, others / self.wall_s), 2)
        self.after = load_average()
        return self

    def as_dict(self):
        return {"loadavg_before": self.before, "loadavg_after": self.after,
                "others_cores_during_run": self.others_cores,
                "wall_s": None if self.wall_s is None else round(self.wall_s, 1)}


def load_warning(load, cpus, threads):
    """A warning (str) when other work on the machine makes the timings unreliable, else None.

    Parameters
    ----------
    load : dict
        ``loadavg_before`` (1, 5, 15 minute load averages, or None) and
        ``others_cores_during_run`` (cores' worth of CPU time other processes took during
        the run, or None), as in a report's ``load``.
    cpus : int
        CPUs this process may use.
    threads : int
        The largest thread count benchmarked.

    Returns
    -------
    str or None
        Unreliable when, before the run, the 1-minute load average was above
        ``max(0.5, cpus / 4)``, or when other processes took more than
        ``max(0.25, cpus / 10)`` cores on average during it: the threads of the
        benchmark then share cores with them, and a speed-up can come out several times
        too low (or too high).
    """
    before = load.get("loadavg_before")
    others = load.get("others_cores_during_run")
    why = []
    if before is not None and before[0] > max(0.5, cpus / 4):
        why.append(f"the 1-minute load average before the run was {before[0]:.2f} on {cpus} CPUs")
    if others is not None and others > max(0.25, cpus / 10):
        why.append(f"other processes used {others:.2f} of the {cpus} CPUs during the run")
    if not why:
        return None
    return ("WARNING: the machine was busy (" + "; ".join(why) + "): the timings, and the "
            f"speed-ups most ({threads} thread{'s' if threads > 1 else ''} share the cores with "
            "that work), are unreliable. Rerun on an idle machine.")


def machine_info(torch=None):
    """Describe the machine and the library versions.

    Returns
    -------
    dict
        ``cpu`` (model name), ``arch``, ``isa`` (fastce's kernel path in use), ``isas``
        (the paths this CPU supports), ``physical_cores`` (None where unknown),
        ``logical_cpus``, ``cpus`` (usable by this process), ``platform``, and the
        versions of Python, NumPy, torch (None when absent) and fastce.
    """
    import fastce

    get_isa = getattr(fastce, "get_isa", None)
    isas = getattr(fastce, "supported_isas", None)
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "isa": get_isa() if get_isa is not None else "?",
        "isas": isas() if isas is not None else [],
        "physical_cores": _physical_cores(),
        "logical_cpus": os.cpu_count(),
        "cpus": _usable_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "fastce": getattr(fastce, "__version__", "?"),
    }


def run_benchmarks(shapes, dtypes=("float32",), threads=None, policy=None, *, use_torch=True,
                   use_numpy=True, measure_memory=True, progress=True, seed=0, command="",
                   minibatch=True, minibatch_samples=11, minibatch_min_s=0.01):
    """Run the benchmark grid and return a report.

    Parameters
    ----------
    shapes : list of (int, int)
        Logits shapes (N, C).
    dtypes : sequence of {"float32", "float64"}
    threads : list of int, optional
        Thread counts; default all usable cores.
    policy : Policy, optional
        Repeat policy; default adaptive (about 0.5 s per cell).
    use_torch, use_numpy, measure_memory : bool
        Include torch (if importable), the NumPy user code, the memory measurement.
    progress : bool
        Show a progress bar on stderr.
    seed : int
        Seed of the random logits and targets.
    command : str
        The command line, recorded in the report.
    minibatch : bool or list of (int, int)
        Also time the minibatch shapes (:data:`MINIBATCH_SHAPES`, or the given ones) at
        1 thread and at the largest of ``threads``, in microseconds (see
        :func:`bench_minibatch`).
    minibatch_samples, minibatch_min_s : int, float
        Timed loops per minibatch cell, and seconds per loop.

    Returns
    -------
    dict
        ``machine``, ``date``, ``command``, ``rss_supported``, ``torch_skipped``,
        ``results``: one record per (shape, dtype, threads) with ``times`` (median, min,
        repeats and samples in ms per cell), ``memory_bytes``, ``check``, ``derived``
        (floors, speed-ups, floor ratios) and ``notes``; ``minibatch`` (records of
        :func:`bench_minibatch`, empty when not run); ``load`` (load averages before and
        after, and the cores' worth of CPU time other processes took during the run) and
        ``load_warning`` (see :func:`load_warning`; None on an idle machine).
    """
    threads = threads or [_usable_cpus()]
    policy = policy or Policy()
    torch = F = None
    if use_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = F = None
    rss_ok = measure_memory and _rss_peak_supported()
    report = {
        "machine": machine_info(torch),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "rss_supported": rss_ok,
        "torch_skipped": not use_torch,
        "results": [],
        "minibatch": [],
    }
    monitor = LoadMonitor().start()
    n_cells = 5 + (2 if use_numpy else 0) + (4 if torch is not None else 0)
    total = sum(2 * (n_cells + (2 if t > 1 else 0)) for t in threads) * len(shapes) * len(dtypes)
    bar = _make_progress(total, enabled=progress)
    try:
        for dtype in dtypes:
            for shape in shapes:
                report["results"].extend(_bench_shape(
                    shape, dtype, threads, policy, bar, torch=torch, F=F, use_numpy=use_numpy,
                    measure_memory=measure_memory, rss_ok=rss_ok, seed=seed,
                ))
                gc.collect()
    finally:
        bar.close()
    if minibatch:
        mb_shapes = MINIBATCH_SHAPES if minibatch is True else list(minibatch)
        mb_threads = sorted({1, max(threads)})
        bar = _make_progress(len(mb_shapes) * len(mb_threads), enabled=progress)
        try:
            report["minibatch"] = bench_minibatch(
                mb_shapes, mb_threads, torch=torch, F=F, samples=minibatch_samples,
                min_s=minibatch_min_s, pause=policy.switch_pause, progress=bar, seed=seed)
        finally:
            bar.close()
    monitor.stop()
    report["load"] = monitor.as_dict()
    report["load_warning"] = load_warning(report["load"], report["machine"]["cpus"], max(threads))
    return report


def _build_parser(prog="python -m fastce.bench"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time fastce's cross-entropy against torch (CPU) and NumPy, side by side, "
                    "with the memory-bandwidth floors.",
    )
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help="comma-separated NxC logits shapes (default: the reference shapes "
                        + ",".join(f"{n}x{c}" for n, c in REFERENCE_SHAPES) + ")")
    p.add_argument("--dtype", type=_parse_dtypes, default=["float32"],
                   help="float32 (default) or float64 (or both: float32,float64)")
    p.add_argument("--threads", type=_parse_threads, default=None,
                   help=f"thread count(s), e.g. 1 or 1,2 (default: all cores, {_usable_cpus()})")
    p.add_argument("--repeat", type=int, default=None,
                   help="exact number of timed calls per cell (default: adaptive, ~0.5 s per cell)")
    p.add_argument("--min-time", type=float, default=None,
                   help="adaptive mode: seconds of timed calls per cell (default 0.5; 0.05 with --quick)")
    p.add_argument("--min-repeat", type=int, default=None, help="adaptive mode: at least this many calls (default 5)")
    p.add_argument("--max-repeat", type=int, default=None, help="adaptive mode: at most this many calls (default 100)")
    p.add_argument("--quick", action="store_true",
                   help="small shapes (" + ",".join(f"{n}x{c}" for n, c in QUICK_SHAPES)
                        + ") and short timing: seconds")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for BENCHMARKS.md)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the full results as JSON")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw speed-up vs torch against the number of classes (needs matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="leave torch out even if it is installed")
    p.add_argument("--no-numpy", action="store_true", help="leave the NumPy user code out (it is slow)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--no-minibatch", action="store_true",
                   help="skip the minibatch table (" + ",".join(f"{n}x{c}" for n, c in MINIBATCH_SHAPES)
                        + ", microseconds per call)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    return p


def main(argv=None, prog=None):
    """Entry point of ``python -m fastce.bench`` and ``fastce-bench``.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    prog : str, optional
        How the benchmark was started, for the header's ``command:`` line and the help:
        default ``fastce-bench`` when ``sys.argv[0]`` is that script, else
        ``python -m fastce.bench``.

    Returns
    -------
    dict
        The report (see :func:`run_benchmarks`); the tables are printed to stdout.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if prog is None:
        started_as_script = argv is None and os.path.basename(sys.argv[0] or "").startswith("fastce-bench")
        prog = "fastce-bench" if started_as_script else "python -m fastce.bench"
    parser = _build_parser(prog)
    args = parser.parse_args(args_list)
    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.plot:
        if _import_pyplot() is None:
            parser.error("--plot needs matplotlib, which is not installed "
                         "(pip install matplotlib, or pip install 'fastce[bench]')")
        if args.no_torch:
            parser.error("--plot draws speed-ups vs torch: it cannot be combined with --no-torch")
        try:
            import torch  # noqa: F401
        except ImportError:
            parser.error("--plot draws speed-ups vs torch, and torch is not installed")

    shapes = args.shapes or (QUICK_SHAPES if args.quick else REFERENCE_SHAPES)
    if args.quick:
        policy = Policy(args.repeat, target=args.min_time or 0.05, min_repeat=args.min_repeat or 3,
                        max_repeat=args.max_repeat or 20)
        mini = {"minibatch_samples": 5, "minibatch_min_s": 0.002}
    else:
        policy = Policy(args.repeat, target=args.min_time or 0.5, min_repeat=args.min_repeat or 5,
                        max_repeat=args.max_repeat or 100)
        mini = {"minibatch_samples": 11, "minibatch_min_s": 0.01}
    command = prog + "".join(" " + shlex.quote(a) for a in args_list)
    progress = not args.no_progress and (sys.stderr.isatty() or _has_tqdm())

    report = run_benchmarks(
        shapes, args.dtype, args.threads, policy, use_torch=not args.no_torch,
        use_numpy=not args.no_numpy, measure_memory=not args.no_memory, progress=progress,
        seed=args.seed, command=command, minibatch=not args.no_minibatch, **mini,
    )
    print(format_tables(report, markdown=args.markdown))
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
            f.write("\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_speedups(report["results"], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return report


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def cli():
    """Console entry point ``fastce-bench``: run :func:`main`, exit status 0."""
    main(prog="fastce-bench")
    return 0


if __name__ == "__main__":
    main(prog="python -m fastce.bench")
