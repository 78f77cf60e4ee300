# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fastce._kernels: the row loops over the C kernels.

Design, in layers:

1. Kernel table.  ``include/fastce/fastce.h`` declares one table of row kernels per ISA
   (scalar, AVX2+FMA, AVX-512, NEON), each compiled from the same templates.  One table is
   selected at import (``select_isa``) and all loops call through it.
2. Canonical layout.  The Python layer hands every array over as a 3-D view
   ``(A, C, B)``: ``A`` leading rows, ``C`` classes, ``B`` trailing positions (``B == 1``
   for 2-D logits).  A "row" is ``(a, b)``: ``C`` scores ``x[a, :, b]``, stride ``sc``.
3. Row loops.  ``prange`` over the ``A * B`` rows, static schedule, GIL released.  Rows
   whose class stride is 1 go straight to the kernels; other rows are gathered into a
   per-thread scratch row (``C`` elements, never an ``N x C`` temporary), and gradients
   are scattered back.
4. Determinism.  Each row is computed by one thread with a fixed summation order, and
   per-row results land in ``O(N)`` float64 buffers that the caller reduces in a fixed
   order, so results are bitwise identical for any ``n_threads``.

No argument checking here: ``fastce/_validation.py`` has done it.  Every pointer and
stride below is trusted.
"""
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, NAN, log
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cimport numpy as cnp
import numpy as np

cnp.import_array()

ctypedef fused floating:
    float
    double


cdef extern from "fastce/fastce.h" nogil:
    ctypedef struct fce_stats:
        double max
        double sum
        double wx

    ctypedef struct fce_kernels_f32:
        void (*row_stats)(const float *x, int64_t n, const float *w, int want_wx, fce_stats *st) noexcept nogil
        void (*row_exp_affine)(const float *x, float *out, int64_t n, double shift, double a,
                               double beta, const float *w) noexcept nogil
        void (*row_sub_shift)(const float *x, float *out, int64_t n, double shift) noexcept nogil
        void (*vexp)(const float *x, float *out, int64_t n) noexcept nogil
        void (*vlog)(const float *x, float *out, int64_t n) noexcept nogil

    ctypedef struct fce_kernels_f64:
        void (*row_stats)(const double *x, int64_t n, const double *w, int want_wx, fce_stats *st) noexcept nogil
        void (*row_exp_affine)(const double *x, double *out, int64_t n, double shift, double a,
                               double beta, const double *w) noexcept nogil
        void (*row_sub_shift)(const double *x, double *out, int64_t n, double shift) noexcept nogil
        void (*vexp)(const double *x, double *out, int64_t n) noexcept nogil
        void (*vlog)(const double *x, double *out, int64_t n) noexcept nogil

    ctypedef struct fce_kernels:
        const char *name
        int vector_bits
        fce_kernels_f32 f32
        fce_kernels_f64 f64

    int fce_isa_count()
    const fce_kernels *fce_isa_table(int i)
    int fce_isa_supported(int i)


cdef extern from *:
    """
    #if defined(_OPENMP)
    #include <omp.h>
    static int fce_have_openmp(void) { return 1; }
    static int fce_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fce_have_openmp(void) { return 0; }
    static int fce_omp_max_threads(void) { return 1; }
    #endif
    """
    int fce_have_openmp() nogil
    int fce_omp_max_threads() nogil


# ---------------------------------------------------------------------------------------
# 1. Kernel table
# ---------------------------------------------------------------------------------------
cdef const fce_kernels *KT = fce_isa_table(fce_isa_count() - 1)  # scalar until selected


def isa_table():
    """List of ``(name, vector_bits, supported)`` for every kernel table in this build."""
    cdef int i
    cdef const fce_kernels *t
    rows = []
    for i in range(fce_isa_count()):
        t = fce_isa_table(i)
        rows.append((t.name.decode(), t.vector_bits, bool(fce_isa_supported(i))))
    return rows


def select_isa(str name):
    """Route all kernels through the table called ``name`` (the caller checked support)."""
    global KT
    cdef int i
    for i in range(fce_isa_count()):
        if fce_isa_table(i).name.decode() == name:
            KT = fce_isa_table(i)
            return
    raise ValueError(name)


def current_isa():
    return KT.name.decode()


def have_openmp():
    return bool(fce_have_openmp())


def omp_max_threads():
    return fce_omp_max_threads()


cdef inline void k_stats(const floating *x, int64_t n, const floating *w, int want_wx,
                         fce_stats *st) noexcept nogil:
    if floating is float:
        KT.f32.row_stats(x, n, w, want_wx, st)
    else:
        KT.f64.row_stats(x, n, w, want_wx, st)


cdef inline void k_exp_affine(const floating *x, floating *out, int64_t n, double shift,
                              double a, double beta, const floating *w) noexcept nogil:
    if floating is float:
        KT.f32.row_exp_affine(x, out, n, shift, a, beta, w)
    else:
        KT.f64.row_exp_affine(x, out, n, shift, a, beta, w)


cdef inline void k_sub_shift(const floating *x, floating *out, int64_t n,
                             double shift) noexcept nogil:
    if floating is float:
        KT.f32.row_sub_shift(x, out, n, shift)
    else:
        KT.f64.row_sub_shift(x, out, n, shift)


# ---------------------------------------------------------------------------------------
# 2./3. Row addressing, gather and scatter
# ---------------------------------------------------------------------------------------
cdef struct RowGeom:
    char *base          # address of element [0, 0, 0]
    int64_t A, C, B     # the canonical (A, C, B) shape
    int64_t sa, sb      # byte strides of the row axes
    int64_t sc          # element stride of the class axis


cdef inline RowGeom geom_of(cnp.ndarray arr):
    cdef RowGeom g
    g.base = <char *> cnp.PyArray_DATA(arr)
    g.A = arr.shape[0]
    g.C = arr.shape[1]
    g.B = arr.shape[2]
    g.sa = arr.strides[0]
    g.sb = arr.strides[2]
    g.sc = arr.strides[1] // arr.itemsize
    return g


cdef inline floating *row_ptr(RowGeom *g, int64_t r, floating *dummy) noexcept nogil:
    # `dummy` only carries the fused type
    cdef int64_t a = r // g.B
    cdef int64_t b = r - a * g.B
    return <floating *> (g.base + a * g.sa + b * g.sb)


cdef inline void gather(const floating *src, int64_t sc, int64_t n, floating *dst) noexcept nogil:
    cdef int64_t c
    for c in range(n):
        dst[c] = src[c * sc]


cdef inline void scatter(const floating *src, floating *dst, int64_t sc, int64_t n) noexcept nogil:
    cdef int64_t c
    for c in range(n):
        dst[c * sc] = src[c]


cdef inline void zero_row(floating *dst, int64_t sc, int64_t n) noexcept nogil:
    cdef int64_t c
    if sc == 1:
        memset(dst, 0, n * sizeof(floating))
    else:
        for c in range(n):
            dst[c * sc] = 0


cdef inline double stats_lse(fce_stats *st) noexcept nogil:
    if st.sum == 0.0 and st.max == -INFINITY:
        return -INFINITY
    return st.max + log(st.sum)


# Per-row work lives in these helpers: their locals are private to the calling thread.
# (Inside a prange body, a variable written only through its address would be shared.)
cdef inline double row_lse(const floating *row, int64_t n, const floating *w,
                           double *wx) noexcept nogil:
    cdef fce_stats st
    k_stats(row, n, w, wx != NULL, &st)
    if wx != NULL:
        wx[0] = st.wx
    return stats_lse(&st)


# ---------------------------------------------------------------------------------------
# log-sum-exp, log-softmax, softmax
# ---------------------------------------------------------------------------------------
def lse_rows(cnp.ndarray x, cnp.ndarray out, int n_threads):
    """out[a, b] = logsumexp(x[a, :, b]).  x: (A, C, B) floating; out: (A, B) float64, C-order."""
    if x.dtype == np.float32:
        _lse_rows[float](x, out, n_threads)
    else:
        _lse_rows[double](x, out, n_threads)


cdef void _lse_rows(cnp.ndarray x, cnp.ndarray out, int n_threads, floating *dummy=NULL):
    cdef RowGeom g = geom_of(x)
    cdef double *res = <double *> cnp.PyArray_DATA(out)
    cdef int64_t r, nrows = g.A * g.B
    cdef floating *row
    cdef floating *scratch
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating *> malloc(g.C * sizeof(floating)) if g.sc != 1 else NULL
        for r in prange(nrows, schedule='static'):
            row = row_ptr(&g, r, dummy)
            if g.sc != 1:
                gather(row, g.sc, g.C, scratch)
                row = scratch
            res[r] = row_lse(row, g.C, <floating *> NULL, NULL)
        free(scratch)


def softmax_rows(cnp.ndarray x, cnp.ndarray out, bint log_space, int n_threads):
    """out = softmax(x) or log_softmax(x) along axis 1 of the (A, C, B) views x and out."""
    if x.dtype == np.float32:
        _softmax_rows[float](x, out, log_space, n_threads)
    else:
        _softmax_rows[double](x, out, log_space, n_threads)


cdef void _softmax_rows(cnp.ndarray x, cnp.ndarray out, bint log_space, int n_threads,
                        floating *dummy=NULL):
    cdef RowGeom g = geom_of(x)
    cdef RowGeom go = geom_of(out)
    cdef int64_t r, nrows = g.A * g.B
    cdef bint strided = g.sc != 1 or go.sc != 1
    cdef floating *row
    cdef floating *orow
    cdef floating *scratch
    cdef floating *dst
    cdef double lse
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating *> malloc(g.C * sizeof(floating)) if strided else NULL
        for r in prange(nrows, schedule='static'):
            row = row_ptr(&g, r, dummy)
            orow = row_ptr(&go, r, dummy)
            if strided:
                gather(row, g.sc, g.C, scratch)
                row = scratch
            dst = scratch if strided else orow
            lse = row_lse(row, g.C, <floating *> NULL, NULL)
            if log_space:
                k_sub_shift(row, dst, g.C, lse)
            else:
                k_exp_affine(row, dst, g.C, lse, 1.0, 0.0, <floating *> NULL)
            if strided:
                scatter(dst, orow, go.sc, g.C)
        free(scratch)


# ---------------------------------------------------------------------------------------
# Cross-entropy with hard targets: loss rows, gradient rows, or both in one sweep
# ---------------------------------------------------------------------------------------
cdef struct CEParams:
    const int64_t *target    # (A*B,) class index, or -1 for an ignored row
    const double *wd         # (C,) class weights in float64, NULL = all ones
    double W                 # sum of the weights (C when unweighted)
    double eps               # label smoothing
    double *loss             # (A*B,) per-row loss out, or NULL
    double *lse              # (A*B,) per-row lse: out when compute_lse, else in; or NULL
    const double *scale      # (A*B,) per-row gradient scale, or NULL -> scale0
    double scale0
    bint compute_lse


def ce_rows(cnp.ndarray x, cnp.ndarray target, object weight_t, object weight_d, double W,
            double eps, object loss, object lse, bint compute_lse, cnp.ndarray grad,
            object scale_rows, double scale0, int n_threads):
    """The cross-entropy row sweep (hard targets).

    x: (A, C, B) floating logits.  target: (A*B,) int64, -1 for ignored rows.
    weight_t: (C,) weights in x's dtype or None; weight_d: the same in float64 or None.
    loss/lse: (A*B,) float64 outputs or None; with compute_lse False, lse is an input.
    grad: (A, C, B) of x's dtype (may be x itself), or None; its row scale is
    scale_rows[r] (float64 (A*B,)) or scale0.
    """
    cdef CEParams p
    p.target = <const int64_t *> cnp.PyArray_DATA(target)
    p.wd = <const double *> cnp.PyArray_DATA(weight_d) if weight_d is not None else NULL
    p.W = W
    p.eps = eps
    p.loss = <double *> cnp.PyArray_DATA(loss) if loss is not None else NULL
    p.lse = <double *> cnp.PyArray_DATA(lse) if lse is not None else NULL
    p.scale = <const double *> cnp.PyArray_DATA(scale_rows) if scale_rows is not None else NULL
    p.scale0 = scale0
    p.compute_lse = compute_lse
    if x.dtype == np.float32:
        _ce_rows[float](x, weight_t, grad, &p, n_threads)
    else:
        _ce_rows[double](x, weight_t, grad, &p, n_threads)


cdef void _ce_rows(cnp.ndarray x, object weight_t, object grad, CEParams *p, int n_threads,
                   floating *dummy=NULL):
    cdef RowGeom g = geom_of(x)
    cdef RowGeom gg = geom_of(grad) if grad is not None else g
    cdef bint want_grad = grad is not None
    cdef const floating *wt = <const floating *> cnp.PyArray_DATA(weight_t) if weight_t is not None else NULL
    cdef int64_t r, nrows = g.A * g.B
    cdef bint strided = g.sc != 1 or (want_grad and gg.sc != 1)
    cdef floating *scratch
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating *> malloc(g.C * sizeof(floating)) if strided else NULL
        for r in prange(nrows, schedule='static'):
            ce_one_row(p, wt, r, row_ptr(&g, r, dummy), g.sc,
                       row_ptr(&gg, r, dummy) if want_grad else NULL, gg.sc, g.C, scratch)
        free(scratch)


cdef inline void ce_one_row(const CEParams *p, const floating *wt, int64_t r, floating *row,
                            int64_t sc, floating *grow, int64_t gsc, int64_t C,
                            floating *scratch) noexcept nogil:
    """Loss and/or gradient of row r. `scratch` (C elements) is set when a row is strided."""
    cdef int64_t y = p.target[r]
    cdef bint smooth = p.eps != 0.0
    cdef double lse, wx = 0.0, wy, xy, s, loss
    cdef floating *dst
    if y < 0:  # ignored row: no loss, no gradient
        if p.loss != NULL:
            p.loss[r] = 0.0
        if p.lse != NULL and p.compute_lse:
            p.lse[r] = NAN
        if grow != NULL:
            zero_row(grow, gsc, C)
        return
    if scratch != NULL:
        gather(row, sc, C, scratch)
        row = scratch
    wy = p.wd[y] if p.wd != NULL else 1.0
    xy = row[y]
    if p.compute_lse:
        lse = row_lse(row, C, wt, &wx if smooth else NULL)
        if p.lse != NULL:
            p.lse[r] = lse
        if p.loss != NULL:
            loss = (1.0 - p.eps) * wy * (lse - xy)
            if smooth:  # skipped at eps == 0: 0 * inf would turn masked rows into nan
                loss = loss + p.eps / C * (p.W * lse - wx)
            p.loss[r] = loss
    else:
        lse = p.lse[r]
    if grow == NULL:
        return
    s = p.scale[r] if p.scale != NULL else p.scale0
    dst = scratch if scratch != NULL else grow
    # d loss / d x_c = s * [((1-eps) w_y + eps W / C) p_c - (eps / C) w_c - (1-eps) w_y [c == y]]
    k_exp_affine(row, dst, C, lse, s * ((1.0 - p.eps) * wy + p.eps / C * p.W), s * p.eps / C, wt)
    dst[y] = dst[y] - <floating> (s * (1.0 - p.eps) * wy)
    if scratch != NULL:
        scatter(dst, grow, gsc, C)


# ---------------------------------------------------------------------------------------
# Elementwise exp / log (accuracy tests)
# ---------------------------------------------------------------------------------------
def vexp(x):
    """Elementwise exp of a 1-D float32/float64 array with the current ISA's kernel."""
    return _elementwise(x, 0)


def vlog(x):
    """Elementwise log of a 1-D float32/float64 array with the current ISA's kernel."""
    return _elementwise(x, 1)


cdef object _elementwise(x, int which):
    cdef cnp.ndarray a = np.ascontiguousarray(x)
    if a.ndim != 1 or a.dtype not in (np.float32, np.float64):
        raise TypeError("x must be a 1-D float32 or float64 array")
    cdef cnp.ndarray out = np.empty_like(a)
    cdef int64_t n = a.shape[0]
    if a.dtype == np.float32:
        if which == 0:
            KT.f32.vexp(<float *> cnp.PyArray_DATA(a), <float *> cnp.PyArray_DATA(out), n)
        else:
            KT.f32.vlog(<float *> cnp.PyArray_DATA(a), <float *> cnp.PyArray_DATA(out), n)
    else:
        if which == 0:
            KT.f64.vexp(<double *> cnp.PyArray_DATA(a), <double *> cnp.PyArray_DATA(out), n)
        else:
            KT.f64.vlog(<double *> cnp.PyArray_DATA(a), <double *> cnp.PyArray_DATA(out), n)
    return out
