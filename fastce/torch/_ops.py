"""fastce's kernels as ``torch.library`` custom ops (namespace ``fastce``).

Each op is functional (fresh outputs, no aliasing, no mutation), has a fake
implementation (shapes and dtypes from metadata only, so ``torch.compile`` traces it
without graph breaks) and a registered autograd formula.  The public wrappers in
``fastce.torch._functional`` validate arguments and decide which gradients to compute.

Saved state (the choice documented in ``fastce.torch``): the loss ops compute d loss / d
input in the same sweep as the loss (``fastce.cross_entropy_with_grad``) when the input
requires grad, with a unit upstream gradient, and save that gradient; backward scales it
by ``grad_output`` (no pass at all in eager mode when ``grad_output`` is 1, one
elementwise pass otherwise).  When the input does not require grad only the loss is
computed and nothing is saved.
"""
import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import fastce as _fastce
from fastce import _api

# fastce's NumPy API is not annotated (yet): typed here as Any at the boundary, so that
# mypy --strict checks this package without following untyped calls
fastce: Any = _fastce
_ce_call: Any = _api._ce_call

from ._convert import as_array, check_device, loss_dtype, resolve_threads, to_tensor

_LINEAR_BUDGET = 64 * 2**20  # bytes of the reused logits chunk, as fastce.linear_cross_entropy

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def extension_kwargs(z_loss: float, softcap: Optional[float], logit_scale: float,
                     num_items: Optional[float]) -> Dict[str, Any]:
    """fastce's extension keywords, each passed only when it differs from its default."""
    kw = {}
    if z_loss:
        kw["z_loss"] = z_loss
    if softcap is not None:
        kw["softcap"] = softcap
    if logit_scale != 1.0:
        kw["logit_scale"] = logit_scale
    if num_items is not None:
        kw["num_items"] = num_items
    return kw


def _eager(t: Any) -> bool:
    """True for a plain tensor outside any tracing (where reading its value is cheap)."""
    return type(t) is Tensor and not torch.compiler.is_compiling()


def scale_grad(grad: Tensor, g: Tensor, per_row: bool) -> Tensor:
    """``grad * grad_output``: ``per_row`` broadcasts a per-row g over the class axis 1."""
    if per_row:
        g = g.unsqueeze(1)
    elif _eager(g) and g.numel() == 1 and g.item() == 1.0:
        return grad  # loss.backward(): the saved gradient is the answer, no pass over it
    return (grad * g).to(grad.dtype)


def once_differentiable(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run a backward under no_grad; under ``create_graph`` its results raise on use.

    Like ``torch.autograd.function.once_differentiable``, but the error names the op, and
    the error node is also connected to the op's inputs (through the op's own loss output,
    which every setup_context here saves last), so ``torch.autograd.grad(g, input)``
    raises it instead of reporting ``input`` as unused.
    """
    msg = (f"{name} has no double backward: its gradient is computed by fastce's kernels, "
           f"which autograd cannot differentiate again. Use torch.nn.functional for "
           f"higher-order gradients.").encode()

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(ctx: Any, *grads: Any) -> Any:
            if not torch.is_grad_enabled():  # a plain backward (no create_graph): no wrapping
                return fn(ctx, *grads)
            with torch.no_grad():
                out = fn(ctx, *grads)
            pos = [i for i, o in enumerate(out) if isinstance(o, Tensor)]
            if not pos:
                return out
            anchor = ctx.saved_tensors[-1]
            err = torch._C._functions.DelayedError(msg, len(pos) + 1)
            wrapped = err(*[out[i].detach().requires_grad_() for i in pos], anchor)
            out = list(out)
            for i, w in zip(pos, wrapped):
                out[i] = w
            return tuple(out)
        return wrapper
    return deco


def rows_shape(input: Tensor, target: Tensor) -> Tuple[int, ...]:
    """The shape of per-row results: the target's, or the logits' without the class axis."""
    if target.dtype.is_floating_point and target.shape == input.shape:
        return input.shape[:1] + input.shape[2:] if input.dim() > 1 else ()
    return target.shape


def _empty(dtype: torch.dtype) -> Tensor:
    return torch.empty(0, dtype=dtype)


# ---------------------------------------------------------------------------------------
# eager fast path: the same implementation and formulas, without the dispatcher
# ---------------------------------------------------------------------------------------
# A custom op call goes Python -> dispatcher -> autograd kernel -> dispatcher -> Python
# kernel: tens of microseconds, as much as the whole kernel at small shapes. In plain eager
# mode (no compile, no tracing, no dispatch mode, no functorch transform) ``call`` runs the
# op's Python implementation directly, through a torch.autograd.Function built from the
# op's own setup_context and backward when a gradient is needed; traced code sees the op.
_EAGER: Dict[Any, Tuple[Callable[..., Any], Optional[Callable[..., Any]], int, Tuple[None, ...]]] = {}


# torch.autograd.Function.apply is Python (a signature bind, functorch's dead-wrapper
# unwrapping over every argument) around the C apply; in plain eager mode (no functorch
# transform: ``plain_eager``) the C apply does the same work.
_C_APPLY = torch._C._FunctionBase.__dict__["apply"]


def _leading_tensors(op: Any) -> int:
    """How many of ``op``'s arguments, from the first, are (optional) tensors."""
    k = 0
    for a in op._opoverload._schema.arguments:
        if str(a.type) not in ("Tensor", "Optional[Tensor]"):
            break
        k += 1
    return k


def _register(op: Any, setup: Optional[Callable[..., Any]] = None,
              backward: Optional[Callable[..., Any]] = None,
              eager: Optional[Callable[..., Any]] = None, shown: int = 0) -> None:
    """Register ``op``'s autograd formula, and the eager fast path ``call`` takes.

    ``eager``: the implementation run outside the dispatcher (default: the op's own); it
    may return None where the op returns an empty placeholder tensor, which costs a
    ``torch.empty`` per output and call. ``setup`` must accept those Nones.

    The eager Function costs less per call than a Function of the op's signature:
    - it takes the op's leading tensors, then its other arguments packed in one tuple
      (the C apply inspects every argument);
    - of an op with several outputs it returns only the first ``shown``, less a last one
      that is None (a loss, an lse). The others (gradients computed in the forward) are
      saved state that ``setup`` keeps; a None output cost the C apply ~3 us at (32, 10).
      ``call`` pads its result, and the backward its gradients, back to the op's outputs.
    """
    impl = eager if eager is not None else op._init_fn
    k = _leading_tensors(op)
    n_out = len(op._opoverload._schema.returns)
    pad = (None,) * n_out if n_out > 1 else ()
    apply = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup)

        assert setup is not None
        assert (n_out > 1) == (shown > 0), "shown: how many of several outputs callers read"

        # ctx-style forward: a separate setup_context costs a signature bind per call
        def forward(ctx: Any, *packed: Any) -> Any:
            args = packed[:k] + packed[k]
            out = impl(*args)
            setup(ctx, args, out)
            if not pad:
                return out
            vis = out[:shown]  # None only last (an lse not asked for)
            return vis if vis[-1] is not None else vis[:-1]

        def eager_backward(ctx: Any, *grads: Any) -> Any:
            return backward(ctx, *grads, *pad[len(grads):])[:k] + (None,)

        fn = type(f"_{op._init_fn.__name__}_function", (torch.autograd.Function,),
                  {"forward": staticmethod(forward), "backward": staticmethod(eager_backward)})
        apply = _C_APPLY.__get__(None, fn)
    _EAGER[op] = (impl, apply, k, pad)


_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_level = torch._C._functorch.peek_interpreter_stack


def plain_eager(t: Any) -> bool:
    """True in plain eager mode on a CPU tensor: no compile, tracing, dispatch mode or transform."""
    return (type(t) is Tensor and t.is_cpu and not _is_compiling()
            and _dispatch_modes() == 0 and _functorch_level() is None)


def call(op: Any, *args: Any, grad: bool = False) -> Any:
    """Run ``op``: directly in plain eager mode, through the dispatcher otherwise.

    In eager mode the results may hold None where the op returns an empty placeholder.
    """
    first = args[0]
    if plain_eager(first):
        impl, apply, k, pad = _EAGER[op]
        if not grad or apply is None:
            return impl(*args)
        res = apply(*args[:k], args[k:])
        return res + pad[len(res):] if pad else res
    if first.device.type == "cuda":  # before any GPU work (linear CE's products), not at the kernel
        check_device(first, "input")
    return op(*args)


# ---------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------
def _ce_compute(input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                reduction: str, label_smoothing: float, z_loss: float, softcap: Optional[float],
                logit_scale: float, num_items: Optional[float], return_lse: bool,
                compute_grad: bool, n_threads: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(loss, lse or None, d loss / d input at grad_output=1 or None): the op's work.

    Calls the compiled entry point behind ``fastce.cross_entropy(_with_grad)`` (same
    package, same checks) with positional arguments: the public functions' keyword layer
    is a measurable part of a small call.
    """
    x, t = as_array(input, "input"), as_array(target, "target")
    w = None if weight is None else as_array(weight, "weight")
    nt = n_threads if n_threads > 0 else torch.get_num_threads()
    if compute_grad:
        # NumPy's allocator advises huge pages for large arrays: at 4096 x 32000 the first
        # write faults in ~40% less time than into torch.empty's memory
        out = np.empty(x.shape, dtype=x.dtype)
        unit = np.ones(tuple(rows_shape(input, target))) if reduction == "none" else 1.0
        res = _ce_call(1, x, t, w, ignore_index, reduction, label_smoothing, z_loss, softcap,
                       logit_scale, num_items, None, return_lse, 0, None, unit,
                       out, False, None, nt)
        # fresh, writeable results: torch.from_numpy directly (to_tensor for bfloat16)
        grad = torch.from_numpy(out) if input.dtype is not torch.bfloat16 else to_tensor(out)
        loss = torch.from_numpy(np.asarray(res[0]))
        lse = torch.from_numpy(res[2]).to(loss.dtype) if return_lse else None
    else:
        res = _ce_call(0, x, t, w, ignore_index, reduction, label_smoothing, z_loss, softcap,
                       logit_scale, num_items, None, return_lse, 0, None, 1.0, None, False, None, nt)
        grad = None
        if return_lse:
            loss = torch.from_numpy(np.asarray(res[0]))
            lse = torch.from_numpy(res[1]).to(loss.dtype)
        else:
            loss, lse = torch.from_numpy(np.asarray(res)), None
    # the loss comes in loss_dtype(input.dtype) already; the lse in float64
    return loss, lse, grad


@torch.library.custom_op("fastce::cross_entropy", mutates_args=())
def cross_entropy_op(input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                     reduction: str, label_smoothing: float, z_loss: float, softcap: Optional[float],
                     logit_scale: float, num_items: Optional[float], return_lse: bool,
                     compute_grad: bool, n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(loss, lse or empty, d loss / d input at grad_output=1 or empty)."""
    loss, lse, grad = _ce_compute(input, target, weight, ignore_index, reduction, label_smoothing,
                                  z_loss, softcap, logit_scale, num_items, return_lse,
                                  compute_grad, n_threads)
    return (loss, lse if lse is not None else _empty(loss.dtype),
            grad if grad is not None else _empty(input.dtype))


@cross_entropy_op.register_fake
def _(input: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any,
      label_smoothing: Any, z_loss: Any, softcap: Any, logit_scale: Any, num_items: Any,
      return_lse: Any, compute_grad: Any, n_threads: Any) -> Any:
    ldtype = loss_dtype(input.dtype)
    rows = rows_shape(input, target)
    loss = input.new_empty(rows if reduction == "none" else (), dtype=ldtype)
    lse = input.new_empty(rows, dtype=ldtype) if return_lse else input.new_empty(0, dtype=ldtype)
    grad = input.new_empty(input.shape) if compute_grad else input.new_empty(0)
    return loss, lse, grad


def _ce_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    # outputs never differentiated (lse, saved gradients): no zeros of their shapes in backward
    ctx.set_materialize_grads(False)
    input, target, weight, reduction = inputs[0], inputs[1], inputs[2], inputs[4]
    compute_grad = inputs[11]
    loss, lse, grad = output
    if lse is not None and grad is not None:  # (a list of the not-None costs ~0.5 us)
        ctx.mark_non_differentiable(lse, grad)
    elif lse is not None or grad is not None:
        ctx.mark_non_differentiable(grad if lse is None else lse)
    ctx.compute_grad = compute_grad
    ctx.per_row = reduction == "none" and input.dim() > 1
    # probability targets that require grad: the wrapper asked for the lse, so backward
    # rebuilds log_softmax as (transformed logits - lse) without another row sweep
    ctx.target_grad = bool(ctx.needs_input_grad[1]) and target.dtype.is_floating_point
    if ctx.target_grad:
        ctx.soft = (reduction, inputs[5], inputs[7], inputs[8], inputs[9])
        ctx.target_dtype = target.dtype
        ctx.save_for_backward(grad if compute_grad else None, input, weight, lse, loss)
    else:
        ctx.save_for_backward(grad if compute_grad else None, loss)


def soft_target_grad(g: Tensor, input: Tensor, weight: Optional[Tensor], lse: Tensor,
                       reduction: str, label_smoothing: float, softcap: Optional[float],
                       logit_scale: float, num_items: Optional[float]) -> Tensor:
    """d loss / d target for probability targets, times the upstream gradient ``g``.

    torch's loss per row is ``-sum_c w_c t'_c log_softmax(x)_c`` with the smoothed target
    ``t' = (1 - eps) t + eps / C``, so the derivative is ``-(1 - eps) w_c log_softmax(x)_c``
    (z_loss does not depend on the target). ``x`` is the transformed logits (scale, then
    softcap) and ``log_softmax(x) = x - lse`` with the forward's lse. 'mean' divides by the
    row count (or ``num_items``), as the loss does.
    """
    cdim = 1 if input.dim() > 1 else 0
    x = input.to(lse.dtype)
    if logit_scale != 1.0:
        x = x * logit_scale
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    gt = (x - lse.unsqueeze(cdim)) * -(1.0 - label_smoothing)
    if weight is not None:
        shape = [1] * input.dim()
        shape[cdim] = input.shape[cdim]
        gt = gt * weight.to(gt.dtype).reshape(shape)
    if reduction == "none" and cdim == 1:
        return gt * g.unsqueeze(1)
    if reduction == "mean":
        rows = input.numel() // input.shape[cdim] if input.shape[cdim] else 0
        g = g / (num_items if num_items is not None else rows)
    return gt * g


@once_differentiable("fastce.torch.cross_entropy")
def _ce_backward(ctx: Any, g_loss: Optional[Tensor], g_lse: Optional[Tensor],
                 g_grad: Optional[Tensor]) -> Any:
    out: List[Optional[Tensor]] = [None] * 13
    if g_loss is None:
        return tuple(out)
    saved = ctx.saved_tensors
    if ctx.compute_grad and ctx.needs_input_grad[0]:
        out[0] = scale_grad(saved[0], g_loss, ctx.per_row)
    if ctx.target_grad:
        _, input, weight, lse, _ = saved
        out[1] = soft_target_grad(g_loss, input, weight, lse, *ctx.soft).to(ctx.target_dtype)
    return tuple(out)


_register(cross_entropy_op, _ce_setup, _ce_backward, eager=_ce_compute, shown=2)  # loss, lse


# ---------------------------------------------------------------------------------------
# nll_loss
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("fastce::nll_loss", mutates_args=())
def nll_loss_op(input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                reduction: str) -> Tensor:
    loss = fastce.nll_loss(as_array(input, "input"), as_array(target, "target"),
                           weight=as_array(weight, "weight"), ignore_index=ignore_index,
                           reduction=reduction)
    return to_tensor(loss, input.dtype)


@nll_loss_op.register_fake
def _(input: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any) -> Any:
    return input.new_empty(target.shape if reduction == "none" else ())


@torch.library.custom_op("fastce::nll_loss_backward", mutates_args=())
def nll_loss_backward_op(grad_output: Tensor, input: Tensor, target: Tensor,
                         weight: Optional[Tensor], ignore_index: int, reduction: str) -> Tensor:
    grad = torch.empty(input.shape, dtype=input.dtype)
    g = grad_output.detach().to(torch.float64).numpy()
    fastce.nll_loss_backward(as_array(input, "input"), as_array(target, "target"),
                             g if reduction == "none" else float(g), weight=as_array(weight, "weight"),
                             ignore_index=ignore_index, reduction=reduction, out=as_array(grad, "grad"))
    return grad


@nll_loss_backward_op.register_fake
def _(grad_output: Any, input: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any
      ) -> Any:
    return input.new_empty(input.shape)


def _nll_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    input, target, weight, ignore_index, reduction = inputs
    ctx.save_for_backward(input, target, weight, output)
    ctx.ignore_index, ctx.reduction = ignore_index, reduction


@once_differentiable("fastce.torch.nll_loss")
def _nll_backward(ctx: Any, g: Tensor) -> Any:
    input, target, weight, _ = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    return call(nll_loss_backward_op, g, input, target, weight, ctx.ignore_index, ctx.reduction), None, None, None, None


_register(nll_loss_op, _nll_setup, _nll_backward)
_register(nll_loss_backward_op)


# ---------------------------------------------------------------------------------------
# binary cross-entropy with logits
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("fastce::binary_cross_entropy_with_logits", mutates_args=())
def bce_op(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
           reduction: str, compute_grad: bool, n_threads: int) -> Tuple[Tensor, Tensor]:
    """(loss, d loss / d input at grad_output=1 or empty)."""
    x, t = as_array(input, "input"), as_array(target, "target")
    kw = dict(weight=as_array(weight, "weight"), pos_weight=as_array(pos_weight, "pos_weight"),
              reduction=reduction, n_threads=resolve_threads(n_threads))
    grad = _empty(input.dtype)
    if compute_grad:
        grad = torch.empty(input.shape, dtype=input.dtype)
        unit = np.ones(tuple(input.shape)) if reduction == "none" else 1.0
        loss, _ = fastce.binary_cross_entropy_with_logits_with_grad(x, t, out=as_array(grad, "grad"),
                                                                    grad_output=unit, **kw)
    else:
        loss = fastce.binary_cross_entropy_with_logits(x, t, **kw)
    return to_tensor(loss, input.dtype), grad


@bce_op.register_fake
def _(input: Any, target: Any, weight: Any, pos_weight: Any, reduction: Any, compute_grad: Any,
      n_threads: Any) -> Any:
    loss = input.new_empty(input.shape if reduction == "none" else ())
    return loss, (input.new_empty(input.shape) if compute_grad else input.new_empty(0))


def _bce_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    # outputs never differentiated (lse, saved gradients): no zeros of their shapes in backward
    ctx.set_materialize_grads(False)
    input, target, weight, pos_weight, reduction, compute_grad = inputs[:6]
    ctx.compute_grad = compute_grad
    ctx.reduction = reduction
    ctx.mark_non_differentiable(output[1])
    ctx.target_grad = bool(ctx.needs_input_grad[1])
    if ctx.target_grad:
        ctx.target_dtype = target.dtype
        ctx.save_for_backward(output[1] if compute_grad else None, input, weight, pos_weight,
                              output[0])
    else:
        ctx.save_for_backward(output[1] if compute_grad else None, output[0])


def bce_target_grad(g: Tensor, input: Tensor, weight: Optional[Tensor],
                      pos_weight: Optional[Tensor], reduction: str) -> Tensor:
    """d loss / d target of BCE with logits, times the upstream gradient ``g``.

    The loss is ``-w [p y log s(x) + (1 - y) log(1 - s(x))]``, so
    d/dy = ``w [log s(-x) - p log s(x)]`` (``-w x`` without ``pos_weight``); 'mean'
    divides by the element count.
    """
    if pos_weight is None:
        gt = -input
    else:
        ls = torch.nn.functional.logsigmoid
        gt = ls(-input) - pos_weight.to(input.dtype) * ls(input)
    if weight is not None:
        gt = gt * weight.to(input.dtype)
    if reduction == "mean":
        g = g / input.numel()
    return gt * g


@once_differentiable("fastce.torch.binary_cross_entropy_with_logits")
def _bce_backward(ctx: Any, g_loss: Optional[Tensor], g_grad: Optional[Tensor]) -> Any:
    out: List[Optional[Tensor]] = [None] * 7
    if g_loss is None:
        return tuple(out)
    saved = ctx.saved_tensors
    if ctx.compute_grad and ctx.needs_input_grad[0]:
        out[0] = scale_grad(saved[0], g_loss, False)
    if ctx.target_grad:
        _, input, weight, pos_weight, _ = saved
        out[1] = bce_target_grad(g_loss, input, weight, pos_weight, ctx.reduction).to(ctx.target_dtype)
    return tuple(out)


_register(bce_op, _bce_setup, _bce_backward, shown=1)  # the loss


# ---------------------------------------------------------------------------------------
# softmax family: backward formulas in torch ops, so they differentiate again
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("fastce::log_softmax", mutates_args=())
def log_softmax_op(input: Tensor, dim: int, n_threads: int) -> Tensor:
    out = torch.empty(input.shape, dtype=input.dtype)
    fastce.log_softmax(as_array(input, "input"), dim, out=as_array(out, "out"),
                       n_threads=resolve_threads(n_threads))
    return out


@torch.library.custom_op("fastce::softmax", mutates_args=())
def softmax_op(input: Tensor, dim: int, n_threads: int) -> Tensor:
    out = torch.empty(input.shape, dtype=input.dtype)
    fastce.softmax(as_array(input, "input"), dim, out=as_array(out, "out"),
                   n_threads=resolve_threads(n_threads))
    return out


@log_softmax_op.register_fake
def _(input: Any, dim: Any, n_threads: Any) -> Any:
    return input.new_empty(input.shape)


@softmax_op.register_fake
def _(input: Tensor, dim: int, n_threads: int) -> Any:
    return input.new_empty(input.shape)


def _save_output(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    ctx.dim = inputs[1]
    ctx.save_for_backward(output)


def _log_softmax_backward(ctx: Any, g: Tensor) -> Any:
    (out,) = ctx.saved_tensors
    return g - out.exp() * g.sum(ctx.dim, keepdim=True), None, None


def _softmax_backward(ctx: Any, g: Tensor) -> Any:
    (out,) = ctx.saved_tensors
    return out * (g - (g * out).sum(ctx.dim, keepdim=True)), None, None


_register(log_softmax_op, _save_output, _log_softmax_backward)
_register(softmax_op, _save_output, _softmax_backward)


@torch.library.custom_op("fastce::logsumexp", mutates_args=())
def logsumexp_op(input: Tensor, dim: int, n_threads: int) -> Tensor:
    res = fastce.logsumexp(as_array(input, "input"), dim, n_threads=resolve_threads(n_threads))
    return to_tensor(res, input.dtype).clone()  # float32 for half input: back to its dtype


@logsumexp_op.register_fake
def _(input: Any, dim: Any, n_threads: Any) -> Any:
    shape = list(input.shape)
    del shape[dim]
    return input.new_empty(shape)


def _lse_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    ctx.dim = inputs[1]
    ctx.save_for_backward(inputs[0], output)


def _lse_backward(ctx: Any, g: Tensor) -> Any:
    x, out = ctx.saved_tensors
    return g.unsqueeze(ctx.dim) * (x - out.unsqueeze(ctx.dim)).exp(), None, None


_register(logsumexp_op, _lse_setup, _lse_backward)


# ---------------------------------------------------------------------------------------
# linear cross-entropy: torch's GEMMs (torch's thread pool) + fastce's row sweeps, chunked
# ---------------------------------------------------------------------------------------
def _linear_sweep(input: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor],
                  cls_weight: Optional[Tensor], ignore_index: int, reduction: str,
                  label_smoothing: float, ext: Dict[str, Any], chunk_size: int, return_lse: bool,
                  grads: Any, n_threads: int, grad_output: Any = None,
                  lse: Any = None) -> Tuple[Any, ...]:
    """One chunked pass over the rows not ignored.

    ``grads`` = (input, weight, bias) flags of the gradients to accumulate.  Forward
    ('mean'/'sum'): the loss and the gradients at a unit upstream gradient.  Backward of
    'none' (``grad_output`` per row, ``lse`` from the forward): the gradients only.
    Returns (loss or None, lse rows or None, d_input, d_weight, d_bias).
    """
    n, h = input.shape
    v = weight.shape[0]
    dtype = input.dtype
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    nt = resolve_threads(n_threads)
    valid = torch.nonzero(target != ignore_index).squeeze(1)
    nv = valid.numel()
    all_rows = nv == n
    want_in, want_w, want_b = grads
    backward = grad_output is not None
    cw = as_array(cls_weight, "weight")
    if reduction == "mean" and not backward:
        # the normaliser of the whole batch, so every chunk is scaled alike
        if cls_weight is not None:
            denom = float(cls_weight.to(torch.float64)[target[valid]].sum()) if nv else 0.0
        else:
            denom = float(nv)
        if ext.get("num_items") is not None:
            denom = float(ext["num_items"])
        if ext.get("z_loss") and cls_weight is not None and ext.get("num_items") is None:
            raise NotImplementedError("fastce.torch.linear_cross_entropy: z_loss with class weights "
                                      "under reduction='mean' (two normalisers) is not supported; "
                                      "use reduction='sum' and divide")
    else:
        denom = 1.0
    chunk_ext = {k: val for k, val in ext.items() if k != "num_items"}
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = float(np.float64(1.0) / np.float64(denom))
    d_in: Any = torch.zeros((n, h), dtype=dtype) if want_in else None
    d_w: Any = torch.zeros((v, h), dtype=acc) if want_w else None
    d_b: Any = torch.zeros(v, dtype=torch.float64) if want_b else None
    loss_rows: Any = torch.zeros(n, dtype=torch.float64) if reduction == "none" and not backward else None
    lse_rows: Any = torch.full((n,), float("nan"), dtype=torch.float64) if return_lse else None
    total = 0.0
    cs = chunk_size if chunk_size > 0 else max(1, _LINEAR_BUDGET // max(1, v * input.element_size()))
    cs = max(1, min(cs, nv))
    buf = torch.empty((cs, v), dtype=dtype)
    wt = weight.t()
    any_grad = want_in or want_w or want_b
    for start in range(0, nv, cs):
        stop = min(start + cs, nv)
        rows: Any = None if all_rows else valid[start:stop]
        hc = input[start:stop] if all_rows else input.index_select(0, rows)
        tc = target[start:stop] if all_rows else target.index_select(0, rows)
        lg = buf[:stop - start]
        if bias is not None:
            torch.addmm(bias, hc, wt, out=lg)
        else:
            torch.mm(hc, wt, out=lg)
        lg_np, tc_np = as_array(lg, "logits"), as_array(tc, "target")
        kw = dict(weight=cw, ignore_index=ignore_index, label_smoothing=label_smoothing,
                  n_threads=nt, **chunk_ext)
        if backward:
            g = grad_output if rows is None else grad_output.index_select(0, rows)
            g = g[start:stop] if rows is None else g
            lc = lse[start:stop] if rows is None else lse.index_select(0, rows)
            fastce.cross_entropy_backward(lg_np, tc_np, as_array(g.to(torch.float64), "grad_output"),
                                          reduction="none", lse=as_array(lc, "lse"), inplace=True, **kw)
        elif any_grad:
            res = fastce.cross_entropy_with_grad(lg_np, tc_np, reduction="sum", grad_output=unit,
                                                 return_lse=return_lse, inplace=True, **kw)
            total += float(res[0])
            lse_c = res[2] if return_lse else None
        else:
            res = fastce.cross_entropy(lg_np, tc_np, reduction="sum" if loss_rows is None else "none",
                                       return_lse=return_lse, **kw)
            part, lse_c = res if return_lse else (res, None)
            if loss_rows is None:
                total += float(part)
            else:
                part = to_tensor(part, torch.float64)
                if rows is None:
                    loss_rows[start:stop] = part
                else:
                    loss_rows[rows] = part
        if return_lse and not backward:
            lse_c = to_tensor(lse_c, torch.float64)
            if rows is None:
                lse_rows[start:stop] = lse_c
            else:
                lse_rows[rows] = lse_c
        if any_grad:  # lg now holds d loss / d logits of the chunk
            if want_in:
                dh = lg @ weight
                if rows is None:
                    d_in[start:stop] = dh
                else:
                    d_in[rows] = dh
            if want_w:
                d_w.addmm_(lg.t().to(acc), hc.to(acc))
            if want_b:
                d_b += lg.sum(0, dtype=acc)  # a float64 column sum is ~15x slower in torch; chunks add in float64
    if loss_rows is not None:
        loss = loss_rows
    elif backward:
        loss = None
    else:
        loss = torch.tensor(total * unit if reduction == "mean" else total, dtype=torch.float64)
    return (loss, lse_rows, d_in,
            d_w.to(dtype) if d_w is not None else None,
            d_b.to(dtype) if d_b is not None else None)


@torch.library.custom_op("fastce::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(input: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor],
                            cls_weight: Optional[Tensor], ignore_index: int, reduction: str,
                            label_smoothing: float, z_loss: float, softcap: Optional[float],
                            logit_scale: float, num_items: Optional[float], chunk_size: int,
                            return_lse: bool, grads: List[bool], n_threads: int
                            ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ext = extension_kwargs(z_loss, softcap, logit_scale, num_items)
    # 'none': the gradients depend on the per-row grad_output, known only in backward;
    # the forward keeps the lse so that backward recomputes the logits once, not the lse.
    fwd_grads = (False, False, False) if reduction == "none" else tuple(grads)
    need_lse = return_lse or (reduction == "none" and any(grads))
    loss, lse, d_in, d_w, d_b = _linear_sweep(input, weight, target, bias, cls_weight, ignore_index,
                                              reduction, label_smoothing, ext, chunk_size, need_lse,
                                              fwd_grads, n_threads)
    ldtype = loss_dtype(input.dtype)
    # the lse stays float64: backward of 'none' reuses it
    return (loss.to(ldtype), lse if need_lse else _empty(torch.float64),
            d_in if d_in is not None else _empty(input.dtype),
            d_w if d_w is not None else _empty(input.dtype),
            d_b if d_b is not None else _empty(input.dtype))


@linear_cross_entropy_op.register_fake
def _(input: Any, weight: Any, target: Any, bias: Any, cls_weight: Any, ignore_index: Any,
      reduction: Any, label_smoothing: Any, z_loss: Any, softcap: Any, logit_scale: Any,
      num_items: Any, chunk_size: Any, return_lse: Any, grads: Any, n_threads: Any) -> Any:
    ldtype = loss_dtype(input.dtype)
    n = input.shape[0]
    fwd = reduction != "none"
    need_lse = return_lse or (reduction == "none" and any(grads))
    return (input.new_empty((n,) if reduction == "none" else (), dtype=ldtype),
            input.new_empty((n,) if need_lse else (0,), dtype=torch.float64),
            input.new_empty(input.shape if fwd and grads[0] else (0,)),
            input.new_empty(weight.shape if fwd and grads[1] else (0,)),
            input.new_empty((weight.shape[0],) if fwd and grads[2] and bias is not None else (0,)))


@torch.library.custom_op("fastce::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward_op(grad_output: Tensor, lse: Tensor, input: Tensor, weight: Tensor,
                                     target: Tensor, bias: Optional[Tensor],
                                     cls_weight: Optional[Tensor], ignore_index: int,
                                     label_smoothing: float, z_loss: float, softcap: Optional[float],
                                     logit_scale: float, chunk_size: int, grads: List[bool],
                                     n_threads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of the 'none' reduction for a per-row ``grad_output``."""
    ext = extension_kwargs(z_loss, softcap, logit_scale, None)
    _, _, d_in, d_w, d_b = _linear_sweep(input, weight, target, bias, cls_weight, ignore_index,
                                         "none", label_smoothing, ext, chunk_size, False,
                                         tuple(grads), n_threads, grad_output=grad_output,
                                         lse=lse.to(torch.float64))
    return (d_in if d_in is not None else _empty(input.dtype),
            d_w if d_w is not None else _empty(input.dtype),
            d_b if d_b is not None else _empty(input.dtype))


@linear_cross_entropy_backward_op.register_fake
def _(grad_output: Any, lse: Any, input: Any, weight: Any, target: Any, bias: Any,
      cls_weight: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any, softcap: Any,
      logit_scale: Any, chunk_size: Any, grads: Any, n_threads: Any) -> Any:
    return (input.new_empty(input.shape if grads[0] else (0,)),
            input.new_empty(weight.shape if grads[1] else (0,)),
            input.new_empty((weight.shape[0],) if grads[2] and bias is not None else (0,)))


def _linear_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    # outputs never differentiated (lse, saved gradients): no zeros of their shapes in backward
    ctx.set_materialize_grads(False)
    (input, weight, target, bias, cls_weight, ignore_index, reduction, label_smoothing, z_loss,
     softcap, logit_scale, num_items, chunk_size, return_lse, grads, n_threads) = inputs
    loss, lse, d_in, d_w, d_b = output
    ctx.mark_non_differentiable(lse, d_in, d_w, d_b)
    ctx.reduction, ctx.grads = reduction, tuple(grads)
    if reduction == "none":
        ctx.options = (ignore_index, label_smoothing, z_loss, softcap, logit_scale, chunk_size,
                       n_threads)
        ctx.save_for_backward(lse, input, weight, target, bias, cls_weight, loss)
    else:
        ctx.save_for_backward(d_in, d_w, d_b, loss)


@once_differentiable("fastce.torch.linear_cross_entropy")
def _linear_backward(ctx: Any, g_loss: Optional[Tensor], g_lse: Optional[Tensor],
                     g_din: Optional[Tensor], g_dw: Optional[Tensor], g_db: Optional[Tensor]) -> Any:
    out: List[Optional[Tensor]] = [None] * 16
    if g_loss is None or not any(ctx.grads):
        return tuple(out)
    if ctx.reduction == "none":
        lse, input, weight, target, bias, cls_weight, _ = ctx.saved_tensors
        ii, ls, z, cap, scale, cs, nt = ctx.options
        grads = list(ctx.grads)
        grads[2] = grads[2] and bias is not None
        d_in, d_w, d_b = call(
            linear_cross_entropy_backward_op, g_loss.expand(input.shape[0]).contiguous(), lse, input, weight, target, bias, cls_weight,
            ii, ls, z, cap, scale, cs, grads, nt)
    else:
        d_in, d_w, d_b = (scale_grad(t, g_loss, False) for t in ctx.saved_tensors[:3])
    out[0] = d_in if ctx.grads[0] else None
    out[1] = d_w if ctx.grads[1] else None
    out[3] = d_b if ctx.grads[2] else None
    return tuple(out)


_register(linear_cross_entropy_op, _linear_setup, _linear_backward, shown=2)  # loss, lse
_register(linear_cross_entropy_backward_op)
