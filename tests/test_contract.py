"""The compiled cross-entropy contract (fastce/_contract.pxi): the options added through it
(logit_scale, num_items) against torch's composed formulas, the contract fixes
(grad_output broadcasting, lse of ignored rows, shards without num_classes, aliasing,
integer ranges), and the fast path's equivalence with the general one (target dtypes and
strides, weights given in either precision)."""
import numpy as np
import pytest

import fastce
from conftest import make_logits, make_target, make_weight, with_layout

F32_TOL = dict(rtol=2e-5, atol=2e-6)
F64_TOL = dict(rtol=1e-11, atol=1e-13)


def tol(dtype):
    return F64_TOL if np.dtype(dtype) == np.float64 else F32_TOL


def torch_loss_and_grad(torch, x, t, g, *, weight=None, reduction="mean", label_smoothing=0.0,
                        z_loss=0.0, softcap=None, logit_scale=1.0, num_items=None,
                        ignore_index=-100):
    """The composed formula in float64 torch autograd: scale, cap, cross-entropy, z-term;
    'mean' with num_items is the 'sum' over num_items."""
    F = torch.nn.functional
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    tt = torch.tensor(np.asarray(t, dtype=np.int64))
    wt = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    xs = logit_scale * xt
    xc = softcap * torch.tanh(xs / softcap) if softcap else xs
    red = "sum" if num_items is not None else reduction
    ce = F.cross_entropy(xc, tt, weight=wt, reduction=red, label_smoothing=label_smoothing,
                         ignore_index=ignore_index)
    lse = torch.logsumexp(xc, dim=1 if xc.ndim > 1 else 0)
    valid = tt != ignore_index
    z = torch.where(valid, z_loss * lse ** 2, torch.zeros_like(lse))
    if reduction == "none":
        loss = ce + z
    elif num_items is not None:
        loss = (ce + z.sum()) / num_items
    elif reduction == "sum":
        loss = ce + z.sum()
    else:
        loss = ce + z.sum() / valid.sum()
    loss.backward(torch.as_tensor(np.asarray(g, dtype=np.float64)).expand(loss.shape))
    return loss.detach().numpy(), xt.grad.numpy()


def check_vs_torch(torch, x, t, *, g=1.0, **kw):
    want_loss, want_grad = torch_loss_and_grad(torch, x, t, g, **kw)
    loss, grad = fastce.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    what = f"{x.dtype} {x.shape} {kw}"
    np.testing.assert_allclose(np.asarray(loss, np.float64), want_loss, err_msg=what, **tol(x.dtype))
    scale = max(1.0, float(np.abs(want_grad).max(initial=0)))
    np.testing.assert_allclose(grad, want_grad, rtol=tol(x.dtype)["rtol"],
                               atol=tol(x.dtype)["atol"] * scale, err_msg=what)
    eps = np.finfo(np.result_type(loss)).eps  # forward and fused sweeps: different kernels
    np.testing.assert_allclose(fastce.cross_entropy(x, t, **kw), loss, rtol=8 * eps, atol=8 * eps,
                               err_msg=f"forward and fused loss differ: {what}")
    back = fastce.cross_entropy_backward(x, t, g, **kw)
    np.testing.assert_allclose(back, grad, rtol=64 * eps, atol=64 * eps * scale,
                               err_msg=f"backward and fused grad differ: {what}")


# ----------------------------------------------------------------------------- logit_scale
@pytest.mark.torch
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("scale", (0.5, 2.0, -1.5), ids=lambda s: f"scale={s}")
@pytest.mark.parametrize("shape,layout", [((13, 7), "C"), ((13, 7), "F"), ((6, 40), "sliced"),
                                          ((3, 70000), "C"), ((40, 5), "C")],
                         ids=lambda v: str(v))
def test_logit_scale_vs_torch(torch, dtype, reduction, scale, shape, layout):
    """logit_scale = s is cross-entropy of s * x, before softcap, in every sweep mode
    (rows, column blocks, split rows), with weights, smoothing, z-loss and ignored rows."""
    x = with_layout(make_logits(shape, dtype, seed=3), layout)
    t = make_target(shape[0], shape[1], ignore="some", seed=3)
    w = make_weight(shape[1], "random", dtype=dtype)
    g = np.linspace(-1, 2, shape[0]) if reduction == "none" else 0.7
    check_vs_torch(torch, x, t, g=g, reduction=reduction, logit_scale=scale)
    check_vs_torch(torch, x, t, g=g, reduction=reduction, logit_scale=scale, weight=w,
                   label_smoothing=0.1, z_loss=1e-3, softcap=3.0)


def test_logit_scale_one_is_off_and_errors():
    x = make_logits((8, 9), np.float64)
    t = make_target(8, 9)
    assert fastce.cross_entropy(x, t, logit_scale=1.0) == fastce.cross_entropy(x, t)
    assert fastce.cross_entropy(x, t, logit_scale=2) == fastce.cross_entropy(2 * x, t)
    for bad, exc in ((np.inf, ValueError), (np.nan, ValueError), ("2", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="logit_scale"):
            fastce.cross_entropy(x, t, logit_scale=bad)


# ----------------------------------------------------------------------------- num_items
@pytest.mark.torch
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("weighted", (False, True), ids=("w=None", "w=random"))
@pytest.mark.parametrize("num_items", (1, 7.5, 1000), ids=lambda k: f"num_items={k}")
def test_num_items_vs_torch(torch, dtype, weighted, num_items):
    """'mean' with num_items = k is the summed loss (cross-entropy and z-terms) over k; the
    gradient is scaled the same way."""
    x = make_logits((11, 6), dtype, seed=5)
    t = make_target(11, 6, ignore="some", seed=5)
    w = make_weight(6, "random", dtype=dtype) if weighted else None
    check_vs_torch(torch, x, t, g=1.3, weight=w, num_items=num_items, label_smoothing=0.2,
                   z_loss=1e-2)


def test_num_items_accumulates_micro_batches():
    """Gradient accumulation: micro-batch losses with the global token count add up to the
    whole batch's 'sum' over that count, and so do their gradients."""
    x = make_logits((12, 9), np.float64, seed=6)
    t = make_target(12, 9, ignore="some", seed=6)
    k = int(np.count_nonzero(t != -100))
    parts = [fastce.cross_entropy_with_grad(x[s], t[s], num_items=k) for s in (slice(0, 5), slice(5, 12))]
    whole, grad = fastce.cross_entropy_with_grad(x, t, reduction="sum")
    np.testing.assert_allclose(sum(p[0] for p in parts), whole / k, rtol=1e-13)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), grad / k, rtol=1e-13, atol=1e-16)
    assert np.isclose(fastce.cross_entropy(x, t, num_items=k), fastce.cross_entropy(x, t), rtol=1e-13)


def test_num_items_errors():
    x, t = make_logits((4, 3), np.float64), make_target(4, 3)
    for red in ("sum", "none"):
        with pytest.raises(ValueError, match="num_items.*reduction='" + red):
            fastce.cross_entropy(x, t, reduction=red, num_items=4)
    for bad in (0, -1, np.inf, np.nan):
        with pytest.raises(ValueError, match="num_items"):
            fastce.cross_entropy(x, t, num_items=bad)
    with pytest.raises(TypeError, match="num_items"):
        fastce.cross_entropy(x, t, num_items="4")


# ----------------------------------------------------------------------------- contract fixes
def test_grad_output_broadcasts_like_numpy():
    """A scalar grad_output is valid for every reduction (under 'none' it scales every row);
    under 'none' an array broadcasts to the per-row loss."""
    x = make_logits((6, 5), np.float64, seed=7)
    t = make_target(6, 5, ignore="some", seed=7)
    full = fastce.cross_entropy_backward(x, t, np.full(6, 2.5), reduction="none")
    for g in (2.5, np.float32(2.5), np.array(2.5), np.array([2.5])):
        np.testing.assert_array_equal(fastce.cross_entropy_backward(x, t, g, reduction="none"), full)
        np.testing.assert_array_equal(fastce.cross_entropy_with_grad(x, t, grad_output=g, reduction="none")[1], full)
    _, default = fastce.cross_entropy_with_grad(x, t, reduction="none")  # grad_output=1.0
    np.testing.assert_array_equal(default, fastce.cross_entropy_backward(x, t, np.ones(6), reduction="none"))
    crit = fastce.CrossEntropyLoss(reduction="none")
    crit(x, t)
    # backward reuses the forward's lse, rounded to one float64; the fused call shifts by
    # the exact pair (max, log sum): the two agree to an ulp
    np.testing.assert_allclose(crit.backward(), default, rtol=0, atol=4 * np.finfo(np.float64).eps)
    lp = fastce.log_softmax(x)
    np.testing.assert_array_equal(fastce.nll_loss_backward(lp, t, 2.5, reduction="none"),
                                  fastce.nll_loss_backward(lp, t, np.full(6, 2.5), reduction="none"))
    y = (x > 0).astype(np.float64)
    np.testing.assert_array_equal(
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", grad_output=2.5)[1],
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", grad_output=np.full((6, 5), 2.5))[1])
    np.testing.assert_array_equal(
        fastce.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", grad_output=np.arange(5.0))[1],
        fastce.binary_cross_entropy_with_logits_with_grad(
            x, y, reduction="none", grad_output=np.broadcast_to(np.arange(5.0), (6, 5)).copy())[1])


def test_return_lse_of_ignored_rows():
    """return_lse gives every row's lse, ignored rows included; only their loss is masked."""
    x = make_logits((9, 33), np.float32, seed=8)
    t = make_target(9, 33, ignore="some", seed=8)
    assert (t == -100).any()
    want = np.log(np.exp(x.astype(np.float64)).sum(axis=1))
    for fn in (fastce.cross_entropy, fastce.cross_entropy_with_grad):
        lse = fn(x, t, return_lse=True, reduction="none")[-1]
        np.testing.assert_allclose(lse, want, rtol=1e-6)
    for x_ in (x[:2], np.ascontiguousarray(x[:, :5]), make_logits((2, 70000), np.float32, seed=9)):
        t_ = np.full(x_.shape[0], -100)  # rows, column-block and split sweeps
        lse = fastce.cross_entropy(x_, t_, return_lse=True)[1]
        np.testing.assert_allclose(lse, np.log(np.exp(x_.astype(np.float64)).sum(axis=1)), rtol=1e-6)


def test_shard_needs_num_classes():
    x, t = make_logits((4, 5), np.float64), np.array([5, 6, 7, 8])
    with pytest.raises(ValueError, match="class_start=5 describes a vocabulary shard: pass num_classes="):
        fastce.cross_entropy(x, t, class_start=5, lse=np.zeros(4))


def test_linear_shape_errors_are_runtime_errors():
    """torch raises RuntimeError for these; fastce's errors are both."""
    h, w, t = np.zeros((4, 3)), np.zeros((5, 2)), np.zeros(4, np.int64)
    for call in (lambda: fastce.linear_cross_entropy(h, w, t),
                 lambda: fastce.linear_cross_entropy(h[0], w, t),
                 lambda: fastce.linear_cross_entropy(h, np.zeros((5, 3), np.float32), t),
                 lambda: fastce.linear_cross_entropy(h, np.zeros((5, 3)), t, bias=np.zeros(4))):
        with pytest.raises(RuntimeError):
            call()


@pytest.mark.parametrize("case", ["weight=x[0] inplace", "lse aliases out", "grad_output aliases out",
                                  "soft target aliases logits inplace", "criterion out=target",
                                  "nll grad_output aliases out", "bce grad_output aliases out"])
def test_aliased_outputs_are_refused(case):
    """Every output (out=, and the logits under inplace=True) is checked against every
    input: a ValueError naming both, and nothing written."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 40))
    t = np.arange(6) % 40
    out = np.zeros((6, 40))
    before = x.copy()
    with pytest.raises(ValueError, match="overlap|overwrite") as info:
        if case == "weight=x[0] inplace":
            fastce.cross_entropy_with_grad(x, t, weight=x[0], inplace=True)
        elif case == "lse aliases out":
            fastce.cross_entropy_backward(x, t, lse=out.reshape(-1)[:6], out=out)
        elif case == "grad_output aliases out":
            fastce.cross_entropy_backward(x, t, out.reshape(-1)[:6], reduction="none", out=out)
        elif case == "soft target aliases logits inplace":
            fastce.cross_entropy_with_grad(x, x[::-1], inplace=True)
        elif case == "criterion out=target":
            p = np.abs(x) / np.abs(x).sum(axis=1, keepdims=True)
            crit = fastce.CrossEntropyLoss()
            crit(x, p)
            crit.backward(out=p)
        elif case == "nll grad_output aliases out":
            fastce.nll_loss_backward(x, t, out.reshape(-1)[:6], reduction="none", out=out)
        else:
            y = (x > 0).astype(np.float64)
            g = np.ones((6, 40))
            fastce.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", grad_output=g, out=g)
    assert any(n in str(info.value) for n in ("weight", "lse", "grad_output", "target")), str(info.value)
    np.testing.assert_array_equal(x, before)


def test_integer_ranges_name_the_argument():
    x, t = make_logits((4, 3), np.float64), make_target(4, 3)
    with pytest.raises(ValueError, match="n_threads"):
        fastce.cross_entropy(x, t, n_threads=2**31)
    with pytest.raises(ValueError, match="num_classes"):
        fastce.cross_entropy(x, t, class_start=0, num_classes=2**63, lse=np.zeros(4))
    with pytest.raises(ValueError, match="n "):
        fastce.set_num_threads(2**31)
    assert fastce.cross_entropy(x, t, n_threads=10**6) == fastce.cross_entropy(x, t, n_threads=1)
    lp = fastce.log_softmax(x)
    np.testing.assert_array_equal(fastce.nll_loss_backward(lp, t, n_threads=1), fastce.nll_loss_backward(lp, t))


# ----------------------------------------------------------------------------- fast path == general path
@pytest.mark.parametrize("tdtype", (np.int64, np.int32, np.int16, np.uint8, np.uint64))
def test_target_dtypes_and_strides(tdtype):
    """int32/int64 targets are read in place (any stride); other integer dtypes are
    converted first: the results are identical."""
    x = make_logits((10, 7), np.float32, seed=11)
    t64 = np.arange(10) % 7
    want = fastce.cross_entropy_with_grad(x, t64, reduction="none")
    t = t64.astype(tdtype)
    for tt in (t, np.repeat(t, 2)[::2], list(t64)):
        got = fastce.cross_entropy_with_grad(x, tt, reduction="none")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(IndexError, match=r"target\[3\] = 9 is out of bounds for 7 classes"):
        bad = t64.astype(tdtype)
        bad[3] = 9
        fastce.cross_entropy(x, bad)


@pytest.mark.parametrize("wdtype", (np.float32, np.float64, np.int64))
def test_weight_precision_paths(wdtype):
    """Weights in the logits' dtype are read in place; others are converted: same result
    up to the weights' own rounding."""
    x = make_logits((9, 6), np.float32, seed=12)
    t = make_target(9, 6, ignore="some", seed=12)
    w = np.arange(1, 7).astype(wdtype)
    ref = fastce.cross_entropy(x.astype(np.float64), t, weight=w.astype(np.float64), label_smoothing=0.1)
    got = fastce.cross_entropy(x, t, weight=w, label_smoothing=0.1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_bitwise_same_for_any_thread_count():
    x = make_logits((4096, 33), np.float32, seed=13)
    t = make_target(4096, 33, ignore="some", seed=13)
    one = fastce.cross_entropy_with_grad(x, t, label_smoothing=0.1, z_loss=1e-3, n_threads=1)
    two = fastce.cross_entropy_with_grad(x, t, label_smoothing=0.1, z_loss=1e-3, n_threads=2)
    assert one[0].tobytes() == two[0].tobytes()
    assert one[1].tobytes() == two[1].tobytes()


# ----------------------------------------------------------------------------- the float64 specification
_REF_OPTS = {"z": dict(z_loss=1e-2), "scale-cap": dict(softcap=2.0, logit_scale=3.0),
             "scale-z-smooth": dict(logit_scale=-0.5, z_loss=1e-3, label_smoothing=0.2)}


@pytest.mark.torch
@pytest.mark.parametrize("reduction,opts", [
    *[pytest.param(r, o, id=f"{r}-{k}") for r in ("mean", "sum", "none") for k, o in _REF_OPTS.items()],
    pytest.param("mean", dict(num_items=9.0, z_loss=1e-2, softcap=5.0), id="mean-num_items-z-cap"),
])
def test_reference_llm_options(torch, reference, reduction, opts):
    """fastce.reference carries the LLM options: it equals torch's composed formula, and
    fastce equals it."""
    x = make_logits((8, 11), np.float64, seed=14)
    t = make_target(8, 11, ignore="some", seed=14)
    w = make_weight(11, "random")
    g = np.linspace(0.5, 2, 8) if reduction == "none" else 1.5
    kw = dict(weight=w, reduction=reduction, **opts)
    want_loss, want_grad = torch_loss_and_grad(torch, x, t, g, **kw)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    np.testing.assert_allclose(ref_loss, want_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ref_grad, want_grad, rtol=1e-12, atol=1e-14)
    loss, grad = fastce.cross_entropy_with_grad(x, t, grad_output=g, **kw)
    np.testing.assert_allclose(loss, ref_loss, **F64_TOL)
    np.testing.assert_allclose(grad, ref_grad, **F64_TOL)


def test_criteria_repr_shows_their_arguments():
    assert repr(fastce.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(fastce.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4, num_items=8)) == \
        "CrossEntropyLoss(label_smoothing=0.1, z_loss=0.0001, num_items=8.0)"
    assert repr(fastce.CrossEntropyLoss(weight=np.ones(2))) == "CrossEntropyLoss(weight=array([1., 1.]))"
    assert repr(fastce.BCEWithLogitsLoss(reduction="sum")) == "BCEWithLogitsLoss(reduction='sum')"


# ------------------------------------------------------------------ one contract, any backend
class _DeviceArray:
    """A device array as the contract sees one: metadata only (CuPy's attributes: no
    ``flags.writeable``), no host memory behind it -- a check that read it would fail."""

    def __init__(self, shape, dtype, strides=None, address=1 << 20, c_contiguous=True):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.strides = strides or tuple(int(s) for s in np.empty(self.shape, self.dtype).strides)
        self.address = address
        self.flags = type("Flags", (), dict(c_contiguous=c_contiguous, f_contiguous=False))()
        self.ndim = len(self.shape)


class _DeviceBackend:
    array_name = "device.ndarray"

    def is_array(self, a):
        return isinstance(a, _DeviceArray)

    def address(self, a):
        return a.address


def _message(fn, *args, **kw):
    with pytest.raises(Exception) as info:
        fn(*args, **kw)
    return type(info.value), str(info.value)


def test_output_checks_on_device_metadata():
    """check_out / check_inplace / check_grad_buffer: one rule for NumPy and any backend,
    decided from shape, dtype, strides and address alone."""
    from fastce import _validation as V
    be = _DeviceBackend()
    x = _DeviceArray((4, 5), np.float32)
    t = _DeviceArray((4,), np.int64, address=x.address + 4096)   # disjoint from x
    V.check_grad_buffer(x, _DeviceArray((4, 5), np.float32, address=1 << 24), False,
                        np.float32, V.ce_inputs(t, None, None, 1.0), backend=be)
    V.check_inplace(x, None, be)
    cases = [
        (dict(out=np.empty((4, 5), np.float32)), TypeError, "out must be a device.ndarray, got ndarray"),
        (dict(out=_DeviceArray((4, 6), np.float32, address=1 << 24)), ValueError,
         "out has shape (4, 6), expected (4, 5)"),
        (dict(out=_DeviceArray((4, 5), np.float64, address=1 << 24)), TypeError,
         "out has dtype float64, expected float32"),
        (dict(out=_DeviceArray((4, 5), np.float32, strides=(0, 4), address=1 << 24)), ValueError,
         "out has elements that share memory"),
        (dict(out=_DeviceArray((4, 5), np.float32, address=x.address + 40)), ValueError,
         "out overlaps the input 'logits'"),
        (dict(out=_DeviceArray((4, 5), np.float32, address=t.address - 8)), ValueError,
         "out overlaps the input 'target'"),
    ]
    for kw, cls, msg in cases:
        err, text = _message(V.check_grad_buffer, x, kw["out"], False, np.float32,
                             V.ce_inputs(t, None, None, 1.0), backend=be)
        assert err is cls and text.startswith(msg), (text, msg)
    # in place: the inputs may not share the logits' memory; the layout must be C order
    inside = _DeviceArray((4,), np.int64, address=x.address + 8)
    assert _message(V.check_grad_buffer, x, None, True, np.float32,
                    V.ce_inputs(inside, None, None, 1.0), backend=be)[1].startswith(
        "inplace=True would overwrite 'target'")
    assert _message(V.check_inplace, _DeviceArray((4, 5), np.float32, c_contiguous=False), None,
                    be) == (ValueError, "inplace=True needs C-contiguous logits; pass out= for other layouts")
    assert _message(V.check_inplace, np.zeros((4, 5), np.float32), None, be) == (
        ValueError, "inplace=True needs logits to be a device.ndarray, got ndarray")


def test_overlap_numpy_exact_backend_conservative():
    """Between NumPy arrays overlap is exact; between a backend's arrays (whose memory is not
    read) it is decided by byte extents, so interleaved views count as overlapping."""
    from fastce import _validation as V
    buf = np.zeros((6, 8))
    a, b = buf[:, ::2], buf[:, 1::2]
    assert not V.overlaps(a, b) and V.overlaps(a, buf[2:, 2:])

    class Host:
        array_name = "numpy.ndarray"
        is_array = staticmethod(lambda v: isinstance(v, np.ndarray))
        address = staticmethod(lambda v: v.__array_interface__["data"][0])
    assert V.overlaps(a, b, Host()) and not V.overlaps(buf[:3], buf[3:], Host())
    assert V.byte_extent(0, (0, 3), (8, 8), 8) is None
    assert V.byte_extent(100, (2, 3), (-24, 8), 8) == (76, 124)


BAD_CALLS = [  # (keyword arguments of cross_entropy_with_grad, the metadata check, its arguments)
    (dict(target=np.zeros(5, np.float32)), "check_class_target",
     (np.dtype(np.float32), (5,), (5, 7))),
    (dict(target=np.zeros(4, np.int64)), "check_class_target", (np.dtype(np.int64), (4,), (5, 7))),
    (dict(weight=np.ones(6)), "check_class_weight", (np.dtype(np.float64), (6,), 7)),
    (dict(weight=np.ones(7, bool)), "check_class_weight", (np.dtype(bool), (7,), 7)),
    (dict(lse=np.zeros(4)), "check_lse", (np.dtype(np.float64), (4,), (5,))),
    (dict(lse=np.zeros(5, complex)), "check_lse", (np.dtype(complex), (5,), (5,))),
    (dict(grad_output=np.ones(3), reduction="none"), "check_grad_output_array",
     (np.dtype(np.float64), (3,), "none", (5,), "the shape of the per-row loss")),
    (dict(grad_output=np.ones(5)), "check_grad_output_array",
     (np.dtype(np.float64), (5,), "mean", (5,), "the shape of the per-row loss")),
    (dict(grad_output=np.ones(5, bool), reduction="none"), "check_grad_output_array",
     (np.dtype(bool), (5,), "none", (5,), "the shape of the per-row loss")),
    (dict(target=np.full((5, 7), 1 / 7), ignore_index=0), "check_soft_target", ((5, 7), 0)),
    (dict(class_start=2, num_classes=9), "check_shard_lse", (True, False)),
    (dict(grad_dtype=np.float16), "check_ce_logits",
     ((5, 7), np.dtype(np.float32), np.float16, False)),
]


@pytest.mark.parametrize("kw,check,args", BAD_CALLS, ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_cpu_errors_come_from_the_metadata_checks(kw, check, args):
    """The NumPy path raises what the metadata-level check (the GPU path's entry) raises for
    the same dtype and shape: one message, written once."""
    from fastce import _validation as V
    kw = dict(kw)
    x = np.zeros((5, 7), np.float32)
    t = kw.pop("target", np.zeros(5, np.int64))
    assert _message(fastce.cross_entropy_with_grad, x, t, **kw) == _message(getattr(V, check), *args)
