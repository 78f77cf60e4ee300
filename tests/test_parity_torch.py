"""Parity with torch (issue 3): cross_entropy, cross_entropy_with_grad, cross_entropy_backward,
CrossEntropyLoss, nll_loss and nll_loss_backward against ``torch.nn.functional`` and its
autograd gradient, computed by torch in float64 on the very values fastce sees.

Generated cases
---------------
* ``test_cross_entropy_vs_torch``: the full product of dtype (float32, float64) x reduction
  x weight (None, random positive) x ignore (none / some rows / all rows) x label smoothing
  (0, 0.1, 1.0) x target kind (class indices; probabilities of the logits' shape, which
  take no ignore_index) x rank 1..5 (logits (C,), (N, C), (N, C, d1), ..., (N, C, d1, d2, d3)),
  on small shapes, each also with N = 0, in C and Fortran order, on every ISA.  torch runs
  once per case (cached); fastce runs per ISA and layout.
* ``test_pairwise_vs_torch``: larger and odd shapes (1000 classes with trailing dims, C = 1,
  a zero trailing dim, sliced layouts, a non-default ignore_index) crossed pairwise with the
  options and the ISAs (every pair of factor values appears in at least one case).
* nll_loss / nll_loss_backward vs torch on every rank, with weights, ignored rows and every
  reduction; finite-difference checks of the gradient (soft targets, label smoothing with
  weights, K-dim); and the errors torch raises, raised by fastce with the same class.
"""
import contextlib
import functools
import itertools

import numpy as np
import pytest

import fastce
from conftest import (IGNORE_INDEX, assert_close, check_results, dtype_id, make_weight,
                      require_torch)

pytestmark = pytest.mark.torch

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")
WEIGHTS = (None, "random")
IGNORES = ("none", "some", "all")
SMOOTHINGS = (0.0, 0.1, 1.0)
TARGET_KINDS = ("index", "prob")

# fastce (computing in the logits' dtype) vs torch in float64 on the same values:
# |fast - torch| <= atol + rtol |torch|; for gradients atol is relative to max|torch grad|
TOL = {
    np.float32: dict(loss=dict(rtol=1e-5, atol=1e-6), grad=dict(rtol=1e-5, atol=1e-6)),
    np.float64: dict(loss=dict(rtol=1e-12, atol=1e-12), grad=dict(rtol=1e-12, atol=1e-13)),
}

# shapes per rank of the logits: a small one and the same with N = 0
RANK_SHAPES = {
    1: [(7,)],
    2: [(5, 7), (0, 7)],
    3: [(3, 6, 4), (0, 6, 4)],
    4: [(2, 5, 3, 2), (0, 5, 3, 2)],
    5: [(2, 4, 2, 3, 2), (0, 4, 2, 3, 2)],
}


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def torch_one_thread(torch):
    """Run torch on one thread for the duration (restored afterwards).  On a 2-core machine,
    torch's OpenMP workers and fastce's spin-wait for each other between interleaved calls,
    costing ~20 ms per switch; the reference computations are tiny anyway."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def target_shape(shape):
    """torch's target shape for class indices: (), (N,) or (N, d1, ..., dk)."""
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def class_axis(shape):
    return 0 if len(shape) == 1 else 1


def layout_copy(a, layout):
    """C order, Fortran order, or 'sliced': every axis strided (a view into a nan-filled
    buffer twice as long on each axis)."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    assert layout == "sliced", layout
    big = np.full(tuple(2 * n + 1 for n in a.shape), np.nan, dtype=a.dtype)
    view = big[tuple(slice(1, 1 + 2 * n, 2) for n in a.shape)]
    view[...] = a
    return view


def make_inputs(dtype, shape, *, kind="index", weight=None, ignore="none", reduction="mean",
                ignore_index=IGNORE_INDEX, seed=0):
    """Logits, target, grad_output and class weights of one case, all exactly representable
    in ``dtype`` so that fastce and torch (in float64) see equal values.

    Class-index targets: rows whose flat index is 1 mod 3 are ignored for ``ignore='some'``,
    every row for ``'all'``.  Probability targets: random rows normalised to sum 1, with a
    few exact zeros.  ``grad_output`` is 0.75, or one random value per row for 'none'.
    """
    rng = np.random.default_rng([seed, len(shape), *shape])
    c = shape[class_axis(shape)]
    tshape = target_shape(shape)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if kind == "prob":
        assert ignore == "none", "probability targets take no ignore_index"
        p = rng.uniform(0, 1, shape)
        p[p < 0.15] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            p = p / p.sum(axis=class_axis(shape), keepdims=True)
        t = np.nan_to_num(p).astype(dtype)
    else:
        t = rng.integers(0, c, size=tshape).astype(np.int64)
        flat = t.reshape(-1)  # a view: t is contiguous
        if ignore == "some":
            flat[1::3] = ignore_index
        elif ignore == "all":
            flat[:] = ignore_index
    if reduction == "none":
        g = rng.uniform(-2, 2, size=tshape).astype(dtype)
    else:
        g = 0.75
    return x, t, g, make_weight(c, weight, dtype=dtype, seed=seed)


def torch_cross_entropy64(torch, x, t, g, *, weight, ignore_index, reduction, label_smoothing):
    """torch's loss and autograd gradient, in float64, as NumPy arrays."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    tt = torch.tensor(np.asarray(t, dtype=np.float64 if np.asarray(t).dtype.kind == "f" else np.int64))
    wt = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    loss = torch.nn.functional.cross_entropy(xt, tt, weight=wt, ignore_index=ignore_index,
                                             reduction=reduction, label_smoothing=label_smoothing)
    loss.backward(torch.as_tensor(np.asarray(g, dtype=np.float64)).reshape(loss.shape))
    return loss.detach().numpy(), xt.grad.numpy()


@functools.lru_cache(maxsize=None)
def torch_case(dtype, shape, kind, weight, ignore, reduction, label_smoothing, ignore_index, seed):
    """(inputs, torch loss, torch grad) of one generated case; torch runs once per case."""
    torch = require_torch()
    x, t, g, w = make_inputs(dtype, shape, kind=kind, weight=weight, ignore=ignore,
                             reduction=reduction, ignore_index=ignore_index, seed=seed)
    with torch_one_thread(torch):
        loss, grad = torch_cross_entropy64(torch, x, t, g, weight=w, ignore_index=ignore_index,
                                           reduction=reduction, label_smoothing=label_smoothing)
    for a in (x, t, np.asarray(g), w, loss, grad):
        if isinstance(a, np.ndarray):
            a.flags.writeable = False  # cached: never modified by a test
    return (x, t, g, w), loss, grad


def run_fastce(x, t, g, kw, n_threads=None):
    """Every cross-entropy entry point on one case: name -> (loss or None, grad or None).
    Asserts that no input was modified."""
    before = [None if a is None else np.array(a, copy=True) for a in (x, t, g, kw["weight"])]
    res = {
        "cross_entropy": (fastce.cross_entropy(x, t, **kw, n_threads=n_threads), None),
        "cross_entropy_with_grad": fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g,
                                                                  n_threads=n_threads),
        "cross_entropy_backward": (None, fastce.cross_entropy_backward(x, t, g, **kw,
                                                                       n_threads=n_threads)),
    }
    crit = fastce.CrossEntropyLoss(**kw, n_threads=n_threads)
    loss = crit(x, t)
    res["CrossEntropyLoss"] = (loss, crit.backward(g))
    for name, a, b in zip(("logits", "target", "grad_output", "weight"),
                          (x, t, g, kw["weight"]), before):
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=f"{name} was modified by a call")
    return res


def check_vs_torch(res, loss_want, grad_want, dtype, shape, reduction, desc):
    """Types, shapes and values of every entry point's loss and gradient."""
    check_results(res, loss_want, grad_want, dtype, target_shape(shape), reduction, TOL[dtype],
                  desc, shape)


def describe(dtype, shape, kind, weight, ignore, reduction, label_smoothing, ignore_index,
             layout=None, isa=None):
    desc = (f"{dtype_id(dtype)} shape={shape} target={kind} reduction={reduction} w={weight} "
            f"ignore={ignore} ls={label_smoothing}")
    if ignore_index != IGNORE_INDEX:
        desc += f" ignore_index={ignore_index}"
    if layout is not None:
        desc += f" layout={layout}"
    if isa is not None:
        desc += f" isa={isa}"
    return desc


def check_case(dtype, shape, kind, weight, ignore, reduction, label_smoothing, layout, isa,
               ignore_index=IGNORE_INDEX, seed=0, n_threads=None):
    (x, t, g, w), loss_want, grad_want = torch_case(
        dtype, shape, kind, weight, ignore, reduction, label_smoothing, ignore_index, seed)
    x = layout_copy(x, layout)
    if kind == "prob":
        t = layout_copy(t, layout)
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=label_smoothing)
    res = run_fastce(x, t, g, kw, n_threads=n_threads)
    desc = describe(dtype, shape, kind, weight, ignore, reduction, label_smoothing,
                    ignore_index, layout, isa)
    check_vs_torch(res, loss_want, grad_want, dtype, shape, reduction, f"vs torch: {desc}")


# ----------------------------------------------------------------------------- full product
def _product_cases():
    cases = []
    for dtype, reduction, weight, ignore, ls, kind, rank in itertools.product(
            DTYPES, REDUCTIONS, WEIGHTS, IGNORES, SMOOTHINGS, TARGET_KINDS, RANK_SHAPES):
        if kind == "prob" and ignore != "none":
            continue  # torch: ignore_index is not supported for probability targets
        if rank == 1 and ignore == "some":
            continue  # a single row is either ignored or not
        cases.append(pytest.param(
            dtype, reduction, weight, ignore, ls, kind, rank,
            id=f"{dtype_id(dtype)}-{reduction}-w={weight}-ignore={ignore}-ls={ls}-"
               f"target={kind}-rank={rank}"))
    return cases


@pytest.mark.parametrize("dtype, reduction, weight, ignore, label_smoothing, kind, rank",
                         _product_cases())
def test_cross_entropy_vs_torch(dtype, reduction, weight, ignore, label_smoothing, kind, rank,
                                isa):
    """Loss and gradient of every entry point vs torch autograd; each rank's shapes
    (N = 0 included) in C and Fortran order."""
    layouts = ("C",) if rank == 1 else ("C", "F")
    for shape in RANK_SHAPES[rank]:
        for layout in layouts:
            check_case(dtype, shape, kind, weight, ignore, reduction, label_smoothing, layout,
                       isa)


# ----------------------------------------------------------------------------- pairwise
def pairwise(factors, valid=lambda case: True):
    """A small list of cases (dicts) in which every pair of values of two factors appears
    at least once (greedy, deterministic).  ``valid`` judges partial cases too: it must
    reject a partial case only when no completion of it is valid."""
    names = list(factors)

    def pairs_of(case):
        return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(names, 2)
                if a in case and b in case}

    uncovered = {((a, va), (b, vb)) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b] if valid({a: va, b: vb})}
    cases = []
    while uncovered:
        (a, va), (b, vb) = min(uncovered, key=repr)
        case = {a: va, b: vb}
        for name in names:
            if name not in case:
                options = [v for v in factors[name] if valid({**case, name: v})]
                case[name] = max(options, key=lambda v: len(pairs_of({**case, name: v}) & uncovered))
        uncovered -= pairs_of(case)
        cases.append(case)
    return cases


PAIRWISE_SHAPES = [(2, 1000, 3), (4, 1, 3), (3, 40, 0, 2), (2, 33, 3, 2, 2), (3, 70, 5)]
PAIRWISE_FACTORS = dict(
    dtype=DTYPES, reduction=REDUCTIONS, weight=WEIGHTS, ignore=IGNORES, ls=SMOOTHINGS,
    kind=TARGET_KINDS, shape=PAIRWISE_SHAPES, layout=("C", "F", "sliced"),
    ignore_index=(IGNORE_INDEX, 2), isa=tuple(fastce.supported_isas()), n_threads=(1, 2),
)


def _pairwise_valid(case):
    """Probability targets take no ignore_index (partial cases: only what is set counts)."""
    return not (case.get("kind") == "prob" and (case.get("ignore", "none") != "none" or
                                                case.get("ignore_index", IGNORE_INDEX) != IGNORE_INDEX))


def _pairwise_cases():
    return [pytest.param(c, id="-".join(
        f"{k}={dtype_id(c[k]) if k == 'dtype' else c[k]}" for k in PAIRWISE_FACTORS).replace(" ", ""))
        for c in pairwise(PAIRWISE_FACTORS, _pairwise_valid)]


@pytest.mark.parametrize("case", _pairwise_cases())
def test_pairwise_vs_torch(case):
    """Bigger and odd shapes (1000 classes, C = 1, a zero trailing dim, rank 5 with 33
    classes), strided layouts, ignore_index=2 (a valid class), ISAs and thread counts,
    crossed pairwise with the options."""
    c = case
    previous = fastce.get_isa()
    fastce.set_isa(c["isa"])
    try:
        check_case(c["dtype"], c["shape"], c["kind"], c["weight"], c["ignore"], c["reduction"],
                   c["ls"], c["layout"], c["isa"], ignore_index=c["ignore_index"],
                   n_threads=c["n_threads"])
    finally:
        fastce.set_isa(previous)


def test_pairwise_generator_covers_every_pair():
    """Guard for the generator above: every valid pair of factor values is in some case."""
    factors = PAIRWISE_FACTORS
    cases = pairwise(factors, _pairwise_valid)
    assert all(_pairwise_valid(c) for c in cases)
    for a, b in itertools.combinations(factors, 2):
        for va in factors[a]:
            for vb in factors[b]:
                if not _pairwise_valid({a: va, b: vb}):
                    continue
                assert any(c[a] == va and c[b] == vb for c in cases), f"{a}={va}, {b}={vb} missing"


# ----------------------------------------------------------------------------- nll_loss
def _nll_cases():
    return [pytest.param(d, r, w, i, k, id=f"{dtype_id(d)}-{r}-w={w}-ignore={i}-rank={k}")
            for d, r, w, i, k in itertools.product(DTYPES, REDUCTIONS, WEIGHTS, IGNORES,
                                                   RANK_SHAPES)
            if not (k == 1 and i == "some")]


@pytest.mark.parametrize("dtype, reduction, weight, ignore, rank", _nll_cases())
def test_nll_loss_vs_torch(torch, dtype, reduction, weight, ignore, rank):
    """nll_loss and nll_loss_backward vs torch's nll_loss and its autograd gradient (K-dim,
    weights, ignored rows, every reduction; N = 0; C and Fortran order)."""
    F = torch.nn.functional
    for shape in RANK_SHAPES[rank] + ([(3, 1000, 2)] if rank == 3 else []):
        x, t, g, w = make_inputs(dtype, shape, weight=weight, ignore=ignore, reduction=reduction)
        with torch_one_thread(torch):
            logp = F.log_softmax(torch.tensor(x.astype(np.float64)),
                                 class_axis(shape)).numpy().astype(dtype)
            lp = torch.tensor(logp.astype(np.float64), requires_grad=True)
            loss_t = F.nll_loss(lp, torch.tensor(t), reduction=reduction, ignore_index=IGNORE_INDEX,
                                weight=None if w is None else torch.tensor(w.astype(np.float64)))
            loss_t.backward(torch.as_tensor(np.asarray(g, dtype=np.float64)).reshape(loss_t.shape))
        for layout in (("C",) if rank == 1 else ("C", "F")):
            lpl = layout_copy(logp, layout)
            what = (f"{dtype_id(dtype)} shape={shape} reduction={reduction} w={weight} "
                    f"ignore={ignore} layout={layout}")
            kw = dict(weight=w, ignore_index=IGNORE_INDEX, reduction=reduction)
            loss = fastce.nll_loss(lpl, t, **kw)
            if reduction == "none":
                assert isinstance(loss, np.ndarray) and loss.shape == target_shape(shape) \
                    and loss.dtype == dtype, f"nll_loss {what}: {type(loss)} {np.shape(loss)}"
            else:
                assert type(loss) is dtype, f"nll_loss {what}: type {type(loss)}"
            assert_close(loss, loss_t.detach().numpy(), what=f"nll_loss vs torch: {what}",
                         **TOL[dtype]["loss"])
            grad = fastce.nll_loss_backward(lpl, t, g, **kw)
            assert grad.shape == shape and grad.dtype == dtype, f"nll_loss_backward {what}"
            assert_close(grad, lp.grad.numpy(), what=f"nll_loss_backward vs torch: {what}",
                         scale_atol=True, **TOL[dtype]["grad"])
            out = layout_copy(np.full(shape, 7.0, dtype=dtype), layout)
            assert fastce.nll_loss_backward(lpl, t, g, **kw, out=out) is out
            np.testing.assert_array_equal(out, grad, err_msg=f"nll_loss_backward out=: {what}")


# ----------------------------------------------------------------------------- finite differences
FD_CASES = [
    pytest.param(dict(shape=(3, 5), kind="prob", weight=None, ls=0.0), id="prob-n=3,C=5"),
    pytest.param(dict(shape=(3, 5), kind="prob", weight="random", ls=0.1), id="prob-w-ls=0.1"),
    pytest.param(dict(shape=(6,), kind="prob", weight="random", ls=0.3), id="prob-1d-w-ls=0.3"),
    pytest.param(dict(shape=(2, 4, 3), kind="prob", weight="random", ls=0.2), id="prob-kdim-w-ls=0.2"),
    pytest.param(dict(shape=(4, 6), kind="index", weight="random", ls=0.1, ignore="some"),
                 id="index-w-ls=0.1-ignore"),
    pytest.param(dict(shape=(2, 4, 3), kind="index", weight="random", ls=0.1, ignore="some"),
                 id="index-kdim-w-ls=0.1-ignore"),
    pytest.param(dict(shape=(2, 3, 2, 2), kind="index", weight="random", ls=1.0),
                 id="index-rank4-w-ls=1"),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", FD_CASES)
def test_gradient_finite_differences(case, reduction):
    """float64 gradient (with_grad and backward) vs central differences of fastce's loss."""
    shape, kind = case["shape"], case["kind"]
    ignore = case.get("ignore", "none")
    x, t, g, w = make_inputs(np.float64, shape, kind=kind, weight=case["weight"], ignore=ignore,
                             reduction=reduction)
    kw = dict(weight=w, reduction=reduction, label_smoothing=case["ls"])
    desc = f"finite differences: shape={shape} target={kind} w={case['weight']} " \
           f"ls={case['ls']} ignore={ignore} reduction={reduction}"

    def objective(z):
        return float(np.sum(np.asarray(g) * fastce.cross_entropy(z, t, **kw, n_threads=1)))

    h = 1e-6
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        fd[idx] = (objective(x + e) - objective(x - e)) / (2 * h)
    _, grad = fastce.cross_entropy_with_grad(x, t, **kw, grad_output=g)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8, err_msg=f"with_grad {desc}")
    grad_b = fastce.cross_entropy_backward(x, t, g, **kw)
    np.testing.assert_allclose(grad_b, fd, rtol=1e-6, atol=1e-8, err_msg=f"backward {desc}")


# ----------------------------------------------------------------------------- errors
def _x(shape=(4, 5)):
    return np.random.default_rng(0).standard_normal(shape)


def _t(shape=(4,), c=5):
    return np.arange(int(np.prod(shape))).reshape(shape) % c


def _p(shape=(4, 5)):
    return np.full(shape, 1.0 / shape[1])


# (id, kwargs of the call (arrays as NumPy), the argument the message must name)
ERROR_CASES = [
    ("label_smoothing=1.5", dict(logits=_x(), target=_t(), label_smoothing=1.5), "label_smoothing"),
    ("label_smoothing=1.5-prob", dict(logits=_x(), target=_p(), label_smoothing=1.5),
     "label_smoothing"),
    ("weight-shape=(4,)", dict(logits=_x(), target=_t(), weight=np.ones(4)), "weight"),
    ("weight-shape=(6,)-kdim", dict(logits=_x((2, 5, 3)), target=_t((2, 3)), weight=np.ones(6)),
     "weight"),
    ("weight-shape=(4,)-prob", dict(logits=_x(), target=_p(), weight=np.ones(4)), "weight"),
    ("target-shape=(3,)", dict(logits=_x(), target=_t((3,))), "target"),
    ("target-shape=(2,4)-kdim", dict(logits=_x((2, 5, 3)), target=_t((2, 4))), "target"),
    ("target-shape=(2,3,1)-kdim", dict(logits=_x((2, 5, 3)), target=_t((2, 3, 1))), "target"),
    ("float-target-hard-shape", dict(logits=_x(), target=_t().astype(np.float64)), "target"),
    ("float-target-hard-shape-kdim", dict(logits=_x((2, 5, 3)), target=_t((2, 3)).astype(np.float64)),
     "target"),
    ("ignore_index=3-prob", dict(logits=_x(), target=_p(), ignore_index=3), "ignore_index"),
    ("ignore_index=0-prob-kdim", dict(logits=_x((2, 5, 3)), target=_p((2, 5, 3)), ignore_index=0),
     "ignore_index"),
    ("target=5-out-of-range", dict(logits=_x(), target=np.array([0, 1, 5, 2])), "target"),
    ("target=-3-out-of-range", dict(logits=_x(), target=np.array([0, -3, 1, 2])), "target"),
    ("target=7-out-of-range-kdim", dict(logits=_x((2, 5, 3)), target=np.full((2, 3), 7)), "target"),
    ("target=7-out-of-range-1d", dict(logits=_x((5,)), target=np.array(7)), "target"),
    ("target=-100-with-ignore_index=1", dict(logits=_x(), target=np.array([0, -100, 1, 2]),
                                             ignore_index=1), "target"),
    ("reduction=avg", dict(logits=_x(), target=_t(), reduction="avg"), "reduction"),
    ("reduction=avg-prob", dict(logits=_x(), target=_p(), reduction="avg"), "reduction"),
]
NLL_ERROR_CASES = [c for c in ERROR_CASES
                   if "prob" not in c[0] and "label_smoothing" not in c[0]]


def _torch_kwargs(torch, kw):
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            v = torch.tensor(v)
        out[{"logits": "input"}.get(k, k)] = v
    return out


def _fastce_calls(name):
    """The fastce functions that must raise like torch's ``name`` (positional: logits, target)."""
    if name == "cross_entropy":
        return {
            "cross_entropy": lambda kw: fastce.cross_entropy(kw.pop("logits"), kw.pop("target"), **kw),
            "cross_entropy_with_grad": lambda kw: fastce.cross_entropy_with_grad(
                kw.pop("logits"), kw.pop("target"), **kw),
            "cross_entropy_backward": lambda kw: fastce.cross_entropy_backward(
                kw.pop("logits"), kw.pop("target"), **kw),
            "CrossEntropyLoss": lambda kw: _criterion(kw),
        }
    return {
        "nll_loss": lambda kw: fastce.nll_loss(kw.pop("logits"), kw.pop("target"), **kw),
        "nll_loss_backward": lambda kw: fastce.nll_loss_backward(kw.pop("logits"), kw.pop("target"), **kw),
    }


def _criterion(kw):
    x, t = kw.pop("logits"), kw.pop("target")
    return fastce.CrossEntropyLoss(**kw)(x, t)


def _check_error_parity(torch, torch_fn, fastce_calls, kw, argument, case_id):
    with pytest.raises(Exception) as torch_info, torch_one_thread(torch):
        torch_fn(**_torch_kwargs(torch, kw))
    torch_exc = type(torch_info.value)
    for name, call in fastce_calls.items():
        with pytest.raises(Exception) as info:
            call(dict(kw))
        msg = str(info.value)
        assert isinstance(info.value, torch_exc), (
            f"{name} [{case_id}]: raised {type(info.value).__name__} ({msg!r}); torch raises "
            f"{torch_exc.__name__} ({str(torch_info.value)!r})")
        assert argument in msg, f"{name} [{case_id}]: message {msg!r} does not name {argument!r}"


@pytest.mark.parametrize("kw, argument", [pytest.param(kw, a, id=i) for i, kw, a in ERROR_CASES])
def test_cross_entropy_errors_like_torch(torch, kw, argument, request):
    """Every error torch's cross_entropy raises is raised by fastce's cross-entropy functions
    with the same exception class (ArgumentValueError/ArgumentTypeError are also
    RuntimeError) and a message naming the argument."""
    _check_error_parity(torch, torch.nn.functional.cross_entropy, _fastce_calls("cross_entropy"),
                        kw, argument, request.node.callspec.id)


@pytest.mark.parametrize("kw, argument", [pytest.param(kw, a, id=i) for i, kw, a in NLL_ERROR_CASES])
def test_nll_loss_errors_like_torch(torch, kw, argument, request):
    logp_kw = {**kw, "logits": kw["logits"] - np.log(np.exp(kw["logits"]).sum(
        axis=class_axis(kw["logits"].shape), keepdims=True))}
    _check_error_parity(torch, torch.nn.functional.nll_loss, _fastce_calls("nll_loss"),
                        logp_kw, argument, request.node.callspec.id)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")], ids=lambda v: f"ls={v}")
def test_label_smoothing_outside_unit_interval_rejected(value):
    """Stricter than torch 2.13, which accepts a negative or nan label_smoothing silently:
    fastce refuses every value outside [0, 1] (ValueError, also a RuntimeError)."""
    for name, call in _fastce_calls("cross_entropy").items():
        with pytest.raises(ValueError, match="label_smoothing") as info:
            call(dict(logits=_x(), target=_t(), label_smoothing=value))
        assert isinstance(info.value, RuntimeError), f"{name}: {type(info.value).__name__}"
