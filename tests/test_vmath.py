"""Accuracy contract of the vectorised exp and log (include/fastce/vmath_impl.h), per ISA.

    exp, float32: <= 2 ulp on [-87.33, 88.37]; x < -87.3365 -> +0; x > 88.3762 -> +inf
    exp, float64: <= 2 ulp on [-708.39, 709.43]; below -> +0, above -> +inf
    log, both:    <= 2 ulp for positive finite x, subnormals included;
                  log(+-0) = -inf, log(x < 0) = nan, log(+inf) = +inf, log(nan) = nan
    exp(-inf) = 0, exp(+inf) = +inf, exp(nan) = nan.

The ulp of a result is ``np.spacing`` of the correctly rounded true value in the tested
dtype.  True values: float32 results against float64 NumPy (its own error, < 1 float64
ulp, is ~2**-29 float32 ulp: negligible); float64 results against ``np.longdouble``
(x87 extended, 64-bit mantissa, on x86-64).  Where longdouble is no wider than double
(aarch64 Linux has binary128, but macOS/Windows do not), the float64 reference is NumPy's
own float64 exp/log, whose error is below 1 ulp, so the bound becomes 2 + 1 ulp.
"""
import functools

import numpy as np
import pytest

import fastce
from fastce import _kernels

MAX_ULP = 2.0
LONGDOUBLE_WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
F64_BOUND = MAX_ULP if LONGDOUBLE_WIDER else MAX_ULP + 1.0

EXP_RANGE = {np.float32: (-87.33, 88.37), np.float64: (-708.39, 709.43)}
# the contract's cut-offs (FCE_EXP_LO / FCE_EXP_HI in vmath_impl.h)
EXP_LO = {np.float32: np.float32(-87.33654475), np.float64: np.float64(-708.3964185322641)}
EXP_HI = {np.float32: np.float32(88.37626266), np.float64: np.float64(709.436138303)}
BITS = {np.float32: np.uint32, np.float64: np.uint64}
POS_INF_BITS = {np.float32: 0x7F800000, np.float64: 0x7FF0000000000000}
N_POINTS = 4_000_000


# ----------------------------------------------------------------------------- sample points
@functools.lru_cache(maxsize=None)
def exp_points(dtype):
    """>= 4M points in the contract range: a dense linspace, uniform random, small |x|,
    and the neighbourhoods of k * ln2 / 2 (the reduction's rounding boundaries)."""
    lo, hi = EXP_RANGE[dtype]
    rng = np.random.default_rng(1)
    k = np.arange(np.ceil(2 * lo / np.log(2)), np.floor(2 * hi / np.log(2)) + 1)
    boundary = (k * np.log(2) / 2)[:, None] * (1 + np.array([-1e-7, -1e-12, 0, 1e-12, 1e-7]))
    parts = [
        np.linspace(lo, hi, N_POINTS),
        rng.uniform(lo, hi, N_POINTS // 4),
        rng.uniform(-1, 1, 100_000),
        rng.uniform(-1e-6, 1e-6, 10_000),
        boundary.ravel(),
        [0.0, lo, hi],
    ]
    x = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts]).astype(dtype)
    return x[(x >= lo) & (x <= hi)]


@functools.lru_cache(maxsize=None)
def log_points(dtype):
    """>= 4M positive finite points: uniform random bit patterns (every binade, subnormals
    included), every subnormal binade densely, a dense sweep of [0.5, 2] around 1, and
    the mantissa boundary sqrt(2)."""
    rng = np.random.default_rng(2)
    bits = BITS[dtype]
    finfo = np.finfo(dtype)
    parts = [
        rng.integers(1, POS_INF_BITS[dtype], N_POINTS, dtype=bits).view(dtype),
        rng.integers(1, int(finfo.smallest_normal.view(bits)), 200_000, dtype=bits).view(dtype),
        np.linspace(0.5, 2.0, 1_000_000, dtype=dtype),
        1 + np.arange(-2000, 2000, dtype=dtype) * finfo.eps,
        np.sqrt(np.float64(2)).astype(dtype) * (1 + np.arange(-50, 50, dtype=dtype) * finfo.eps),
        np.array([finfo.smallest_subnormal, finfo.smallest_normal, finfo.max, 1.0], dtype=dtype),
    ]
    x = np.concatenate(parts).astype(dtype)
    return x[np.isfinite(x) & (x > 0)]


@functools.lru_cache(maxsize=None)
def true_values(func, dtype):
    """(points, true value in a wider type, ulp of the rounded true value)."""
    x = exp_points(dtype) if func == "exp" else log_points(dtype)
    npfunc = getattr(np, func)
    if dtype is np.float32:
        ref = npfunc(x.astype(np.float64))
        ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    else:
        wide = np.longdouble if LONGDOUBLE_WIDER else np.float64
        ref = npfunc(x.astype(wide))
        ulp = np.spacing(ref.astype(np.float64)).astype(wide)
    return x, ref, np.abs(ulp)


def ulp_errors(func, dtype):
    x, ref, ulp = true_values(func, dtype)
    y = getattr(_kernels, "v" + func)(x)
    assert y.dtype == dtype and y.shape == x.shape
    err = np.abs(y.astype(ref.dtype) - ref) / ulp
    return x, y, ref, err


def _report(func, dtype, isa, x, y, ref, err):
    i = int(np.argmax(err))
    return (f"{func} {np.dtype(dtype).name} isa={isa}: measured max error {float(err[i]):.4f} ulp "
            f"over {x.size} points, at x={x[i]!r}: got {y[i]!r}, true {ref[i]!r}")


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("func", ["exp", "log"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_accuracy(func, dtype, isa):
    x, y, ref, err = ulp_errors(func, dtype)
    bound = MAX_ULP if dtype is np.float32 else F64_BOUND
    assert x.size >= N_POINTS
    assert np.isfinite(y).all(), f"{func}: non-finite results inside the contract range"
    msg = _report(func, dtype, isa, x, y, ref, err)
    print(msg)
    assert float(err.max()) <= bound, f"{msg} (contract: <= {bound} ulp)"


# ----------------------------------------------------------------------------- special values
def _assert_same(got, want, what):
    """Exact equality including nan and the sign of zero."""
    got, want = np.asarray(got), np.asarray(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    same &= np.signbit(got) == np.signbit(want)
    assert same.all(), f"{what}: got {got[~same]!r} for inputs expecting {want[~same]!r}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_exp_special_values(dtype, isa):
    lo, hi = EXP_LO[dtype], EXP_HI[dtype]
    finfo = np.finfo(dtype)
    inf = np.inf
    cases = {
        0.0: 1.0, -0.0: 1.0, -inf: 0.0, inf: inf, np.nan: np.nan,
        # beyond the cut-offs: +inf above, +0 below (never -0, never garbage)
        float(np.nextafter(hi, dtype(inf))): inf, float(hi) + 0.5: inf, 1000.0: inf,
        float(finfo.max): inf,
        float(np.nextafter(lo, dtype(-inf))): 0.0, float(lo) - 0.5: 0.0, -1000.0: 0.0,
        float(-finfo.max): 0.0,
    }
    x = np.array(list(cases), dtype=dtype)
    _assert_same(_kernels.vexp(x), np.array(list(cases.values()), dtype=dtype),
                 f"exp special values, {np.dtype(dtype).name} isa={isa}, inputs {x!r}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_log_special_values(dtype, isa):
    finfo = np.finfo(dtype)
    inf, nan = np.inf, np.nan
    cases = {
        0.0: -inf, -0.0: -inf, inf: inf, nan: nan, 1.0: 0.0,
        -1.0: nan, -inf: nan, float(-finfo.smallest_subnormal): nan, float(-finfo.max): nan,
        -1e-30: nan,
    }
    x = np.array(list(cases), dtype=dtype)
    _assert_same(_kernels.vlog(x), np.array(list(cases.values()), dtype=dtype),
                 f"log special values, {np.dtype(dtype).name} isa={isa}, inputs {x!r}")


# ----------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("func", ["vexp", "vlog"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_tail_computes_like_body(func, dtype, isa):
    """Every length 0..70 gives the same bits as the full vector (the masked tail computes
    exactly like the unrolled body), and the input is not modified."""
    rng = np.random.default_rng(3)
    x = (rng.uniform(-20, 20, 70) if func == "vexp" else rng.uniform(1e-3, 1e3, 70)).astype(dtype)
    x_before = x.copy()
    full = getattr(_kernels, func)(x)
    for n in range(71):
        for start in (0, 1, 3):
            if start + n > 70:
                continue
            part = getattr(_kernels, func)(x[start:start + n])
            assert part.shape == (n,) and part.dtype == dtype
            np.testing.assert_array_equal(
                part, full[start:start + n],
                err_msg=f"{func} {np.dtype(dtype).name} isa={isa}: x[{start}:{start + n}]")
    np.testing.assert_array_equal(x, x_before, err_msg=f"{func} modified its input")


def test_isa_fixture_switches_kernels(isa):
    """Guard for the fixture above: the active path is the parametrised one."""
    assert fastce.get_isa() == isa and isa in fastce.supported_isas()


# ----------------------------------------------------------------------------- tanh
# Contract (vmath_impl.h, used by softcap): float32 <= 4 ulp, float64 <= 16 ulp for all x;
# +-inf -> +-1, nan -> nan.  Odd: tanh(-x) == -tanh(x) bit for bit.  Observed: tanh(-0.0)
# gives +0.0 (IEEE would keep -0.0); harmless for softcap, so only "== 0" is required.
TANH_MAX_ULP = {np.float32: 4.0, np.float64: 16.0 if LONGDOUBLE_WIDER else 17.0}


@functools.lru_cache(maxsize=None)
def tanh_points(dtype):
    """A dense sweep of [-20, 20], both sides of the switch between the Taylor polynomial
    and 1 - 2 / (exp(2|x|) + 1) (|x| = 0.4 for float32, 0.1 for float64), small |x| down
    to 1e-30 (and subnormals), and the saturation region."""
    rng = np.random.default_rng(4)
    tiny = np.logspace(-30, 0, 200_000)
    parts = [
        np.linspace(-20, 20, N_POINTS),
        rng.uniform(-20, 20, N_POINTS // 4),
        np.linspace(0.05, 0.6, 500_000),
        tiny, -tiny,
        np.array([np.finfo(dtype).smallest_subnormal, np.finfo(dtype).smallest_normal, 0.1, 0.4,
                  9.0, 10.0, 19.0, 20.0, 50.0, 1e4, float(np.finfo(dtype).max)]),
    ]
    x = np.concatenate(parts).astype(dtype)
    return np.concatenate([x, -x])


@functools.lru_cache(maxsize=None)
def tanh_true_values(dtype):
    x = tanh_points(dtype)
    if dtype is np.float32:
        ref = np.tanh(x.astype(np.float64))
        ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    else:
        wide = np.longdouble if LONGDOUBLE_WIDER else np.float64
        ref = np.tanh(x.astype(wide))
        ulp = np.spacing(np.abs(ref).astype(np.float64)).astype(wide)
    return x, ref, ulp


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_tanh_accuracy(dtype, isa):
    x, ref, ulp = tanh_true_values(dtype)
    y = _kernels.vtanh(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert np.isfinite(y).all() and (np.abs(y) <= 1).all(), \
        f"tanh {np.dtype(dtype).name} isa={isa}: a result outside [-1, 1]"
    err = np.abs(y.astype(ref.dtype) - ref) / ulp
    msg = _report("tanh", dtype, isa, x, y, ref, err)
    print(msg)
    bound = TANH_MAX_ULP[dtype]
    assert float(err.max()) <= bound, f"{msg} (contract: <= {bound} ulp)"
    half = x.size // 2  # x[half:] == -x[:half]
    np.testing.assert_array_equal(y[half:], -y[:half],
                                  err_msg=f"tanh {np.dtype(dtype).name} isa={isa}: not odd")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_tanh_special_values(dtype, isa):
    inf, nan = np.inf, np.nan
    finfo = np.finfo(dtype)
    cases = {inf: 1.0, -inf: -1.0, nan: nan, float(finfo.max): 1.0, float(-finfo.max): -1.0,
             1e-30: 1e-30, -1e-30: -1e-30, float(finfo.smallest_subnormal): float(finfo.smallest_subnormal)}
    x = np.array(list(cases), dtype=dtype)
    _assert_same(_kernels.vtanh(x), np.array(list(cases.values()), dtype=dtype),
                 f"tanh special values, {np.dtype(dtype).name} isa={isa}, inputs {x!r}")
    zeros = _kernels.vtanh(np.array([0.0, -0.0], dtype=dtype))
    assert (zeros == 0).all(), f"tanh(+-0) = {zeros!r}, isa={isa}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_tanh_tail_computes_like_body(dtype, isa):
    """Every length 0..70 and offset gives the bits of the full vector; input untouched."""
    x = np.random.default_rng(5).uniform(-3, 3, 70).astype(dtype)
    x_before = x.copy()
    full = _kernels.vtanh(x)
    for n in range(71):
        for start in (0, 1, 3):
            if start + n <= 70:
                np.testing.assert_array_equal(
                    _kernels.vtanh(x[start:start + n]), full[start:start + n],
                    err_msg=f"vtanh {np.dtype(dtype).name} isa={isa}: x[{start}:{start + n}]")
    np.testing.assert_array_equal(x, x_before, err_msg="vtanh modified its input")
