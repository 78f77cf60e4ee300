"""Bad-input fuzz of every public function, run in a child process.

Hypothesis (derandomized: the same cases on every run) draws each argument of a call from
a pool of good values (the call must succeed and match the float64 oracle), bad ones (it
must raise a clear exception naming an argument) and doubtful ones (either): wrong dtypes
and shapes, huge and negative integers, nan and inf options, out-of-range targets,
non-contiguous, reversed, misaligned, read-only, broadcast and self-overlapping arrays, and
every aliasing pair (an input that is a view of ``out=``, or of the logits under
``inplace=True``).  tests/_fuzz_worker.py builds the arrays and judges the call (its
docstring has the rules); it runs in one long-lived child process, so that a segfault or
a hang fails the example that caused it (with the child's stderr) instead of killing or
stalling the suite, and a fresh child takes over for the next example.

Shrinking is off: every failing attempt would cost a child (and a hang its timeout), and
a recipe is short enough to read as it is.
"""
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fastce

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_fuzz_worker.py")
#: seconds one case may take before it counts as a hang (the cases are small: ms each;
#: generous for a loaded machine and for the sanitizer run)
CASE_TIMEOUT = float(os.environ.get("FASTCE_FUZZ_TIMEOUT", "60"))
# a fresh worker's imports (numpy, fastce; slow under the sanitizers) are not a case's time
STARTUP_TIMEOUT = 300.0
READY = struct.pack("<Q", 0)  # the worker's first message: its imports are done


class Worker:
    """One child process running cases from tests/_fuzz_worker.py, restarted after a crash
    or a hang."""

    def __init__(self, timeout=CASE_TIMEOUT):
        self.timeout = timeout
        self.proc = None
        self.n = 0
        self.starts = 0

    def start(self):
        r, w = os.pipe()
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, WORKER, str(w)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self.err, pass_fds=(w,),
                                     cwd=HERE)
        os.close(w)
        self.rfd = r
        self.starts += 1
        # the case clock starts once the worker says it is ready (an 8-byte zero); a worker
        # that dies or stalls before that is reported by the case that follows
        self._read(8, time.monotonic() + STARTUP_TIMEOUT)

    def close(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self.rfd)
        self.err.close()
        self.proc = None

    def _stderr_tail(self, n=3000):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-n:]

    def _read(self, n, deadline):
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                return None
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                return b""
            buf += chunk
        return buf

    def run(self, recipe):
        """The worker's verdict on one case: None (it behaved) or a failure message;
        a crash or a hang is a failure message too (and the child is replaced)."""
        if self.proc is None:
            self.start()
        self.n += 1
        data = pickle.dumps((self.n, recipe))
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + self.timeout
        head = self._read(8, deadline)
        if head == READY:  # late: the worker took longer than STARTUP_TIMEOUT to start
            head = self._read(8, deadline)
        body = self._read(struct.unpack("<Q", head)[0], deadline) if head else head
        if body:
            case_id, result = pickle.loads(body)
            assert case_id == self.n
            return result
        if body is None:  # no answer in time: a hang
            self.proc.kill()
            self.proc.wait()
            why = f"hung: no answer in {self.timeout:g} s"
        else:
            rc = self.proc.wait()
            why = f"crashed: exit status {rc}" + (f" (signal {-rc})" if rc < 0 else "")
        tail = self._stderr_tail()
        self.close()
        return f"the child {why} running {recipe!r}\n--- its stderr:\n{tail}"


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=list(HealthCheck), report_multiple_bugs=False)


def check(worker, recipe):
    result = worker.run(recipe)
    assert result is None, result


# ----------------------------------------------------------------------------- the draws
class Case:
    """Builds one recipe from hypothesis draws, tracking the verdict of each choice."""

    def __init__(self, data, fn):
        self.data = data
        self.r = dict(fn=fn, arrays={}, args=[], kwargs={}, outputs=[], bad=[], returned={})
        self.doubt = False
        self.seed = 0
        # all good (the results are checked), one bad argument (its error is checked), or
        # anything (several bad and doubtful ones, aliasing)
        self.mode = data.draw(st.sampled_from(["good", "good", "one bad", "any", "any"]),
                              label="mode")
        self.bad_at = data.draw(st.integers(0, 7), label="bad argument") if self.mode == "one bad" else -1
        self.picks = 0

    def pick(self, label, pool):
        """``pool``: [(value, verdict)], verdict 'good', 'bad' or 'either'."""
        if self.mode != "any":
            want = "bad" if self.picks == self.bad_at else "good"
            sub = [p for p in pool if p[1] == want]
            if sub:
                pool = sub
            elif want == "bad":
                self.bad_at += 1  # no bad value here: the next argument gets one
            self.picks += 1
        value, verdict = self.data.draw(st.sampled_from(pool), label=label)
        if verdict == "bad":
            self.r["bad"].append(label)
        elif verdict == "either":
            self.doubt = True
        return value

    def choose(self, label, values):
        return self.data.draw(st.sampled_from(values), label=label)

    def array(self, name, shape, dtype, layout="C", **fill):
        self.seed += 1
        self.r["arrays"][name] = dict(shape=tuple(shape), dtype=dtype, layout=layout,
                                      seed=self.seed, **fill)
        return ("@", name)

    def alias(self, name, base, how, shape, dtype):
        self.r["arrays"][name] = dict(view_of=base, how=how, shape=tuple(shape), dtype=dtype)
        return ("@", name)

    def done(self, dtype, inputs, **extra):
        self.r.update(extra)
        self.r["dtype"] = dtype
        self.r["inputs"] = list(inputs)
        self.r["verdict"] = "bad" if self.r["bad"] else ("either" if self.doubt else "good")
        self.r["desc"] = " ".join(
            f"{k}={v if not isinstance(v, tuple) or v[:1] != ('@',) else self.r['arrays'][v[1]]}"
            for k, v in self.r["kwargs"].items())
        return self.r


G, B, E = "good", "bad", "either"
HALF = ("float16", "bfloat16")
ITEMSIZE = dict(float16=2, bfloat16=2, float32=4, float64=8, int32=4, bool=1, complex64=8,
                longdouble=16)
FLOATS = [("float32", G), ("float64", G), ("float16", G), ("bfloat16", G),
          ("int32", B), ("bool", B), ("complex64", B), ("longdouble", B)]
IN_LAYOUTS = [(lay, G) for lay in ("C", "F", "sliced", "reversed", "unaligned", "readonly",
                                   "broadcast")]
N_THREADS = [(None, G), (1, G), (2, G), (64, G), (0, B), (-1, B), (2**20 + 1, B), (2**31, B),
             (2**63, B), (2**100, B), (1.5, B), (True, B), ("2", B)]
REDUCTIONS = [("mean", G), ("sum", G), ("none", G), ("avg", B), (None, B), (3, B)]
SPECIALS = [((), G), (((0, -np.inf),), G), (((1, -np.inf), (5, -np.inf)), G),
            (((2, np.nan),), G), (((3, np.inf),), G), (((0, 1e30),), G)]


def out_choice(c, base_shape, dtype, alias_inputs, allow_inplace):
    """None, ("fresh", layout), ("wrong", what), ("alias", input, how) or "inplace"."""
    pool = [(None, G), (("fresh", "C"), G), (("fresh", "F"), G), (("fresh", "sliced"), G),
            (("fresh", "reversed"), G), (("fresh", "unaligned"), G),
            (("fresh", "readonly"), B), (("fresh", "broadcast"), B),
            (("fresh", "selfoverlap"), E), (("wrong", "dtype"), B), (("wrong", "shape"), B)]
    pool += [(("alias", name, how), E) for name, how in alias_inputs]
    if allow_inplace:
        pool += [("inplace", G), ("inplace", G), ("inplace+out", B)]
    return c.pick("out", pool)


def make_out(c, choice, shape, dtype):
    """Add out= (or inplace=True) to the recipe; returns the name of the output array."""
    if choice is None:
        return None
    if choice in ("inplace", "inplace+out"):
        c.r["kwargs"]["inplace"] = True
        c.r["inplace"] = True
        c.r["outputs"].append("logits")
        if choice == "inplace+out":
            c.r["kwargs"]["out"] = c.array("out", shape, dtype)
            c.r["outputs"].append("out")
        return "logits"
    kind = choice[0]
    if kind == "fresh":
        c.r["kwargs"]["out"] = c.array("out", shape, dtype, choice[1])
    elif kind == "wrong":
        if choice[1] == "dtype":
            other = "float64" if dtype != "float64" else "float32"
            c.r["kwargs"]["out"] = c.array("out", shape, other)
        else:
            c.r["kwargs"]["out"] = c.array("out", tuple(shape) + (2,), dtype)
    else:
        c.r["kwargs"]["out"] = ("@", "out")  # its array is added first: see alias_first
    c.r["outputs"].append("out")
    return "out"


def alias_first(c, choice, out_shape, out_dtype):
    """For an aliasing pair the output's buffer exists before the input viewing it."""
    if isinstance(choice, tuple) and choice[0] == "alias":
        c.array("out", out_shape, out_dtype)
        return choice[1], choice[2]
    if choice == "inplace" and c.data.draw(st.booleans(), label="alias under inplace"):
        return "inplace", None
    return None, None


def logits_shape(c, allow_0d=False):
    pool = [((5,), G), ((1, 2), G), ((3, 5), G), ((6, 40), G), ((2, 3, 2), G), ((4, 1), G),
            ((0, 5), E), ((3, 0), B), ((2, 70000), G), ((300, 6), G)]
    if allow_0d:
        pool.append(((), B))
    return c.pick("shape", pool)


# ----------------------------------------------------------------------------- softmax family
@settings(FUZZ, max_examples=150)
@given(st.data())
def test_fuzz_softmax_family(worker, data):
    fn = data.draw(st.sampled_from(["logsumexp", "log_softmax", "softmax"]), label="fn")
    c = Case(data, fn)
    dtype = c.pick("dtype", FLOATS)
    shape = c.pick("shape", [((5,), G), ((3, 5), G), ((6, 40), G), ((2, 3, 4), G), ((0, 4), E),
                             ((3, 0), E), ((), B if fn == "logsumexp" else E), ((2, 70000), G)])
    nd = len(shape)
    axis = c.pick("axis", [(-1, G), (0, G if nd >= 1 else B), (1, G if nd >= 2 else B),
                           (nd, B), (-nd - 1, B), (1.5, B), ("0", B), (None, E)])
    res_shape = shape if fn != "logsumexp" else (
        tuple(n for i, n in enumerate(shape) if isinstance(axis, int) and i != axis % max(nd, 1))
        if isinstance(axis, int) and not isinstance(axis, bool) and -nd <= axis < nd else shape)
    out_dtype = "float32" if fn == "logsumexp" and dtype in HALF else dtype
    if dtype not in [d for d, v in FLOATS if v == G]:
        out_dtype = "float64"
    choice = out_choice(c, res_shape, out_dtype, [("x", "same")], False)
    if fn == "logsumexp" and isinstance(choice, tuple) and choice[0] == "alias" and \
            np.prod(res_shape) * ITEMSIZE[out_dtype] > np.prod(shape) * ITEMSIZE[dtype]:
        choice = None  # out cannot be a view inside x: it has more bytes
    special = c.pick("special", SPECIALS)
    if isinstance(choice, tuple) and choice[0] == "alias":
        if fn == "logsumexp":  # out (fewer elements) is a view of x's first elements
            c.array("x", shape, dtype, special=special)
            c.alias("out", "x", "first", res_shape, out_dtype)
        else:  # x is out itself
            c.array("out", shape, out_dtype, special=special)
            c.alias("x", "out", "same", shape, out_dtype)
    else:
        c.array("x", shape, dtype, c.pick("x layout", IN_LAYOUTS), special=special)
    c.r["args"] = [("@", "x")]
    if axis != -1:
        c.r["kwargs"]["axis"] = axis
    make_out(c, choice, res_shape, out_dtype)
    nt = c.pick("n_threads", N_THREADS)
    if nt is not None:
        c.r["kwargs"]["n_threads"] = nt
    if "out" in c.r["outputs"]:
        c.r["returned"] = {"out": 0}
    check(worker, c.done(dtype, ["x"]))


# ----------------------------------------------------------------------------- cross-entropy
CE_FNS = ["cross_entropy", "cross_entropy_with_grad", "cross_entropy_backward", "nll_loss",
          "nll_loss_backward", "CrossEntropyLoss"]


def draw_target(c, shape, dtype, soft_ok):
    """Class indices (good, or out of range / wrong shape / wrong dtype), or probabilities."""
    C = shape[1] if len(shape) > 1 else (shape[0] if shape else 1)
    t_shape = (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()
    kind = c.choose("target kind", ["index"] * 3 + (["prob"] if soft_ok else []))
    if kind == "prob":
        return "prob", c.array("target", shape, dtype if dtype in ("float32", "float64") else "float64",
                               c.pick("target layout", IN_LAYOUTS), fill="prob")
    tdtype = c.pick("target dtype", [("int64", G), ("int32", G)] +
                    ([("int16", G)] if C < 2**15 else []) + ([("uint8", G)] if C < 256 else []) +
                    [("bool", B), ("complex64", B)])
    # at flat index 0, which a broadcast (zero-stride) target keeps
    sets = c.pick("target values", [((), G), (((0, -100),), G), (((0, C),), B), (((0, -1),), B),
                                    (((0, 2**40),), B if tdtype == "int64" else G)])
    if tdtype == "uint8":
        sets = tuple((i, v) for i, v in sets if 0 <= v < 256)
    elif tdtype in ("int16", "int32"):
        sets = tuple((i, v) for i, v in sets if -2**15 <= v < 2**15)
    if "target values" in c.r["bad"] and (int(np.prod(t_shape)) == 0 or not sets):
        c.r["bad"].remove("target values")  # nothing holds the bad value
    c.r["target sets"] = sets
    tsh = c.pick("target shape", [(t_shape, G), ((t_shape[0] + 1,) + t_shape[1:] if t_shape else (2,), B)])
    return "index", c.array("target", tsh, tdtype, c.pick("target layout", IN_LAYOUTS),
                            fill="int", lo=0, hi=max(C, 1), set=sets)


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_fuzz_cross_entropy_family(worker, data):
    fn = data.draw(st.sampled_from(CE_FNS), label="fn")
    nll = fn.startswith("nll")
    criterion = fn == "CrossEntropyLoss"
    grad = fn in ("cross_entropy_with_grad", "cross_entropy_backward", "nll_loss_backward") or criterion
    c = Case(data, fn)
    dtype = c.pick("dtype", FLOATS)
    shape = logits_shape(c, allow_0d=True)
    C = shape[1] if len(shape) > 1 else (shape[0] if shape else 1)
    row_shape = (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()
    good_dtype = dtype in [d for d, v in FLOATS if v == G]
    gdt = dtype if good_dtype else "float64"
    aliasable = [("weight", "first"), ("logits", "same"), ("logits", "flip")]
    if not nll:
        aliasable += [("target", "flip")] + ([] if criterion else [("lse", "first")])
    if grad and row_shape and not criterion:
        aliasable.append(("grad_output", "first"))
    choice = out_choice(c, shape, gdt, aliasable if grad else [], grad and not nll) if grad else None
    alias, how = alias_first(c, choice, shape, gdt)
    base = "out" if alias not in (None, "inplace") else "logits"
    special = c.pick("special", SPECIALS)
    if alias == "logits":
        c.alias("logits", "out", how, shape, gdt)
    else:
        c.array("logits", shape, dtype, "C" if choice in ("inplace", "inplace+out")
                else c.pick("logits layout", IN_LAYOUTS), special=special)
    if alias == "inplace":  # some input is a view of the logits, which the call overwrites
        alias, how = c.choose("viewing logits", [("weight", "first"), ("target", "flip"),
                                                 ("grad_output", "first")]
                              if row_shape and not criterion else [("weight", "first")])
        if alias == "target" and nll:
            alias = "weight"
    kind = "index"
    if alias == "target":
        kind = "prob"
        c.alias("target", base, "flip" if base == "out" else "flip", shape, gdt)
        c.r["args"] = [("@", "logits"), ("@", "target")]
        if not good_dtype:
            c.r["bad"].append("dtype")
    else:
        kind, _ = draw_target(c, shape, gdt, soft_ok=not nll and len(shape) >= 1)
    c.r["args"] = [("@", "logits"), ("@", "target")]
    opts = {}
    if alias == "weight":
        opts["weight"] = c.alias("weight", base, "first", (C,), gdt)
    else:
        w = c.pick("weight", [(None, G), ("f64", G), ("f32", G), ("long", B), ("bool", B), ("2d", B)])
        if w is not None:
            wshape = {"long": (C + 1,), "2d": (1, C)}.get(w, (C,))
            wdtype = {"f32": "float32", "bool": "bool"}.get(w, "float64")
            opts["weight"] = c.array("weight", wshape, wdtype, fill="uniform", lo=0.25, hi=2.0)
    ii = c.pick("ignore_index", [(-100, G), (1, G), (1.5, B), ("x", B), (2**63, E), (-2**70, E)])
    if ii != -100:
        opts["ignore_index"] = ii
        if kind == "prob":
            c.r["bad"].append("ignore_index with probabilities")
        elif any(v == -100 for _, v in c.r.get("target sets", ())) and \
                int(np.prod(c.r["arrays"]["target"]["shape"])):
            c.r["bad"].append("target -100 is not the ignore_index")
    red = c.pick("reduction", REDUCTIONS)
    if red != "mean":
        opts["reduction"] = red
    if not nll:
        for name, pool in (
                ("label_smoothing", [(0.0, G), (0.1, G), (1.0, G), (1.5, B), (-0.1, B), (np.nan, B), ("a", B)]),
                ("z_loss", [(0.0, G), (1e-3, G), (-1.0, B), (np.nan, B), (np.inf, B)]),
                ("softcap", [(None, G), (5.0, G), (0.0, B), (-1.0, B), (np.nan, B), (True, B)]),
                ("logit_scale", [(1.0, G), (0.5, G), (-2.0, G), (np.inf, B), (np.nan, B), ("2", B), (True, B)]),
                ("num_items", [(None, G), (7.5, G if red == "mean" else B), (0, B), (-1.0, B), (np.nan, B)])):
            v = c.pick(name, pool)
            if v != {"label_smoothing": 0.0, "z_loss": 0.0, "softcap": None, "logit_scale": 1.0,
                     "num_items": None}[name] or (isinstance(v, float) and np.isnan(v)):
                opts[name] = v
    if criterion:
        nt = c.pick("n_threads", N_THREADS)
        if nt is not None:
            opts["n_threads"] = nt
        c.r["ctor"] = opts
        back = {}
        if choice is not None:
            make_out(c, choice, shape, gdt)
            back.update({k: c.r["kwargs"].pop(k) for k in ("out", "inplace") if k in c.r["kwargs"]})
        g = c.pick("grad_output", [(1.0, G), (-0.5, G), (2, G)])
        if g != 1.0:
            back["grad_output"] = g
        c.r["backward"] = back
        loss_dtype = "float32" if dtype in HALF else dtype
        check(worker, c.done(dtype, ["logits", "target", "weight", "grad_output"],
                             loss_dtype=loss_dtype))
        return
    if not nll:
        lse = c.pick("lse", [(None, G), ("long", B), ("bool", B)] if row_shape else [(None, G)])
        if alias == "lse":
            opts["lse"] = c.alias("lse", base, "first", row_shape, gdt)
        elif lse is not None:
            opts["lse"] = c.array("lse", (row_shape[0] + 1,) + row_shape[1:] if lse == "long" else row_shape,
                                  "bool" if lse == "bool" else "float64")
        shard = c.pick("shard", [(None, G), ((-1, None), B), ((2**63, None), B), ((0, 2**63), B),
                                 ((0, max(C - 1, 0)), B if C > 1 else E), ((1, C + 1), B)])
        if shard is not None:
            opts["class_start"], num = shard
            if num is not None:
                opts["num_classes"] = num
        if fn != "cross_entropy_backward" and c.data.draw(st.booleans(), label="return_lse"):
            opts["return_lse"] = True
            c.r["return_lse"] = True
    if grad:
        if alias == "grad_output":
            g = c.alias("grad_output", base, "first", row_shape, gdt)
            if red != "none":
                c.r["bad"].append("grad_output array for a reduction")
        else:
            gpool = [(1.0, G), (-0.5, G), (2, G), (np.float32(0.5), G), ("0d", G), ("bool", B),
                     ("complex", B)]
            if row_shape:
                gpool += [("rows", G if red == "none" else (E if np.prod(row_shape) == 1 else B)),
                          ("long", B)]
            g = c.pick("grad_output", gpool)
            if g == "0d":
                g = c.array("grad_output", (), "float64")
            elif g in ("rows", "long", "bool", "complex"):
                gs = (row_shape[0] + 1,) + row_shape[1:] if g == "long" else row_shape
                g = c.array("grad_output", gs, {"bool": "bool", "complex": "complex64"}.get(g, "float64"),
                            c.pick("grad_output layout", IN_LAYOUTS))
        if g != 1.0:
            opts["grad_output"] = g
    nt = c.pick("n_threads", N_THREADS)
    if nt is not None:
        opts["n_threads"] = nt
    c.r["kwargs"].update(opts)
    if grad and choice is not None:
        make_out(c, choice, shape, gdt)
        if "out" in c.r["outputs"] and choice not in ("inplace+out",):
            c.r["returned"] = {"out": 0 if fn.endswith("backward") else 1}
    if fn == "cross_entropy_backward" or fn == "nll_loss_backward":
        if "grad_output" in c.r["kwargs"]:
            c.r["args"].append(c.r["kwargs"].pop("grad_output"))
    loss_dtype = "float32" if dtype in HALF else dtype
    if nll and dtype == "float32":
        loss_dtype = "float32"
    check(worker, c.done(dtype, ["logits", "target", "weight", "lse", "grad_output"],
                         loss_dtype=loss_dtype))


# ----------------------------------------------------------------------------- BCE
BCE_FNS = ["binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
           "BCEWithLogitsLoss"]


@settings(FUZZ, max_examples=200)
@given(st.data())
def test_fuzz_bce_family(worker, data):
    fn = data.draw(st.sampled_from(BCE_FNS), label="fn")
    criterion = fn == "BCEWithLogitsLoss"
    grad = fn != "binary_cross_entropy_with_logits"
    c = Case(data, fn)
    dtype = c.pick("dtype", [("float32", G), ("float64", G), ("float16", E), ("bfloat16", E),
                             ("int32", B), ("complex64", B)])
    shape = c.pick("shape", [((5,), G), ((3, 5), G), ((6, 40), G), ((2, 3, 4), G), ((), G),
                             ((0, 3), G), ((300, 7), G)])
    gdt = dtype if dtype in ("float32", "float64", "float16", "bfloat16") else "float64"
    last = shape[-1] if shape else 1
    aliasable = [("logits", "same"), ("target", "same"), ("weight", "first"),
                 ("pos_weight", "first")]
    if shape:
        aliasable.append(("grad_output", "same"))
    choice = out_choice(c, shape, gdt, aliasable, True) if grad else None
    alias, how = alias_first(c, choice, shape, gdt)
    if alias == "inplace":
        alias = c.choose("viewing logits", ["target", "weight", "pos_weight"])
    base = "out" if "out" in c.r["arrays"] else "logits"
    special = c.pick("special", SPECIALS[:3] + SPECIALS[4:])
    if alias == "logits":
        c.alias("logits", "out", how, shape, gdt)
    else:
        c.array("logits", shape, dtype, "C" if choice in ("inplace", "inplace+out")
                else c.pick("logits layout", IN_LAYOUTS), special=special)
    if alias == "target":
        c.alias("target", base, "same", shape, gdt)
    else:
        tsh = c.pick("target shape", [(shape, G), (tuple(shape) + (2,), B)])
        c.array("target", tsh, c.pick("target dtype", [(gdt, G), ("float64", G), ("bool", E),
                                                       ("complex64", B)]),
                c.pick("target layout", IN_LAYOUTS), fill=c.choose("target fill", ["binary", "uniform"]))
    c.r["args"] = [("@", "logits"), ("@", "target")]
    opts = {}
    for name in ("weight", "pos_weight"):
        if alias == name:
            opts[name] = c.alias(name, base, "first", (last,), gdt)
            continue
        w = c.pick(name, [(None, G), ((last,), G if shape else B), (shape, G), ((), G),
                          ((last + 1,), B), ("bool", E)])
        if w is not None:
            opts[name] = c.array(name, (last,) if w == "bool" else w,
                                 "bool" if w == "bool" else "float64", fill="uniform", lo=0.25, hi=2.0)
    red = c.pick("reduction", REDUCTIONS)
    if red != "mean":
        opts["reduction"] = red
    nt = c.pick("n_threads", N_THREADS)
    if nt is not None:
        opts["n_threads"] = nt
    g = 1.0
    if grad:
        gpool = [(1.0, G), (-0.5, G), (2, G)]
        if red == "none" and shape:
            gpool += [("full", G), ("long", B)]
        if alias == "grad_output":
            g = c.alias("grad_output", base, "same", shape, gdt)
            if red != "none":
                c.r["bad"].append("grad_output array for a reduction")
        else:
            g = c.pick("grad_output", gpool)
            if g in ("full", "long"):
                g = c.array("grad_output", shape if g == "full" else tuple(shape) + (2,), "float64")
    if criterion:
        c.r["ctor"] = opts
        back = {}
        if g != 1.0:
            back["grad_output"] = g
        if choice is not None:
            make_out(c, choice, shape, gdt)
            back.update({k: c.r["kwargs"].pop(k) for k in ("out", "inplace") if k in c.r["kwargs"]})
        c.r["backward"] = back
    else:
        if g != 1.0:
            opts["grad_output"] = g
        c.r["kwargs"].update(opts)
        if grad and choice is not None:
            make_out(c, choice, shape, gdt)
            if "out" in c.r["outputs"] and choice != "inplace+out":
                c.r["returned"] = {"out": 1}
    check(worker, c.done(dtype, ["logits", "target", "weight", "pos_weight", "grad_output"]))


# ----------------------------------------------------------------------------- linear CE
@settings(FUZZ, max_examples=100)
@given(st.data())
def test_fuzz_linear_cross_entropy(worker, data):
    fn = data.draw(st.sampled_from(["linear_cross_entropy", "linear_cross_entropy_with_grad"]),
                   label="fn")
    c = Case(data, fn)
    dtype = c.pick("dtype", [("float32", G), ("float64", G), ("float16", E), ("int32", B)])
    N, H, V = c.pick("N, H, V", [((4, 3, 7), G), ((9, 8, 40), G), ((1, 1, 2), G), ((0, 3, 5), E)])
    c.array("hidden", (N, H), dtype, c.pick("hidden layout", IN_LAYOUTS), scale=1.0)
    wsh = c.pick("weight shape", [((V, H), G), ((V, H + 1), B), ((H,), B)])
    c.array("weight", wsh, c.pick("weight dtype", [(dtype, G), ("bool", B)]),
            c.pick("weight layout", IN_LAYOUTS), scale=1.0)
    sets = c.pick("target values", [((), G), (((0, -100),), G), (((0, V),), B), (((1, -5),), B)])
    if N < 2:
        sets = tuple((i, v) for i, v in sets if v == -100 or N)
        if not N and "target values" in c.r["bad"]:
            c.r["bad"].remove("target values")
    c.array("target", c.pick("target shape", [((N,), G), ((N + 1,), B)]),
            c.pick("target dtype", [("int64", G), ("int32", G), ("float64", B)]),
            fill="int", lo=0, hi=V, set=sets)
    c.r["args"] = [("@", "hidden"), ("@", "weight"), ("@", "target")]
    opts = {}
    b = c.pick("bias", [(None, G), ((V,), G), ((V + 1,), B)])
    if b is not None:
        opts["bias"] = c.array("bias", b, dtype, scale=0.5)
    red = c.pick("reduction", REDUCTIONS)
    if red != "mean":
        opts["reduction"] = red
    for name, pool in (("label_smoothing", [(0.0, G), (0.2, G), (2.0, B), (np.nan, B)]),
                       ("z_loss", [(0.0, G), (1e-2, G), (-1.0, B)]),
                       ("chunk_size", [(None, G), (1, G), (3, G), (0, B), (-1, B), (1.5, B), (2**70, E)]),
                       ("memory_budget", [(None, G), (10**6, G), (0, B), (-5, B), (2**70, E)]),
                       ("n_threads", N_THREADS)):
        v = c.pick(name, pool)
        if v is not None and not (name in ("label_smoothing", "z_loss") and v == 0.0):
            opts[name] = v
    if opts.get("chunk_size") is not None and opts.get("memory_budget") is not None:
        c.r["bad"].append("chunk_size and memory_budget")
    if fn.endswith("_with_grad"):
        g = c.pick("grad_output", [(1.0, G), (0.5, G), ("rows", G if red == "none" else B)])
        if g == "rows":
            g = c.array("grad_output", (N,), "float64")
        if g != 1.0:
            opts["grad_output"] = g
    c.r["kwargs"] = opts
    check(worker, c.done(dtype, ["hidden", "weight", "target", "bias", "grad_output"]))


# ----------------------------------------------------------------------------- configuration
@settings(FUZZ, max_examples=40)
@given(st.data())
def test_fuzz_configuration(data):
    """set_num_threads / set_isa with good and bad values; in this process (no array is
    touched), the previous state restored."""
    threads, isa = fastce.get_num_threads(), fastce.get_isa()
    n = data.draw(st.sampled_from([1, 2, 2**20, 0, -1, 2**20 + 1, 2**31, 2**63, 1.5, True, "2"]))
    name = data.draw(st.sampled_from(fastce.supported_isas() + ["avx1024", "", 3, None, "AVX2"]))
    try:
        for f, v, good in ((fastce.set_num_threads, n, type(n) is int and 1 <= n <= 2**20),
                           (fastce.set_isa, name, name in fastce.supported_isas())):
            if good:
                f(v)
            else:
                with pytest.raises((TypeError, ValueError)) as info:
                    f(v)
                assert str(info.value).startswith(("n must", "isa ")), info.value
        if type(n) is int and 1 <= n <= 2**20:
            assert fastce.get_num_threads() == n
        if name in fastce.supported_isas():
            assert fastce.get_isa() == name
        x = np.arange(12.0).reshape(3, 4)
        np.testing.assert_allclose(fastce.logsumexp(x), np.log(np.exp(x).sum(1)), rtol=1e-12)
    finally:
        fastce.set_num_threads(threads)
        fastce.set_isa(isa)


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss", "nll_loss_backward"])
def test_n_threads_beyond_int64_is_a_value_error(fn):
    x = np.log(np.full((3, 5), 0.2))
    with pytest.raises(ValueError, match="n_threads"):
        getattr(fastce, fn)(x, np.arange(3), n_threads=2**63)


# ----------------------------------------------------------------------------- the harness
@pytest.mark.parametrize("action", ["abort", "segfault", "exit", "hang"])
def test_harness_reports_crashes_and_hangs(action):
    """The worker dying (abort, segfault, exit) or hanging in a case fails that case with
    the reason, and a fresh worker runs the next case."""
    w = Worker(timeout=3.0)
    try:
        bad = w.run({"fn": "_harness", "action": action})
        assert bad is not None
        assert ("hung" if action == "hang" else "crashed") in bad, bad
        assert "'action': " + repr(action) in bad, "the failing case is named"
        if action in ("abort", "segfault"):
            assert "signal" in bad, bad
        ok = w.run({"fn": "_harness", "action": "nothing"})
        assert ok is None and w.starts == 2
    finally:
        w.close()


def test_harness_judges_results(worker):
    """The judge itself: a wrong result, a modified input, an accepted bad call and an
    error naming no argument are each reported (through a stand-in fastce function)."""
    import _fuzz_worker as FW

    x = dict(shape=(3, 5), dtype="float64", layout="C", seed=1)
    good = dict(fn="softmax", arrays={"x": x}, args=[("@", "x")], kwargs={}, verdict="good")
    assert FW.run_case(good) is None
    assert FW.run_case(dict(good, verdict="bad")).startswith("softmax [")
    real = fastce.softmax
    try:
        fastce.softmax = lambda a: real(a) * 1.001
        assert "off by" in FW.run_case(good)
        def scribble(a):
            a.flags.writeable = True
            a[0, 0] = 7.0
            return real(a)
        fastce.softmax = scribble
        assert "modified the input" in FW.run_case(good)
        def vague(a):
            raise ValueError("something is wrong")
        fastce.softmax = vague
        assert "names no argument" in FW.run_case(dict(good, verdict="bad"))
        def typed(a):
            raise ZeroDivisionError("x")
        fastce.softmax = typed
        assert "not an allowed class" in FW.run_case(good)
    finally:
        fastce.softmax = real
    # the memory facts overrule the recipe's verdict: an out= that is the input
    alias = dict(fn="softmax", arrays={"out": x, "x": dict(view_of="out", how="same", shape=(3, 5),
                                                            dtype="float64")},
                 args=[("@", "x")], kwargs={"out": ("@", "out")}, outputs=["out"], verdict="good")
    assert FW.memory_verdict(alias, FW.build(alias)) == ["out overlaps input x"]
