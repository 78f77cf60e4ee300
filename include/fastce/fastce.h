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

/* Summary of a row (or of a piece of one): sum = sum_c exp(x_c - max); wx = sum_c w_c x_c.
 * max is a reference point, not always the row maximum (row_stats moves it lazily, so it
 * may sit up to 16 below; sum then exceeds 1): only lse = max + log(sum) is meaningful.
 * An empty or all -inf row has max = -inf and sum = 0 (nan among -inf: sum = nan). */
typedef struct {
    double max;
    double sum;
    double wx;
    double wtx; /* probability targets t: sum_c w_c t_c x_c */
    double wts; /* and sum_c w_c t_c */
} fce_stats;

#define FCE_DECLARE_DTYPE_TABLE(DT, T)                                                         \
    typedef struct {                                                                           \
        void (*row_stats)(const T *x, int64_t n, const T *w, int want_wx, fce_stats *st);      \
        void (*row_exp_affine)(const T *x, T *out, int64_t n, double shift, double a,          \
                               double beta, const T *w);                                       \
        void (*row_sub_shift)(const T *x, T *out, int64_t n, double shift);                    \
        void (*row_fused_stats)(const T *x, T *out, int64_t n, const T *w, int want_wx,        \
                                fce_stats *st);                                                \
        void (*row_scale)(T *out, int64_t n, double a, double beta, const T *w);               \
        void (*row_soft_stats)(const T *x, const T *t, int64_t n, const T *w, fce_stats *st);  \
        void (*row_soft_grad)(const T *x, const T *t, T *out, int64_t n, double shift,         \
                              double a, double beta, double delta, const T *w);                \
        void (*row_softcap)(const T *x, T *out, int64_t n, double cap);                        \
        void (*row_softcap_grad)(const T *xc, T *g, int64_t n, double cap);                    \
        void (*vtanh)(const T *x, T *out, int64_t n);                                          \
        int lanes; /* rows per column block */                                                \
        void (*col_stats)(const T *x, int64_t sc, int64_t C, int64_t nl, const T *w,           \
                          int want_wx, double *mx, double *sum, double *wx);                   \
        void (*col_exp_affine)(const T *x, int64_t sc, T *out, int64_t osc, int64_t C,         \
                               int64_t nl, const double *shift, const double *a,               \
                               const double *beta, const T *w);                                \
        void (*col_sub_shift)(const T *x, int64_t sc, T *out, int64_t osc, int64_t C,          \
                              int64_t nl, const double *shift);                                \
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
    r.wx = a.wx + b.wx;
    r.wtx = a.wtx + b.wtx;
    r.wts = a.wts + b.wts;
    if (b.max == -INFINITY && b.sum == 0.0) { r.max = a.max; r.sum = a.sum; return r; }
    if (a.max == -INFINITY && a.sum == 0.0) { r.max = b.max; r.sum = b.sum; return r; }
    r.max = a.max > b.max ? a.max : b.max;
    r.sum = a.sum * exp(a.max - r.max) + b.sum * exp(b.max - r.max);
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
