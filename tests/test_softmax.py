"""logsumexp / log_softmax / softmax against the float64 reference.

Cases: dtype x shape x layout (C, F, sliced) x n_threads x isa, a sweep over every class
count 1..70 (tails of every vector width), 1-D input, ``out=``, ``axis``, extreme values.
"""
import numpy as np
import pytest

import fastce
from conftest import DTYPES, EXTRA_LAYOUTS, LAYOUTS, dtype_id, make_logits, shape_id, with_layout

# |fast - reference| <= atol + rtol * |reference|, reference computed in float64
TOL = {
    np.float32: dict(rtol=1e-5, atol=1e-6),
    np.float64: dict(rtol=1e-12, atol=1e-12),
}

FUNCS = ("logsumexp", "log_softmax", "softmax")
SHAPES = ([(0, 5), (1, 1), (1, 7), (6, 1)]
          + [(4, c) for c in (2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 47, 48, 63, 64, 65, 70)]
          + [(3, 1000), (2, 32000)])


def check_rowwise(reference, x, case, axis=-1, n_threads=None):
    """Run the three functions on ``x`` and compare each with the reference."""
    tol = TOL[x.dtype.type]
    x_before = x.copy()
    for name in FUNCS:
        got = getattr(fastce, name)(x, axis, n_threads=n_threads)
        want = getattr(reference, name)(x.astype(np.float64), axis)
        what = f"{name}: {case}"
        assert np.asarray(got).dtype == x.dtype, f"{what}: dtype {np.asarray(got).dtype}"
        assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)}"
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, equal_nan=True,
                                   err_msg=what, **tol)
    np.testing.assert_array_equal(x, x_before, err_msg=f"input modified: {case}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rowwise_vs_reference(reference, dtype, shape, layout, n_threads, isa):
    x = with_layout(make_logits(shape, dtype), layout)
    check_rowwise(reference, x, f"{dtype_id(dtype)} {layout} shape={shape} "
                                f"n_threads={n_threads} isa={isa}", n_threads=n_threads)


@pytest.mark.parametrize("layout", EXTRA_LAYOUTS)
@pytest.mark.parametrize("shape", [(5, 37), (3, 1000), (11,)], ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extra_layouts(reference, dtype, shape, layout, isa):
    """Negative strides, unaligned data, read-only and broadcast inputs; also as out=."""
    x = with_layout(make_logits(shape, dtype), layout)
    case = f"{dtype_id(dtype)} {layout} shape={shape} isa={isa}"
    check_rowwise(reference, x, case, n_threads=2)
    if layout in ("reversed", "unaligned"):
        for name in FUNCS:
            if name == "logsumexp" and len(shape) == 1:
                continue
            want = getattr(reference, name)(x.astype(np.float64))
            out = with_layout(np.zeros(np.shape(want), dtype=dtype), layout)
            assert getattr(fastce, name)(x, out=out) is out
            np.testing.assert_allclose(out, want, err_msg=f"{name} out={layout}: {case}",
                                       **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_every_class_count(reference, dtype, isa):
    """C = 1..70: every tail length of the 8-, 16- and 32-lane paths, all layouts."""
    for c in range(1, 71):
        for layout in LAYOUTS:
            x = with_layout(make_logits((3, c), dtype, seed=c), layout)
            check_rowwise(reference, x, f"{dtype_id(dtype)} {layout} C={c} isa={isa}",
                          n_threads=1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [1, 5, 17, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_1d_input(reference, dtype, c, layout, isa):
    x = with_layout(make_logits((c,), dtype), layout)
    lse = fastce.logsumexp(x)
    assert type(lse) is dtype, f"1-D logsumexp returned {type(lse)}, want NumPy {dtype}"
    check_rowwise(reference, x, f"1-D {dtype_id(dtype)} {layout} C={c} isa={isa}")


@pytest.mark.parametrize("out_layout", LAYOUTS, ids=lambda s: f"out={s}")
@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_out(reference, dtype, name, out_layout, isa):
    x = make_logits((5, 37), dtype)
    out_shape = (5,) if name == "logsumexp" else (5, 37)
    out = with_layout(np.full(out_shape, 123.0, dtype=dtype), out_layout)
    got = getattr(fastce, name)(x, out=out)
    assert got is out, f"{name}: out= not returned"
    assert np.shares_memory(got, out)
    np.testing.assert_allclose(out, getattr(reference, name)(x.astype(np.float64)),
                               err_msg=f"{name} out= ({out_layout})", **TOL[dtype])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", [-1, 1, 0, -2])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_axis(reference, dtype, axis, layout, isa):
    x = with_layout(make_logits((23, 9), dtype), layout)
    check_rowwise(reference, x, f"axis={axis} {dtype_id(dtype)} {layout} isa={isa}",
                  axis=axis)
    if axis in (-1, 1):
        for name in FUNCS:
            np.testing.assert_array_equal(getattr(fastce, name)(x, axis),
                                          getattr(fastce, name)(x),
                                          err_msg=f"{name}: axis={axis} differs from default")


def _extreme_rows(c):
    """Rows with huge spread, masked classes, one live class, all -inf, nan, +inf."""
    rng = np.random.default_rng(c)
    rows = np.tile(rng.standard_normal(c) * 3, (10, 1))
    rows[0, ::2] = 1e4
    rows[0, 1::2] = -1e4
    rows[1, :] = -1e4
    rows[2, ::3] = -np.inf                   # masked classes
    rows[3, :] = -np.inf
    rows[3, c // 2] = 5.0                    # a single live class
    rows[4, :] = -np.inf                     # all masked
    rows[5, c // 3] = np.nan
    rows[6, c - 1] = np.inf
    rows[7, 0] = np.inf
    rows[7, 1 % c] = -np.inf
    rows[8, :] = 1e4
    return rows


NONFINITE_ROWS = (5, 6, 7)   # nan / +inf: nan in every softmax output of that row only
POSINF_ROWS = (6, 7)         # +inf and no nan: logsumexp is +inf (NumPy, SciPy, torch)
ALL_MASKED_ROW = 4


@pytest.mark.parametrize("c", [3, 17, 64, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extreme_values(reference, dtype, c, isa):
    x = _extreme_rows(c).astype(dtype)
    case = f"extremes {dtype_id(dtype)} C={c} isa={isa}"
    with np.errstate(invalid="ignore"):
        check_rowwise(reference, x, case, n_threads=2)
    lse = fastce.logsumexp(x)
    assert lse[ALL_MASKED_ROW] == -np.inf, f"{case}: all -inf row: logsumexp {lse[ALL_MASKED_ROW]}"
    for r in NONFINITE_ROWS:
        want = np.inf if r in POSINF_ROWS else np.nan
        assert np.array_equal(lse[r], want, equal_nan=True), \
            f"{case}: row {r} holds nan/+inf: logsumexp {lse[r]}, want {want}"
    finite_rows = [r for r in range(10) if r not in NONFINITE_ROWS + (ALL_MASKED_ROW,)]
    assert np.isfinite(lse[finite_rows]).all(), f"{case}: finite rows gave {lse[finite_rows]}"
    p = fastce.softmax(x)
    assert not np.isnan(p[finite_rows]).any(), f"{case}: nan leaked into healthy rows"
    np.testing.assert_allclose(p[finite_rows].sum(axis=1, dtype=np.float64), 1.0,
                               rtol=10 * TOL[dtype]["rtol"], err_msg=f"{case}: softmax sum")
    assert (p[2, ::3] == 0).all() and (fastce.log_softmax(x)[2, ::3] == -np.inf).all(), \
        f"{case}: masked classes must give p = 0, log p = -inf"


@pytest.mark.parametrize("c", [3, 17, 64, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_cross_entropy_lse_of_extreme_rows(dtype, c, isa):
    """return_lse gives logsumexp's lse on every extreme row: +inf for a row holding +inf
    and no nan (exp(inf - inf) is nan inside the kernels), with and without the gradient,
    for class indices and probabilities, and for the scaled logits under logit_scale."""
    x = _extreme_rows(c).astype(dtype)
    want = fastce.logsumexp(x)
    t = np.zeros(len(x), dtype=np.int64)
    p = np.full(x.shape, 1.0 / c, dtype=dtype)
    rtol = 4 * np.finfo(dtype).eps
    with np.errstate(invalid="ignore"):
        for name, got in [("loss", fastce.cross_entropy(x, t, reduction="none", return_lse=True)[1]),
                          ("loss+grad", fastce.cross_entropy_with_grad(x, t, reduction="none",
                                                                       return_lse=True)[2]),
                          ("probabilities", fastce.cross_entropy(x, p, reduction="none",
                                                                 return_lse=True)[1])]:
            # the same lse to a few ulp (the sweeps differ), the same nan and infinities
            np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=f"{name}: C={c}")
        got = fastce.cross_entropy(x, t, reduction="none", return_lse=True, logit_scale=-1.0)[1]
        np.testing.assert_allclose(got, fastce.logsumexp(-x), rtol=rtol, atol=0,
                                   err_msg=f"logit_scale=-1: C={c}")
    assert (want[list(POSINF_ROWS)] == np.inf).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bitwise_identical_across_threads(dtype, isa):
    x = with_layout(make_logits((515, 77), dtype), "sliced")
    for name in FUNCS:
        results = [getattr(fastce, name)(x, n_threads=n) for n in (1, 2, 3)]
        for n, r in zip((2, 3), results[1:]):
            assert np.array_equal(results[0], r), f"{name}: n_threads={n} differs from 1"
