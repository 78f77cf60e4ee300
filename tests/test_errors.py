"""Every argument error of the contract: the exception class, and a message that names the
argument (and the offending value or shapes).  Never a crash, never a Cython
"Buffer dtype mismatch".

Half precision (float16/bfloat16) logits arrive with a later issue, so they are not
listed among the rejected dtypes.

Each case is ``(call, exception, [fragments the message must contain])``; a fragment is a
literal substring, or a compiled regex (``_word("2")``: the position 2 as a whole number).
"""
import re

import numpy as np
import pytest

import fastce

N, C = 4, 5


def _word(s):
    return re.compile(rf"(?<![\d-]){re.escape(s)}(?!\d)")


def _x(dtype=np.float64, shape=(N, C)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _t(n=N):
    return np.arange(n, dtype=np.int64) % C


def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def _views_of_one_buffer():
    """logits and an 'out' that overlaps it by one element."""
    buf = np.zeros(2 * N * C)
    return buf[:N * C].reshape(N, C), buf[N * C - 1:2 * N * C - 1].reshape(N, C)


def _out_over_target():
    buf = np.zeros(N + N * C, dtype=np.int64)
    target = buf[:N]
    target[:] = _t()
    out = buf.view(np.float64)[N - 1:N - 1 + N * C].reshape(N, C)
    return target, out


def _out_over_weight():
    buf = np.ones(N * C)
    return buf[:C], buf.reshape(N, C)


CE = fastce.cross_entropy
CEG = fastce.cross_entropy_with_grad
CEB = fastce.cross_entropy_backward


def _crit_call(**kw):
    return fastce.CrossEntropyLoss(**kw)(_x(), _t())


def _crit_backward(*, logits=None, grad_output=1.0, reduction="mean", **kw):
    crit = fastce.CrossEntropyLoss(reduction=reduction)
    crit(_x() if logits is None else logits, _t())
    return crit.backward(grad_output, **kw)


# ----------------------------------------------------------------------------- the table
CASES = [
    # logits dtype / shape
    *[pytest.param(lambda f=f, d=d: f(_x().astype(d), _t()), TypeError, ["logits", np.dtype(d).name],
                   id=f"{f.__name__}-logits-dtype={np.dtype(d).name}")
      for f in (CE, CEG, CEB) for d in (np.int64, np.int32, np.int8, np.bool_, np.complex128)],
    pytest.param(lambda: _crit_backward(logits=_x(np.int16)), TypeError, ["logits", "int16"],
                 id="CrossEntropyLoss-logits-dtype=int16"),
    pytest.param(lambda: CE(np.array(1.0), np.array(0)), ValueError, ["logits"],
                 id="cross_entropy-logits-0d"),
    pytest.param(lambda: fastce.nll_loss(_x().astype(np.int64), _t()), TypeError,
                 ["log_probs", "int64"], id="nll_loss-log_probs-dtype=int64"),
    *[pytest.param(lambda f=f, d=d: f(_x().astype(d)), TypeError, ["x", np.dtype(d).name],
                   id=f"{f.__name__}-x-dtype={np.dtype(d).name}")
      for f in (fastce.logsumexp, fastce.log_softmax, fastce.softmax)
      for d in (np.int64, np.bool_, np.complex64)],
    *[pytest.param(lambda f=f: f(np.array(1.0)), ValueError, ["x"], id=f"{f.__name__}-x-0d")
      for f in (fastce.logsumexp, fastce.log_softmax, fastce.softmax)],
    *[pytest.param(lambda f=f: f(_x(), axis=2), (ValueError, IndexError), ["axis", "2"],
                   id=f"{f.__name__}-axis=2")
      for f in (fastce.logsumexp, fastce.log_softmax, fastce.softmax)],
    # target dtype / shape
    *[pytest.param(lambda f=f, d=d: f(_x(), _t().astype(d)), TypeError, ["target", np.dtype(d).name],
                   id=f"{f.__name__}-target-dtype={np.dtype(d).name}")
      for f in (CE, CEG, CEB, fastce.nll_loss) for d in (np.float64, np.float32, np.bool_)],
    *[pytest.param(lambda f=f, s=s: f(_x(), np.zeros(s, dtype=np.int64)), ValueError,
                   ["target", str((N, C)), str(s)], id=f"{f.__name__}-target-shape={s}")
      for f in (CE, CEG, CEB, fastce.nll_loss) for s in ((N - 1,), (N + 1,), (), (N, 2))],
    pytest.param(lambda: CE(_x(shape=(C,)), np.zeros(1, dtype=np.int64)), ValueError,
                 ["target", str((C,)), "(1,)"], id="cross_entropy-1d-target-shape=(1,)"),
    pytest.param(lambda: fastce.CrossEntropyLoss()(_x(), _t(N - 1)), ValueError,
                 ["target", str((N, C)), str((N - 1,))], id="CrossEntropyLoss-target-shape"),
    # target values
    *[pytest.param(lambda f=f: f(_x(), np.array([0, 1, 1234, 2])), IndexError,
                   ["1234", _word("2")], id=f"{f.__name__}-target-value=1234-at-2")
      for f in (CE, CEG, CEB, fastce.nll_loss)],
    pytest.param(lambda: CE(_x(), np.array([0, -3, 1, 2])), IndexError, ["-3", _word("1")],
                 id="cross_entropy-target-value=-3-at-1"),
    pytest.param(lambda: CE(_x(), np.array([0, 1, 2, C])), IndexError, [str(C), _word("3")],
                 id="cross_entropy-target-value=C-at-3"),
    pytest.param(lambda: CE(_x(), np.array([0, 1, -100, 2]), ignore_index=-1), IndexError,
                 ["-100"], id="cross_entropy-target=-100-with-ignore_index=-1"),
    pytest.param(lambda: CE(_x(), np.array([0, 1, 2**32 + 1, 2])), IndexError,
                 [str(2**32 + 1)], id="cross_entropy-target-value=2**32+1"),
    pytest.param(lambda: CE(_x(), np.array([0, 1, 2**64 - 100, 2], dtype=np.uint64)), IndexError,
                 [str(2**64 - 100)], id="cross_entropy-target-uint64-value=2**64-100"),
    pytest.param(lambda: CE(_x(shape=(C,)), np.array(C + 2)), IndexError, [str(C + 2)],
                 id="cross_entropy-1d-target-value"),
    pytest.param(lambda: fastce.CrossEntropyLoss()(_x(), np.array([0, 1, 99, 2])), IndexError,
                 ["99"], id="CrossEntropyLoss-target-value=99"),
    # reduction
    *[pytest.param(lambda f=f, r=r: f(_x(), _t(), reduction=r), ValueError, ["reduction", repr(r)],
                   id=f"{f.__name__}-reduction={r!r}")
      for f in (CE, CEG, CEB, fastce.nll_loss) for r in ("avg", "MEAN", None)],
    pytest.param(lambda: _crit_call(reduction="avg"), ValueError, ["reduction", "'avg'"],
                 id="CrossEntropyLoss-reduction='avg'"),
    # weight
    *[pytest.param(lambda f=f, s=s: f(_x(), _t(), weight=np.ones(s)), ValueError,
                   ["weight", str(s)], id=f"{f.__name__}-weight-shape={s}")
      for f in (CE, CEG, CEB, fastce.nll_loss) for s in ((C + 1,), (C - 1,), (1, C), ())],
    pytest.param(lambda: _crit_call(weight=np.ones(C + 1)), ValueError, ["weight"],
                 id="CrossEntropyLoss-weight-shape"),
    pytest.param(lambda: CE(_x(), _t(), weight=np.ones(C, dtype=np.complex128)), TypeError,
                 ["weight", "complex128"], id="cross_entropy-weight-dtype=complex128"),
    # label_smoothing
    *[pytest.param(lambda f=f, e=e: f(_x(), _t(), label_smoothing=e), ValueError,
                   ["label_smoothing", repr(e)], id=f"{f.__name__}-label_smoothing={e}")
      for f in (CE, CEG, CEB) for e in (-0.1, 1.1, float("nan"), float("inf"))],
    pytest.param(lambda: _crit_call(label_smoothing=2.0), ValueError, ["label_smoothing", "2.0"],
                 id="CrossEntropyLoss-label_smoothing=2.0"),
    # ignore_index
    pytest.param(lambda: CE(_x(), _t(), ignore_index=1.5), TypeError, ["ignore_index", "1.5"],
                 id="cross_entropy-ignore_index=1.5"),
    # out=
    *[pytest.param(lambda f=f: f(_x(), _t(), out=np.zeros((N, C + 1))), ValueError,
                   ["out", str((N, C + 1)), str((N, C))], id=f"{f.__name__}-out-shape")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: f(_x(), _t(), out=np.zeros((N, C), np.float32)), TypeError,
                   ["out", "float32"], id=f"{f.__name__}-out-dtype")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: f(_x(), _t(), out=_readonly(np.zeros((N, C)))), ValueError,
                   ["out"], id=f"{f.__name__}-out-readonly")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: (lambda x: f(x, _t(), out=x))(_x()), ValueError,
                   ["out", "logits"], id=f"{f.__name__}-out-is-logits")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: (lambda xo: f(xo[0], _t(), out=xo[1]))(_views_of_one_buffer()),
                   ValueError, ["out", "logits"], id=f"{f.__name__}-out-overlaps-logits")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: (lambda to: f(_x(), to[0], out=to[1]))(_out_over_target()),
                   ValueError, ["out", "target"], id=f"{f.__name__}-out-overlaps-target")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: (lambda wo: f(_x(), _t(), weight=wo[0], out=wo[1]))(
        _out_over_weight()), ValueError, ["out", "weight"], id=f"{f.__name__}-out-overlaps-weight")
      for f in (CEG, CEB)],
    pytest.param(lambda: _crit_backward(out=np.zeros((N, C + 1))), ValueError, ["out"],
                 id="CrossEntropyLoss.backward-out-shape"),
    pytest.param(lambda: _crit_backward(out=np.zeros((N, C), np.float32)), TypeError, ["out"],
                 id="CrossEntropyLoss.backward-out-dtype"),
    pytest.param(lambda: _crit_backward(out=_readonly(np.zeros((N, C)))), ValueError, ["out"],
                 id="CrossEntropyLoss.backward-out-readonly"),
    pytest.param(lambda: (lambda x: _crit_backward(logits=x, out=x))(_x()), ValueError,
                 ["out", "logits"], id="CrossEntropyLoss.backward-out-is-logits"),
    *[pytest.param(lambda f=f, s=s: f(_x(), out=np.zeros(s)), ValueError, ["out", str(s)],
                   id=f"{f.__name__}-out-shape={s}")
      for f, s in ((fastce.logsumexp, (N + 1,)), (fastce.logsumexp, (N, 1)),
                   (fastce.log_softmax, (N, C + 1)), (fastce.softmax, (N,)))],
    *[pytest.param(lambda f=f, s=s: f(_x(), out=np.zeros(s, np.float32)), TypeError,
                   ["out", "float32"], id=f"{f.__name__}-out-dtype")
      for f, s in ((fastce.logsumexp, (N,)), (fastce.log_softmax, (N, C)),
                   (fastce.softmax, (N, C)))],
    *[pytest.param(lambda f=f, s=s: f(_x(), out=_readonly(np.zeros(s))), ValueError,
                   ["out"], id=f"{f.__name__}-out-readonly")
      for f, s in ((fastce.logsumexp, (N,)), (fastce.log_softmax, (N, C)),
                   (fastce.softmax, (N, C)))],
    *[pytest.param(lambda f=f: (lambda x: f(x, out=x))(_x()), ValueError, ["out"],
                   id=f"{f.__name__}-out-is-x")
      for f in (fastce.log_softmax, fastce.softmax)],
    pytest.param(lambda: (lambda x: fastce.logsumexp(x, out=x[:, 0]))(_x()), ValueError, ["out"],
                 id="logsumexp-out-overlaps-x"),
    # inplace=True
    *[pytest.param(lambda f=f: f(_readonly(_x()), _t(), inplace=True), ValueError,
                   ["inplace", "read-only"], id=f"{f.__name__}-inplace-readonly")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: f(np.asfortranarray(_x()), _t(), inplace=True), ValueError,
                   ["inplace", "contiguous"], id=f"{f.__name__}-inplace-fortran")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: f(_x(shape=(N, 2 * C))[:, ::2], _t(), inplace=True), ValueError,
                   ["inplace", "contiguous"], id=f"{f.__name__}-inplace-sliced")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: f(_x().tolist(), _t(), inplace=True), ValueError,
                   ["inplace"], id=f"{f.__name__}-inplace-list")
      for f in (CEG, CEB)],
    *[pytest.param(lambda f=f: f(_x(), _t(), inplace=True, out=np.zeros((N, C))), ValueError,
                   ["inplace", "out"], id=f"{f.__name__}-inplace-with-out")
      for f in (CEG, CEB)],
    pytest.param(lambda: _crit_backward(logits=_readonly(_x()), inplace=True), ValueError,
                 ["inplace"], id="CrossEntropyLoss.backward-inplace-readonly"),
    pytest.param(lambda: _crit_backward(logits=np.asfortranarray(_x()), inplace=True),
                 ValueError, ["inplace"], id="CrossEntropyLoss.backward-inplace-fortran"),
    pytest.param(lambda: _crit_backward(inplace=True, out=np.zeros((N, C))), ValueError,
                 ["inplace", "out"], id="CrossEntropyLoss.backward-inplace-with-out"),
    # grad_output
    *[pytest.param(lambda f=f, s=s: f(_x(), _t(), reduction="none", grad_output=np.ones(s)),
                   ValueError, ["grad_output", str(s)], id=f"{f.__name__}-grad_output-none-shape={s}")
      for f in (CEG, CEB) for s in ((N + 1,), (N, 1))],  # () and (1,) broadcast: valid
    *[pytest.param(lambda f=f, r=r: f(_x(), _t(), reduction=r, grad_output=np.ones(N)),
                   ValueError, ["grad_output"], id=f"{f.__name__}-grad_output-{r}-shape=(N,)")
      for f in (CEG, CEB) for r in ("mean", "sum")],
    pytest.param(lambda: CEB(_x(shape=(C,)), np.array(1), np.ones(1), reduction="none"),
                 ValueError, ["grad_output", "(1,)"], id="backward-1d-grad_output-shape=(1,)"),
    pytest.param(lambda: _crit_backward(grad_output=np.ones(N + 1), reduction="none"),
                 ValueError, ["grad_output"], id="CrossEntropyLoss.backward-grad_output-shape"),
    pytest.param(lambda: _crit_backward(grad_output=np.ones(N)), ValueError, ["grad_output"],
                 id="CrossEntropyLoss.backward-grad_output-mean-array"),
    # backward before forward
    pytest.param(lambda: fastce.CrossEntropyLoss().backward(), RuntimeError, ["backward"],
                 id="CrossEntropyLoss.backward-before-forward"),
    # ISA
    pytest.param(lambda: fastce.set_isa("bogus"), ValueError, ["bogus"], id="set_isa-bogus"),
    pytest.param(lambda: fastce.set_isa(3), TypeError, ["isa", "str", "3"], id="set_isa-int"),
    pytest.param(lambda: fastce.set_isa(None), TypeError, ["isa", "str", "None"], id="set_isa-None"),
]

# n_threads, for every function that takes it (set_num_threads calls its argument n)
_THREAD_CALLS = {
    "logsumexp": lambda n: fastce.logsumexp(_x(), n_threads=n),
    "log_softmax": lambda n: fastce.log_softmax(_x(), n_threads=n),
    "softmax": lambda n: fastce.softmax(_x(), n_threads=n),
    "cross_entropy": lambda n: CE(_x(), _t(), n_threads=n),
    "cross_entropy_with_grad": lambda n: CEG(_x(), _t(), n_threads=n),
    "cross_entropy_backward": lambda n: CEB(_x(), _t(), n_threads=n),
    "CrossEntropyLoss": lambda n: _crit_call(n_threads=n),
    "set_num_threads": lambda n: fastce.set_num_threads(n),
}
for _name, _call in _THREAD_CALLS.items():
    for _n, _exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                     ("2", TypeError), (2.0, TypeError)):
        _arg = re.compile(r"\bn\b") if _name == "set_num_threads" else "n_threads"
        CASES.append(pytest.param(lambda c=_call, n=_n: c(n), _exc, [_arg, repr(_n)],
                                  id=f"{_name}-n_threads={_n!r}"))


def _pattern(fragment):
    return fragment if isinstance(fragment, re.Pattern) else re.escape(fragment)


@pytest.mark.parametrize("call, exc, fragments", CASES)
def test_error(call, exc, fragments):
    threads_before = fastce.get_num_threads()
    isa_before = fastce.get_isa()
    try:
        with pytest.raises(exc, match=_pattern(fragments[0])) as info:
            call()
    finally:
        fastce.set_num_threads(None)
    msg = str(info.value)
    for fragment in fragments[1:]:
        assert re.search(_pattern(fragment), msg), f"message {msg!r} should contain {fragment!r}"
    assert "Buffer dtype mismatch" not in msg
    assert not re.search(r"np\.\w+\(", msg), f"message {msg!r} should show plain numbers"
    assert fastce.get_num_threads() == threads_before
    assert fastce.get_isa() == isa_before, "a failed call changed the ISA"


def test_set_isa_unsupported_name():
    """A known ISA this machine cannot run is refused with ValueError naming it."""
    known = {"scalar", "avx2", "avx512", "neon"}
    unsupported = sorted(known - set(fastce.supported_isas()))
    assert unsupported, "every ISA is supported on this machine: nothing to refuse"
    before = fastce.get_isa()
    for name in unsupported:
        with pytest.raises(ValueError, match=name):
            fastce.set_isa(name)
        assert fastce.get_isa() == before


def test_valid_edge_arguments_accepted():
    """Values next to the errors above are legal: label_smoothing 0 and 1, n_threads as a
    NumPy integer, ignore_index as a NumPy integer, integer weights, grad_output as 0-d."""
    x, t = _x(), _t()
    for kw in (dict(label_smoothing=0), dict(label_smoothing=1), dict(label_smoothing=1.0),
               dict(n_threads=np.int64(2)), dict(ignore_index=np.int32(3)),
               dict(weight=np.arange(1, C + 1))):
        loss = CE(x, t, **kw)
        assert np.isfinite(loss), f"{kw} gave {loss}"
    grad = CEB(x, t, np.array(2.0))
    assert grad.shape == (N, C)


def test_failed_call_leaves_out_and_logits_untouched():
    x = _x()
    x_before = x.copy()
    out = np.full((N, C), 5.0)
    with pytest.raises(IndexError):
        CEG(x, np.array([0, 1, 77, 2]), out=out)
    with pytest.raises(IndexError):
        CEG(x, np.array([0, 1, 77, 2]), inplace=True)
    np.testing.assert_array_equal(x, x_before)
    assert (out == 5.0).all()
