"""fastce.torch as torch ops: gradcheck, opcheck, torch.compile, double backward, errors, threads."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastce.torch as fce
from fastce.torch import _convert, _ops as ops


def _x(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


T = torch.tensor([0, 3, -100, 2, 1])


# ------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_losses(reduction):
    x = _x(5, 4).requires_grad_()
    w = torch.rand(4, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda v: fce.cross_entropy(v, T, weight=w, label_smoothing=0.1, z_loss=1e-2, softcap=3.0,
                                    reduction=reduction), (x,))
    p = torch.softmax(_x(5, 4, seed=1), 1)
    assert torch.autograd.gradcheck(lambda v: fce.cross_entropy(v, p, reduction=reduction), (x,))
    assert torch.autograd.gradcheck(lambda v: fce.nll_loss(v, T, w, reduction=reduction), (x,))
    y = torch.rand(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v: fce.binary_cross_entropy_with_logits(v, y, pos_weight=w, reduction=reduction), (x,))
    h, lw, b = _x(5, 3, seed=2).requires_grad_(), _x(4, 3, seed=3).requires_grad_(), _x(4, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, c, d: fce.linear_cross_entropy(a, c, T, d, reduction=reduction, z_loss=1e-2,
                                                 label_smoothing=0.1, chunk_size=2), (h, lw, b))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_targets(reduction):
    """Probability targets and BCE targets are differentiable, as in torch (with the input too)."""
    x = _x(5, 4).requires_grad_()
    w = torch.rand(4, dtype=torch.float64) + 0.5
    p = torch.softmax(_x(5, 4, seed=1), 1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, q: fce.cross_entropy(v, q, weight=w, label_smoothing=0.1, z_loss=1e-2, softcap=3.0,
                                       logit_scale=0.8, reduction=reduction), (x, p))
    assert torch.autograd.gradcheck(lambda q: fce.cross_entropy(x.detach(), q, reduction=reduction), (p,))
    p3 = torch.softmax(_x(3, 4, 2, seed=5), 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: fce.cross_entropy(_x(3, 4, 2), q, weight=w, reduction=reduction),
                                    (p3,))
    y = torch.rand(5, 4, dtype=torch.float64).requires_grad_()
    bw = torch.rand(5, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v, t: fce.binary_cross_entropy_with_logits(v, t, weight=bw, pos_weight=w,
                                                          reduction=reduction), (x, y))
    assert torch.autograd.gradcheck(
        lambda t: fce.binary_cross_entropy_with_logits(x.detach(), t, reduction=reduction), (y,))


def test_gradcheck_and_gradgradcheck_softmax_family():
    x = _x(3, 5).requires_grad_()
    for fn in (lambda v: fce.log_softmax(v, 1), lambda v: fce.softmax(v, 0),
               lambda v: fce.logsumexp(v, 1)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


# ------------------------------------------------------------------------- double backward
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "bce", "linear"])
def test_double_backward_raises_clearly(name):
    x = _x(5, 4).requires_grad_()
    calls = {
        "cross_entropy": lambda: fce.cross_entropy(x, T),
        "nll_loss": lambda: fce.nll_loss(x, T),
        "bce": lambda: fce.binary_cross_entropy_with_logits(x, torch.rand(5, 4, dtype=torch.float64)),
        "linear": lambda: fce.linear_cross_entropy(x, _x(6, 4, seed=1), T),
    }
    loss = calls[name]()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)  # first order still works
    assert g.shape == x.shape
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("name", ["soft", "bce"])
def test_target_double_backward_raises_clearly(name):
    x = _x(5, 4).requires_grad_()
    if name == "soft":
        t = torch.softmax(_x(5, 4, seed=1), 1).requires_grad_()
        loss = fce.cross_entropy(x, t)
    else:
        t = torch.rand(5, 4, dtype=torch.float64).requires_grad_()
        loss = fce.binary_cross_entropy_with_logits(x, t)
    (g,) = torch.autograd.grad(loss, t, create_graph=True)
    assert g.shape == t.shape
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(g.sum(), x)


def test_retain_graph_backward_twice_accumulates():
    x = _x(5, 4).requires_grad_()
    loss = fce.cross_entropy(x, T)
    loss.backward(retain_graph=True)
    g1 = x.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(x.grad, 3 * g1)
    x.grad = None
    F.cross_entropy(x, T).backward()
    torch.testing.assert_close(g1, x.grad)


# ------------------------------------------------------------------------- requires_grad subsets
def test_requires_grad_on_some_inputs_only():
    h, w, b = _x(5, 3), _x(4, 3, seed=1), _x(4, seed=2)
    for mask in [(True, False, False), (False, True, False), (False, False, True), (True, False, True)]:
        for reduction in ("mean", "none"):
            args = [v.clone().requires_grad_(m) for v, m in zip((h, w, b), mask)]
            ref = [v.clone().requires_grad_(m) for v, m in zip((h, w, b), mask)]
            up = torch.rand(5, dtype=torch.float64) if reduction == "none" else None
            fce.linear_cross_entropy(*args[:2], T, args[2], reduction=reduction).backward(up)
            F.cross_entropy(F.linear(ref[0], ref[1], ref[2]), T, reduction=reduction).backward(up)
            for a, r, m in zip(args, ref, mask):
                assert (a.grad is None) == (not m)
                if m:
                    torch.testing.assert_close(a.grad, r.grad)
    # the loss only: nothing requires grad, or grad mode is off
    x = _x(5, 4)
    assert not fce.cross_entropy(x, T).requires_grad
    with torch.no_grad():
        assert not fce.cross_entropy(x.requires_grad_(), T).requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(fce.cross_entropy(x, T), F.cross_entropy(x, T))


# ------------------------------------------------------------------------- opcheck
def _opcheck_cases():
    x, xr = _x(5, 4), _x(5, 4).requires_grad_()
    w = torch.rand(4, dtype=torch.float64) + 0.5
    p = torch.softmax(_x(5, 4, seed=1), 1)
    h, lw, b = _x(5, 3).requires_grad_(), _x(4, 3, seed=1).requires_grad_(), _x(4, seed=2).requires_grad_()
    return [
        # return_lse with no ignored row: opcheck's comparison does not treat nan (the lse
        # of an ignored row) as equal to itself
        ("ce", ops.cross_entropy_op, (xr, T.clamp(min=0), w, -100, "mean", 0.1, 1e-3, 3.0, 1.0, None, True, True, 1)),
        ("ce-none-soft", ops.cross_entropy_op, (xr, p, None, -100, "none", 0.0, 0.0, None, 1.0, None, False, True, 0)),
        ("ce-soft-target-grad", ops.cross_entropy_op,
         (xr, p.clone().requires_grad_(), w, -100, "mean", 0.1, 1e-3, 3.0, 0.9, None, True, True, 0)),
        ("ce-soft-target-grad-only", ops.cross_entropy_op,
         (x, p.clone().requires_grad_(), None, -100, "none", 0.0, 0.0, None, 1.0, None, True, False, 0)),
        ("ce-nograd", ops.cross_entropy_op, (x, T, None, -100, "sum", 0.0, 0.0, None, 1.0, None, False, False, 0)),
        ("nll", ops.nll_loss_op, (xr, T, w, -100, "mean")),
        ("nll-bwd", ops.nll_loss_backward_op, (torch.rand(5, dtype=torch.float64), x, T, None, -100, "none")),
        ("bce", ops.bce_op, (xr, torch.rand(5, 4, dtype=torch.float64), None, w, "none", True, 0)),
        ("bce-target-grad", ops.bce_op,
         (xr, torch.rand(5, 4, dtype=torch.float64).requires_grad_(), torch.rand(5, 1, dtype=torch.float64),
          w, "mean", True, 0)),
        ("log_softmax", ops.log_softmax_op, (xr, 1, 0)),
        ("softmax", ops.softmax_op, (xr, 0, 0)),
        ("logsumexp", ops.logsumexp_op, (xr, 1, 0)),
        ("linear", ops.linear_cross_entropy_op,
         (h, lw, T.clamp(min=0), b, None, -100, "mean", 0.1, 1e-3, None, 1.0, None, 2, True, [True, True, True], 0)),
        ("linear-none", ops.linear_cross_entropy_op,
         (h, lw, T.clamp(min=0), None, w, -100, "none", 0.0, 0.0, None, 1.0, None, 0, False, [True, True, False], 0)),
        ("linear-bwd", ops.linear_cross_entropy_backward_op,
         (torch.rand(5, dtype=torch.float64), torch.logsumexp(h.detach() @ lw.detach().t(), 1),
          h.detach(), lw.detach(), T, b.detach(), None, -100, 0.0, 0.0, None, 1.0, 2, [True, True, True], 0)),
    ]


@pytest.mark.parametrize("case", _opcheck_cases(), ids=lambda c: c[0])
def test_opcheck(case):
    _, op, args = case
    torch.library.opcheck(op, args)


# ------------------------------------------------------------------------- torch.compile
def test_compile_training_step_fullgraph():
    """A small model's step under torch.compile(fullgraph=True): no graph break, same numbers."""
    torch._dynamo.reset()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.head = torch.nn.Linear(16, 50)
            self.crit = fce.CrossEntropyLoss(label_smoothing=0.1)

        def forward(self, tok, tgt, linear):
            h = torch.tanh(self.emb(tok))
            if linear:
                return fce.linear_cross_entropy(h, self.head.weight, tgt, self.head.bias, z_loss=1e-4)
            return self.crit(self.head(h), tgt) + fce.logsumexp(self.head(h), -1).mean() * 1e-3

    torch.manual_seed(0)
    model = Model()
    tok, tgt = torch.randint(0, 50, (32,)), torch.randint(0, 50, (32,))

    def step(m, linear):
        m.zero_grad()
        loss = m(tok, tgt, linear)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for linear in (False, True):
        ref = step(model, linear)
        got = step(compiled, linear)
        torch.testing.assert_close(got[0], ref[0])
        for a, b in zip(got[1], ref[1]):
            torch.testing.assert_close(a, b)


def test_compile_target_gradients_fullgraph():
    """Learned soft targets and BCE targets under torch.compile(fullgraph=True)."""
    torch._dynamo.reset()

    def loss(fns, x, t, y):
        ce, bce = fns
        return ce(x, torch.softmax(t, 1), label_smoothing=0.1) + bce(x, torch.sigmoid(y))

    x, t, y = _x(4, 5), _x(4, 5, seed=1), _x(4, 5, seed=2)
    args = [v.requires_grad_() for v in (x, t, y)]
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled((fce.cross_entropy, fce.binary_cross_entropy_with_logits), *args), args)
    ref = torch.autograd.grad(loss((F.cross_entropy, F.binary_cross_entropy_with_logits), *args), args)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------- errors as torch's
def _same_error(ours, theirs):
    with pytest.raises(Exception) as e_torch:
        theirs()
    with pytest.raises(type(e_torch.value)):
        ours()


@pytest.mark.parametrize("mistake", [
    "target out of bounds", "negative target", "batch mismatch", "bad reduction", "label smoothing",
    "integer logits", "probabilities of a wrong shape", "weights requiring grad",
    "bce shape", "nll out of bounds", "linear out of bounds", "linear in_features", "dim out of range",
])
def test_errors_match_torch(mistake):
    x = _x(4, 5)
    t = torch.tensor([1, 2, 3, 4])
    cases = {
        "target out of bounds": lambda m: m.cross_entropy(x, torch.tensor([1, 2, 3, 9])),
        "negative target": lambda m: m.cross_entropy(x, torch.tensor([1, 2, 3, -5])),
        "batch mismatch": lambda m: m.cross_entropy(x, torch.tensor([1, 2, 3])),
        "bad reduction": lambda m: m.cross_entropy(x, t, reduction="avg"),
        "label smoothing": lambda m: m.cross_entropy(x, t, label_smoothing=1.5),
        "integer logits": lambda m: m.cross_entropy(x.long(), t),
        "probabilities of a wrong shape": lambda m: m.cross_entropy(x, torch.rand(4, 4, dtype=torch.float64)),
        "weights requiring grad": lambda m: m.cross_entropy(x.requires_grad_(), t,
                                                            weight=torch.rand(5, dtype=torch.float64, requires_grad=True)),
        "bce shape": lambda m: m.binary_cross_entropy_with_logits(x, torch.rand(4, 4, dtype=torch.float64)),
        "nll out of bounds": lambda m: m.nll_loss(x, torch.tensor([1, 2, 3, 9])),
        "linear out of bounds": lambda m: m.linear_cross_entropy(_x(4, 3), _x(5, 3), torch.tensor([1, 2, 3, 9])),
        "linear in_features": lambda m: m.linear_cross_entropy(_x(4, 3), _x(5, 2), t),
        "dim out of range": lambda m: m.log_softmax(x, 2),
    }
    _same_error(lambda: cases[mistake](fce), lambda: cases[mistake](F))


def test_unsupported_inputs_raise_clearly():
    x = _x(4, 5)
    # meta tensors get the fake implementations (shape inference); the kernels refuse them
    assert fce.cross_entropy(x.to("meta"), torch.tensor([1, 2, 3, 4], device="meta")).device.type == "meta"
    with pytest.raises(RuntimeError, match="CPU tensors; input is on meta"):
        _convert.as_array(x.to("meta"), "input")
    # CUDA tensors: a stand-in with a CUDA device (this torch may have no CUDA build)
    class FakeCuda:
        device, is_cpu, requires_grad = torch.device("cuda", 0), False, False

        def numpy(self):  # what torch raises for a CUDA tensor
            raise TypeError("can't convert cuda:0 device type tensor to numpy.")
    with pytest.raises(NotImplementedError, match=r"input is a CUDA tensor \(cuda:0\).*CPU tensors "
                                                  r"only.*\.cpu\(\).*cupy\.from_dlpack.*CUDA build of "
                                                  r"torch and CuPy"):
        _convert.as_array(FakeCuda(), "input")
    with pytest.raises(TypeError, match="Python number"):
        fce.cross_entropy(x, torch.tensor([1, 2, 3, 4]), num_items=torch.tensor(3.0))
    with pytest.raises(ValueError, match="n_threads"):
        fce.cross_entropy(x, torch.tensor([1, 2, 3, 4]), n_threads=0)


# ------------------------------------------------------------------------- threads, imports
def test_follows_torch_threads(monkeypatch):
    seen = []
    real = ops._ce_call  # the compiled call behind fastce.cross_entropy; n_threads is its last argument

    def spy(*a):
        seen.append(a[-1])
        return real(*a)

    monkeypatch.setattr(ops, "_ce_call", spy)
    x, t = _x(4, 5), torch.tensor([1, 2, 3, 4])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fce.cross_entropy(x, t)
        torch.set_num_threads(2)
        fce.cross_entropy(x, t)
        fce.cross_entropy(x, t, n_threads=1)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2, 1]


def test_import_fastce_does_not_import_torch(tmp_path):
    code = "import sys, fastce; fastce.cross_entropy([[1.0, 2.0]], [0]); print('torch' in sys.modules)"
    # cwd outside the repository: `python -c` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "False"
