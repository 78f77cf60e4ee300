# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fastce._kernels: the row loops over the C kernels.

Design, in layers:

1. Kernel table.  ``include/fastce/fastce.h`` declares one table of kernels per ISA
   (scalar, AVX2+FMA, AVX-512, NEON), each compiled from the same templates.  One table is
   selected at import (``select_isa``) and every loop calls through it.
2. Canonical layout and plan.  The Python layer hands every array over as a 3-D view
   ``(A, C, B)``: ``A`` leading rows, ``C`` classes, ``B`` trailing positions (``B == 1``
   for 2-D logits).  A "row" is ``(a, b)``, flat index ``r = a * B + b``: ``C`` scores
   ``x[a, :, b]``.  ``plan`` picks how rows are walked from shapes and strides alone:
   rows (SIMD along classes), columns (``lanes`` rows side by side, for class-strided
   layouts, read in place, or small ``C``, transposed into scratch), or split (huge rows
   cut into fixed chunks: fewer than 16 of them, or rows whose scratch would exceed
   16 MiB per thread; chunks are gathered, converted and transformed like whole rows).
3. Per-row arithmetic.  ``finish_row`` turns a row's statistics (lse as the pair
   ``(max, log sum)``, deviations from the max) into its loss and the coefficients of its
   output row, with the formulas of ``include/fastce/row.h``; every mode shares it.
4. Sweeps.  ``prange`` over rows, blocks or chunks, static schedule, GIL released,
   per-thread scratch of at most ``3 C`` elements (``C * lanes`` for columns, ``3 *
   SPLIT_CHUNK`` for split rows), never ``N x C``.  Each row is
   computed by one thread in a fixed order, and per-row results land in ``O(N)`` float64
   buffers the caller reduces in a fixed order: bitwise identical for any ``n_threads``.

No argument checking in the sweeps: the contract (``_contract.pxi``) has done it.  Every
pointer and stride below is trusted.
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, NAN, fabs, log, log1p
from libc.stdint cimport int64_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

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
        double dev
        double u

    ctypedef struct fce_kernels_f32:
        void (*row_stats)(const float *x, int64_t n, const float *w, int want_dev, fce_stats *st) noexcept nogil
        double (*row_tail)(const float *x, int64_t n, double top) noexcept nogil
        void (*row_exp_affine)(const float *x, float *out, int64_t n, double m, double l, double a,
                               double beta, const float *w) noexcept nogil
        void (*row_sub_shift)(const float *x, float *out, int64_t n, double m, double l) noexcept nogil
        void (*row_fused_stats)(const float *x, float *out, int64_t n, const float *w, int want_dev,
                                fce_stats *st) noexcept nogil
        void (*row_scale)(float *out, int64_t n, double a, double beta, const float *w) noexcept nogil
        void (*row_soft_stats)(const float *x, const float *t, int64_t n, const float *w, double ta,
                               double tb, fce_stats *st) noexcept nogil
        void (*row_soft_grad)(const float *x, const float *t, float *out, int64_t n, double m, double l,
                              double a, double beta, double delta, const float *w) noexcept nogil
        void (*row_softcap)(const float *x, float *out, int64_t n, double cap) noexcept nogil
        void (*row_softcap_grad)(const float *xc, float *g, int64_t n, double cap) noexcept nogil
        void (*vtanh)(const float *x, float *out, int64_t n) noexcept nogil
        int lanes
        void (*col_stats)(const float *x, int64_t sc, int64_t C, int64_t nl, const float *w,
                          int want_dev, double *mx, double *sum, double *dev) noexcept nogil
        void (*col_tail)(const float *x, int64_t sc, int64_t C, int64_t nl, const double *top,
                         double *tail) noexcept nogil
        void (*col_exp_affine)(const float *x, int64_t sc, float *out, int64_t osc, int64_t C,
                               int64_t nl, const double *m, const double *l, const double *a,
                               const double *beta, const float *w) noexcept nogil
        void (*col_sub_shift)(const float *x, int64_t sc, float *out, int64_t osc, int64_t C,
                              int64_t nl, const double *m, const double *l) noexcept nogil
        void (*col_pack)(const float *x, int64_t rs, int64_t C, int64_t nl, float *blk) noexcept nogil
        void (*col_unpack)(const float *blk, int64_t C, int64_t nl, float *x, int64_t rs) noexcept nogil
        void (*vexp)(const float *x, float *out, int64_t n) noexcept nogil
        void (*vlog)(const float *x, float *out, int64_t n) noexcept nogil
        # --- binary cross-entropy with logits (_bce.pxi) ---
        void (*bce_block)(const float *x, const float *y, const float *w, const float *pw, double pw0,
                          float *grad, int64_t n, double gscale, const float *gscale_elem,
                          double lscale, double *loss_sum, float *loss_elem) noexcept nogil

    ctypedef struct fce_kernels_f64:
        void (*row_stats)(const double *x, int64_t n, const double *w, int want_dev, fce_stats *st) noexcept nogil
        double (*row_tail)(const double *x, int64_t n, double top) noexcept nogil
        void (*row_exp_affine)(const double *x, double *out, int64_t n, double m, double l, double a,
                               double beta, const double *w) noexcept nogil
        void (*row_sub_shift)(const double *x, double *out, int64_t n, double m, double l) noexcept nogil
        void (*row_fused_stats)(const double *x, double *out, int64_t n, const double *w, int want_dev,
                                fce_stats *st) noexcept nogil
        void (*row_scale)(double *out, int64_t n, double a, double beta, const double *w) noexcept nogil
        void (*row_soft_stats)(const double *x, const double *t, int64_t n, const double *w, double ta,
                               double tb, fce_stats *st) noexcept nogil
        void (*row_soft_grad)(const double *x, const double *t, double *out, int64_t n, double m, double l,
                              double a, double beta, double delta, const double *w) noexcept nogil
        void (*row_softcap)(const double *x, double *out, int64_t n, double cap) noexcept nogil
        void (*row_softcap_grad)(const double *xc, double *g, int64_t n, double cap) noexcept nogil
        void (*vtanh)(const double *x, double *out, int64_t n) noexcept nogil
        int lanes
        void (*col_stats)(const double *x, int64_t sc, int64_t C, int64_t nl, const double *w,
                          int want_dev, double *mx, double *sum, double *dev) noexcept nogil
        void (*col_tail)(const double *x, int64_t sc, int64_t C, int64_t nl, const double *top,
                         double *tail) noexcept nogil
        void (*col_exp_affine)(const double *x, int64_t sc, double *out, int64_t osc, int64_t C,
                               int64_t nl, const double *m, const double *l, const double *a,
                               const double *beta, const double *w) noexcept nogil
        void (*col_sub_shift)(const double *x, int64_t sc, double *out, int64_t osc, int64_t C,
                              int64_t nl, const double *m, const double *l) noexcept nogil
        void (*col_pack)(const double *x, int64_t rs, int64_t C, int64_t nl, double *blk) noexcept nogil
        void (*col_unpack)(const double *blk, int64_t C, int64_t nl, double *x, int64_t rs) noexcept nogil
        void (*vexp)(const double *x, double *out, int64_t n) noexcept nogil
        void (*vlog)(const double *x, double *out, int64_t n) noexcept nogil
        # --- binary cross-entropy with logits (_bce.pxi) ---
        void (*bce_block)(const double *x, const double *y, const double *w, const double *pw, double pw0,
                          double *grad, int64_t n, double gscale, const double *gscale_elem,
                          double lscale, double *loss_sum, double *loss_elem) noexcept nogil

    ctypedef struct fce_kernels:
        const char *name
        int vector_bits
        fce_kernels_f32 f32
        fce_kernels_f64 f64
        void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n) noexcept nogil
        void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n) noexcept nogil
        void (*bf16_to_f32)(const uint16_t *src, float *dst, int64_t n) noexcept nogil
        void (*f32_to_bf16)(const float *src, uint16_t *dst, int64_t n) noexcept nogil

    int fce_isa_count()
    const fce_kernels *fce_isa_table(int i)
    float fce_cvt_f16_f32(uint16_t h)
    uint16_t fce_cvt_f32_f16(float f)
    float fce_cvt_bf16_f32(uint16_t h)
    uint16_t fce_cvt_f32_bf16(float f)
    int fce_isa_supported(int i)
    fce_stats fce_stats_merge(fce_stats a, fce_stats b)


cdef extern from "fastce/row.h" nogil:
    ctypedef struct fce_row_params:
        double eps
        double ctot
        double W
        double Wtot
        double z
        double zfold
    double fce_hard_loss(const fce_row_params *p, double wy, int owns, double m, double l,
                         double xy, double mref, double dev)
    void fce_hard_coef(const fce_row_params *p, double wy, int owns, double lse, double g,
                       double gz, double *coef)
    double fce_soft_loss(const fce_row_params *p, double m, double l, double mref, double dev,
                         double u)
    void fce_soft_coef(const fce_row_params *p, double u, double lse, double g, double *coef)
    bint fce_needs_tail(double sum)


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

cdef extern from *:
    """
    /* a table pinned for the calling thread (one_table), or NULL: then the current KT */
    static __thread const fce_kernels *fce_pinned_table = NULL;
    """
    const fce_kernels *fce_pinned_table


cdef inline const fce_kernels *call_table() noexcept nogil:
    """The kernel table of a sweep: the thread's pinned one, else the current one."""
    return fce_pinned_table if fce_pinned_table != NULL else KT


class one_table:
    """``with one_table():`` the calling thread's sweeps use the kernel table current at
    entry, whatever ``set_isa`` does meanwhile: a call made of several sweeps (the chunks
    of linear cross-entropy) computes with one ISA. Nests; other threads are unaffected."""

    def __enter__(self):
        global fce_pinned_table
        self._outer = <size_t> fce_pinned_table
        if fce_pinned_table == NULL:
            fce_pinned_table = KT
        return self

    def __exit__(self, *exc):
        global fce_pinned_table
        fce_pinned_table = <const fce_kernels *> <size_t> self._outer
        return False


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


# ---------------------------------------------------------------------------------------
# 2. Geometry and the sweep plan
# ---------------------------------------------------------------------------------------
cdef struct RowGeom:
    char *base          # address of element [0, 0, 0]
    int64_t A, C, B     # the canonical (A, C, B) shape
    int64_t sa, sb      # byte strides of the row axes
    int64_t sc          # element stride of the class axis


cdef RowGeom geom_of(cnp.ndarray arr):
    cdef RowGeom g
    g.base = <char *> cnp.PyArray_DATA(arr)
    g.A = arr.shape[0]
    g.C = arr.shape[1]
    g.B = arr.shape[2]
    g.sa = arr.strides[0]
    g.sb = arr.strides[2]
    g.sc = arr.strides[1] // arr.itemsize
    return g


cdef inline char *row_addr(const RowGeom *g, int64_t r) noexcept nogil:
    cdef int64_t a
    if g.B == 1:  # 2-D inputs: no 64-bit division per row
        return g.base + r * g.sa
    a = r // g.B
    return g.base + a * g.sa + (r - a * g.B) * g.sb


# The walk depends on shapes and strides only, never on the thread count.
DEF MODE_ROWS = 0     # one row at a time, SIMD along the classes (gathered when strided)
DEF MODE_SPLIT = 1    # huge rows: fixed-size chunks in parallel, merged in order
DEF MODE_COLS = 2     # `lanes` rows side by side, read in place (class-strided layouts)
DEF MODE_COLS_T = 3   # `lanes` rows side by side, transposed into scratch (small C)

DEF SMALL_C = 32          # up to here, contiguous rows go `lanes` at a time ...
DEF SMALL_C_LOSS = 48     # ... and up to here when no output row is written
DEF SPLIT_CHUNK = 16384   # elements per chunk when huge rows are split
DEF SPLIT_MIN_C = 65536   # rows at least this long are split ...
DEF SPLIT_MAX_ROWS = 16   # ... when there are fewer than this many, or when a row through
DEF SPLIT_MAX_SCRATCH = 16777216  # scratch (gathered, converted, transformed) would take
                                  # more than this many bytes per thread
DEF SPLIT_COEF = 6        # per split row: a, beta, gamma, the lse pair (m, l), the target logit
DEF MAX_LANES = 16
DEF MIN_WORK_PER_THREAD = 8192  # elements: below this per thread, use fewer threads
DEF FUSED_MAX_BYTES = 262144     # rows up to this size take the one-exp gradient (three passes,
                                 # two of them in L2); longer rows take two exps, two passes

DEF OUT_NONE = 0
DEF OUT_EXP = 1       # out = a * exp(x - lse) - beta * w, then out[y] -= gamma
DEF OUT_LOG = 2       # out = x - lse

DEF HALF_NONE = 0     # storage of x, the output and soft targets: the compute dtype ...
DEF HALF_F16 = 1      # ... or float16 / bfloat16, converted row by row into float32 scratch
DEF HALF_BF16 = 2

DEF NO_TARGET = -2    # the softmax family has no targets
DEF IGNORED = -1      # target == ignore_index (marked so by the Python layer)


cdef struct Sweep:
    # what: per-row targets and outputs
    const char *tgt             # (rows,) class indices as given (int32 or int64, byte stride
    int64_t tstride             # tstride), validated by scan_targets; NULL: softmax family
    bint t32
    int64_t ignore_index        # rows whose target equals it are IGNORED ...
    bint has_ignore             # ... unless ignore_index lies outside int64
    bint soft                   # probability targets instead (rows mode only), geometry `t`
    const double *wd            # (Ctot,) float64 class weights, or NULL ...
    const float *wdf            # ... or the same in float32 (weights given as float32)
    const void *wt              # (C,) the same in the data dtype, or NULL
    fce_row_params rp           # label smoothing, class weight sums, z-loss (row.h)
    int64_t cstart, Ctot        # vocabulary shard: global index of class 0, total classes
    double zscale0              # gradient scale of the z-term ('mean' divides it differently)
    double *loss                # (rows,) out, or NULL
    double *lse                 # (rows,) out when compute_lse (ignored rows too), else in; or NULL
    bint compute_lse
    int out_kind
    const double *scale         # (rows,) per-row gradient scale, or NULL -> scale0
    double scale0
    # where: geometry and plan
    RowGeom x, o                # input rows; output rows (o == x when not writing)
    RowGeom t                   # probability targets, when soft
    int64_t rows, C
    int mode
    int64_t lanes               # rows per column block
    int64_t nblocks             # column blocks, or (row, chunk) items when split
    int64_t per                 # blocks per a (lanes on b) or per b; chunks per row
    bint lanes_on_b
    bint x_strided, o_strided   # rows whose class stride is not 1
    int xh, oh, th              # HALF_* storage of x, the output, soft targets
    double softcap              # logits become softcap * tanh(x / softcap); 0 = off
    double logit_scale          # logits become logit_scale * x first; 1 = off
    bint transform              # softcap or logit_scale: rows go through scratch
    bint direct_out             # the output has the input's strides (columns write in place)
    const fce_kernels *kt       # the kernel table of this call: one snapshot (set_isa may run)
    char *scratch               # the sweep's scratch, allocated before it: split rows'
    int64_t scratch_shared      # shared buffers (scratch_shared bytes), then every
    int64_t scratch_per         # thread's own scratch_per bytes
    int64_t sw                  # elements per buffer of a thread's scratch: C, or SPLIT_CHUNK


cdef inline bint is_bf16(object dtype):
    """ml_dtypes' bfloat16, recognised by name (no import needed), after a C test of the type
    number: ``dtype.name`` is a Python-level property (microseconds), read only for the user
    dtypes that could be bfloat16."""
    return (isinstance(dtype, cnp.dtype) and (<cnp.dtype> dtype).type_num >= NPY_USERDEF_T
            and dtype.name == "bfloat16")


cdef int half_kind(cnp.ndarray arr):
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE:
        return HALF_NONE
    if t == NPY_HALF_T:
        return HALF_F16
    if is_bf16(arr.dtype):
        return HALF_BF16
    return HALF_NONE


cdef RowGeom geom_any(cnp.ndarray arr):
    """The geometry of a canonical (A, C, B) array, or of a (C,) / (N, C) one as is."""
    cdef RowGeom g
    if cnp.PyArray_NDIM(arr) == 3:
        return geom_of(arr)
    geom_rows(&g, arr)
    return g


cdef void plan(Sweep *s, cnp.ndarray x, cnp.ndarray out, cnp.ndarray soft_target, int64_t lanes):
    cdef int64_t item = cnp.PyArray_ITEMSIZE(x)
    s.x = geom_any(x)
    s.soft = soft_target is not None
    if s.soft:
        s.t = geom_any(soft_target)
    s.o = geom_any(out) if out is not None else s.x
    s.C = s.x.C
    s.rows = s.x.A * s.x.B
    s.lanes = lanes
    s.x_strided = s.x.sc != 1
    s.o_strided = out is not None and s.o.sc != 1
    s.direct_out = s.o.sa == s.x.sa and s.o.sb == s.x.sb and s.o.sc == s.x.sc
    s.xh = half_kind(x)
    s.oh = half_kind(out) if out is not None else HALF_NONE
    s.th = half_kind(soft_target) if s.soft else HALF_NONE
    s.mode = MODE_ROWS
    s.sw = s.C
    s.transform = s.softcap != 0.0 or s.logit_scale != 1.0
    cdef bint loads = s.soft or s.xh or s.oh or s.transform or s.x_strided or s.o_strided
    cdef int64_t celem = 8 if cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE else 4
    if s.C >= SPLIT_MIN_C and (s.rows < SPLIT_MAX_ROWS
                               or (loads and 3 * s.C * celem > SPLIT_MAX_SCRATCH)):
        s.mode, s.sw = MODE_SPLIT, SPLIT_CHUNK
        s.per = (s.C + SPLIT_CHUNK - 1) // SPLIT_CHUNK
        s.nblocks = s.rows * s.per
        return
    if s.soft or s.xh or s.oh or s.transform:
        return
    if s.x_strided and s.x.B >= lanes and s.x.sb == item:
        s.mode, s.lanes_on_b = MODE_COLS, True
        s.per = (s.x.B + lanes - 1) // lanes
        s.nblocks = s.x.A * s.per
    elif s.x_strided and s.x.A >= lanes and s.x.sa == item:
        s.mode, s.lanes_on_b = MODE_COLS, False
        s.per = (s.x.A + lanes - 1) // lanes
        s.nblocks = s.x.B * s.per
    elif (s.C <= SMALL_C or (s.C <= SMALL_C_LOSS and s.out_kind == OUT_NONE)) and lanes > 1:
        s.mode = MODE_COLS_T
        s.nblocks = (s.rows + lanes - 1) // lanes


# ---------------------------------------------------------------------------------------
# 3. Per-row arithmetic shared by every mode
# ---------------------------------------------------------------------------------------
cdef inline double log_sum(const fce_kernels *kt, const floating *row, int64_t n,
                          const fce_stats *st) noexcept nogil:
    """l = log(sum exp(x - max)) of a row, so lse = st.max + l; a row dominated by its max
    takes log1p of its tail, recomputed exactly (row.h: FCE_TAIL_REFINE)."""
    if fce_needs_tail(st.sum):
        if floating is float:
            return log1p(kt.f32.row_tail(row, n, st.max))
        else:
            return log1p(kt.f64.row_tail(row, n, st.max))
    return log(st.sum)


cdef inline int64_t raw_target(const Sweep *s, int64_t r) noexcept nogil:
    cdef const char *p = s.tgt + r * s.tstride
    return (<const int *> p)[0] if s.t32 else (<const int64_t *> p)[0]


cdef inline int64_t target_of(const Sweep *s, int64_t r) noexcept nogil:
    cdef int64_t y
    if s.tgt == NULL:
        return NO_TARGET
    y = raw_target(s, r)
    return IGNORED if s.has_ignore and y == s.ignore_index else y


cdef inline double weight_of(const Sweep *s, int64_t y) noexcept nogil:
    if s.wd != NULL:
        return s.wd[y]
    if s.wdf != NULL:
        return s.wdf[y]
    return 1.0


cdef int64_t scan_targets(const Sweep *s, double *valid, double *wsum) noexcept nogil:
    """The class-index check and the 'mean' normalisers in one pass over the targets,
    before anything is written: the first row whose target is neither a class of
    [0, Ctot) nor ignore_index (-1 if none); the rows not ignored; their summed weights."""
    cdef int64_t r, y
    cdef double n = 0.0, w = 0.0, comp = 0.0, v, t
    cdef bint weighted = s.wd != NULL or s.wdf != NULL  # else the total is the count
    for r in range(s.rows):
        y = raw_target(s, r)
        if s.has_ignore and y == s.ignore_index:
            continue
        if y < 0 or y >= s.Ctot:
            return r
        n += 1.0
        if not weighted:
            continue
        v = weight_of(s, y)  # Neumaier's compensated sum: the weight total to ~1 ulp
        t = w + v
        comp += (w - t) + v if fabs(w) >= fabs(v) else (v - t) + w
        w = t
    valid[0], wsum[0] = n, (w + comp) if weighted else n
    return -1


cdef inline bint wants_dev(const Sweep *s) noexcept nogil:
    return s.tgt != NULL and s.rp.eps != 0.0 and s.loss != NULL


cdef inline void ignore_row(const Sweep *s, int64_t r) noexcept nogil:
    if s.loss != NULL:
        s.loss[r] = 0.0


cdef inline int64_t owned_class(const Sweep *s, int64_t y) noexcept nogil:
    """Index of class y in this array, or -1 (no target, or another shard's class)."""
    if y < 0 or y < s.cstart or y >= s.cstart + s.C:
        return -1
    return y - s.cstart


cdef inline void finish_row(const Sweep *s, int64_t r, int64_t y, double m, double l, double xy,
                            double mref, double dev, double *coef) noexcept nogil:
    """Store row r's lse (= m + l) and loss share; coef = (a, beta, gamma) of its output row.

    y is the global target; xy its logit when this array holds it (owned_class >= 0);
    dev = sum_c w_c (mref - x_c) when smoothing. Loss share: the nll and z terms where the
    target lives, the smoothing term over this array's classes, so the shares of a
    sharded vocabulary add up to the full loss (row.h has the formulas).
    """
    cdef double wy
    cdef bint owns = owned_class(s, y) >= 0
    if s.compute_lse and s.lse != NULL:
        s.lse[r] = m + l
    if y == NO_TARGET:
        coef[0], coef[1], coef[2] = 1.0, 0.0, 0.0
        return
    wy = weight_of(s, y)
    if s.loss != NULL:
        s.loss[r] = fce_hard_loss(&s.rp, wy, owns, m, l, xy, mref, dev)
    if s.out_kind == OUT_NONE:  # a loss alone: no gradient row
        return
    fce_hard_coef(&s.rp, wy, owns, m + l, s.scale[r] if s.scale != NULL else s.scale0,
                  s.scale[r] if s.scale != NULL else s.zscale0, coef)


# thin typed wrappers over the table
cdef inline void k_stats(const fce_kernels *kt, const floating *x, int64_t n, const void *w, int want_dev,
                         fce_stats *st) noexcept nogil:
    if floating is float:
        kt.f32.row_stats(x, n, <const float *> w, want_dev, st)
    else:
        kt.f64.row_stats(x, n, <const double *> w, want_dev, st)


cdef inline void k_out(const Sweep *s, const floating *x, floating *out, int64_t n, double m,
                       double l, const double *coef) noexcept nogil:
    if s.out_kind == OUT_LOG:
        if floating is float:
            s.kt.f32.row_sub_shift(x, out, n, m, l)
        else:
            s.kt.f64.row_sub_shift(x, out, n, m, l)
    elif floating is float:
        s.kt.f32.row_exp_affine(x, out, n, m, l, coef[0], coef[1], <const float *> s.wt)
    else:
        s.kt.f64.row_exp_affine(x, out, n, m, l, coef[0], coef[1], <const double *> s.wt)


cdef inline void k_scale(const fce_kernels *kt, floating *x, int64_t n, double a) noexcept nogil:
    if floating is float:
        kt.f32.row_scale(x, n, a, 0.0, NULL)
    else:
        kt.f64.row_scale(x, n, a, 0.0, NULL)


cdef inline void k_softcap(const fce_kernels *kt, const floating *x, floating *out, int64_t n, double cap) noexcept nogil:
    if floating is float:
        kt.f32.row_softcap(x, out, n, cap)
    else:
        kt.f64.row_softcap(x, out, n, cap)


cdef inline void k_softcap_grad(const fce_kernels *kt, const floating *xc, floating *g, int64_t n, double cap) noexcept nogil:
    if floating is float:
        kt.f32.row_softcap_grad(xc, g, n, cap)
    else:
        kt.f64.row_softcap_grad(xc, g, n, cap)


cdef inline bint packs(const RowGeom *g, size_t item) noexcept nogil:
    """Rows evenly spaced, classes contiguous: small-C blocks move by col_pack/col_unpack."""
    return g.B == 1 and g.sc == 1 and g.sa % <int64_t> item == 0


cdef inline void k_pack(const fce_kernels *kt, const floating *x, int64_t rs, int64_t C, int64_t nl,
                        floating *blk) noexcept nogil:
    if floating is float:
        kt.f32.col_pack(x, rs, C, nl, blk)
    else:
        kt.f64.col_pack(x, rs, C, nl, blk)


cdef inline void k_unpack(const fce_kernels *kt, const floating *blk, int64_t C, int64_t nl,
                          floating *x, int64_t rs) noexcept nogil:
    if floating is float:
        kt.f32.col_unpack(blk, C, nl, x, rs)
    else:
        kt.f64.col_unpack(blk, C, nl, x, rs)


cdef inline void copy_strided(const floating *src, int64_t ss, floating *dst, int64_t ds,
                              int64_t n) noexcept nogil:
    cdef int64_t c
    for c in range(n):
        dst[c * ds] = src[c * ss]


cdef inline void zero_strided(floating *dst, int64_t ds, int64_t n) noexcept nogil:
    cdef int64_t c
    if ds == 1:
        memset(dst, 0, n * sizeof(floating))
    else:
        for c in range(n):
            dst[c * ds] = 0


cdef inline void load_row(const fce_kernels *kt, int kind, const char *src, int64_t ss, float *dst, int64_t n) noexcept nogil:
    """A float16/bfloat16 row (element stride ss) into float32 scratch."""
    cdef const uint16_t *h = <const uint16_t *> src
    cdef int64_t c
    if ss == 1:
        if kind == HALF_F16:
            kt.f16_to_f32(h, dst, n)
        else:
            kt.bf16_to_f32(h, dst, n)
    elif kind == HALF_F16:
        for c in range(n):
            dst[c] = fce_cvt_f16_f32(h[c * ss])
    else:
        for c in range(n):
            dst[c] = fce_cvt_bf16_f32(h[c * ss])


cdef inline void store_row(const fce_kernels *kt, int kind, const float *src, char *dst, int64_t ds, int64_t n) noexcept nogil:
    """A float32 row into float16/bfloat16 storage (element stride ds), rounded once."""
    cdef uint16_t *h = <uint16_t *> dst
    cdef int64_t c
    if ds == 1:
        if kind == HALF_F16:
            kt.f32_to_f16(src, h, n)
        else:
            kt.f32_to_bf16(src, h, n)
    elif kind == HALF_F16:
        for c in range(n):
            h[c * ds] = fce_cvt_f32_f16(src[c])
    else:
        for c in range(n):
            h[c * ds] = fce_cvt_f32_bf16(src[c])


cdef inline void zero_half(char *dst, int64_t ds, int64_t n) noexcept nogil:
    cdef uint16_t *h = <uint16_t *> dst
    cdef int64_t c
    for c in range(n):
        h[c * ds] = 0  # +0.0 in both float16 and bfloat16


# ---------------------------------------------------------------------------------------
# 4. Sweeps
# ---------------------------------------------------------------------------------------
cdef void run_sweep(Sweep *s, int n_threads, floating *dummy) noexcept nogil:
    # `dummy` only carries the dtype
    if s.rows == 0 or s.C == 0:
        return
    if s.mode == MODE_ROWS:
        sweep_rows(s, n_threads, dummy)
    elif s.mode == MODE_SPLIT:
        sweep_split(s, n_threads, dummy)
    else:
        sweep_cols(s, n_threads, dummy)


# -- rows ------------------------------------------------------------------------------
cdef int64_t scratch_bytes(Sweep *s, int64_t elem, int n_threads) noexcept:
    """Bytes of scratch the planned sweep needs, for all its threads (sets scratch_per)."""
    s.scratch_shared = 0
    if s.rows == 0 or s.C == 0:
        return 0
    if s.mode == MODE_SPLIT:  # chunk statistics and SPLIT_COEF doubles per row; chunk buffers
        s.scratch_shared = s.nblocks * <int64_t> sizeof(fce_stats) + SPLIT_COEF * s.rows * <int64_t> sizeof(double)
        s.scratch_shared = (s.scratch_shared + 63) // 64 * 64
        s.scratch_per = (3 if s.soft else 2) * SPLIT_CHUNK * elem
        return s.scratch_shared + s.scratch_per * n_threads
    if s.mode == MODE_ROWS:
        s.scratch_per = 3 * s.C * elem if (s.x_strided or s.o_strided or s.soft or s.xh or s.oh
                                           or s.transform) else 0
    elif s.mode == MODE_COLS_T:  # whole vectors of classes: col_unpack reads them
        s.scratch_per = (s.C + s.lanes - 1) // s.lanes * s.lanes * s.lanes * elem
    else:
        s.scratch_per = s.C * s.lanes * elem if s.out_kind != OUT_NONE and not s.direct_out else 0
    return s.scratch_per * n_threads


cdef inline floating *thread_scratch(const Sweep *s, floating *dummy) noexcept nogil:
    return <floating *> (s.scratch + s.scratch_shared + threadid() * s.scratch_per) if s.scratch_per else NULL


cdef void sweep_rows(const Sweep *s, int n_threads, floating *dummy) noexcept nogil:
    cdef int64_t r
    cdef floating *scratch
    if n_threads == 1:  # no parallel region for work too small to split
        scratch = thread_scratch(s, dummy)
        for r in range(s.rows):
            if s.soft:
                one_soft_row(s, r, scratch)
            else:
                one_row(s, r, scratch, dummy)
        return
    with parallel(num_threads=n_threads):
        scratch = thread_scratch(s, dummy)
        for r in prange(s.rows, schedule='static'):
            if s.soft:
                one_soft_row(s, r, scratch)
            else:
                one_row(s, r, scratch, dummy)


cdef inline void one_soft_row(const Sweep *s, int64_t r, floating *scratch) noexcept nogil:
    # l = sum_c w_c t'_c (lse - x_c), t' = (1 - eps) t + eps / C (row.h)
    cdef const floating *row = load_x(s, r, scratch)
    cdef const floating *trow = target_part(s, r, 0, s.C, scratch + s.sw)
    cdef floating *dst
    cdef fce_stats st
    cdef double l, g
    cdef double coef[3]
    if floating is float:
        s.kt.f32.row_soft_stats(row, trow, s.C, <const float *> s.wt, 1.0 - s.rp.eps,
                                s.rp.eps / s.C, &st)
    else:
        s.kt.f64.row_soft_stats(row, trow, s.C, <const double *> s.wt, 1.0 - s.rp.eps,
                                s.rp.eps / s.C, &st)
    l = log_sum(s.kt, row, s.C, &st)
    if s.lse != NULL:
        s.lse[r] = st.max + l
    if s.loss != NULL:
        s.loss[r] = fce_soft_loss(&s.rp, st.max, l, st.max, st.dev, st.u)
    if s.out_kind == OUT_NONE:
        return
    g = s.scale[r] if s.scale != NULL else s.scale0
    fce_soft_coef(&s.rp, st.u, st.max + l, g, coef)
    dst = out_part(s, r, 0, scratch)
    if floating is float:
        s.kt.f32.row_soft_grad(row, trow, dst, s.C, st.max, l, coef[0], coef[1], coef[2],
                               <const float *> s.wt)
    else:
        s.kt.f64.row_soft_grad(row, trow, dst, s.C, st.max, l, coef[0], coef[1], coef[2],
                               <const double *> s.wt)
    store_part(s, r, 0, s.C, dst, row)


# Rows whole (c0 = 0, n = C) or in chunks of a split row: classes [c0, c0 + n) of row r.
# A thread's scratch holds s.sw elements for x, then the soft targets, then the output.
cdef inline char *part_addr(const RowGeom *g, int half, int64_t r, int64_t c0,
                            size_t item) noexcept nogil:
    return row_addr(g, r) + c0 * g.sc * <int64_t> (2 if half else item)


cdef inline const floating *load_part(const Sweep *s, int64_t r, int64_t c0, int64_t n,
                                      floating *scratch) noexcept nogil:
    """Classes [c0, c0 + n) of row r of x, ready for the kernels: in place, or in
    scratch[0:n) when they had to be gathered (strided), converted (half) or transformed."""
    cdef char *src = part_addr(&s.x, s.xh, r, c0, sizeof(floating))
    cdef const floating *row = <const floating *> src
    if floating is float:
        if s.xh:
            load_row(s.kt, s.xh, src, s.x.sc, scratch, n)
            row = scratch
    if s.x_strided and not s.xh:
        copy_strided(row, s.x.sc, scratch, 1, n)
        row = scratch
    if s.logit_scale != 1.0:
        if row != scratch:
            memcpy(scratch, row, n * sizeof(floating))
        k_scale(s.kt, scratch, n, s.logit_scale)
        row = scratch
    if s.softcap != 0.0:
        k_softcap(s.kt, row, scratch, n, s.softcap)
        row = scratch
    return row


cdef inline const floating *load_x(const Sweep *s, int64_t r, floating *scratch) noexcept nogil:
    return load_part(s, r, 0, s.C, scratch)


cdef inline const floating *target_part(const Sweep *s, int64_t r, int64_t c0, int64_t n,
                                        floating *buf) noexcept nogil:
    """Classes [c0, c0 + n) of row r of the probability targets: in place, or in buf."""
    cdef char *src = part_addr(&s.t, s.th, r, c0, sizeof(floating))
    if floating is float:
        if s.th:
            load_row(s.kt, s.th, src, s.t.sc, buf, n)
            return buf
    if s.t.sc != 1:
        copy_strided(<const floating *> src, s.t.sc, buf, 1, n)
        return buf
    return <const floating *> src


cdef inline floating *out_part(const Sweep *s, int64_t r, int64_t c0, floating *scratch) noexcept nogil:
    """Where the output of classes [c0, ...) of row r is computed: the output itself, or
    scratch when it must be scattered, converted or chained afterwards (after x and any
    targets)."""
    if s.transform:
        return scratch + (2 if s.soft else 1) * s.sw
    if s.o_strided or s.oh:
        return scratch
    return (<floating *> row_addr(&s.o, r)) + c0


cdef inline void store_part(const Sweep *s, int64_t r, int64_t c0, int64_t n, floating *dst,
                            const floating *xpart) noexcept nogil:
    """Finish the output of classes [c0, c0 + n) of row r, computed in dst: the chain rule
    of softcap and logit_scale, then store it."""
    cdef char *oaddr = part_addr(&s.o, s.oh, r, c0, sizeof(floating))
    if s.softcap != 0.0:
        k_softcap_grad(s.kt, xpart, dst, n, s.softcap)  # d/dx = d/dxc * (1 - (xc / c)**2)
    if s.logit_scale != 1.0:
        k_scale(s.kt, dst, n, s.logit_scale)
    if floating is float:
        if s.oh:
            store_row(s.kt, s.oh, dst, oaddr, s.o.sc, n)
            return
    if dst != <floating *> oaddr:
        copy_strided(dst, 1, <floating *> oaddr, s.o.sc, n)


cdef inline void zero_part(const Sweep *s, int64_t r, int64_t c0, int64_t n,
                           floating *dummy) noexcept nogil:
    """The output of classes [c0, c0 + n) of an ignored row r: zeros (`dummy`: the dtype)."""
    cdef char *oaddr = part_addr(&s.o, s.oh, r, c0, sizeof(floating))
    if s.oh:
        zero_half(oaddr, s.o.sc, n)
    else:
        zero_strided(<floating *> oaddr, s.o.sc, n)


cdef inline void one_row(const Sweep *s, int64_t r, floating *scratch, floating *dummy) noexcept nogil:
    # per-row state lives here, private to the calling thread (a prange body would share
    # a variable it only writes through its address)
    cdef int64_t yl, y = target_of(s, r)
    cdef const floating *row
    cdef floating *dst
    cdef fce_stats st
    cdef double m, l = 0.0, xy = 0.0
    cdef double coef[3]
    if y == IGNORED:
        ignore_row(s, r)
        if s.compute_lse and s.lse != NULL:  # only the loss is masked
            row = load_x(s, r, scratch)
            k_stats(s.kt, row, s.C, NULL, 0, &st)
            s.lse[r] = st.max + log_sum(s.kt, row, s.C, &st)
        if s.out_kind != OUT_NONE:
            zero_part(s, r, 0, s.C, scratch)
        return
    row = load_x(s, r, scratch)
    if s.out_kind == OUT_EXP and s.compute_lse and s.C * sizeof(floating) <= FUSED_MAX_BYTES:
        fused_row(s, r, y, row, scratch)
        return
    st.max, st.dev = 0.0, 0.0
    if s.compute_lse or wants_dev(s):
        k_stats(s.kt, row, s.C, s.wt, wants_dev(s), &st)
    if s.compute_lse:
        m, l = st.max, log_sum(s.kt, row, s.C, &st)
    else:
        m = s.lse[r]
    yl = owned_class(s, y)
    if yl >= 0:
        xy = row[yl]
    finish_row(s, r, y, m, l, xy, st.max, st.dev, coef)
    if s.out_kind == OUT_NONE:
        return
    dst = out_part(s, r, 0, scratch)
    k_out(s, row, dst, s.C, m, l, coef)
    if yl >= 0 and s.out_kind == OUT_EXP:
        dst[yl] = dst[yl] - <floating> coef[2]
    store_part(s, r, 0, s.C, dst, row)


cdef inline void fused_row(const Sweep *s, int64_t r, int64_t y, const floating *row,
                           floating *scratch) noexcept nogil:
    """Softmax / gradient row with one exp per element: e = exp(x - max) is written to the
    output while summing it, then scaled in cache by a / sum (the row fits in L2)."""
    cdef int64_t yl = owned_class(s, y)
    cdef double xy = row[yl] if yl >= 0 else 0.0  # before the output overwrites an in-place row
    cdef floating *dst = out_part(s, r, 0, scratch)
    cdef fce_stats st
    cdef double l
    cdef double coef[3]
    if floating is float:
        s.kt.f32.row_fused_stats(row, dst, s.C, <const float *> s.wt, wants_dev(s), &st)
    else:
        s.kt.f64.row_fused_stats(row, dst, s.C, <const double *> s.wt, wants_dev(s), &st)
    if fce_needs_tail(st.sum) and <const floating *> dst == row:  # in place: x is now e
        l = log1p(tail_of_e(dst, s.C))
    else:
        l = log_sum(s.kt, row, s.C, &st)
    finish_row(s, r, y, st.max, l, xy, st.max, st.dev, coef)
    if floating is float:
        s.kt.f32.row_scale(dst, s.C, coef[0] / st.sum, coef[1], <const float *> s.wt)
    else:
        s.kt.f64.row_scale(dst, s.C, coef[0] / st.sum, coef[1], <const double *> s.wt)
    if yl >= 0:
        dst[yl] = dst[yl] - <floating> coef[2]
    store_part(s, r, 0, s.C, dst, row)


cdef inline double tail_of_e(const floating *e, int64_t n) noexcept nogil:
    """row_tail of a row already turned into e = exp(x - max), for an in-place gradient
    whose x is gone: the e below 1, plus the ones (exp(0) is exactly 1) less one."""
    cdef int64_t c
    cdef double t = 0.0, ones = -1.0
    for c in range(n):
        if e[c] < 1:
            t += e[c]
        else:
            ones += 1.0
    return t + ones


# -- split: huge rows --------------------------------------------------------------------
cdef void sweep_split(const Sweep *s, int n_threads, floating *dummy) noexcept nogil:
    """Chunk statistics in parallel, merged per row in chunk order (thread-independent),
    then the output chunks in parallel. Scratch is O(SPLIT_CHUNK) per thread, whatever C."""
    cdef int64_t k, r
    cdef fce_stats *parts = <fce_stats *> s.scratch
    cdef double *coef = <double *> (s.scratch + s.nblocks * sizeof(fce_stats))  # SPLIT_COEF per row
    cdef floating *scratch
    if n_threads == 1:  # no parallel region for work too small to split
        scratch = thread_scratch(s, dummy)
        for k in range(s.nblocks):
            split_stats(s, k, parts, coef, scratch)
    else:
        with parallel(num_threads=n_threads):
            scratch = thread_scratch(s, dummy)
            for k in prange(s.nblocks, schedule='static'):
                split_stats(s, k, parts, coef, scratch)
    scratch = thread_scratch(s, dummy)  # the calling thread's
    for r in range(s.rows):
        split_finish(s, r, parts, coef + SPLIT_COEF * r, scratch)
    if s.out_kind == OUT_NONE:
        return
    if n_threads == 1:
        for k in range(s.nblocks):
            split_out(s, k, coef, scratch)
        return
    with parallel(num_threads=n_threads):
        scratch = thread_scratch(s, dummy)
        for k in prange(s.nblocks, schedule='static'):
            split_out(s, k, coef, scratch)


cdef inline bint split_wants_stats(const Sweep *s) noexcept nogil:
    return s.compute_lse or s.soft or wants_dev(s)


cdef inline void split_stats(const Sweep *s, int64_t k, fce_stats *parts, double *coef,
                             floating *scratch) noexcept nogil:
    """Chunk k's statistics, and the target's logit (as the kernels see it) if it is here."""
    cdef int64_t r = k // s.per
    cdef int64_t c0 = (k - r * s.per) * SPLIT_CHUNK
    cdef int64_t n = min(<int64_t> SPLIT_CHUNK, s.C - c0)
    cdef int64_t yl = owned_class(s, target_of(s, r)) - c0
    cdef const floating *w = (<const floating *> s.wt) + c0 if s.wt != NULL else NULL
    cdef const floating *p
    cdef const floating *tp
    if not split_wants_stats(s) and not (0 <= yl < n):
        return
    p = load_part(s, r, c0, n, scratch)
    if 0 <= yl < n:
        coef[SPLIT_COEF * r + 5] = p[yl]
    if not split_wants_stats(s):
        return
    if not s.soft:
        k_stats(s.kt, p, n, w, wants_dev(s), &parts[k])
        return
    tp = target_part(s, r, c0, n, scratch + s.sw)
    if floating is float:
        s.kt.f32.row_soft_stats(p, tp, n, w, 1.0 - s.rp.eps, s.rp.eps / s.C, &parts[k])
    else:
        s.kt.f64.row_soft_stats(p, tp, n, w, 1.0 - s.rp.eps, s.rp.eps / s.C, &parts[k])


cdef inline double split_log_sum(const Sweep *s, int64_t r, const fce_stats *st,
                                 floating *scratch) noexcept nogil:
    """l = log(sum exp(x - max)) of split row r; a row dominated by its max takes log1p of
    its tail, recomputed chunk by chunk (row.h: FCE_TAIL_REFINE; as row_tail: each term
    exp(x - max) in the input precision, summed in float64 apart from the scores at max)."""
    cdef int64_t c0, c, n
    cdef double tail = 0.0, tops = -1.0
    cdef floating top = <floating> st.max
    cdef floating *d = scratch + s.sw
    cdef const floating *p
    if not fce_needs_tail(st.sum):
        return log(st.sum)
    for c0 in range(0, s.C, SPLIT_CHUNK):
        n = min(<int64_t> SPLIT_CHUNK, s.C - c0)
        p = load_part(s, r, c0, n, scratch)
        for c in range(n):
            d[c] = p[c] - top
        if floating is float:
            s.kt.f32.vexp(d, d, n)
        else:
            s.kt.f64.vexp(d, d, n)
        for c in range(n):
            if p[c] < top:
                tail += d[c]
            else:
                tops += 1.0
    return log1p(tail + tops)


cdef inline void split_finish(const Sweep *s, int64_t r, const fce_stats *parts, double *coef,
                              floating *scratch) noexcept nogil:
    """Row r's merged statistics -> its lse, its loss and coef = (a, beta, gamma, m, l)."""
    cdef int64_t k, y = target_of(s, r)
    cdef fce_stats st
    cdef double m, l = 0.0
    memset(&st, 0, sizeof(st))
    if split_wants_stats(s):
        st = parts[r * s.per]
        for k in range(1, s.per):
            st = fce_stats_merge(st, parts[r * s.per + k])
    if s.compute_lse or s.soft:
        m, l = st.max, split_log_sum(s, r, &st, scratch)
    else:
        m = s.lse[r]
    coef[3], coef[4] = m, l
    if s.soft:  # as one_soft_row
        if s.lse != NULL:
            s.lse[r] = m + l
        if s.loss != NULL:
            s.loss[r] = fce_soft_loss(&s.rp, m, l, m, st.dev, st.u)
        if s.out_kind != OUT_NONE:
            fce_soft_coef(&s.rp, st.u, m + l, s.scale[r] if s.scale != NULL else s.scale0, coef)
        return
    if y == IGNORED:
        ignore_row(s, r)
        if s.compute_lse and s.lse != NULL:  # only the loss is masked
            s.lse[r] = m + l
        return
    finish_row(s, r, y, m, l, coef[5] if owned_class(s, y) >= 0 else 0.0, st.max, st.dev, coef)


cdef inline void split_out(const Sweep *s, int64_t k, const double *coef, floating *scratch) noexcept nogil:
    cdef int64_t r = k // s.per
    cdef int64_t c0 = (k - r * s.per) * SPLIT_CHUNK
    cdef int64_t n = min(<int64_t> SPLIT_CHUNK, s.C - c0)
    cdef int64_t y = target_of(s, r)
    cdef int64_t yl = owned_class(s, y) - c0
    cdef const double *cf = coef + SPLIT_COEF * r
    cdef const floating *w = (<const floating *> s.wt) + c0 if s.wt != NULL else NULL
    cdef const floating *p
    cdef const floating *tp
    cdef floating *dst
    cdef Sweep sub
    if y == IGNORED:
        zero_part(s, r, c0, n, scratch)
        return
    p = load_part(s, r, c0, n, scratch)
    dst = out_part(s, r, c0, scratch)
    if s.soft:
        tp = target_part(s, r, c0, n, scratch + s.sw)
        if floating is float:
            s.kt.f32.row_soft_grad(p, tp, dst, n, cf[3], cf[4], cf[0], cf[1], cf[2], w)
        else:
            s.kt.f64.row_soft_grad(p, tp, dst, n, cf[3], cf[4], cf[0], cf[1], cf[2], w)
    else:
        sub = s[0]
        sub.wt = w
        k_out(&sub, p, dst, n, cf[3], cf[4], cf)
        if 0 <= yl < n and s.out_kind == OUT_EXP:
            dst[yl] = dst[yl] - <floating> cf[2]
    store_part(s, r, c0, n, dst, p)


# -- columns: `lanes` rows side by side ----------------------------------------------------
cdef void sweep_cols(const Sweep *s, int n_threads, floating *dummy) noexcept nogil:
    cdef int64_t k
    cdef floating *scratch
    if n_threads == 1:  # no parallel region for work too small to split
        scratch = thread_scratch(s, dummy)
        for k in range(s.nblocks):
            one_block(s, k, scratch)
        return
    with parallel(num_threads=n_threads):
        scratch = thread_scratch(s, dummy)
        for k in prange(s.nblocks, schedule='static'):
            one_block(s, k, scratch)


cdef inline void one_block(const Sweep *s, int64_t k, floating *scratch) noexcept nogil:
    cdef int64_t r0, rstep, nl, l, c, y, yl, r
    cdef int64_t i, j, L = s.lanes, C = s.C
    cdef const floating *xp
    cdef floating *dst
    cdef floating *orow
    cdef int64_t xsc, osc
    cdef int64_t ys[MAX_LANES]
    cdef double mx[MAX_LANES]
    cdef double sm[MAX_LANES]
    cdef double logsm[MAX_LANES]
    cdef double dev[MAX_LANES]
    cdef double tail[MAX_LANES]
    cdef double lm[MAX_LANES]     # each lane's lse pair (lm, ll)
    cdef double ll[MAX_LANES]
    cdef double a[MAX_LANES]
    cdef double beta[MAX_LANES]
    cdef double gamma[MAX_LANES]
    cdef double coef[3]
    cdef bint any_beta = False, any_tail = False
    cdef Sweep local = s[0]  # stores through its pointers cannot alias a local: fewer reloads
    s = &local
    # which rows: lane l is row r0 + l * rstep
    if s.mode == MODE_COLS_T:
        r0, rstep = k * L, 1
        nl = min(L, s.rows - r0)
        # transpose the block into scratch: class c of lane l at c * L + l
        if packs(&s.x, sizeof(floating)):
            k_pack(s.kt, <const floating *> row_addr(&s.x, r0), s.x.sa // sizeof(floating), C, nl,
                   scratch)
        else:
            for l in range(nl):
                copy_strided(<const floating *> row_addr(&s.x, r0 + l), s.x.sc, scratch + l, L, C)
        xp, xsc = scratch, L
    else:
        i = k // s.per
        j = (k - i * s.per) * L
        if s.lanes_on_b:  # a = i, b = j..j+nl
            nl = min(L, s.x.B - j)
            r0, rstep = i * s.x.B + j, 1
        else:             # b = i, a = j..j+nl
            nl = min(L, s.x.A - j)
            r0, rstep = j * s.x.B + i, s.x.B
        xp, xsc = <const floating *> row_addr(&s.x, r0), s.x.sc
    # statistics of all lanes
    if s.compute_lse or wants_dev(s):
        if floating is float:
            s.kt.f32.col_stats(xp, xsc, C, nl, <const float *> s.wt, wants_dev(s), mx, sm, dev)
        else:
            s.kt.f64.col_stats(xp, xsc, C, nl, <const double *> s.wt, wants_dev(s), mx, sm, dev)
        s.kt.f64.vlog(sm, logsm, nl)  # one vector log for the block, not a libm call per row
        for l in range(nl):
            any_tail |= fce_needs_tail(sm[l])
            if sm[l] == 0.0:  # empty or all -inf
                logsm[l] = -INFINITY
        if any_tail and s.compute_lse:  # rows dominated by their max: log1p of the exact tail
            if floating is float:
                s.kt.f32.col_tail(xp, xsc, C, nl, mx, tail)
            else:
                s.kt.f64.col_tail(xp, xsc, C, nl, mx, tail)
            for l in range(nl):
                if fce_needs_tail(sm[l]):
                    logsm[l] = log1p(tail[l])
    for l in range(nl):
        r = r0 + l * rstep
        y = ys[l] = target_of(s, r)
        if s.compute_lse:
            lm[l], ll[l] = mx[l], logsm[l]
        else:
            lm[l], ll[l] = s.lse[r], 0.0
        if y == IGNORED:
            ignore_row(s, r)
            if s.compute_lse and s.lse != NULL:  # only the loss is masked
                s.lse[r] = lm[l] + ll[l]
            lm[l], ll[l], a[l], beta[l], gamma[l] = 0.0, 0.0, 0.0, 0.0, 0.0
            continue
        yl = owned_class(s, y)
        finish_row(s, r, y, lm[l], ll[l], xp[yl * xsc + l] if yl >= 0 else 0.0,
                   mx[l] if wants_dev(s) else 0.0, dev[l] if wants_dev(s) else 0.0, coef)
        if s.out_kind != OUT_NONE:
            a[l], beta[l], gamma[l] = coef[0], coef[1], coef[2]
            any_beta |= coef[1] != 0.0
    if s.out_kind == OUT_NONE:
        return
    # output rows: in place of the input layout, or through scratch
    if s.mode == MODE_COLS and s.direct_out:
        dst, osc = <floating *> row_addr(&s.o, r0), s.o.sc
    else:
        dst, osc = scratch, L
    if s.out_kind == OUT_LOG:
        if floating is float:
            s.kt.f32.col_sub_shift(xp, xsc, dst, osc, C, nl, lm, ll)
        else:
            s.kt.f64.col_sub_shift(xp, xsc, dst, osc, C, nl, lm, ll)
    elif floating is float:
        s.kt.f32.col_exp_affine(xp, xsc, dst, osc, C, nl, lm, ll, a, beta if any_beta else NULL,
                              <const float *> s.wt)
    else:
        s.kt.f64.col_exp_affine(xp, xsc, dst, osc, C, nl, lm, ll, a, beta if any_beta else NULL,
                              <const double *> s.wt)
    for l in range(nl):
        y = ys[l]
        yl = owned_class(s, y)
        if y == IGNORED:
            zero_strided(dst + l, osc, C)
        elif yl >= 0 and s.out_kind == OUT_EXP:
            dst[yl * osc + l] -= <floating> gamma[l]
    if dst != scratch:
        return
    if s.mode == MODE_COLS_T and packs(&s.o, sizeof(floating)):
        k_unpack(s.kt, scratch, C, nl, <floating *> row_addr(&s.o, r0), s.o.sa // sizeof(floating))
        return
    for l in range(nl):
        orow = <floating *> row_addr(&s.o, r0 + l * rstep)
        copy_strided(scratch + l, L, orow, s.o.sc, C)


# ---------------------------------------------------------------------------------------
# Entry points (called by fastce/_api.py with validated, canonical arrays)
# ---------------------------------------------------------------------------------------
cdef inline void *data_or_null(object arr):
    return cnp.PyArray_DATA(<cnp.ndarray> arr) if arr is not None else NULL


cdef int dispatch(Sweep *s, cnp.ndarray x, cnp.ndarray out, int n_threads,
                  cnp.ndarray soft_target=None) except -1:
    """Plan and run one sweep over x: (A, C, B), or (C,) / (N, C) as is.

    All scratch is allocated here, before anything is written: a MemoryError leaves the
    outputs untouched."""
    cdef bint f32 = cnp.PyArray_TYPE(x) != cnp.NPY_DOUBLE  # float32, or halves in float32
    cdef int64_t nbytes
    s.kt = call_table()
    plan(s, x, out, soft_target, s.kt.f32.lanes if f32 else s.kt.f64.lanes)
    n_threads = clamp_threads(n_threads, s.rows * s.C)
    if s.mode != MODE_SPLIT and n_threads > (s.rows if s.mode == MODE_ROWS else s.nblocks):
        n_threads = <int> max(1, s.rows if s.mode == MODE_ROWS else s.nblocks)  # one item each
    nbytes = scratch_bytes(s, 4 if f32 else 8, n_threads)
    s.scratch = <char *> malloc(nbytes) if nbytes else NULL
    if nbytes and s.scratch == NULL:
        raise MemoryError(f"fastce: cannot allocate {nbytes} bytes of scratch for a sweep of "
                          f"{s.rows} rows of {s.C} classes on {n_threads} thread(s)")
    try:
        with nogil:
            if f32:
                run_sweep(s, n_threads, <float *> NULL)
            else:
                run_sweep(s, n_threads, <double *> NULL)
    finally:
        free(s.scratch)
        s.scratch = NULL
    return 0


def lse_rows(cnp.ndarray x, cnp.ndarray lse, int n_threads):
    """lse[r] = logsumexp of row r of the (A, C, B) array x; lse: (A*B,) float64."""
    cdef Sweep s
    memset(&s, 0, sizeof(s))
    s.Ctot = x.shape[1]
    s.logit_scale = 1.0
    s.lse = <double *> cnp.PyArray_DATA(lse)
    s.compute_lse = True
    s.out_kind = OUT_NONE
    dispatch(&s, x, None, n_threads)


def softmax_rows(cnp.ndarray x, cnp.ndarray out, bint log_space, int n_threads):
    """out = softmax(x) or log_softmax(x) along axis 1 of the (A, C, B) arrays x and out."""
    cdef Sweep s
    memset(&s, 0, sizeof(s))
    s.Ctot = x.shape[1]
    s.logit_scale = 1.0
    s.compute_lse = True
    s.out_kind = OUT_LOG if log_space else OUT_EXP
    dispatch(&s, x, out, n_threads)


# ---------------------------------------------------------------------------------------
# Elementwise exp / log (accuracy tests)
# ---------------------------------------------------------------------------------------
def vexp(x):
    """Elementwise exp of a 1-D float32/float64 array with the current ISA's kernel."""
    return _elementwise(x, 0)


def vlog(x):
    """Elementwise log of a 1-D float32/float64 array with the current ISA's kernel."""
    return _elementwise(x, 1)


def vtanh(x):
    """Elementwise tanh of a 1-D float32/float64 array with the current ISA's kernel."""
    return _elementwise(x, 2)


cdef object _elementwise(x, int which):
    cdef cnp.ndarray a = kernel_array(x)
    if a.ndim != 1 or a.dtype not in (np.float32, np.float64):
        raise TypeError("x must be a 1-D float32 or float64 array")
    cdef cnp.ndarray out = np.empty_like(a)
    cdef int64_t n = a.shape[0]
    if a.dtype == np.float32:
        if which == 0:
            KT.f32.vexp(<float *> cnp.PyArray_DATA(a), <float *> cnp.PyArray_DATA(out), n)
        elif which == 1:
            KT.f32.vlog(<float *> cnp.PyArray_DATA(a), <float *> cnp.PyArray_DATA(out), n)
        else:
            KT.f32.vtanh(<float *> cnp.PyArray_DATA(a), <float *> cnp.PyArray_DATA(out), n)
    else:
        if which == 0:
            KT.f64.vexp(<double *> cnp.PyArray_DATA(a), <double *> cnp.PyArray_DATA(out), n)
        elif which == 1:
            KT.f64.vlog(<double *> cnp.PyArray_DATA(a), <double *> cnp.PyArray_DATA(out), n)
        else:
            KT.f64.vtanh(<double *> cnp.PyArray_DATA(a), <double *> cnp.PyArray_DATA(out), n)
    return out


include "_contract.pxi"  # the cross-entropy family's contract
include "_bce.pxi"  # binary cross-entropy with logits
