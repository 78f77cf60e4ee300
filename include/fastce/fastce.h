/* fastce: the C interface between the ISA-specific kernels and the Cython row loops.
 *
 * Each ISA translation unit (src/isa_*.c) fills one fce_kernels table with its
 * instantiations of the row kernels (kernels_impl.h) for float32 and float64;
 * src/dispatch.c picks the table once, from the CPU's features or FASTCE_ISA. */
#ifndef FASTCE_H
#define FASTCE_H
#include <math.h>
#include <stdint.h>

#include "fastce/half.h"

/* Summary of a row (or of a piece of one), all in float64:
 *   max  a score of the row: the largest, or (row_stats, which moves its reference
 *        lazily) one at most 16 below it (16 rounded up to a multiple of the ulp there);
 *        -inf for an empty or all -inf piece
 *   sum  sum_c exp(x_c - max), so lse = max + log(sum); sum >= 1, and sum < 2 only if max
 *        is the row max (nan among -inf: nan)
 *   dev  sum_c u_c (max - x_c), and u = sum_c u_c, for per-class weights u: the class
 *        weights (label smoothing) or w_c t'_c (probability targets). Deviations from the
 *        max, not sums of u_c x_c: the loss sum_c u_c (lse - x_c) = dev + u log(sum) then
 *        adds non-negative terms instead of cancelling large ones (shift invariant).
 * dev and u are 0 when the kernel was not asked for them. */
typedef struct {
    double max;
    double sum;
    double dev;
    double u;
} fce_stats;

#define FCE_DECLARE_DTYPE_TABLE(DT, T)                                                         \
    typedef struct {                                                                           \
        void (*row_stats)(const T *x, int64_t n, const T *w, int want_dev, fce_stats *st);     \
        double (*row_tail)(const T *x, int64_t n, double top);                                 \
        void (*row_exp_affine)(const T *x, T *out, int64_t n, double m, double l, double a,    \
                               double beta, const T *w);                                       \
        void (*row_sub_shift)(const T *x, T *out, int64_t n, double m, double l);              \
        void (*row_fused_stats)(const T *x, T *out, int64_t n, const T *w, int want_dev,       \
                                fce_stats *st);                                                \
        void (*row_scale)(T *out, int64_t n, double a, double beta, const T *w);               \
        void (*row_soft_stats)(const T *x, const T *t, int64_t n, const T *w, double ta,       \
                               double tb, fce_stats *st);                                      \
        void (*row_soft_grad)(const T *x, const T *t, T *out, int64_t n, double m, double l,   \
                              double a, double beta, double delta, const T *w);                \
        void (*row_softcap)(const T *x, T *out, int64_t n, double cap);                        \
        void (*row_softcap_grad)(const T *xc, T *g, int64_t n, double cap);                    \
        void (*vtanh)(const T *x, T *out, int64_t n);                                          \
        int lanes; /* rows per column block */                                                \
        void (*col_stats)(const T *x, int64_t sc, int64_t C, int64_t nl, const T *w,           \
                          int want_dev, double *mx, double *sum, double *dev);                 \
        void (*col_tail)(const T *x, int64_t sc, int64_t C, int64_t nl, const double *top,     \
                         double *tail);                                                        \
        void (*col_exp_affine)(const T *x, int64_t sc, T *out, int64_t osc, int64_t C,         \
                               int64_t nl, const double *m, const double *l, const double *a,  \
                               const double *beta, const T *w);                                \
        void (*col_sub_shift)(const T *x, int64_t sc, T *out, int64_t osc, int64_t C,          \
                              int64_t nl, const double *m, const double *l);                   \
        void (*col_pack)(const T *x, int64_t rs, int64_t C, int64_t nl, T *blk);              \
        void (*col_unpack)(const T *blk, int64_t C, int64_t nl, T *x, int64_t rs);            \
        void (*vexp)(const T *x, T *out, int64_t n);                                           \
        void (*vlog)(const T *x, T *out, int64_t n);                                           \
        /* --- binary cross-entropy with logits (bce_impl.h) --- */                            \
        void (*bce_block)(const T *x, const T *y, const T *w, const T *pw, double pw0, T *grad,  \
                          int64_t n, double gscale, const T *gscale_elem, double lscale,       \
                          double *loss_sum, T *loss_elem);                                     \
    } fce_kernels_##DT;
FCE_DECLARE_DTYPE_TABLE(f32, float)
FCE_DECLARE_DTYPE_TABLE(f64, double)
#undef FCE_DECLARE_DTYPE_TABLE

typedef struct {
    const char *name;
    int vector_bits;
    fce_kernels_f32 f32;
    fce_kernels_f64 f64;
    /* half-precision storage (float16, bfloat16) <-> float32 rows, contiguous */
    void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n);
    void (*bf16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_bf16)(const float *src, uint16_t *dst, int64_t n);
} fce_kernels;

/* Combine the summaries of two disjoint pieces of a row. Applied in a fixed order, so
 * a row split into pieces gives the same bits whichever threads computed them. */
static inline fce_stats fce_stats_merge(fce_stats a, fce_stats b) {
    fce_stats r;
    r.u = a.u + b.u;
    if (b.max == -INFINITY && b.sum == 0.0) { r = a; r.u += b.u; r.dev += b.dev; return r; }
    if (a.max == -INFINITY && a.sum == 0.0) { r = b; r.u += a.u; r.dev += a.dev; return r; }
    r.max = a.max > b.max ? a.max : b.max;
    r.sum = a.sum * exp(a.max - r.max) + b.sum * exp(b.max - r.max);
    /* deviations move to the common max: + (max - piece max) * piece u */
    r.dev = a.dev + b.dev;
    if (a.u != 0.0) r.dev += (r.max - a.max) * a.u;
    if (b.u != 0.0) r.dev += (r.max - b.max) * b.u;
    if (a.max != a.max || b.max != b.max) r.max = NAN;
    return r;
}

/* ---- dispatch (src/dispatch.c) ---- */
/* number of ISA tables compiled into this build, and the i-th (most capable first) */
int fce_isa_count(void);
const fce_kernels *fce_isa_table(int i);
/* 1 if the running CPU (and OS) supports the i-th table */
int fce_isa_supported(int i);

#endif
