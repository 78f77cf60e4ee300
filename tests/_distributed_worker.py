"""One rank of the fastce.distributed tests: every case in one launch.

Launched by tests/test_distributed.py as
    python -m torch.distributed.run --standalone --nproc-per-node P _distributed_worker.py torch OUT
    mpirun -n P ... python _distributed_worker.py mpi OUT
(and imported by it, for the same cases over threads in one process).  Each rank builds
the full inputs from a seed, computes its shard with fastce.distributed and the unsharded
result with fastce (and fastce.reference / torch), and writes OUT/rank<r>.json:
{group: [{"case": ..., "ok": bool, "detail": str}, ...]}.  A failed comparison is a
record, not an exception, so one launch reports every case; an unexpected exception is
recorded too and the rank goes on (the communicator stays usable: fastce.distributed
raises on every rank together).
"""
import json
import os
import sys
import threading
import traceback
import zlib

import numpy as np

import fastce
import fastce.distributed as fd
from fastce import reference

TOL = {np.float64: 1e-12, np.float32: 2e-6}  # relative to max |expected| (float32: stated bound)


# ------------------------------------------------------------------ communicators
CountingCommunicator = fd.CountingCommunicator  # records each all-reduce as (op, values)


class ThreadGroup:
    """P ranks as P threads of one process: all-reduces over a barrier (in-process tests)."""

    def __init__(self, size):
        self.size, self.bufs = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def comm(self, rank):
        return _ThreadComm(self, rank)


class _ThreadComm(fd.Communicator):
    def __init__(self, group, rank):
        self.g, self.rank, self.size = group, rank, group.size

    def _reduce(self, buf, fn):
        g = self.g
        g.bufs[self.rank] = buf.copy()
        g.barrier.wait()
        res = fn(np.stack(g.bufs), axis=0)
        g.barrier.wait()
        buf[:] = res

    def allreduce_max(self, buf):
        self._reduce(buf, np.max)

    def allreduce_sum(self, buf):
        self._reduce(buf, np.sum)


# ------------------------------------------------------------------ inputs
def split(V, size, layout="even"):
    """[(start, stop)] per rank: 'even' (np.array_split), 'skew' (uneven, reversed ranks)."""
    if layout == "even" or size == 1:
        b = [len(a) for a in np.array_split(np.arange(V), size)]
    else:  # rank 0 gets the last, smallest piece; sizes differ
        b = [1] + [(V - 1) // (size - 1)] * (size - 2)
        b.append(V - sum(b))
        b = b[::-1]
    edges = np.concatenate([[0], np.cumsum(b)])
    pieces = [(int(edges[i]), int(edges[i + 1])) for i in range(size)]
    return pieces[::-1] if layout != "even" else pieces


def make(N, V, dtype, seed, ignore=(), only_below=None, extra_dims=()):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, V) + tuple(extra_dims)) * 2.0).astype(dtype)
    hi = V if only_below is None else only_below
    y = rng.integers(0, hi, (N,) + tuple(extra_dims))
    for i in ignore:
        y[i] = -100
    w = (rng.random(V) + 0.25)
    return x, y, w


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return np.inf
    if np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(b).all():
        return 0.0
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return np.inf
    m = ~np.isnan(b)
    scale = max(np.max(np.abs(b[m]), initial=0.0), 1e-300)
    return float(np.max(np.abs(a[m] - b[m]), initial=0.0) / scale)


class Recorder:
    def __init__(self):
        self.groups = {}

    def add(self, group, case, ok, detail=""):
        self.groups.setdefault(group, []).append({"case": case, "ok": bool(ok), "detail": detail})

    def run(self, group, case, fn):
        try:
            ok, detail = fn()
        except Exception:
            ok, detail = False, traceback.format_exc(limit=6)
        self.add(group, case, ok, detail)


def forward_log(comm, N, soft=False):
    """The all-reduces of one forward as CountingCommunicator logs them: a MAX and a SUM,
    or ONE fused record all-reduce where the engine offers it (mpi4py)."""
    if fd.as_communicator(comm).fused_lse:
        return [("lse", 8 * (N + 2))]
    return [("max", N + 5), ("sum", (4 if soft else 3) * N + 2)]


def is_soft(x, y):
    return np.asarray(y).dtype.kind == "f" and np.shape(y) == np.shape(x)


def compare(x, y, V, start, stop, comm, opts, dtype, grad_output=1.0, dp_comm=None, rows=None,
            ref_x=None, ref_y=None, check_reference=True):
    """The sharded loss and gradient slice against the unsharded fastce (and the float64
    reference on 2-D inputs).  ``rows``: this data-parallel rank's row block of the
    reference (then the loss compared is the sum over dp_comm of the shares)."""
    ref_x = x if ref_x is None else ref_x
    ref_y = y if ref_y is None else ref_y
    xl = np.ascontiguousarray(x[:, start:stop] if x.ndim > 1 else x[start:stop])
    yl = y
    if is_soft(x, y):  # probability targets: this rank's slice of the rows
        yl = np.ascontiguousarray(y[:, start:stop] if y.ndim > 1 else y[start:stop])
    loss, grad = fd.cross_entropy_with_grad(xl, yl, class_start=start, num_classes=V, comm=comm,
                                            dp_comm=dp_comm, grad_output=grad_output, **opts)
    loss_f = fd.cross_entropy(xl, yl, class_start=start, num_classes=V, comm=comm,
                              dp_comm=dp_comm, **opts)
    gref_out = grad_output
    if rows is not None and np.ndim(grad_output):
        gref_out = np.zeros(ref_y.shape[:1])
        gref_out[rows] = grad_output
    lref, gref = fastce.cross_entropy_with_grad(ref_x, ref_y, grad_output=gref_out, **opts)
    if rows is not None:
        gref = gref[rows]
        if opts.get("reduction") == "none":
            lref = lref[rows]
        else:
            buf = np.array([float(loss)])
            fd.as_communicator(dp_comm).allreduce_sum(buf)
            loss_sum = buf[0]
    gl = gref[:, start:stop] if gref.ndim > 1 else gref[start:stop]
    tol = TOL[dtype]
    errs = {"loss": rel(loss, lref), "grad": rel(grad, gl),
            "forward-only loss": rel(loss_f, loss)}
    if rows is not None and opts.get("reduction") != "none":
        errs["loss (sum of dp shares)"] = rel(loss_sum, lref)
        errs["loss"] = 0.0
    ok = all(e <= tol for e in errs.values())
    ok = ok and np.asarray(loss).dtype == np.asarray(lref).dtype and grad.dtype == gl.dtype
    if check_reference and dtype == np.float64 and ref_x.ndim == 2:
        ropts = {k: v for k, v in opts.items() if k != "n_threads"}
        rl = reference.cross_entropy(ref_x, ref_y, **ropts)
        rg = reference.cross_entropy_backward(ref_x, ref_y, gref_out, **ropts)
        if rows is not None:
            rg = rg[rows]
            rl = rl[rows] if opts.get("reduction") == "none" else rl
        errs["loss vs reference"] = rel(loss_sum if rows is not None and
                                        opts.get("reduction") != "none" else loss, rl)
        errs["grad vs reference"] = rel(grad, rg[:, start:stop])
        ok = ok and errs["loss vs reference"] <= 1e-12 and errs["grad vs reference"] <= 1e-12
    return ok, ", ".join(f"{k} {v:.2e}" for k, v in errs.items()) + f" (tol {tol:g})"


# ------------------------------------------------------------------ the cases
OPTSETS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": True},
    "ignore_index=3": {"ignore_index": 3},
    "smoothing": {"label_smoothing": 0.15},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 3.0},
    "logit_scale": {"logit_scale": 0.7},
    "num_items": {"num_items": 7.5},
    "all": {"weight": True, "ignore": True, "label_smoothing": 0.1, "z_loss": 1e-3,
            "softcap": 4.0, "logit_scale": 1.3},
    "all+num_items": {"weight": True, "ignore": True, "label_smoothing": 0.1, "z_loss": 1e-3,
                      "softcap": 4.0, "logit_scale": 1.3, "num_items": 11.0},
}


def build_opts(spec, w, reduction):
    opts = {k: v for k, v in spec.items() if k not in ("weight", "ignore")}
    if spec.get("weight"):
        opts["weight"] = w
    opts["reduction"] = reduction
    opts["n_threads"] = 1
    return opts


def options_cases(rec, comm, rank, size):
    N, V = 13, 37
    lo, hi = split(V, size)[rank]
    for dtype in (np.float64, np.float32):
        for reduction in ("mean", "sum", "none"):
            for name, spec in OPTSETS.items():
                if "num_items" in spec and reduction != "mean":
                    continue
                ign = (1, 4, 5) if spec.get("ignore") else ()
                x, y, w = make(N, V, dtype, seed=zlib.crc32(name.encode()), ignore=ign)
                if "ignore_index" in spec:
                    y[[0, 2]] = 3
                opts = build_opts(spec, w, reduction)
                g = 1.0
                if reduction == "none" and name == "all":
                    g = np.linspace(-1.0, 2.0, N)
                elif name == "plain":
                    g = 0.5
                case = f"{np.dtype(dtype).name} {reduction} {name}"
                rec.run("options", case, lambda: compare(x, y, V, lo, hi, comm, opts, dtype, g))


def check_half_shard(x, target, local_target, lo, hi, V, comm, opts, ulp):
    """Half-precision logits over shards against the unsharded call: the loss to 2e-6 (it
    is float32), the gradient (in the logits' dtype) to one of its ulps."""
    loss, g = fd.cross_entropy_with_grad(np.ascontiguousarray(x[:, lo:hi]), local_target,
                                         class_start=lo, num_classes=V, comm=comm, **opts)
    rl, rg = fastce.cross_entropy_with_grad(x, target, **opts)
    el, eg = rel(loss, rl), rel(g.astype(np.float32), rg[:, lo:hi].astype(np.float32))
    ok = el <= 2e-6 and eg <= ulp and g.dtype == x.dtype and loss.dtype == np.float32
    return ok, f"loss {el:.2e} (tol 2e-6), grad {eg:.2e} (tol {ulp:g}: 1 ulp)"


def shard_cases(rec, comm, rank, size):
    # uneven sizes, ranks not in class order, a rank with one class
    for V, layout in ((37, "skew"), (size + 1, "skew"), (10, "even")):
        lo, hi = split(V, size, layout)[rank]
        for dtype in (np.float64, np.float32):
            x, y, w = make(9, V, dtype, seed=V)
            opts = build_opts({"weight": True, "label_smoothing": 0.2, "z_loss": 1e-2}, w, "mean")
            rec.run("shards", f"V={V} {layout} {np.dtype(dtype).name}",
                    lambda: compare(x, y, V, lo, hi, comm, opts, dtype))
    # half-precision logits: computed in float32 like the unsharded call; the gradient is
    # rounded once to the half dtype, so the two differ by at most ~1 ulp of the largest
    # element where the float32 values straddle a rounding boundary
    import ml_dtypes
    V = 29
    lo, hi = split(V, size)[rank]
    for half, ulp in ((np.float16, 2.0 ** -10), (ml_dtypes.bfloat16, 2.0 ** -7)):
        x, y, w = make(8, V, np.float32, seed=15, ignore=(1,))
        x = x.astype(half)
        opts = build_opts({"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}, w, "mean")

        rec.run("shards", f"{np.dtype(half).name} logits",
                lambda: check_half_shard(x, y, y, lo, hi, V, comm, opts, ulp))
    # K-dim logits (N, C, d) and a single row (C,)
    V = 23
    lo, hi = split(V, size)[rank]
    x, y, w = make(5, V, np.float64, seed=3, extra_dims=(3,))
    for red in ("mean", "none"):
        opts = build_opts({"weight": True, "label_smoothing": 0.1}, w, red)
        rec.run("shards", f"K-dim (5, 23, 3) {red}",
                lambda: compare(x, y, V, lo, hi, comm, opts, np.float64))
    x1 = make(1, V, np.float64, seed=4)[0][0]
    for red in ("mean", "none"):
        opts = build_opts({"label_smoothing": 0.1}, w, red)
        rec.run("shards", f"1-D logits (23,) {red}",
                lambda: compare(x1, np.int64(7), V, lo, hi, comm, opts, np.float64))


def no_target_cases(rec, comm, rank, size):
    # every target in rank 0's shard: the other ranks own none, their gradient is softmax
    V = 37
    pieces = split(V, size)
    lo, hi = pieces[rank]
    for dtype in (np.float64, np.float32):
        for eps in (0.0, 0.1):
            x, y, w = make(11, V, dtype, seed=5, only_below=pieces[0][1])
            for red in ("mean", "sum", "none"):
                opts = build_opts({"label_smoothing": eps, "weight": True}, w, red)
                case = f"{np.dtype(dtype).name} eps={eps} {red}"

                def run():
                    ok, detail = compare(x, y, V, lo, hi, comm, opts, dtype)
                    xl = np.ascontiguousarray(x[:, lo:hi])
                    _, g = fd.cross_entropy_with_grad(xl, y, class_start=lo, num_classes=V,
                                                      comm=comm, **opts)
                    nz = bool(np.all(np.abs(g).sum(axis=1) > 0))
                    return ok and nz, detail + f"; every row's gradient nonzero: {nz}"
                rec.run("no_target", case, run)


def ignored_cases(rec, comm, rank, size):
    V = 19
    lo, hi = split(V, size)[rank]
    for dtype in (np.float64, np.float32):
        x, y, w = make(6, V, dtype, seed=6, ignore=range(6))
        for red in ("mean", "sum", "none"):
            for spec in ({}, {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-2}):
                opts = build_opts(spec, w, red)
                case = f"{np.dtype(dtype).name} {red} {sorted(spec)}"

                def run():
                    ok, detail = compare(x, y, V, lo, hi, comm, opts, dtype)
                    loss = fd.cross_entropy(np.ascontiguousarray(x[:, lo:hi]), y, class_start=lo,
                                            num_classes=V, comm=comm, **opts)
                    want_nan = red == "mean"
                    got_nan = bool(np.all(np.isnan(loss)))
                    return ok and got_nan == want_nan, detail + f"; loss {loss!r}"
                rec.run("all_ignored", case, run)
    # empty batch
    x = np.zeros((0, V))
    opts = build_opts({}, None, "mean")
    rec.run("all_ignored", "empty batch mean",
            lambda: compare(x, np.zeros(0, np.int64), V, lo, hi, comm, opts, np.float64,
                            check_reference=False))


def extreme_cases(rec, comm, rank, size):
    V = 16
    lo, hi = split(V, size)[rank]
    x, y, w = make(6, V, np.float64, seed=7)
    xm = x.copy()
    xm[0, 4:] = -np.inf  # a row whose other shards are entirely masked
    xm[1, :3] = -np.inf
    y[0] = 1
    y[1] = 10
    rec.run("extreme", "-inf masked classes",
            lambda: compare(xm, y, V, lo, hi, comm, build_opts({}, w, "none"), np.float64,
                            check_reference=False))
    xb = x * 1e3  # lse ~ 1e3: the rescaled exps must not overflow
    rec.run("extreme", "logits ~ 1e3",
            lambda: compare(xb, y, V, lo, hi, comm, build_opts({"z_loss": 1e-4}, w, "mean"),
                            np.float64))
    xc = x.copy()  # confident predictions: loss ~ 1e-12 under lse ~ 30 (ill-conditioned)
    xc[np.arange(6), y] += 30.0
    for dtype in (np.float64, np.float32):
        def run_confident():
            xd = xc.astype(dtype)
            xl = np.ascontiguousarray(xd[:, lo:hi])
            loss = fd.cross_entropy(xl, y, class_start=lo, num_classes=V, comm=comm,
                                    reduction="none")
            xe = xd.astype(np.longdouble)  # the truth, in extended precision
            mx = xe.max(axis=1, keepdims=True)
            lse = (mx + np.log(np.exp(xe - mx).sum(axis=1, keepdims=True)))[:, 0]
            true = lse - xe[np.arange(6), y]
            # any formula through the lse is off by ~ulp(lse): the unsharded one is too
            bound = 4 * np.finfo(dtype).eps * np.abs(lse)
            err = np.abs(loss - true).astype(np.float64)
            err1 = np.abs(fastce.cross_entropy(xd, y, reduction="none") - true).astype(np.float64)
            ok = bool(np.all(err <= bound)) and bool(np.all(err1 <= bound))
            return ok, (f"max error / ulp-bound: sharded {np.max(err / bound):.2f}, "
                        f"unsharded {np.max(err1 / bound):.2f}")
        rec.run("extreme", f"confident {np.dtype(dtype).name}", run_confident)
    xi = x.copy()  # +inf and nan logits give nan rows, as unsharded
    xi[2, 0] = np.inf
    xi[3, V - 1] = np.nan
    rec.run("extreme", "+inf and nan logits",
            lambda: compare(xi, y, V, lo, hi, comm, build_opts({}, w, "none"), np.float64,
                            check_reference=False))


def out_cases(rec, comm, rank, size):
    V = 21
    lo, hi = split(V, size)[rank]
    x, y, w = make(7, V, np.float32, seed=8, ignore=(2,))
    xl = np.ascontiguousarray(x[:, lo:hi])
    opts = build_opts({"weight": True, "label_smoothing": 0.1}, w, "mean")
    loss, g = fd.cross_entropy_with_grad(xl, y, class_start=lo, num_classes=V, comm=comm, **opts)

    def run_out():
        out = np.empty_like(xl)
        l2, g2 = fd.cross_entropy_with_grad(xl, y, class_start=lo, num_classes=V, comm=comm,
                                            out=out, **opts)
        return g2 is out and np.array_equal(out, g) and l2 == loss, "out= equals the fresh gradient"
    rec.run("out", "out=", run_out)

    def run_inplace():
        xi = xl.copy()
        l2, g2 = fd.cross_entropy_with_grad(xi, y, class_start=lo, num_classes=V, comm=comm,
                                            inplace=True, **opts)
        return (g2 is xi and np.array_equal(xi, g) and l2 == loss,
                "inplace equals the fresh gradient")
    rec.run("out", "inplace=True", run_inplace)

    def run_lse():
        _, lse = fd.cross_entropy(xl, y, class_start=lo, num_classes=V, comm=comm,
                                  return_lse=True, **opts)
        want = reference.logsumexp(x.astype(np.float64), axis=1)
        e = rel(lse, want)
        return e < 1e-6 and lse.dtype == np.float64, f"return_lse vs logsumexp {e:.2e}"
    rec.run("out", "return_lse", run_lse)


def count_cases(rec, comm, rank, size):
    V, N = 29, 10
    lo, hi = split(V, size)[rank]
    x, y, w = make(N, V, np.float64, seed=9, ignore=(3,))
    xl = np.ascontiguousarray(x[:, lo:hi])
    cc = CountingCommunicator(fd.as_communicator(comm))
    want = forward_log(comm, N)
    for fn_name in ("cross_entropy", "cross_entropy_with_grad"):
        for red in ("mean", "sum", "none"):
            opts = build_opts({"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}, w, red)

            def run():
                cc.log.clear()
                getattr(fd, fn_name)(xl, y, class_start=lo, num_classes=V, comm=cc, **opts)
                nbytes = 8 * sum(n for _, n in cc.log)
                return cc.log == want, f"calls {cc.log} ({nbytes} bytes), want {want}"
            rec.run("counts", f"{fn_name} {red}", run)


def make_soft(N, V, dtype, seed, extra_dims=()):
    """Logits and probability rows (a Dirichlet draw: some classes near 0); one row with
    no mass and one whose mass is 1.5 (torch does not normalise either)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, V) + tuple(extra_dims)) * 2.0).astype(dtype)
    t = rng.dirichlet(np.full(V, 0.4), (N,) + tuple(extra_dims))
    t = np.moveaxis(t, -1, 1)
    if N > 3:
        t[1] = 0.0
        t[3] *= 1.5
    return x, t.astype(dtype), rng.random(V) + 0.25


SOFT_OPTSETS = {k: v for k, v in OPTSETS.items()
                if not ({"ignore", "ignore_index"} & set(v))}  # no ignore_index with them
SOFT_OPTSETS["all"] = {k: v for k, v in OPTSETS["all"].items() if k != "ignore"}
SOFT_OPTSETS["all+num_items"] = dict(SOFT_OPTSETS["all"], num_items=11.0)


def soft_cases(rec, comm, rank, size):
    """Probability targets, each rank holding its slice of the target rows: against the
    unsharded fastce.cross_entropy (and the float64 reference) on the whole rows."""
    N, V = 11, 37
    for layout in ("even", "skew"):
        lo, hi = split(V, size, layout)[rank]
        for dtype in (np.float64, np.float32):
            for reduction in ("mean", "sum", "none"):
                for name, spec in SOFT_OPTSETS.items():
                    if ("num_items" in spec and reduction != "mean") or (
                            layout == "skew" and not name.startswith("all")):
                        continue
                    x, t, w = make_soft(N, V, dtype, seed=zlib.crc32(name.encode()))
                    opts = build_opts(spec, w, reduction)
                    g = np.linspace(-1.0, 2.0, N) if reduction == "none" else 0.5
                    case = f"{layout} {np.dtype(dtype).name} {reduction} {name}"
                    rec.run("soft", case, lambda: compare(x, t, V, lo, hi, comm, opts, dtype, g))
    # a shard with one class, K-dim logits, a single row
    V = size + 1
    lo, hi = split(V, size, "skew")[rank]
    x, t, w = make_soft(6, V, np.float64, seed=31)
    opts = build_opts({"weight": True, "label_smoothing": 0.2, "z_loss": 1e-2}, w, "mean")
    rec.run("soft", f"V={V} skew", lambda: compare(x, t, V, lo, hi, comm, opts, np.float64))
    V = 23
    lo, hi = split(V, size)[rank]
    x, t, w = make_soft(4, V, np.float64, seed=32, extra_dims=(3,))
    for red in ("mean", "none"):
        opts = build_opts({"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}, w, red)
        rec.run("soft", f"K-dim (4, 23, 3) {red}",
                lambda: compare(x, t, V, lo, hi, comm, opts, np.float64))
    x1, t1 = x[0, :, 0].copy(), t[0, :, 0].copy()
    for red in ("mean", "none"):
        opts = build_opts({"label_smoothing": 0.1, "z_loss": 1e-3}, w, red)
        rec.run("soft", f"1-D logits (23,) {red}",
                lambda: compare(x1, t1, V, lo, hi, comm, opts, np.float64))
    # half-precision logits (float32 targets): 1 ulp of the half dtype, as the hard case
    import ml_dtypes
    V = 29
    lo, hi = split(V, size)[rank]
    for half, ulp in ((np.float16, 2.0 ** -10), (ml_dtypes.bfloat16, 2.0 ** -7)):
        x, t, w = make_soft(8, V, np.float32, seed=33)
        x = x.astype(half)
        opts = build_opts({"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}, w, "mean")

        rec.run("soft", f"{np.dtype(half).name} logits",
                lambda: check_half_shard(x, t, np.ascontiguousarray(t[:, lo:hi]), lo, hi, V,
                                         comm, opts, ulp))
    # a row whose classes in one shard are all -inf: the loss is +inf (nan where w t' = 0),
    # as unsharded; rows of another shard stay exact
    V = 16
    lo, hi = split(V, size)[rank]
    x, t, w = make_soft(5, V, np.float64, seed=34)
    x[0, 4:] = -np.inf  # t' > 0 there (smoothing): +inf
    x[2, :3] = -np.inf
    t[2, :3] = 0.0      # without smoothing 0 * inf: nan
    for eps in (0.0, 0.1):
        def run_masked():
            xl, tl = np.ascontiguousarray(x[:, lo:hi]), np.ascontiguousarray(t[:, lo:hi])
            loss = fd.cross_entropy(xl, tl, class_start=lo, num_classes=V, comm=comm,
                                    reduction="none", label_smoothing=eps)
            want = fastce.cross_entropy(x, t, reduction="none", label_smoothing=eps)
            fin = np.isfinite(want)
            e = rel(loss[fin], want[fin])
            same = np.array_equal(np.isnan(loss), np.isnan(want)) and np.array_equal(
                np.isposinf(loss), np.isposinf(want))
            return e <= 1e-12 and same, f"{e:.2e}; {loss} vs {want}"
        rec.run("soft", f"-inf masked classes eps={eps}", run_masked)
    # out=, inplace=True and the communication: one MAX of N + 5, one SUM of 4N + 2
    x, t, w = make_soft(7, 21, np.float32, seed=35)
    lo, hi = split(21, size)[rank]
    xl, tl = np.ascontiguousarray(x[:, lo:hi]), np.ascontiguousarray(t[:, lo:hi])
    opts = build_opts({"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}, w, "mean")
    cc = CountingCommunicator(fd.as_communicator(comm))
    loss, g = fd.cross_entropy_with_grad(xl, tl, class_start=lo, num_classes=21, comm=cc, **opts)

    def run_out():
        out = np.empty_like(xl)
        l2, g2 = fd.cross_entropy_with_grad(xl, tl, class_start=lo, num_classes=21, comm=comm,
                                            out=out, **opts)
        xi = xl.copy()
        l3, g3 = fd.cross_entropy_with_grad(xi, tl, class_start=lo, num_classes=21, comm=comm,
                                            inplace=True, **opts)
        ok = (g2 is out and np.array_equal(out, g) and l2 == loss and g3 is xi
              and np.array_equal(xi, g) and l3 == loss)
        return ok, "out= and inplace=True equal the fresh gradient"
    rec.run("soft", "out= and inplace", run_out)
    rec.run("soft", "communication", lambda: (cc.log == forward_log(comm, 7, soft=True),
                                              f"{cc.log}"))


def fused_cases(rec, comm, rank, size):
    """mpi4py's fused forward (one all-reduce, a user-defined MPI.Op): the same results as
    its MAX + SUM, to 1e-15, the same loss bits on every rank, the traffic, the option
    matrix against the unsharded call, and collective errors."""
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not isinstance(comm, MPI.Intracomm):
        return
    plain = comm
    comm = fd.MPICommunicator(plain, fused=True)
    V = 41
    lo, hi = split(V, size, "skew")[rank]
    for name, (x, y, w) in (("class indices", make(12, V, np.float64, seed=41, ignore=(3,))),
                            ("probabilities", make_soft(12, V, np.float64, seed=42))):
        eps = 0.1
        if name == "class indices":  # rank 0's shard masked in row 0 (a finite loss: its
            eps = 0.0                # target elsewhere, no smoothing over -inf logits)
            x[0, split(V, size, "skew")[0][0]:split(V, size, "skew")[0][1]] = -np.inf
            y[0] = 0 if split(V, size, "skew")[0][0] > 0 else V - 1
        yl = np.ascontiguousarray(y[:, lo:hi]) if is_soft(x, y) else y
        xl = np.ascontiguousarray(x[:, lo:hi])
        for red in ("mean", "none"):
            opts = build_opts({"weight": True, "label_smoothing": eps, "z_loss": 1e-3}, w, red)

            def run():
                kw = dict(class_start=lo, num_classes=V, **opts)
                l1, g1 = fd.cross_entropy_with_grad(xl, yl, comm=comm, **kw)
                l2, g2 = fd.cross_entropy_with_grad(xl, yl, comm=plain, **kw)
                lo_hi = np.concatenate([np.ravel(l1), -np.ravel(l1)]).astype(np.float64)
                fd.as_communicator(comm).allreduce_max(lo_hi)
                k = lo_hi.size // 2
                same = bool(np.array_equal(lo_hi[:k], -lo_hi[k:], equal_nan=True))
                el, eg = rel(l1, l2), rel(g1, g2)
                return (el <= 1e-15 and eg <= 1e-15 and same,
                        f"fused vs two-step: loss {el:.2e}, grad {eg:.2e}; same bits on every "
                        f"rank {same}")
            rec.run("fused", f"{name} {red}", run)
    # the option matrix and the shards through it, against the unsharded call
    sub = Recorder()
    options_cases(sub, comm, rank, size)
    soft_cases(sub, comm, rank, size)
    extreme_cases(sub, comm, rank, size)
    for group, cases in sub.groups.items():
        for c in cases:
            rec.add("fused", f"{group}: {c['case']}", c["ok"], c["detail"])
    N = 6
    x, y, w = make(N, V, np.float64, seed=43)
    lo, hi = split(V, size)[rank]
    xl = np.ascontiguousarray(x[:, lo:hi])
    cc = CountingCommunicator(comm)
    fd.cross_entropy(xl, y, class_start=lo, num_classes=V, comm=cc)
    rec.add("fused", "communication", cc.log == [("lse", 8 * (N + 2))], f"{cc.log}")
    bad = y.copy()
    bad[2] = V + 5

    def run_error():
        call = lambda t: fd.cross_entropy(xl, t, class_start=lo, num_classes=V, comm=comm)  # noqa: E731
        if rank == size - 1:
            return expect_error(lambda: call(bad), IndexError, ["target"])
        return expect_error(lambda: call(y), RuntimeError, [f"rank {size - 1}"])
    rec.run("fused", "a bad target on one rank raises on every rank", run_error)
    rec.run("fused", "usable afterwards",
            lambda: compare(x, y, V, lo, hi, comm, build_opts({}, w, "mean"), np.float64))


def linear_cases(rec, comm, rank, size):
    """Vocabulary-parallel linear + cross-entropy against fastce's unsharded fused call."""
    N, H, V = 9, 6, 27
    lo, hi = split(V, size, "skew")[rank]
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(14)
        h = rng.standard_normal((N, H)).astype(dtype)
        W = rng.standard_normal((V, H)).astype(dtype)
        b = rng.standard_normal(V).astype(dtype)
        y = rng.integers(0, V, N)
        y[2] = -100
        for red, chunk in (("mean", None), ("sum", None), ("mean", 2), ("none", 4)):
            opts = dict(reduction=red, label_smoothing=0.1, z_loss=1e-3)
            g = np.linspace(-1.0, 2.0, N) if red == "none" else 1.0

            def run():
                cc = CountingCommunicator(fd.as_communicator(comm))
                loss, dh, dw, db = fd.linear_cross_entropy_with_grad(
                    h, W[lo:hi], y, class_start=lo, num_classes=V, comm=cc, local_bias=b[lo:hi],
                    n_threads=1, chunk_size=chunk, grad_output=g, **opts)
                rl, rdh, rdw, rdb = fastce.linear_cross_entropy_with_grad(h, W, y, bias=b,
                                                                          grad_output=g, **opts)
                tol = TOL[dtype] * 5
                errs = [rel(loss, rl), rel(dh, rdh), rel(dw, rdw[lo:hi]), rel(db, rdb[lo:hi])]
                want = forward_log(comm, N) + [("sum", N * H)]
                ok = max(errs) <= tol and cc.log == want and dh.dtype == dtype
                return ok, f"loss, d_hidden, d_weight, d_bias: {errs} (tol {tol:g}); {cc.log}"
            rec.run("linear", f"{np.dtype(dtype).name} {red} chunk_size={chunk}", run)


def expect_error(fn, etype, words):
    try:
        fn()
    except etype as e:
        msg = str(e)
        ok = all(wd in msg for wd in words)
        return ok, f"{type(e).__name__}: {msg}"
    except Exception as e:
        return False, f"wrong exception {type(e).__name__}: {e}"
    return False, "no exception"


def error_cases(rec, comm, rank, size):
    V = 20
    lo, hi = split(V, size)[rank]
    x, y, w = make(4, V, np.float64, seed=10)
    xl = np.ascontiguousarray(x[:, lo:hi])
    base = dict(class_start=lo, num_classes=V, comm=comm)

    def call(**kw):
        args = {**base, **kw}
        return fd.cross_entropy_with_grad(args.pop("logits", xl), args.pop("target", y), **args)

    rec.run("errors", "comm of the wrong type",
            lambda: expect_error(lambda: call(comm="world"), TypeError, ["comm", "str"]))
    rec.run("errors", "dp_comm of the wrong type",
            lambda: expect_error(lambda: call(dp_comm=3), TypeError, ["dp_comm", "int"]))
    if size > 1:
        rec.run("errors", "num_classes differs across ranks",
                lambda: expect_error(lambda: call(num_classes=V + rank), ValueError,
                                     ["num_classes differs"]))
    rec.run("errors", "overlapping shards", lambda: _overlap(call, rank, V))
    bad = y.copy()
    bad[2] = V + 5

    def run_local():
        if rank == size - 1:
            return expect_error(lambda: call(target=bad), IndexError, ["target"])
        return expect_error(lambda: call(), RuntimeError, [f"rank {size - 1}"])
    rec.run("errors", "a bad target on one rank raises on every rank", run_local)
    rec.run("errors", "a local weight slice",
            lambda: expect_error(lambda: call(weight=w[lo:hi]) if hi - lo != V else
                                 call(weight=w[:-1]), ValueError, ["weight", "global"]))
    soft = np.full(xl.shape, 1.0 / V)
    if size > 1:
        rec.run("errors", "probability targets on some ranks only",
                lambda: expect_error(lambda: call(target=soft if rank == 0 else y), ValueError,
                                     ["target", "probability targets and others class"]))
    if hi - lo != V:
        rec.run("errors", "probability targets: the full rows, not the slice",
                lambda: expect_error(lambda: call(target=np.full((4, V), 1.0 / V)), ValueError,
                                     ["target", "slice"]))
    rec.run("errors", "probability targets with ignore_index",
            lambda: expect_error(lambda: call(target=soft, ignore_index=0), ValueError,
                                 ["ignore_index", "probability"]))
    rec.run("errors", "num_classes missing",
            lambda: expect_error(lambda: call(num_classes=None), TypeError, ["num_classes"]))

    def run_after():  # the communicator still works after all of the above
        return compare(x, y, V, lo, hi, comm, build_opts({}, w, "mean"), np.float64)
    rec.run("errors", "the communicator is usable afterwards", run_after)

    def run_global_weight():
        gw = fd.global_weight(w[lo:hi], class_start=lo, num_classes=V, comm=comm)
        return np.array_equal(gw, w), "global_weight assembles the slices"
    rec.run("errors", "global_weight", run_global_weight)


def _overlap(call, rank, V):
    # every rank claims [0, C_local): locally valid, together not a tiling
    c = V // 2 if rank % 2 == 0 else V // 2 + 1
    rng = np.random.default_rng(0)
    xl = rng.standard_normal((4, c))
    y = rng.integers(0, c, 4)
    return expect_error(lambda: call(logits=xl, target=y, class_start=0), ValueError,
                        ["class_start", "tile"])


def grid_cases(rec, vp, dp, vp_rank, dp_rank, vp_size, dp_size):
    """A dp x vp grid: dp_rank holds row block dp_rank of the global batch, vp_rank its
    classes.  'mean' needs the global normalisers (dp_comm) or num_items."""
    N, V = 8, 31
    lo, hi = split(V, vp_size, "skew")[vp_rank]
    rows = slice(dp_rank * N, (dp_rank + 1) * N)
    for dtype in (np.float64, np.float32):
        for name, spec, ign in (
                ("plain", {}, (1,)),
                ("weight+z_loss", {"weight": True, "z_loss": 1e-2}, (1, 9)),
                ("weight+z_loss+smoothing", {"weight": True, "z_loss": 1e-2,
                                             "label_smoothing": 0.1, "softcap": 5.0}, (2, 3)),
                ("weight, dp rank 1 all ignored", {"weight": True, "z_loss": 1e-2},
                 tuple(range(N, 2 * N))),
                ("all ignored globally", {"weight": True}, tuple(range(2 * N)))):
            x, y, w = make(dp_size * N, V, dtype, seed=11, ignore=ign)
            for red in ("mean", "sum", "none"):
                opts = build_opts(spec, w, red)
                g = np.linspace(0.5, 1.5, N) if red == "none" else 1.0
                case = f"{np.dtype(dtype).name} {red} {name}"
                rec.run("grid", case, lambda: compare(
                    x[rows], y[rows], V, lo, hi, vp, opts, dtype, g, dp_comm=dp, rows=rows,
                    ref_x=x, ref_y=y))
        # probability targets over the grid: 'mean' over the global rows
        xs, ts, ws = make_soft(dp_size * N, V, dtype, seed=36)
        for red in ("mean", "sum", "none"):
            opts = build_opts({"weight": True, "z_loss": 1e-2, "label_smoothing": 0.1}, ws, red)
            g = np.linspace(0.5, 1.5, N) if red == "none" else 1.0
            rec.run("grid", f"{np.dtype(dtype).name} {red} probability targets",
                    lambda: compare(xs[rows], ts[rows], V, lo, hi, vp, opts, dtype, g,
                                    dp_comm=dp, rows=rows, ref_x=xs, ref_y=ts))
        # num_items instead of dp_comm: the user's global divisor, no dp communication
        x, y, w = make(dp_size * N, V, dtype, seed=12, ignore=(4,))
        opts = build_opts({"weight": True, "z_loss": 1e-2, "num_items": 13.0}, w, "mean")

        def run_items():
            cv = CountingCommunicator(fd.as_communicator(vp))
            cd = CountingCommunicator(fd.as_communicator(dp))
            ok, detail = compare(x[rows], y[rows], V, lo, hi, cv, opts, dtype, dp_comm=cd,
                                 rows=rows, ref_x=x, ref_y=y)
            return (ok and len(cd.log) == 1,
                    detail + f"; dp_comm calls {cd.log} (1: the test's own sum)")
        rec.run("grid", f"{np.dtype(dtype).name} mean num_items", run_items)
    # the communication of a dp 'mean'
    x, y, w = make(dp_size * N, V, np.float64, seed=13)
    xl = np.ascontiguousarray(x[rows, lo:hi])

    def run_counts():
        cv = CountingCommunicator(fd.as_communicator(vp))
        cd = CountingCommunicator(fd.as_communicator(dp))
        fd.cross_entropy_with_grad(xl, y[rows], class_start=lo, num_classes=V, comm=cv,
                                   dp_comm=cd, weight=w, z_loss=1e-3)
        ok = cv.log == forward_log(vp, N) and cd.log == [("sum", 3)]
        return ok, f"comm {cv.log}, dp_comm {cd.log}"
    rec.run("grid", "communication of a dp mean", run_counts)


def autograd_cases(rec, group, rank, size):
    import torch
    import torch.nn.functional as F

    import fastce.torch as fce
    import fastce.torch.distributed as ftd
    V, N = 37, 12
    pieces = split(V, size)
    lo, hi = pieces[rank]
    for dtype in (torch.float64, torch.float32):
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        for red in ("mean", "sum", "none"):
            for name, kw, only0 in (("plain", {}, False), ("weight+ignore+smoothing",
                                    {"weight": True, "label_smoothing": 0.1}, False),
                                    ("targets only on rank 0", {"label_smoothing": 0.0}, True)):
                def run():
                    gen = torch.Generator().manual_seed(21)
                    full = torch.randn(N, V, generator=gen, dtype=torch.float64).to(dtype)
                    hi_t = pieces[0][1] if only0 else V
                    y = torch.randint(0, hi_t, (N,), generator=gen)
                    if name.startswith("weight"):
                        y[3] = -100
                    w = None
                    if kw.get("weight"):
                        w = torch.rand(V, generator=gen, dtype=dtype) + 0.5
                    opts = dict(reduction=red, weight=w,
                                label_smoothing=kw.get("label_smoothing", 0.0))
                    local = full[:, lo:hi].clone().requires_grad_(True)
                    loss = ftd.cross_entropy(local, y, class_start=lo, num_classes=V,
                                             comm=group, **opts)
                    g = torch.linspace(-1, 1, N, dtype=loss.dtype) if red == "none" else None
                    (loss * g).sum().backward() if g is not None else loss.backward()
                    ref_in = full.clone().requires_grad_(True)
                    ref = F.cross_entropy(ref_in, y, **opts)
                    (ref * g).sum().backward() if g is not None else ref.backward()
                    el = rel(loss.detach().numpy(), ref.detach().numpy())
                    eg = rel(local.grad.numpy(), ref_in.grad[:, lo:hi].numpy())
                    nz = bool((local.grad.abs().sum(1) > 0)[y != -100].all())
                    return (el <= tol and eg <= tol and nz and loss.dtype == ref.dtype,
                            f"loss vs torch {el:.2e}, grad vs torch {eg:.2e}, "
                            f"every kept row's gradient nonzero {nz} (tol {tol:g})")
                rec.run("autograd", f"{dtype} {red} {name}", run)
    # the LLM options torch lacks: against fastce.torch on the full logits
    for red in ("mean", "none"):
        def run_llm():
            gen = torch.Generator().manual_seed(22)
            full = torch.randn(N, V, generator=gen, dtype=torch.float64)
            y = torch.randint(0, V, (N,), generator=gen)
            opts = dict(reduction=red, z_loss=1e-2, softcap=3.0, logit_scale=1.2,
                        label_smoothing=0.05)
            local = full[:, lo:hi].clone().requires_grad_(True)
            cc = CountingCommunicator(fd.as_communicator(group))
            loss = ftd.cross_entropy(local, y, class_start=lo, num_classes=V, comm=cc, **opts)
            n_fwd = len(cc.log)
            loss.sum().backward()
            ref_in = full.clone().requires_grad_(True)
            ref = fce.cross_entropy(ref_in, y, **opts)
            ref.sum().backward()
            el = rel(loss.detach().numpy(), ref.detach().numpy())
            eg = rel(local.grad.numpy(), ref_in.grad[:, lo:hi].numpy())
            return (el <= 1e-12 and eg <= 1e-12 and n_fwd == 2 and len(cc.log) == 2,
                    f"loss {el:.2e}, grad {eg:.2e}; all-reduces forward {n_fwd}, "
                    f"backward {len(cc.log) - n_fwd}")
        rec.run("autograd", f"z_loss+softcap+logit_scale {red} vs fastce.torch", run_llm)

    for red in ("mean", "none"):
        def run_soft():  # probability targets, this rank's slice, against torch
            gen = torch.Generator().manual_seed(25)
            full = torch.randn(N, V, generator=gen, dtype=torch.float64)
            probs = torch.softmax(torch.randn(N, V, generator=gen, dtype=torch.float64), 1)
            w = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5
            opts = dict(reduction=red, weight=w, label_smoothing=0.1)
            local = full[:, lo:hi].clone().requires_grad_(True)
            loss = ftd.cross_entropy(local, probs[:, lo:hi].contiguous(), class_start=lo,
                                     num_classes=V, comm=group, **opts)
            loss.sum().backward()
            ref_in = full.clone().requires_grad_(True)
            ref = F.cross_entropy(ref_in, probs, **opts)
            ref.sum().backward()
            el = rel(loss.detach().numpy(), ref.detach().numpy())
            eg = rel(local.grad.numpy(), ref_in.grad[:, lo:hi].numpy())
            return el <= 1e-12 and eg <= 1e-12, f"loss vs torch {el:.2e}, grad {eg:.2e}"
        rec.run("autograd", f"probability targets {red} vs torch", run_soft)

    def run_nograd():
        gen = torch.Generator().manual_seed(24)
        full = torch.randn(N, V, generator=gen, dtype=torch.float64)
        y = torch.randint(0, V, (N,), generator=gen)
        loss = ftd.cross_entropy(full[:, lo:hi], y, class_start=lo, num_classes=V, comm=group)
        ref = F.cross_entropy(full, y)
        e = rel(loss.numpy(), ref.numpy())
        return e <= 1e-12 and not loss.requires_grad, f"loss vs torch {e:.2e}, no grad"
    rec.run("autograd", "no grad", run_nograd)

    def run_numpy_vs_torch():  # the NumPy entry point on a torch group, against torch
        gen = torch.Generator().manual_seed(23)
        full = torch.randn(N, V, generator=gen, dtype=torch.float32)
        y = torch.randint(0, V, (N,), generator=gen)
        loss = fd.cross_entropy(full[:, lo:hi].numpy(), y.numpy(), class_start=lo,
                                num_classes=V, comm=group, label_smoothing=0.2)
        ref = F.cross_entropy(full, y, label_smoothing=0.2)
        e = rel(loss, ref.numpy())
        return e <= 2e-6, f"{e:.2e}"
    rec.run("autograd", "numpy entry point vs torch float32", run_numpy_vs_torch)


def run_all(comm, rank, size, grid=None, group=None):
    """Every case; ``grid``: (vp, dp, vp_rank, dp_rank, vp_size, dp_size); ``group``: a
    torch process group for the autograd cases (None: skip them)."""
    rec = Recorder()
    for fn in (options_cases, shard_cases, no_target_cases, ignored_cases, extreme_cases,
               out_cases, count_cases, error_cases, linear_cases, soft_cases, fused_cases):
        fn(rec, comm, rank, size)
    if grid is not None:
        grid_cases(rec, *grid)
    if group is not None:
        autograd_cases(rec, group, rank, size)
    return rec.groups


def main():
    engine, outdir = sys.argv[1], sys.argv[2]
    if engine == "torch":
        import torch.distributed as dist
        dist.init_process_group("gloo")
        rank, size = dist.get_rank(), dist.get_world_size()
        comm = None  # torch's default group, as a user passes it
        grid = None
        if size == 4:  # vp groups {0,1},{2,3}; dp groups {0,2},{1,3}; every rank makes all
            vps = [dist.new_group([0, 1]), dist.new_group([2, 3])]
            dps = [dist.new_group([0, 2]), dist.new_group([1, 3])]
            grid = (vps[rank // 2], dps[rank % 2], rank % 2, rank // 2, 2, 2)
        groups = run_all(comm, rank, size, grid, group=None if size == 4 else dist.group.WORLD)
        if size == 4:  # the autograd cases over a sub-group of the grid too
            groups.update(run_all_autograd(grid[0], rank % 2, 2))
    else:
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        rank, size = world.Get_rank(), world.Get_size()
        grid = None
        if size == 4:
            vp, dp = world.Split(rank // 2, rank), world.Split(rank % 2, rank)
            grid = (vp, dp, rank % 2, rank // 2, 2, 2)
        groups = run_all(world, rank, size, grid)
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "size": size, "engine": engine, "groups": groups}, f)
    if engine == "torch":
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


def run_all_autograd(group, rank, size):
    rec = Recorder()
    autograd_cases(rec, group, rank, size)
    return rec.groups


if __name__ == "__main__":
    main()
