"""Shared fixtures and helpers for the fastce test suite.

Fixtures
--------
isa        parametrised over ``fastce.supported_isas()`` (ids ``isa=avx512`` ...); selects
           the kernel path for the test and restores the previous one afterwards.
n_threads  parametrised over 1 and 2 (ids ``n_threads=1`` ...).
torch      the ``torch`` module.  torch is the second oracle and the README's test command
           installs it, so a missing torch is a hard failure: the session refuses to start.
reference  the float64 NumPy slow twin, ``fastce.reference``.

Helpers (import them with ``from conftest import ...``)
-------------------------------------------------------
``IN_CI`` is true when the standard ``CI`` variable says so (CI systems set ``CI=true``):
checks that need optional tools (the AArch64 cross tools for NEON, NVRTC) fail there
instead of skipping.
``with_layout`` makes C-contiguous, Fortran-order or sliced (non-unit stride) copies of an
array; ``make_logits`` / ``make_target`` / ``make_weight`` build deterministic inputs.
"""
import importlib
import importlib.util
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# CI systems (GitHub Actions, GitLab, Travis, CircleCI, ...) set CI=true themselves
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F", "sliced")
# targeted extras: negative strides, a data pointer not aligned to the itemsize,
# a read-only buffer, a zero-stride (broadcast, read-only) view of one row
EXTRA_LAYOUTS = ("reversed", "unaligned", "readonly", "broadcast")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- torch
def require_torch():
    """Return the torch module (never a skip: pytest_configure has checked it imports)."""
    return importlib.import_module("torch")


def pytest_configure(config):
    # a suite that silently skipped every comparison with torch would pass on a broken build
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        raise pytest.UsageError(
            f"torch cannot be imported ({exc}): it is the second oracle of the test suite. "
            "Install it as the README says: pip install \".[test]\" torch==2.13.0") from exc


def require_in_ci(reason):
    """Skip with ``reason``, or fail with it when running in CI (``CI=true``)."""
    if IN_CI:
        pytest.fail(f"{reason} (required in CI: CI={os.environ.get('CI')!r})", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def torch():
    torch = require_torch()
    # torch's OpenMP pool spins after each call and starves fastce's threads (and the other
    # way round) on small machines; the oracle does not need threads
    torch.set_num_threads(1)
    return torch


# ----------------------------------------------------------------------------- reference
def load_reference():
    """``fastce.reference``; loaded from its file if the compiled core is not built,
    so that the oracle can be checked on its own (it never needs the compiled module)."""
    try:
        from fastce import reference
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "fastce_reference_standalone", ROOT / "fastce" / "reference.py")
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
    return reference


@pytest.fixture(scope="session")
def reference():
    return load_reference()


# ----------------------------------------------------------------------------- isa / threads
def pytest_generate_tests(metafunc):
    if "isa" in metafunc.fixturenames:
        import fastce

        metafunc.parametrize("isa", fastce.supported_isas(), ids=lambda s: f"isa={s}",
                             indirect=True)


@pytest.fixture
def isa(request):
    """Run the test on one kernel path; restore the previous path afterwards."""
    import fastce

    previous = fastce.get_isa()
    fastce.set_isa(request.param)
    assert fastce.get_isa() == request.param
    try:
        yield request.param
    finally:
        fastce.set_isa(previous)


@pytest.fixture(params=[1, 2], ids=lambda n: f"n_threads={n}")
def n_threads(request):
    return request.param


# ----------------------------------------------------------------------------- layouts
def with_layout(a, layout, fill=np.nan):
    """Return a copy of ``a`` (1-D or 2-D) with the given memory layout.

    ``"C"``: C-contiguous; ``"F"``: Fortran order; ``"sliced"``: a view with non-unit
    strides on every axis (rows ``1::2``, columns ``1::3`` of a larger buffer whose other
    elements hold ``fill``, so a kernel that reads outside the view sees nan).
    ``"reversed"``: negative strides on every axis; ``"unaligned"``: C order at an odd
    byte address; ``"readonly"``: C order, not writeable; ``"broadcast"``: every row is
    ``a[0]`` through a zero row stride (so the values differ from ``a``!).
    """
    a = np.asarray(a)
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "reversed":
        rev = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[rev])[rev]
    if layout == "unaligned":
        buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
        view = buf[1:].view(a.dtype).reshape(a.shape)
        view[...] = a
        assert not view.flags.aligned or a.dtype.itemsize == 1
        return view
    if layout == "readonly":
        view = np.array(a, order="C")
        view.flags.writeable = False
        return view
    if layout == "broadcast":
        return np.broadcast_to(a[:1] if a.ndim == 2 else a, a.shape)
    if layout != "sliced":
        raise ValueError(layout)
    if a.ndim == 1:
        big = np.full(3 * a.shape[0] + 2, fill, dtype=a.dtype)
        view = big[1:1 + 3 * a.shape[0]:3]
    elif a.ndim == 2:
        n, c = a.shape
        big = np.full((2 * n + 1, 3 * c + 2), fill, dtype=a.dtype)
        view = big[1:1 + 2 * n:2, 1:1 + 3 * c:3]
    else:
        raise ValueError(f"with_layout handles 1-D and 2-D arrays, got {a.ndim}-D")
    view[...] = a
    assert view.shape == a.shape
    if a.size > 1:
        assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


def shape_id(shape):
    """Readable id for a shape: ``n=7,C=17`` or ``C=5`` for 1-D."""
    if len(shape) == 1:
        return f"C={shape[0]}"
    return f"n={shape[0]},C={shape[1]}"


def dtype_id(dtype):
    return np.dtype(dtype).name


# ----------------------------------------------------------------------------- inputs
def make_logits(shape, dtype, seed=0, scale=3.0):
    """Normal logits with standard deviation ``scale``, exactly representable in ``dtype``."""
    rng = np.random.default_rng([seed, *shape])
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_target(n, n_classes, ignore="none", seed=0, ignore_index=IGNORE_INDEX,
                dtype=np.int64):
    """Targets in ``[0, n_classes)``; ``ignore`` is 'none', 'some' (rows i % 3 == 1)
    or 'all' (every row set to ``ignore_index``)."""
    rng = np.random.default_rng([seed, n, n_classes, 7])
    t = rng.integers(0, n_classes, size=n).astype(dtype)
    if ignore == "some":
        t[1::3] = ignore_index
    elif ignore == "all":
        t[:] = ignore_index
    elif ignore != "none":
        raise ValueError(ignore)
    return t


def make_weight(n_classes, kind, dtype=np.float64, seed=0):
    """``None`` for kind None, else random positive class weights in [0.25, 2]."""
    if kind is None:
        return None
    rng = np.random.default_rng([seed, n_classes, 11])
    return rng.uniform(0.25, 2.0, size=n_classes).astype(dtype)


def assert_close(actual, desired, *, rtol, atol, what, scale_atol=False):
    """``assert_allclose`` with the case spelled out; nan and inf must match exactly.

    With ``scale_atol`` the absolute tolerance is relative to ``max|desired|`` (finite
    part; plain ``atol`` if that is 0), which keeps it meaningful for gradients that
    'mean' scales by 1/N.
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    if scale_atol:
        finite = np.abs(desired[np.isfinite(desired)])
        biggest = float(np.max(finite)) if finite.size else 0.0
        atol = atol * (biggest if biggest > 0 else 1.0)
    np.testing.assert_allclose(actual.astype(np.float64), desired.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def torch_cross_entropy(torch, logits, target, grad_output=1.0, *, weight=None,
                        ignore_index=IGNORE_INDEX, reduction="mean", label_smoothing=0.0):
    """Loss and autograd gradient from ``torch.nn.functional.cross_entropy``, as NumPy.

    Computed in the logits' dtype (float32 or float64), like fastce.
    """
    x = torch.tensor(np.array(logits), requires_grad=True)
    t = torch.tensor(np.array(target, dtype=np.int64))
    w = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.asarray(logits).dtype))
    loss = torch.nn.functional.cross_entropy(x, t, weight=w, ignore_index=ignore_index,
                                             reduction=reduction,
                                             label_smoothing=label_smoothing)
    loss.backward(torch.as_tensor(np.asarray(grad_output, dtype=x.detach().numpy().dtype)
                                  ).reshape(loss.shape))
    return loss.detach().numpy(), x.grad.numpy()


# ----------------------------------------------------------------------------- checks
def check_results(res, loss_want, grad_want, dtype, target_shape, reduction, tol, desc,
                  logits_shape):
    """Compare every entry point's loss and gradient with the expected ones."""
    for name, (loss, grad) in res.items():
        what = f"{name}: {desc}"
        if loss is not None:
            if reduction == "none":
                assert isinstance(loss, np.ndarray) and loss.shape == target_shape, \
                    f"{what}: 'none' loss {type(loss)} {np.shape(loss)}, want {target_shape}"
                assert loss.dtype == dtype, f"{what}: loss dtype {loss.dtype}"
            else:
                assert type(loss) is dtype, f"{what}: loss type {type(loss)}, want NumPy {dtype}"
            assert_close(loss, loss_want, what=f"loss of {what}", **tol["loss"])
        if grad is not None:
            assert isinstance(grad, np.ndarray) and grad.dtype == dtype, \
                f"{what}: grad {type(grad)} {getattr(grad, 'dtype', None)}"
            assert grad.shape == logits_shape, f"{what}: grad shape {grad.shape}"
            assert_close(grad, grad_want, what=f"grad of {what}", scale_atol=True, **tol["grad"])
