/* C-level tests of fastce's kernel tables, on every ISA this build has and this CPU runs.
 *
 * No Python: links src/dispatch.c and src/isa_*.c. For every table i with
 * fce_isa_supported(i), each kernel (float32 and float64) is checked against a reference
 * computed here in long double (double for float32 data where that is far below its ulp):
 *
 *   row_stats       fce_stats {max, sum, dev, u} (fastce.h). max: a score of the row, at most
 *                   16 below the row max (the lazy lane references; + ulp(ref + 16) / 2, the
 *                   rounding of the kernels' comparison), and the row max whenever sum < 2; sum = sum exp(x - max) >= 1 for the max reported,
 *                   within a bound derived from the float type; dev = sum u (max - x) and
 *                   u = sum u (u = w, or 1 when w is NULL: u is then exactly n) within a
 *                   bound relative to sum |u| |max - x| (rounding of (ref - x) and of the
 *                   products in the float type, float64 accumulation) plus 16 eps sum |u| for
 *                   the lane references, which sit up to 16 below a score (DEV_LAG). No term
 *                   grows with |x|: dev is shift invariant. dev = u = 0 when not asked for.
 *                   -inf (masked) classes (dev +inf, or nan where their weight is 0); empty
 *                   and all -inf rows give max -inf, sum 0 (dev non-finite unless empty); a
 *                   nan or +inf anywhere gives lse = nan (and dev non-finite).
 *   row_tail        sum_{x < top} exp(x - top) + (#{x >= top} - 1), top the row max, to a
 *                   RELATIVE bound (argument rounding + 2 ulp per term, float64 sums; terms
 *                   below exp's flush point may be lost): dominated rows ([0, -40] gives
 *                   4.2e-18), ties of the max (tail >= 1), -inf entries, the max anywhere.
 *   fce_stats_merge row_stats of chunks (1, 3, 16, 67, n/2 classes with w; 7, n/3 without)
 *                   merged in order: as row_stats of the whole row, bounds + the merges'
 *                   float64 roundings.
 *   row_exp_affine  out = a exp((x - m) - l) - beta w, w NULL or not, out == x (in place),
 *                   for (m, l) = (row max, log sum) and (m, l) = (lse, 0): the error of the
 *                   three roundings of (x - hi) - lo (hi = (T)m, lo = (T)((m - hi) + l)),
 *                   turned into relative error by exp, + exp's 2 ulp and the affine ops.
 *   row_sub_shift   out = (x - m) - l, both forms, also in place: within
 *                   0.5 (ulp(x - hi) + ulp(lo) + ulp(out)) of the exact value.
 *   row_fused_stats out = exp(x - max) and st as row_stats but with the EXACT row max (it is
 *                   found first: no lag allowance either), also in place; row_scale on that
 *                   output: out = a out - beta w, and a = 1/sum, beta = 0.
 *   col_stats, col_tail, col_exp_affine, col_sub_shift   the same per lane of a column
 *                   block (exact max; dense and strided, out == x, lanes >= nl untouched).
 *   row_soft_stats  as row_stats with u_c = w_c (ta t_c + tb): dev, u against long-double
 *                   sums of the exact u_c (ta, tb rounded to the float type), the kernel's
 *                   rounding of u_c bounded; -inf classes: dev nan where u_c = 0, else +inf.
 *   row_soft_grad   out = a exp((x - m) - l) - w (beta + delta t).
 *   magnitude       rows K + small spread, K = +-1e16 (f64) / +-1e30 (f32) and +-1e13 / +-1e6
 *                   go through all of the above with the bounds of K = 0; worked examples:
 *                   softmax(K + [0, 0]) = [0.5, 0.5], log-softmax -log 2, the tail of
 *                   [0, -40] and of 1e16 + [0, -40], dev of K + s k bit-equal for K = 0, +-K.
 *   lazy reference  rows whose max creeps up (ascending: steps U(0, 1.2), exactly 16, 16-20),
 *                   a first block 12.6 below ties of the max, and K, K + 32 with ulp(K) = 32
 *                   (where ref + 16 rounds to ref + 32: the max may lag by 32): max, sum, dev.
 *   vexp, vlog      max ulp error over dense sweeps, and the special values of the
 *                   accuracy contract in include/fastce/vmath_impl.h.
 *
 * Row sizes 0..70, 1000 and 32000 (32000 * SCALE, at least 8000, when SCALE < 1: the qemu
 * run) cover the unrolled body, the one-vector loop and the masked tail of every vector
 * width. Inputs sit against a PROT_NONE page (after the row,
 * then before it), so a read past either end is a SIGSEGV, reported as a failure; output
 * buffers have sentinel elements on both sides that must stay untouched, and inputs must
 * be unchanged after every call.
 *
 * Output: FAIL lines (a few per case), one summary line per ISA with the largest errors
 * measured, and a last line "N passed, M failed" (cases). Exit status 1 on any failure.
 * Options: -s SCALE (or env FASTCE_CTEST_SCALE) scales the sweep sizes (default 1) and,
 *          below 1, the longest row;
 *          -v prints every case. */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fastce/fastce.h"
#include "fastce/row.h" /* FCE_TAIL_REFINE, fce_needs_tail: the worked examples */

typedef long double LD;

/* ------------------------------------------------------------------------------------ */
/* dtype descriptors: the test logic is written once, over these                         */

typedef const fce_kernels KT;
typedef struct {
    const char *name;
    int is32;
    size_t esz;
    int p;       /* significand bits */
    int emin;    /* smallest normal exponent */
    LD eps;      /* ulp of 1: 2**(1-p) */
    LD tmin;     /* smallest normal */
    LD tmax;     /* largest finite */
    LD explo;    /* exp flushes to +0 below this argument (vmath_impl.h contract) */
    LD (*get)(const void *b, int64_t i);
    void (*set)(void *b, int64_t i, LD v); /* rounds to nearest */
    void (*setbits)(void *b, int64_t i, uint64_t bits);
    uint64_t (*getbits)(const void *b, int64_t i);
    void (*stats)(KT *k, const void *x, int64_t n, const void *w, int wd, fce_stats *st);
    double (*tail)(KT *k, const void *x, int64_t n, double top);
    void (*affine)(KT *k, const void *x, void *o, int64_t n, double m, double l, double a, double b, const void *w);
    void (*subsh)(KT *k, const void *x, void *o, int64_t n, double m, double l);
    void (*fused)(KT *k, const void *x, void *o, int64_t n, const void *w, int wd, fce_stats *st);
    void (*scale)(KT *k, void *o, int64_t n, double a, double b, const void *w);
    void (*vexp)(KT *k, const void *x, void *o, int64_t n);
    void (*vlog)(KT *k, const void *x, void *o, int64_t n);
    int (*lanes)(KT *k);
    void (*colstats)(KT *k, const void *x, int64_t sc, int64_t C, int64_t nl, const void *w, int wd, double *mx,
                     double *sum, double *dev);
    void (*coltail)(KT *k, const void *x, int64_t sc, int64_t C, int64_t nl, const double *top, double *tail);
    void (*colaff)(KT *k, const void *x, int64_t sc, void *o, int64_t osc, int64_t C, int64_t nl, const double *m,
                   const double *l, const double *a, const double *beta, const void *w);
    void (*colsub)(KT *k, const void *x, int64_t sc, void *o, int64_t osc, int64_t C, int64_t nl, const double *m,
                   const double *l);
    void (*colpack)(KT *k, const void *x, int64_t rs, int64_t C, int64_t nl, void *blk);
    void (*colunpack)(KT *k, const void *blk, int64_t C, int64_t nl, void *x, int64_t rs);
    void (*softstats)(KT *k, const void *x, const void *t, int64_t n, const void *w, double ta, double tb,
                      fce_stats *st);
    void (*softgrad)(KT *k, const void *x, const void *t, void *o, int64_t n, double m, double l, double a, double b,
                     double dl, const void *w);
} dtype;

#define DT_WRAP(DT, TT, UT)                                                                          \
    static LD get_##DT(const void *b, int64_t i) { return ((const TT *)b)[i]; }                     \
    static void set_##DT(void *b, int64_t i, LD v) { ((TT *)b)[i] = (TT)v; }                         \
    static void setbits_##DT(void *b, int64_t i, uint64_t u) {                                       \
        UT v = (UT)u;                                                                                \
        memcpy((TT *)b + i, &v, sizeof v);                                                           \
    }                                                                                                \
    static uint64_t getbits_##DT(const void *b, int64_t i) {                                         \
        UT v;                                                                                        \
        memcpy(&v, (const TT *)b + i, sizeof v);                                                     \
        return v;                                                                                    \
    }                                                                                                \
    static void stats_##DT(KT *k, const void *x, int64_t n, const void *w, int wd, fce_stats *st) { \
        k->DT.row_stats((const TT *)x, n, (const TT *)w, wd, st);                                    \
    }                                                                                                \
    static double tail_##DT(KT *k, const void *x, int64_t n, double top) {                          \
        return k->DT.row_tail((const TT *)x, n, top);                                                \
    }                                                                                                \
    static void affine_##DT(KT *k, const void *x, void *o, int64_t n, double m, double l, double a, \
                            double b, const void *w) {                                               \
        k->DT.row_exp_affine((const TT *)x, (TT *)o, n, m, l, a, b, (const TT *)w);                  \
    }                                                                                                \
    static void subsh_##DT(KT *k, const void *x, void *o, int64_t n, double m, double l) {          \
        k->DT.row_sub_shift((const TT *)x, (TT *)o, n, m, l);                                        \
    }                                                                                                \
    static void fused_##DT(KT *k, const void *x, void *o, int64_t n, const void *w, int wd,         \
                           fce_stats *st) {                                                          \
        k->DT.row_fused_stats((const TT *)x, (TT *)o, n, (const TT *)w, wd, st);                     \
    }                                                                                                \
    static void scale_##DT(KT *k, void *o, int64_t n, double a, double b, const void *w) {          \
        k->DT.row_scale((TT *)o, n, a, b, (const TT *)w);                                            \
    }                                                                                                \
    static void vexp_##DT(KT *k, const void *x, void *o, int64_t n) { k->DT.vexp((const TT *)x, (TT *)o, n); } \
    static void vlog_##DT(KT *k, const void *x, void *o, int64_t n) { k->DT.vlog((const TT *)x, (TT *)o, n); } \
    static int lanes_##DT(KT *k) { return k->DT.lanes; }                                             \
    static void colstats_##DT(KT *k, const void *x, int64_t sc, int64_t C, int64_t nl, const void *w, \
                              int wd, double *mx, double *sum, double *dev) {                        \
        k->DT.col_stats((const TT *)x, sc, C, nl, (const TT *)w, wd, mx, sum, dev);                  \
    }                                                                                                \
    static void coltail_##DT(KT *k, const void *x, int64_t sc, int64_t C, int64_t nl,               \
                             const double *top, double *tail) {                                      \
        k->DT.col_tail((const TT *)x, sc, C, nl, top, tail);                                         \
    }                                                                                                \
    static void colaff_##DT(KT *k, const void *x, int64_t sc, void *o, int64_t osc, int64_t C,       \
                            int64_t nl, const double *m, const double *l, const double *a,           \
                            const double *b, const void *w) {                                        \
        k->DT.col_exp_affine((const TT *)x, sc, (TT *)o, osc, C, nl, m, l, a, b, (const TT *)w);     \
    }                                                                                                \
    static void colsub_##DT(KT *k, const void *x, int64_t sc, void *o, int64_t osc, int64_t C,       \
                            int64_t nl, const double *m, const double *l) {                          \
        k->DT.col_sub_shift((const TT *)x, sc, (TT *)o, osc, C, nl, m, l);                           \
    }                                                                                                \
    static void colpack_##DT(KT *k, const void *x, int64_t rs, int64_t C, int64_t nl, void *blk) {  \
        k->DT.col_pack((const TT *)x, rs, C, nl, (TT *)blk);                                         \
    }                                                                                                \
    static void colunpack_##DT(KT *k, const void *blk, int64_t C, int64_t nl, void *x, int64_t rs) { \
        k->DT.col_unpack((const TT *)blk, C, nl, (TT *)x, rs);                                       \
    }                                                                                                \
    static void softstats_##DT(KT *k, const void *x, const void *t, int64_t n, const void *w,       \
                               double ta, double tb, fce_stats *st) {                                \
        k->DT.row_soft_stats((const TT *)x, (const TT *)t, n, (const TT *)w, ta, tb, st);            \
    }                                                                                                \
    static void softgrad_##DT(KT *k, const void *x, const void *t, void *o, int64_t n, double m,    \
                              double l, double a, double b, double dl, const void *w) {              \
        k->DT.row_soft_grad((const TT *)x, (const TT *)t, (TT *)o, n, m, l, a, b, dl, (const TT *)w); \
    }
DT_WRAP(f32, float, uint32_t)
DT_WRAP(f64, double, uint64_t)

#define DT_ENTRY(DT) get_##DT, set_##DT, setbits_##DT, getbits_##DT, stats_##DT, tail_##DT, affine_##DT, \
    subsh_##DT, fused_##DT, scale_##DT, vexp_##DT, vlog_##DT, lanes_##DT, colstats_##DT, coltail_##DT,   \
    colaff_##DT, colsub_##DT, colpack_##DT, colunpack_##DT, softstats_##DT, softgrad_##DT
static const dtype DTYPES[2] = {
    {"f32", 1, 4, 24, -126, 0x1p-23L, 0x1p-126L, FLT_MAX, -87.33654475L, DT_ENTRY(f32)},
    {"f64", 0, 8, 53, -1022, 0x1p-52L, 0x1p-1022L, DBL_MAX, -708.3964185322641L, DT_ENTRY(f64)},
};

/* exp / log for references: double is far more precise than a float32 ulp (and fast
 * everywhere); float64 data needs long double (80-bit on x86, 128-bit on AArch64) */
static LD ref_exp(const dtype *d, LD x) { return d->is32 ? (LD)exp((double)x) : expl(x); }
static LD ref_log(const dtype *d, LD x) { return d->is32 ? (LD)log((double)x) : logl(x); }

/* v rounded to the float type */
static LD rnd_dt(const dtype *d, LD v) {
    double b[1];
    d->set(b, 0, v);
    return d->get(b, 0);
}

/* got within tol of ref; nan must meet nan, an infinity the same infinity */
static int close_to(LD got, LD ref, LD tol) {
    if (isnan(ref)) return isnan(got);
    if (isinf(ref)) return got == ref;
    if (!isfinite(got)) return 0;
    return fabsl(got - ref) <= tol;
}

/* ulp of the float type at r, in double (cheap: long double is software on AArch64) */
static double ulp_d(const dtype *d, double r) {
    int e = d->emin;
    r = fabs(r);
    if (r != 0 && isfinite(r)) {
        frexp(r, &e);
        e -= 1;
        if (e < d->emin) e = d->emin;
    }
    return ldexp(1.0, e - (d->p - 1));
}

/* a reference value as an unevaluated double pair, with its tolerance: computed once in
 * long double, compared in double arithmetic ((got - hi) is exact near hi) */
typedef struct {
    double hi, lo, tol;
} refv;
static refv mkref(LD v, LD tol) {
    refv r;
    r.hi = (double)v;
    r.lo = isfinite(v) ? (double)(v - (LD)r.hi) : 0.0;
    r.tol = (double)tol;
    return r;
}
static double ref_err(double got, const refv *r) { return fabs((got - r->hi) - r->lo); }
static int meets(double got, const refv *r) {
    if (isnan(r->hi)) return isnan(got);
    if (isinf(r->hi)) return got == r->hi;
    if (!isfinite(got)) return 0;
    return ref_err(got, r) <= r->tol;
}

/* ------------------------------------------------------------------------------------ */
/* cases: a case passes when every check in it passed; a few failures are printed each   */

#define MAXISA 8
#define MAXMSG_CASE 3
#define MAXMSG_ALL 400

typedef struct {
    long checks, bad;
    int msgs;
} tcase;

static int g_verbose;
static int g_msgs;
static const char *g_isa = "?";
static const char *g_dt = "?";
static const char *g_wa = "", *g_wb = ""; /* what runs now (name, context), for the SIGSEGV message */
#define WHERE(A, B) (g_wa = (A), g_wb = (B))

static void check(tcase *c, int ok, const char *name, const char *fmt, ...) {
    c->checks++;
    if (ok) return;
    c->bad++;
    if (c->msgs < MAXMSG_CASE && g_msgs < MAXMSG_ALL) {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL [%s %s] %s: ", g_isa, g_dt, name);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        c->msgs++;
        g_msgs++;
    }
}

static void on_signal(int sig) {
    char buf[512];
    int len = snprintf(buf, sizeof buf,
                       "\nFAIL [%s %s] %s %s: signal %d (%s)\n0 passed, 1 failed\n", g_isa, g_dt, g_wa, g_wb, sig,
                       sig == SIGSEGV || sig == SIGBUS ? "out-of-bounds memory access"
                       : sig == SIGILL             ? "illegal instruction: table used on a CPU without it"
                                                   : "crash");
    if (len > 0) {
        ssize_t r = write(1, buf, (size_t)(len < (int)sizeof buf ? len : (int)sizeof buf - 1));
        (void)r;
    }
    _exit(1);
}

/* ------------------------------------------------------------------------------------ */
/* random numbers (splitmix64) and guarded buffers                                       */

static uint64_t rng_state;
static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_unif(void) { return (double)(rng_u64() >> 11) * 0x1p-53; }
static double rng_normal(void) {
    double u = rng_unif(), v = rng_unif();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* [PROT_NONE page][data pages][PROT_NONE page]: a row placed at the end of the data
 * touches the upper guard when read past its end, one placed at the start touches the
 * lower guard when read before it. */
typedef struct {
    unsigned char *lo, *hi;
} gbuf;
static void gbuf_alloc(gbuf *g, size_t bytes) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t data = (bytes + pg - 1) / pg * pg;
    if (data == 0) data = pg;
    unsigned char *base = mmap(NULL, data + 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base, pg, PROT_NONE) || mprotect(base + pg + data, pg, PROT_NONE)) {
        perror("mmap/mprotect");
        exit(2);
    }
    g->lo = base + pg;
    g->hi = base + pg + data;
}
static void *gbuf_place(const gbuf *g, size_t bytes, int at_end) { return at_end ? g->hi - bytes : g->lo; }

/* ------------------------------------------------------------------------------------ */
/* per-ISA report                                                                        */

typedef struct {
    double exp_ulp[2], log_ulp[2];
    LD exp_worst[2], log_worst[2];
    double sum_err[2];    /* stats sum: max |got - ref| / (ref * eps) */
    double sum_ratio[2];  /* ... as a fraction of the allowed bound */
    double dev_ratio[2];  /* stats dev: max error as a fraction of its bound */
    double dev_strict[2]; /* ... of the bound without the lag allowance (row_stats, soft_stats) */
    double tail_err[2];   /* row_tail / col_tail: max relative error in eps */
    double tail_ratio[2]; /* ... as a fraction of the bound */
    double soft_ulp[2];   /* row_exp_affine with a = 1, beta = 0 (softmax), |x - lse| <= 1: max ulp */
    double aff_ratio[2];  /* row_exp_affine: max error as a fraction of its bound */
    double sub_ulp[2];    /* row_sub_shift: max ulp */
    long pass, fail;
} isa_report;

static void note_max(double *slot, double v) {
    if (v > *slot) *slot = v;
}

/* ------------------------------------------------------------------------------------ */
/* row references                                                                        */

/* elementwise references of a row: row_exp_affine configurations E_SOFTMAX .. E_AFF_LSE,
 * row_sub_shift (two shift forms) and exp(x - max) (row_fused_stats) */
enum { E_SOFTMAX, E_AFF_AB, E_AFF_ABW, E_AFF_NEG, E_SOFTMAX_LSE, E_AFF_LSE, E_SUB, E_SUB_LSE, E_FUSED, E_N };
#define N_AFF (E_AFF_LSE + 1)
/* lse: the shift passed as (m, l) = (lse, 0) instead of (row max, log sum) */
static const struct {
    double a, beta;
    int use_w, lse;
} AFFCFG[N_AFF] = {{1, 0, 0, 0},    {0.37, 0.21, 0, 0}, {0.37, 0.21, 1, 0},
                   {-1.3, -0.5, 1, 0}, {1, 0, 0, 1},       {0.37, 0.21, 1, 1}};

/* The lane references of row_stats and row_soft_stats move lazily (kernels_impl.h): a
 * score may sit up to FCE_RESCALE_MARGIN above its lane's reference, so those kernels form
 * u (ref - x) with |ref - x| <= 16 for classes near the max and add the reference moves
 * back later: up to 0.5 ulp(16) of rounding (8 eps) and the product's 8 eps per such class,
 * which sum |u| (max - x) does not bound. Kernels that know the max first get none. */
#define DEV_LAG 16

typedef struct {
    LD dev;    /* sum u (max - x) */
    LD base;   /* its bound: roundings of (ref - x) and the products in the float type,
                * float64 accumulation, the kernel's rounding of u itself (soft targets) */
    LD lag;    /* + this for the lazy kernels (DEV_LAG) */
    LD scale;  /* sum |u| (max - x) + 2 DEV_LAG sum |u|: what merges may round */
    LD u, utol, au;
} devref;

typedef struct {
    int64_t n;
    int n_nan, n_pinf, n_fin;
    LD max;        /* max over all non-nan entries */
    LD sum, sum_bound; /* sum exp(x - max) and its bound */
    LD terr, resc;     /* the bound's parts: sum e (0.5 |x - max| + 3), the rescale multiplier */
    LD tail, tail_tol;
    int tail_flush;    /* some of the tail's terms are below exp's flush point (may be lost) */
    devref dv[2];  /* [0] w = NULL (u = 1), [1] u = w */
    double m, l;   /* lse of the finite entries as the pair (max, log sum exp(x - max)) */
    double lse;    /* ... and as one double: the (lse, 0) form */
    refv *el[E_N];
} rowref;

/* dev / u references for per-class weights u (NULL: 1), du an allowance per class for the
 * kernel's own rounding of u_c (NULL: u_c exact); exact_u: u must come out exactly */
static void dev_ref(const dtype *d, const void *x, int64_t n, LD max, const LD *u, const LD *du, int exact_u,
                    devref *o) {
    LD dev = 0, su = 0;
    double adev = 0, au = 0, dud = 0, sdu = 0; /* for the bounds only: double is plenty */
    for (int64_t i = 0; i < n; i++) {
        const LD D = max - d->get(x, i), uc = u ? u[i] : 1;
        dev += uc * D;
        su += uc;
        adev += fabs((double)uc) * (double)D;
        au += fabs((double)uc);
        if (du) {
            dud += (double)du[i] * (double)D;
            sdu += (double)du[i];
        }
    }
    const LD acc = (LD)(n + 8) * 0x1p-53L; /* recursive float64 sums */
    o->dev = dev;
    o->base = (8 * d->eps + acc) * adev + dud + 8 * d->tmin;
    o->lag = (DEV_LAG * d->eps + 2 * DEV_LAG * acc) * au;
    o->scale = adev + 2 * DEV_LAG * au;
    o->u = su;
    o->au = au;
    o->utol = exact_u ? 0 : (2 * d->eps + (LD)(n + 4) * 0x1p-53L) * au + sdu;
}

/* How the kernels split a shift (m, l): hi = (T)m, lo = (T)((m - hi) + l); x - lse is
 * (x - hi) - lo, three roundings: 0.5 ulp(x - hi) + 0.5 ulp(lo) + 0.5 ulp(result) (plus
 * the float64 rounding of (m - hi) + l). shift_split gives hi and the lo part. */
static void shift_split(const dtype *d, double m, double l, LD *hi, LD *ulo) {
    *hi = rnd_dt(d, m);
    const LD lo = ((LD)m - *hi) + (LD)l;
    *ulo = 0.5L * (LD)ulp_d(d, (double)lo) + fabsl(lo) * 0x1p-52L;
}
static LD arg_err(const dtype *d, LD xv, LD hi, LD ulo, LD dd) {
    return 0.5L * ((LD)ulp_d(d, (double)(xv - hi)) + (LD)ulp_d(d, (double)dd)) + ulo;
}

static LD *g_wl, *g_e; /* MAXN weights and exp(x - max) in long double (scratch of ref_row) */

static void ref_row(const dtype *d, const void *x, const void *w, int64_t n, rowref *r) {
    refv *el[E_N];
    memcpy(el, r->el, sizeof el);
    memset(r, 0, sizeof *r);
    memcpy(r->el, el, sizeof el);
    r->n = n;
    r->max = -INFINITY;
    LD fmax = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        LD v = d->get(x, i);
        if (isnan(v)) r->n_nan++;
        else if (v == INFINITY) r->n_pinf++;
        else if (isfinite(v)) r->n_fin++;
        if (!isnan(v) && v > r->max) r->max = v;
        if (isfinite(v) && v > fmax) fmax = v;
    }
    const int special = r->n_nan || r->n_pinf;
    const LD base = r->n_fin ? fmax : 0;
    /* sum of exp(x - max) over the finite entries and its error bound. Each term is
     * exp(x - ref) in the float type, ref a lane reference: fl(x - ref) costs
     * 0.5 max(|x - max|, 16) eps relative (a reference is at most 16 below a score: the
     * 16 is in the s * 20 below), exp itself 2 ulp; moving a lane's sum to the max
     * reported (and earlier rescales) costs 0.5 * 16 eps + 2 ulp more, a few eps per
     * rescale in the rare rows that rescale often (ascending ones: 4 log2(n+1)). For a
     * reported max below the row max, check_stats moves this reference to it.
     * The tail: exp(x - top) of the scores below top, each to 0.5 ulp(x - top) + 2 ulp
     * relative, summed in float64; terms below exp's flush point may be lost whole. */
    LD s = 0, terr = 0, ts = 0, ttol = 0;
    int64_t ties = 0;
    for (int64_t i = 0; i < n; i++) {
        const LD v = d->get(x, i);
        if (!isfinite(v)) continue;
        const LD dd = v - base, e = ref_exp(d, dd);
        g_e[i] = e;
        s += e;
        if (e > 0) terr += e * (0.5L * fabsl(dd) + 3);
        if (v < fmax) {
            ts += e;
            if (dd < d->explo + 1) r->tail_flush = 1;
            ttol += dd < d->explo + 1 ? e : e * (0.5L * (LD)ulp_d(d, (double)dd) + 2 * d->eps);
        } else {
            ties++;
        }
    }
    if (r->n_fin) {
        const LD lg = ref_log(d, s);
        r->m = (double)fmax;
        r->l = (double)lg;
        r->lse = (double)(fmax + lg);
    }
    if (!special && r->n_fin) {
        r->sum = s;
        r->terr = terr;
        r->resc = 20 + 4 * log2l((LD)n + 1);
        r->sum_bound = d->eps * (terr + s * r->resc) + s * (LD)n * 0x1p-53L + 4 * d->tmin;
        r->tail = ts + (LD)(ties - 1);
        r->tail_tol = ttol + (LD)(n + 4) * 0x1p-53L * (ts + (LD)ties);
    }
    for (int64_t i = 0; i < n; i++) g_wl[i] = d->get(w, i);
    dev_ref(d, x, n, base, NULL, NULL, 1, &r->dv[0]);
    dev_ref(d, x, n, base, g_wl, NULL, 0, &r->dv[1]);

    /* elementwise references, shared by every ISA and placement. exp((x - m) - l) is
     * exp(x - base) exp(-l) (m = base exactly), exp(x - lse) is exp(x - base) exp(base - lse) */
    LD hi_p, ulo_p, hi_s, ulo_s;
    shift_split(d, r->m, r->l, &hi_p, &ulo_p);
    shift_split(d, r->lse, 0.0, &hi_s, &ulo_s);
    const LD kp = ref_exp(d, -(LD)r->l), ks = ref_exp(d, base - (LD)r->lse);
    LD af[N_AFF], bf[N_AFF];
    for (int k = 0; k < N_AFF; k++) {
        af[k] = rnd_dt(d, AFFCFG[k].a); /* the kernels round a and beta to the float type */
        bf[k] = rnd_dt(d, AFFCFG[k].beta);
    }
    for (int64_t i = 0; i < n; i++) {
        const LD xv = d->get(x, i), wv = g_wl[i];
        const LD ddf = xv - base, e = isfinite(xv) ? g_e[i] : ref_exp(d, ddf);
        const LD ddp = (xv - (LD)r->m) - (LD)r->l, dds = xv - (LD)r->lse;
        const LD ep = e * kp, es = e * ks;
        LD aep = 0, aes = 0;
        if (isfinite(xv)) {
            aep = arg_err(d, xv, hi_p, ulo_p, ddp);
            aes = arg_err(d, xv, hi_s, ulo_s, dds);
        }
        for (int k = 0; k < N_AFF; k++) {
            const LD ek = AFFCFG[k].lse ? es : ep, ae = AFFCFG[k].lse ? aes : aep;
            const LD wk = AFFCFG[k].use_w ? wv : 1;
            /* argument error -> relative error of exp, + exp's 2 ulp, a rounded, the product and
             * the difference; beta rounded, its product and the difference */
            const LD terr = (ek > 0 && isfinite(ek)) ? fabsl(af[k] * ek) * (ae + 4 * d->eps) : 0;
            r->el[k][i] = mkref(af[k] * ek - bf[k] * wk,
                                terr + 1.5L * d->eps * fabsl(bf[k] * wk) + 2 * fabsl(af[k]) * d->tmin);
        }
        r->el[E_SUB][i] = mkref(ddp, aep);
        r->el[E_SUB_LSE][i] = mkref(dds, aes);
        /* exp(fl(x - max)): one rounding of the argument and exp's 2 ulp */
        r->el[E_FUSED][i] = mkref(e, (e > 0 && isfinite(e) ? e * (0.5L * (LD)ulp_d(d, (double)ddf) + 2 * d->eps) : 0) +
                                         2 * d->tmin);
    }
}

/* ------------------------------------------------------------------------------------ */
/* checks shared by the row, column and soft-target tests                                */

#define GUARD 40

static void check_out_guards(tcase *c, const dtype *d, const unsigned char *obuf, int64_t n, const char *nm,
                             const char *ctx) {
    const unsigned char *lo = obuf, *hi = obuf + (GUARD + n) * d->esz;
    int ok = 1;
    for (size_t i = 0; i < GUARD * d->esz; i++)
        if (lo[i] != 0xA5 || hi[i] != 0xA5) ok = 0;
    check(c, ok, nm, "%s: wrote outside [0, n) of the output", ctx);
}

typedef struct {
    double mx, sum, dev, u;
    int has_u; /* the kernel reports u (col_stats does not) */
} gstats;
static gstats gs_of(const fce_stats *st) {
    gstats g = {st->max, st->sum, st->dev, st->u, 1};
    return g;
}

/* A summary against its row's reference. max: the row max exactly, or for the lazy kernels
 * (row_stats, row_soft_stats; xrow their row) a score of the row at most 16 below the row
 * max (fastce.h; + half an ulp of ref + 16, the comparison's rounding: 32 where ulp = 32)
 * that is the row max whenever sum < 2. The references move to the max the
 * kernel reported, M = row max - off: sum exp(x - M) = sum e**off, each exp argument 'off'
 * longer (0.5 off eps more relative error), dev - off u with sum |u| |M - x| up to
 * off sum |u| larger. sum within sum_bound (+ extra), dev and u within dv's bounds (+ the
 * lag allowance for lazy kernels); dv NULL: not asked for dev, so dev and u must be 0. */
static void check_stats(tcase *c, const char *nm, const char *ctx, const dtype *d, const rowref *r, gstats g,
                        const devref *dv, const void *xrow, LD sum_extra, LD dev_extra, LD u_extra, isa_report *rep) {
    const int dti = d->is32 ? 0 : 1, lazy = xrow != NULL;
    const int special = r->n_nan || r->n_pinf;
    const double lse = g.mx + log(g.sum);
    LD off = 0;
    if (special) {
        check(c, isnan(lse), nm, "%s: lse = %.17g (max %.17g, sum %.17g), want nan", ctx, lse, g.mx, g.sum);
    } else if (!r->n_fin) {
        check(c, g.mx == -INFINITY && g.sum == 0.0, nm, "%s: max %.17g sum %.17g, want -inf and 0", ctx, g.mx,
              g.sum);
    } else {
        if (!lazy || g.mx == (double)r->max) {
            check(c, g.mx == (double)r->max, nm, "%s: max %.17g, want the row max %.17Lg exactly", ctx, g.mx, r->max);
        } else {
            int64_t at = -1;
            for (int64_t i = 0; i < r->n && at < 0; i++)
                if (d->get(xrow, i) == (LD)g.mx) at = i;
            off = r->max - (LD)g.mx;
            /* a reference moves when a score exceeds fl(ref + 16): up to 16 + ulp(ref + 16) / 2 */
            const LD lagmax = DEV_LAG + 0.5L * (LD)ulp_d(d, fabs(g.mx) + 2 * DEV_LAG);
            const int ok = at >= 0 && off > 0 && off <= lagmax && !(g.sum < 2);
            check(c, ok, nm, "%s: max %.17g (%s), sum %.17g: want a score of the row in [row max - %.9Lg, row max] "
                  "(row max %.17Lg: %.3Lg below it), the row max if sum < 2", ctx, g.mx,
                  at >= 0 ? "a score of the row" : "not a score of the row", g.sum, lagmax, r->max, off);
            /* compare sum and dev at the reported max all the same: one failure, not three */
            if (!(at >= 0 && off > 0 && off < 600)) off = 0;
        }
        const LD k = off ? ref_exp(d, off) : 1, S = r->sum * k;
        const LD bound = off ? d->eps * (k * (r->terr + 0.5L * off * r->sum) + S * r->resc) + S * (LD)r->n * 0x1p-53L +
                                   4 * k * d->tmin + k * sum_extra
                             : r->sum_bound + sum_extra;
        const LD err = fabsl((LD)g.sum - S);
        const int ok = isfinite(g.sum) && err <= bound && g.sum >= 1;
        check(c, ok, nm, "%s: sum %.17g, want %.17Lg (>= 1; error %.3Lg eps relative, bound %.3Lg); lse %.17g, want %.17Lg",
              ctx, g.sum, S, err / (S * d->eps), bound / (S * d->eps), lse, r->max + logl(r->sum));
        if (ok) {
            note_max(&rep->sum_err[dti], (double)(err / (S * d->eps)));
            note_max(&rep->sum_ratio[dti], (double)(err / bound));
        }
    }
    if (!dv) {
        check(c, g.dev == 0 && (!g.has_u || g.u == 0), nm, "%s: dev %.17g, u %.17g: want 0 when not asked for",
              ctx, g.dev, g.u);
        return;
    }
    if (special) {
        check(c, r->n_nan ? isnan(g.dev) : !isfinite(g.dev), nm, "%s: dev %.17g, want %s", ctx, g.dev,
              r->n_nan ? "nan" : "non-finite (a +inf score)");
    } else if (!r->n_fin) {
        check(c, r->n == 0 ? g.dev == 0 : !isfinite(g.dev), nm, "%s: dev %.17g of an %s row, want %s", ctx, g.dev,
              r->n ? "all -inf" : "empty", r->n ? "non-finite" : "0");
    } else {
        const LD want = off ? dv->dev - off * dv->u : dv->dev;
        const LD base = dv->base + (off ? (8 * d->eps + (LD)(r->n + 8) * 0x1p-53L) * off * dv->au : 0) + dev_extra;
        const LD tol = base + (lazy ? dv->lag : 0);
        const int ok = close_to(g.dev, want, tol);
        check(c, ok, nm, "%s: dev %.17g, want %.17Lg (error %.3Lg, tol %.3Lg = %.3Lg eps * sum|u||max-x|)", ctx, g.dev,
              want, fabsl((LD)g.dev - want), tol, tol / (d->eps * (dv->scale - 2 * DEV_LAG * dv->au + off * dv->au)));
        if (ok && isfinite(want)) {
            const LD err = fabsl((LD)g.dev - want);
            note_max(&rep->dev_ratio[dti], (double)(err / tol));
            if (lazy) note_max(&rep->dev_strict[dti], (double)(err / base));
        }
    }
    if (g.has_u)
        check(c, close_to(g.u, dv->u, dv->utol + u_extra), nm, "%s: u %.17g, want %.17Lg (tol %.3Lg)", ctx, g.u,
              dv->u, dv->utol + u_extra);
}

static void check_tail(tcase *c, const char *nm, const char *ctx, const dtype *d, const rowref *r, double got,
                       isa_report *rep) {
    const int dti = d->is32 ? 0 : 1;
    const int ok = close_to(got, r->tail, r->tail_tol);
    check(c, ok, nm, "%s: tail %.17g, want %.17Lg (relative error %.3Lg eps, bound %.3Lg)", ctx, got, r->tail,
          r->tail > 0 ? fabsl(got - r->tail) / (r->tail * d->eps) : (LD)INFINITY,
          r->tail > 0 ? r->tail_tol / (r->tail * d->eps) : (LD)r->tail_tol);
    if (ok && r->tail > 0 && !r->tail_flush) {
        note_max(&rep->tail_err[dti], (double)(fabsl(got - r->tail) / (r->tail * d->eps)));
        note_max(&rep->tail_ratio[dti], (double)(fabsl(got - r->tail) / r->tail_tol));
    }
}

/* elementwise outputs out[off + i * os], i < n, against rf[i]; stat: what to measure */
enum { ST_NONE, ST_AFF, ST_SOFTMAX, ST_SUB };
static void check_elems(tcase *c, const char *nm, const char *ctx, const dtype *d, const void *out, int64_t off,
                        int64_t os, int64_t n, const refv *rf, const void *x0, double m, double l, int stat,
                        isa_report *rep) {
    const int dti = d->is32 ? 0 : 1;
    for (int64_t i = 0; i < n; i++) {
        const double got = (double)d->get(out, off + i * os);
        if (!meets(got, &rf[i])) {
            check(c, 0, nm, "%s: out[%lld] = %.17g, want %.17g (error %.3g, tol %.3g; x %.17Lg, m %.17g, l %.17g)", ctx,
                  (long long)i, got, rf[i].hi, ref_err(got, &rf[i]), rf[i].tol, d->get(x0, i), m, l);
            return;
        }
        if (!isfinite(rf[i].hi)) continue;
        if ((stat == ST_AFF || stat == ST_SOFTMAX) && rf[i].tol > 0)
            note_max(&rep->aff_ratio[dti], ref_err(got, &rf[i]) / rf[i].tol);
        if (stat == ST_SOFTMAX && rf[i].hi >= 0.36787944 && rf[i].hi <= 1) /* |x - lse| <= 1 */
            note_max(&rep->soft_ulp[dti], ref_err(got, &rf[i]) / ulp_d(d, rf[i].hi));
        if (stat == ST_SUB && rf[i].hi != 0) note_max(&rep->sub_ulp[dti], ref_err(got, &rf[i]) / ulp_d(d, rf[i].hi));
    }
    check(c, 1, nm, " ");
}

/* ------------------------------------------------------------------------------------ */
/* row kernels                                                                           */

enum {
    K_STATS, K_STATS_DEV, K_STATS_DEVW, K_TAIL, K_MERGE_W, K_MERGE_1,
    K_SOFTMAX, K_AFF_AB, K_AFF_ABW, K_AFF_INPLACE, K_AFF_NEG, K_SOFTMAX_LSE, K_AFF_LSE,
    K_SUB, K_SUB_INPLACE, K_SUB_LSE,
    K_FUSED, K_FUSED_DEVW, K_FUSED_INPLACE, K_SCALE, K_SCALE_SOFTMAX,
    K_N
};
static const char *KNAME[K_N] = {
    "row_stats(want_dev=0)", "row_stats(want_dev=1,w=NULL)", "row_stats(want_dev=1,w)", "row_tail(top=max)",
    "fce_stats_merge(row_stats of chunks,w)", "fce_stats_merge(row_stats of chunks,w=NULL)",
    "row_exp_affine(a=1,beta=0)", "row_exp_affine(w=NULL)", "row_exp_affine(w)", "row_exp_affine(w,out==x)",
    "row_exp_affine(a<0,beta<0,w)", "row_exp_affine(a=1,beta=0,(m,l)=(lse,0))", "row_exp_affine(w,(m,l)=(lse,0))",
    "row_sub_shift", "row_sub_shift(out==x)", "row_sub_shift((m,l)=(lse,0))",
    "row_fused_stats(want_dev=0)", "row_fused_stats(want_dev=1,w)", "row_fused_stats(want_dev=1,w=NULL,out==x)",
    "row_scale(w) of row_fused_stats", "row_scale(a=1/sum,beta=0) of row_fused_stats",
};
/* the elementwise kernels: K, its reference, sub_shift or exp_affine, in place */
static const struct {
    int k, e, sub, inplace;
} ELEM[] = {{K_SOFTMAX, E_SOFTMAX, 0, 0},     {K_AFF_AB, E_AFF_AB, 0, 0},   {K_AFF_ABW, E_AFF_ABW, 0, 0},
            {K_AFF_INPLACE, E_AFF_ABW, 0, 1}, {K_AFF_NEG, E_AFF_NEG, 0, 0}, {K_SOFTMAX_LSE, E_SOFTMAX_LSE, 0, 0},
            {K_AFF_LSE, E_AFF_LSE, 0, 0},     {K_SUB, E_SUB, 1, 0},         {K_SUB_INPLACE, E_SUB, 1, 1},
            {K_SUB_LSE, E_SUB_LSE, 1, 0}};
#define N_ELEM ((int)(sizeof ELEM / sizeof ELEM[0]))

enum {
    V_RANDOM, V_WIDE, V_ASCENDING, V_DESCENDING, V_LARGE, V_NEGINF, V_NAN_FIRST, V_NAN_MID, V_NAN_LAST,
    V_PINF_FIRST, V_PINF_MID, V_PINF_LAST, V_NAN_NEGINF, V_LOWEST,
    V_HUGE, V_HUGE_NEG, V_BIG, V_BIG_NEG, V_DOM, V_DOM_TIES, V_DOM_FAR, V_CREEP, V_CREEP16, V_LEAP, V_LAG,
    V_ULP32, V_N
};
static const char *VNAME[V_N] = {
    "random(-inf masked)", "wide",      "ascending", "descending", "large offset", "all -inf",
    "nan first",           "nan middle", "nan last", "+inf first", "+inf middle",  "+inf last",
    "nan, rest -inf",      "all lowest finite",
    "K + ulp spread, K = 1e16 (f64) / 1e30 (f32)", "-K + ulp spread",
    "K + 3 N(0,1), K = 1e13 (f64) / 1e6 (f32)", "-K + 3 N(0,1)",
    "dominated: one max, rest >= 18 (f32) / 38 (f64) below, -inf masked",
    "dominated, max tied 2-3 times (tail >= 1)",
    "dominated, rest 60-120 (f32) / 690-770 (f64) below (exp flushes)",
    "max creeping up: ascending, steps U(0, 1.2)", "ascending, steps exactly 16", "ascending, steps 16-20",
    "first block 12 below, then ties of the max (lagging lane references)",
    "K, then K + 32 where ulp(K) = 32 (K = 2^28 + 32 (f32) / 2^57 + 32 (f64): ref + 16 rounds to K + 32)",
};

#define MAXN 32000
/* row sizes: 0..70, 1000 and MAXN, the longest scaled by -s below 1 (the qemu run) */
static int64_t g_nlong = MAXN;
static int row_sizes(int64_t *sizes) {
    int ns = 0;
    for (int i = 0; i <= 70; i++) sizes[ns++] = i;
    sizes[ns++] = 1000;
    sizes[ns++] = g_nlong;
    return ns;
}

static tcase rowcase[MAXISA][2][K_N][V_N];

/* "kernel / row kind", formatted once */
static const char *rowname(int k, int var) {
    static char names[K_N][V_N][200];
    if (!names[k][var][0]) snprintf(names[k][var], sizeof names[k][var], "%s / %s", KNAME[k], VNAME[var]);
    return names[k][var];
}

static void make_row(const dtype *d, int var, int64_t n, void *x, void *w) {
    const LD lowest = -d->tmax;
    const LD huge = d->is32 ? 1e30L : 1e16L, hulp = (LD)ulp_d(d, (double)huge), big = d->is32 ? 1e6L : 1e13L;
    const LD gap = d->is32 ? 18 : 38, far = d->is32 ? 60 : 690, farw = d->is32 ? 60 : 80, top = 5;
    const int64_t p = var == V_NAN_FIRST || var == V_PINF_FIRST ? 0
                      : var == V_NAN_LAST || var == V_PINF_LAST ? n - 1
                                                                : (n * 7) / 13;
    const int64_t lagn = n / 2 < 64 ? n / 2 : 64; /* > the first 4-vector block of every ISA */
    LD acc = var == V_LEAP ? -3000 : -20;
    for (int64_t i = 0; i < n; i++) {
        LD v;
        switch (var) {
        case V_WIDE: v = d->is32 ? -60 + 120 * rng_unif() : -400 + 800 * rng_unif(); break;
        case V_ASCENDING: v = -4 + 8.0L * (LD)i / (LD)n; break;
        case V_DESCENDING: v = 4 - 8.0L * (LD)i / (LD)n; break;
        case V_LARGE: v = 1e4 + 3 * rng_normal(); break;
        case V_NEGINF: case V_NAN_NEGINF: v = -INFINITY; break;
        case V_LOWEST: v = lowest; break;
        case V_HUGE: case V_HUGE_NEG: v = (var == V_HUGE ? huge : -huge) + hulp * roundl(2 * rng_normal()); break;
        case V_BIG: case V_BIG_NEG: v = (var == V_BIG ? big : -big) + 3 * rng_normal(); break;
        case V_DOM: case V_DOM_TIES:
            v = top - gap - 6 * rng_unif();
            if (rng_unif() < 0.1) v = -INFINITY;
            break;
        case V_DOM_FAR: v = top - far - farw * rng_unif(); break;
        case V_CREEP: v = acc; acc += 1.2L * rng_unif(); break;
        case V_CREEP16: v = -2000 + 16.0L * (LD)i; break;
        case V_LEAP: v = acc; acc += 16 + 4 * rng_unif(); break;
        case V_ULP32: v = (d->is32 ? 0x1p28L : 0x1p57L) + (i < (n + 1) / 2 ? 32 : 64); break;
        case V_LAG: v = i < lagn ? -9.3L : (i % 7 == 3 ? 3.2L : 3.3L); break; /* ref - x inexact */
        default: v = 5 + 3 * rng_normal(); if (rng_unif() < 0.1) v = -INFINITY; break;
        }
        d->set(x, i, v);
        /* weights in [0, 2), a few exactly 0 */
        d->set(w, i, rng_unif() < 0.05 ? 0 : 2 * rng_unif());
    }
    if (n > 0) {
        if (var == V_NAN_FIRST || var == V_NAN_MID || var == V_NAN_LAST || var == V_NAN_NEGINF) d->set(x, p, NAN);
        if (var == V_PINF_FIRST || var == V_PINF_MID || var == V_PINF_LAST) d->set(x, p, INFINITY);
        if (var == V_DOM || var == V_DOM_TIES || var == V_DOM_FAR) {
            const int64_t at = (int64_t)(rng_u64() % (uint64_t)n); /* the max anywhere: body, loop, tail */
            d->set(x, at, top);
            if (var == V_DOM_TIES) {
                d->set(x, n - 1, top);
                d->set(x, (at * 5 + 1) % n, top);
            }
        }
    }
}

static void run_rows(const dtype *d, const fce_kernels *K, int isa, int var, int64_t n, int at_end, const void *x,
                     const void *w, const void *x0, const void *w0, const rowref *r, unsigned char *obuf,
                     unsigned char *obuf2, isa_report *rep) {
    const int dti = d->is32 ? 0 : 1;
    const size_t es = d->esz;
    char ctx[96];
    snprintf(ctx, sizeof ctx, "n=%lld placed %s", (long long)n, at_end ? "before a guard page" : "after a guard page");
    void *out = obuf + GUARD * es, *out2 = obuf2 + GUARD * es;
    const size_t nb = (size_t)n * es;
    const int special = r->n_nan || r->n_pinf;
#define BEGIN(K_)                                                                                   \
    tcase *c = &rowcase[isa][dti][K_][var];                                                         \
    const char *nm = rowname(K_, var);                                                              \
    WHERE(nm, ctx)

    /* ---- row_stats ---- */
    for (int k = K_STATS; k <= K_STATS_DEVW; k++) {
        BEGIN(k);
        const int wd = k != K_STATS;
        fce_stats st = {1234.5, 1234.5, 1234.5, 1234.5};
        d->stats(K, x, n, k == K_STATS_DEVW ? w : NULL, wd, &st);
        check(c, memcmp(x, x0, nb) == 0 && memcmp(w, w0, nb) == 0, nm, "%s: input modified", ctx);
        check_stats(c, nm, ctx, d, r, gs_of(&st), wd ? &r->dv[k == K_STATS_DEVW] : NULL, x0, 0, 0, 0, rep);
    }

    /* ---- row_tail: checked where the row has a finite max (called on every row: reads stay inside) ---- */
    {
        BEGIN(K_TAIL);
        const double t = d->tail(K, x, n, r->n_fin ? r->m : 0.0);
        check(c, memcmp(x, x0, nb) == 0, nm, "%s: input modified", ctx);
        if (!special && r->n_fin) check_tail(c, nm, ctx, d, r, t, rep);
    }

    /* ---- fce_stats_merge of chunk statistics, in order ---- */
    for (int k = K_MERGE_W; k <= K_MERGE_1; k++) {
        BEGIN(k);
        const int use_w = k == K_MERGE_W;
        const int64_t sizes[] = {use_w ? 1 : 7, use_w ? 3 : (n + 2) / 3, 16, 67, (n + 1) / 2};
        const int nsz = use_w ? 5 : 2;
        for (int si = 0; si < nsz; si++) {
            const int64_t cs = sizes[si] < 1 ? 1 : sizes[si];
            fce_stats acc = {0, 0, 0, 0};
            int64_t nch = 0;
            for (int64_t off = 0; off < n || nch == 0; off += cs) {
                const int64_t len = n - off < cs ? n - off : cs;
                fce_stats st = {1234.5, 1234.5, 1234.5, 1234.5};
                d->stats(K, (const unsigned char *)x + off * es, len, use_w ? (const unsigned char *)w + off * es : NULL,
                         1, &st);
                acc = nch++ ? fce_stats_merge(acc, st) : st;
            }
            char mctx[160];
            snprintf(mctx, sizeof mctx, "%s, %lld chunks of %lld", ctx, (long long)nch, (long long)cs);
            /* each merge: sum * exp(max - M) in float64 (libm), dev + (M - max) u, u + u */
            const devref *dv = &r->dv[use_w];
            check_stats(c, nm, mctx, d, r, gs_of(&acc), dv, x0, (LD)(nch + 2) * 0x1p-51L * r->sum,
                        (LD)(nch + 2) * 0x1p-52L * dv->scale, use_w ? (LD)(nch + 2) * 0x1p-53L * dv->au : 0, rep);
        }
        check(c, memcmp(x, x0, nb) == 0 && memcmp(w, w0, nb) == 0, nm, "%s: input modified", ctx);
    }

    /* ---- row_exp_affine, row_sub_shift ---- */
    for (int j = 0; j < N_ELEM; j++) {
        const int k = ELEM[j].k, e = ELEM[j].e;
        BEGIN(k);
        const int lse = ELEM[j].sub ? e == E_SUB_LSE : AFFCFG[e].lse;
        const double m = lse ? r->lse : r->m, l = lse ? 0.0 : r->l;
        const double a = ELEM[j].sub ? 0 : AFFCFG[e].a, beta = ELEM[j].sub ? 0 : AFFCFG[e].beta;
        const void *wp = !ELEM[j].sub && AFFCFG[e].use_w ? w : NULL;
        memset(obuf, 0xA5, (size_t)(n + 2 * GUARD) * es);
        const void *src = x;
        if (ELEM[j].inplace) {
            memcpy(out, x, nb);
            src = out;
        }
        if (ELEM[j].sub) d->subsh(K, src, out, n, m, l);
        else d->affine(K, src, out, n, m, l, a, beta, wp);
        if (!ELEM[j].inplace) check(c, memcmp(x, x0, nb) == 0, nm, "%s: input modified", ctx);
        check(c, memcmp(w, w0, nb) == 0, nm, "%s: weights modified", ctx);
        check_out_guards(c, d, obuf, n, nm, ctx);
        check_elems(c, nm, ctx, d, out, 0, 1, n, r->el[e], x0, m, l,
                    ELEM[j].sub ? ST_SUB : e == E_SOFTMAX ? ST_SOFTMAX : ST_AFF, rep);
    }

    /* ---- row_fused_stats (then row_scale on its output) ---- */
    for (int k = K_FUSED; k <= K_FUSED_INPLACE; k++) {
        BEGIN(k);
        const int wd = k != K_FUSED, use_w = k == K_FUSED_DEVW;
        memset(obuf, 0xA5, (size_t)(n + 2 * GUARD) * es);
        fce_stats st = {1234.5, 1234.5, 1234.5, 1234.5};
        if (k == K_FUSED_INPLACE) {
            memcpy(out, x, nb);
            d->fused(K, out, out, n, NULL, wd, &st);
        } else {
            d->fused(K, x, out, n, use_w ? w : NULL, wd, &st);
            check(c, memcmp(x, x0, nb) == 0, nm, "%s: input modified", ctx);
        }
        check(c, memcmp(w, w0, nb) == 0, nm, "%s: weights modified", ctx);
        check_out_guards(c, d, obuf, n, nm, ctx);
        check_stats(c, nm, ctx, d, r, gs_of(&st), wd ? &r->dv[use_w] : NULL, NULL, 0, 0, 0, rep);
        if (!special) check_elems(c, nm, ctx, d, out, 0, 1, n, r->el[E_FUSED], x0, st.max, 0, ST_NONE, rep);
        if (k != K_FUSED_DEVW) continue;
        /* out = a out - beta w on the kernel's own exp(x - max) */
        for (int ks = K_SCALE; ks <= K_SCALE_SOFTMAX; ks++) {
            tcase *cs = &rowcase[isa][dti][ks][var];
            const char *snm = rowname(ks, var);
            WHERE(snm, ctx);
            const double a = ks == K_SCALE ? 0.37 : (st.sum > 0 && isfinite(st.sum) ? 1.0 / st.sum : 1.0);
            const double beta = ks == K_SCALE ? 0.21 : 0.0;
            const void *wp = ks == K_SCALE ? w : NULL;
            memset(obuf2, 0xA5, (size_t)(n + 2 * GUARD) * es);
            memcpy(out2, out, nb);
            d->scale(K, out2, n, a, beta, wp);
            check(cs, memcmp(w, w0, nb) == 0, snm, "%s: weights modified", ctx);
            check_out_guards(cs, d, obuf2, n, snm, ctx);
            const LD af = rnd_dt(d, a), bf = rnd_dt(d, beta);
            for (int64_t i = 0; i < n; i++) {
                const LD ev = d->get(out, i), wv = wp ? d->get(w0, i) : 1, got = d->get(out2, i);
                const LD want = af * ev - bf * wv;
                const LD tol = d->eps * (fabsl(af * ev) + 1.5L * fabsl(bf * wv)) + 2 * d->tmin;
                if (!close_to(got, want, tol)) {
                    check(cs, 0, snm, "%s: out[%lld] = %.17Lg, want %.17Lg (e %.17Lg, a %.17g, beta %g, w %.9Lg)", ctx,
                          (long long)i, got, want, ev, a, beta, wv);
                    break;
                }
            }
            check(cs, 1, snm, " ");
        }
    }
#undef BEGIN
}

static void test_rows(const dtype *d, const fce_kernels **tabs, const int *isa_idx, int nact, isa_report *reps) {
    static gbuf gx, gw;
    static int init;
    if (!init) {
        gbuf_alloc(&gx, MAXN * sizeof(double));
        gbuf_alloc(&gw, MAXN * sizeof(double));
        init = 1;
    }
    unsigned char *x0 = malloc(MAXN * sizeof(double)), *w0 = malloc(MAXN * sizeof(double));
    unsigned char *obuf = malloc((MAXN + 2 * GUARD) * sizeof(double));
    unsigned char *obuf2 = malloc((MAXN + 2 * GUARD) * sizeof(double));
    rowref r;
    for (int k = 0; k < E_N; k++) r.el[k] = malloc(MAXN * sizeof(refv));
    int64_t sizes[71 + 2];
    const int ns = row_sizes(sizes);
    for (int var = 0; var < V_N; var++) {
        for (int si = 0; si < ns; si++) {
            const int64_t n = sizes[si];
            if (n == 0 && var != V_RANDOM) continue;
            rng_state = 0x5eed0000ull + (uint64_t)var * 1000003u + (uint64_t)n;
            make_row(d, var, n, x0, w0);
            ref_row(d, x0, w0, n, &r);
            const size_t nb = (size_t)n * d->esz;
            /* long rows: only against the upper guard page (the ends are tested by the short rows) */
            for (int at_end = 1; at_end >= (n > 70 ? 1 : 0); at_end--) {
                void *x = gbuf_place(&gx, nb, at_end), *w = gbuf_place(&gw, nb, !at_end);
                for (int a = 0; a < nact; a++) {
                    g_isa = tabs[a]->name;
                    memcpy(x, x0, nb);
                    memcpy(w, w0, nb);
                    run_rows(d, tabs[a], isa_idx[a], var, n, at_end, x, w, x0, w0, &r, obuf, obuf2, &reps[a]);
                }
            }
        }
    }
    free(x0);
    free(w0);
    free(obuf);
    free(obuf2);
    for (int k = 0; k < E_N; k++) free(r.el[k]);
}

/* ------------------------------------------------------------------------------------ */
/* column blocks (col_*: `lanes` rows side by side, element (c, l) at x[c * sc + l]),    */
/* probability targets (row_soft_stats, row_soft_grad) and worked examples               */

enum {
    X_COL_STATS, X_COL_STATS_DEV, X_COL_STATS_DEVW, X_COL_TAIL, X_COL_SOFTMAX, X_COL_AFF_AB, X_COL_AFF_ABW,
    X_COL_AFF_INPLACE, X_COL_SOFTMAX_LSE, X_COL_SUB, X_COL_SUB_INPLACE, X_COL_SUB_LSE, X_COL_PACK,
    X_SOFT_STATS, X_SOFT_STATS_W, X_SOFT_STATS_MASKED, X_SOFT_STATS_MASKED_LS, X_SOFT_GRAD, X_SOFT_GRAD_W,
    X_SOFT_GRAD_INPLACE, X_EXAMPLES, X_N
};
static const char *XNAME[X_N] = {
    "col_stats(want_dev=0)", "col_stats(want_dev=1,w=NULL)", "col_stats(want_dev=1,w)", "col_tail(top=lane max)",
    "col_exp_affine(a=1,beta=NULL)", "col_exp_affine(w=NULL)", "col_exp_affine(w)", "col_exp_affine(w,out==x)",
    "col_exp_affine(a=1,beta=NULL,(m,l)=(lse,0))", "col_sub_shift", "col_sub_shift(out==x)",
    "col_sub_shift((m,l)=(lse,0))", "col_pack + col_unpack (bitwise, lanes >= nl untouched)", "row_soft_stats(w=NULL,ta=1,tb=0)", "row_soft_stats(w,ta=0.9,tb=0.1/n)",
    "row_soft_stats(w,tb=0; -inf classes with u=0: dev nan)",
    "row_soft_stats(w=NULL,tb=0.1/n; -inf classes with u>0: dev +inf)", "row_soft_grad(w=NULL)",
    "row_soft_grad(w)", "row_soft_grad(w,out==x)",
    "worked examples (K+[0,0] softmax, [0,-40] tail, shifted dev)",
};
static tcase xcase[MAXISA][2][X_N];

#define MAXLANES 64
#define MAXC 257

/* lane kinds of a column block; the row variants they borrow */
static const int LANE_VARS[] = {V_RANDOM, V_NEGINF, V_WIDE, V_NAN_MID, V_LARGE, V_PINF_FIRST, V_DESCENDING,
                                V_NAN_NEGINF, V_LOWEST, V_HUGE, V_DOM, V_HUGE_NEG, V_DOM_TIES, V_BIG_NEG,
                                V_DOM_FAR};
#define N_LANE_VARS ((int)(sizeof LANE_VARS / sizeof LANE_VARS[0]))

/* the column elementwise kernels: X, reference, sub_shift, in place, beta = NULL */
static const struct {
    int x, e, sub, inplace, nobeta;
} CELEM[] = {{X_COL_SOFTMAX, E_SOFTMAX, 0, 0, 1},         {X_COL_AFF_AB, E_AFF_AB, 0, 0, 0},
             {X_COL_AFF_ABW, E_AFF_ABW, 0, 0, 0},         {X_COL_AFF_INPLACE, E_AFF_ABW, 0, 1, 0},
             {X_COL_SOFTMAX_LSE, E_SOFTMAX_LSE, 0, 0, 1}, {X_COL_SUB, E_SUB, 1, 0, 0},
             {X_COL_SUB_INPLACE, E_SUB, 1, 1, 0},         {X_COL_SUB_LSE, E_SUB_LSE, 1, 0, 0}};
#define N_CELEM ((int)(sizeof CELEM / sizeof CELEM[0]))

/* col_pack / col_unpack move bits: rows (lane l at src + l * rs, the source rows at stride
 * MAXC, or packed densely, rs = C) -> block -> rows, with the block padded to whole vectors
 * of classes as the sweeps allocate it; nothing outside the real lanes and classes moves */
static void test_pack(const dtype *d, KT *K, tcase *c, const unsigned char *rows, int64_t C, int nl, int L) {
    const size_t es = d->esz;
    const int64_t padded = (C + L - 1) / L * L * L;
    unsigned char *dense = malloc((size_t)(nl * C + 1) * es);
    unsigned char *pk = malloc((size_t)(padded + 1) * es);
    unsigned char *back = malloc((size_t)(nl * MAXC + 1) * es);
    for (int l = 0; l < nl; l++)
        for (int64_t cc = 0; cc < C; cc++) d->setbits(dense, l * C + cc, d->getbits(rows + (size_t)l * MAXC * es, cc));
    for (int dn = 0; dn < 2; dn++) {
        const unsigned char *src = dn ? dense : rows;
        const int64_t rs = dn ? C : MAXC;
        char ctx[128];
        snprintf(ctx, sizeof ctx, "C=%lld nl=%d of %d lanes, row stride %lld", (long long)C, nl, L, (long long)rs);
        WHERE("col_pack", ctx);
        memset(pk, 0x5A, (size_t)(padded + 1) * es);
        d->colpack(K, src, rs, C, nl, pk);
        int ok = 1, untouched = 1;
        for (int64_t i = 0; i <= padded; i++) {
            const int64_t cc = i / L, l = i % L;
            if (i < C * L && l < nl) {
                if (d->getbits(pk, i) != d->getbits(src, l * rs + cc)) ok = 0;
            } else {
                for (size_t b = 0; b < es; b++)
                    if (pk[i * es + b] != 0x5A) untouched = 0;
            }
        }
        check(c, ok, "col_pack", "%s: block differs from the rows", ctx);
        check(c, untouched, "col_pack", "%s: wrote outside the real lanes and classes", ctx);
        WHERE("col_unpack", ctx);
        memset(back, 0xA5, (size_t)(nl * MAXC + 1) * es);
        d->colunpack(K, pk, C, nl, back, rs);
        ok = 1, untouched = 1;
        for (int64_t i = 0; i <= nl * MAXC; i++) {
            const int64_t l = rs ? i / rs : nl, cc = rs ? i % rs : 0;
            if (l < nl && cc < C) {
                if (d->getbits(back, i) != d->getbits(src, i)) ok = 0;
            } else {
                for (size_t b = 0; b < es; b++)
                    if (back[i * es + b] != 0xA5) untouched = 0;
            }
        }
        check(c, ok, "col_unpack", "%s: rows differ from the block", ctx);
        check(c, untouched, "col_unpack", "%s: wrote outside the rows' classes", ctx);
    }
    free(dense);
    free(pk);
    free(back);
}

static void test_cols(const dtype *d, const fce_kernels **tabs, int nact, isa_report *reps) {
    const int dti = d->is32 ? 0 : 1;
    const size_t es = d->esz;
    static gbuf gx;
    static int init;
    if (!init) {
        gbuf_alloc(&gx, (size_t)MAXC * (MAXLANES + 3) * sizeof(double));
        init = 1;
    }
    unsigned char *rows = malloc((size_t)MAXLANES * MAXC * sizeof(double)); /* lane rows, contiguous */
    unsigned char *wrow = malloc(MAXC * sizeof(double));
    unsigned char *blk = malloc((size_t)MAXC * (MAXLANES + 3) * sizeof(double));
    unsigned char *obuf = malloc(((size_t)MAXC * (MAXLANES + 3) + 2 * GUARD) * sizeof(double));
    rowref *refs = calloc(MAXLANES, sizeof(rowref));
    for (int l = 0; l < MAXLANES; l++)
        for (int k = 0; k < E_N; k++) refs[l].el[k] = malloc(MAXC * sizeof(refv));
    static const int64_t CS[] = {0, 1, 2, 3, 5, 8, 17, 64, 257};
    for (int a = 0; a < nact; a++) {
        const fce_kernels *K = tabs[a];
        g_isa = K->name;
        const int L = d->lanes(K);
        if (L < 1 || L > MAXLANES) {
            tcase *c = &xcase[a][dti][X_COL_STATS];
            check(c, 0, XNAME[X_COL_STATS], "lanes = %d is out of range [1, %d]", L, MAXLANES);
            continue;
        }
        for (size_t ci = 0; ci < sizeof CS / sizeof CS[0]; ci++) {
            const int64_t C = CS[ci];
            for (int nl = 1; nl <= L; nl++) {
                /* rows: lane l is a row of kind LANE_VARS[(l + C) % N_LANE_VARS] */
                rng_state = 0xc01c01ull + (uint64_t)C * 131 + (uint64_t)nl * 7 + (uint64_t)L;
                for (int l = 0; l < nl; l++) {
                    void *xr = rows + (size_t)l * MAXC * es;
                    make_row(d, LANE_VARS[(l + C) % N_LANE_VARS], C, xr, wrow); /* the last lane's w is kept */
                }
                for (int l = 0; l < nl; l++) ref_row(d, rows + (size_t)l * MAXC * es, wrow, C, &refs[l]);
                test_pack(d, K, &xcase[a][dti][X_COL_PACK], rows, C, nl, L);
                for (int sp = 0; sp < 2; sp++) {
                    const int64_t sc = L + 3 * sp; /* dense block, or rows of a wider buffer */
                    const int64_t osc = L + 1 - sp;
                    /* the block ends exactly at the guard page after its last real element */
                    const int64_t span = C ? (C - 1) * sc + nl : 0;
                    void *x = gbuf_place(&gx, (size_t)span * es, 1);
                    memset(blk, 0x5A, (size_t)C * sc * es);
                    for (int64_t c = 0; c < C; c++)
                        for (int l = 0; l < nl; l++) d->set(blk, c * sc + l, d->get(rows + (size_t)l * MAXC * es, c));
                    memcpy(x, blk, (size_t)span * es);
                    char ctx[128], lctx[MAXLANES][200];
                    snprintf(ctx, sizeof ctx, "C=%lld nl=%d of %d lanes, stride %lld", (long long)C, nl, L, (long long)sc);
                    for (int l = 0; l < nl; l++)
                        snprintf(lctx[l], sizeof lctx[l], "%s, lane %d (%s)", ctx, l, VNAME[LANE_VARS[(l + C) % N_LANE_VARS]]);

                    /* ---- col_stats ---- */
                    double mx[MAXLANES + 1], sm[MAXLANES + 1], dv[MAXLANES + 1];
                    for (int k = X_COL_STATS; k <= X_COL_STATS_DEVW; k++) {
                        tcase *c = &xcase[a][dti][k];
                        WHERE(XNAME[k], ctx);
                        for (int l = 0; l <= MAXLANES; l++) mx[l] = sm[l] = dv[l] = 1234.5;
                        const int wd = k != X_COL_STATS, use_w = k == X_COL_STATS_DEVW;
                        d->colstats(K, x, sc, C, nl, use_w ? wrow : NULL, wd, mx, sm, dv);
                        check(c, memcmp(x, blk, (size_t)span * es) == 0, XNAME[k], "%s: input modified", ctx);
                        int untouched = 1;
                        for (int l = nl; l <= MAXLANES; l++)
                            if (mx[l] != 1234.5 || sm[l] != 1234.5 || dv[l] != 1234.5) untouched = 0;
                        check(c, untouched, XNAME[k], "%s: wrote results for lanes >= nl", ctx);
                        for (int l = 0; l < nl; l++) {
                            gstats g = {mx[l], sm[l], wd ? dv[l] : 0.0, 0, 0};
                            check_stats(c, XNAME[k], lctx[l], d, &refs[l], g, wd ? &refs[l].dv[use_w] : NULL, NULL, 0, 0, 0,
                                        &reps[a]);
                        }
                    }

                    /* ---- col_tail: top = each lane's max (whatever it is: only finite lanes are checked) ---- */
                    {
                        tcase *c = &xcase[a][dti][X_COL_TAIL];
                        WHERE(XNAME[X_COL_TAIL], ctx);
                        double top[MAXLANES], tl[MAXLANES + 1];
                        for (int l = 0; l < L; l++) top[l] = l < nl && !isnan(refs[l].max) ? (double)refs[l].max : 0;
                        for (int l = 0; l <= MAXLANES; l++) tl[l] = 1234.5;
                        d->coltail(K, x, sc, C, nl, top, tl);
                        check(c, memcmp(x, blk, (size_t)span * es) == 0, XNAME[X_COL_TAIL], "%s: input modified", ctx);
                        int untouched = 1;
                        for (int l = nl; l <= MAXLANES; l++)
                            if (tl[l] != 1234.5) untouched = 0;
                        check(c, untouched, XNAME[X_COL_TAIL], "%s: wrote results for lanes >= nl", ctx);
                        for (int l = 0; l < nl; l++) {
                            if (refs[l].n_nan || refs[l].n_pinf || !refs[l].n_fin) continue;
                            check_tail(c, XNAME[X_COL_TAIL], lctx[l], d, &refs[l], tl[l], &reps[a]);
                        }
                    }

                    /* ---- col_exp_affine, col_sub_shift ---- */
                    double mv[MAXLANES], lv[MAXLANES], av[MAXLANES], bv[MAXLANES];
                    for (int j = 0; j < N_CELEM; j++) {
                        const int k = CELEM[j].x, e = CELEM[j].e, is_sub = CELEM[j].sub, inplace = CELEM[j].inplace;
                        tcase *c = &xcase[a][dti][k];
                        WHERE(XNAME[k], ctx);
                        const int lse = is_sub ? e == E_SUB_LSE : AFFCFG[e].lse;
                        for (int l = 0; l < L; l++) {
                            mv[l] = l < nl ? (lse ? refs[l].lse : refs[l].m) : 0;
                            lv[l] = l < nl && !lse ? refs[l].l : 0;
                            av[l] = is_sub ? 0 : AFFCFG[e].a;
                            bv[l] = is_sub ? 0 : AFFCFG[e].beta;
                        }
                        const int64_t os = inplace ? sc : osc;
                        unsigned char *ob = obuf + GUARD * es;
                        memset(obuf, 0xA5, ((size_t)C * os + 2 * GUARD) * es);
                        const void *wp = !is_sub && AFFCFG[e].use_w ? wrow : NULL;
                        const double *bp = CELEM[j].nobeta ? NULL : bv;
                        if (inplace) {
                            /* the whole block, gaps included, so untouched gaps can be checked */
                            memcpy(ob, blk, (size_t)C * sc * es);
                            if (is_sub) d->colsub(K, ob, sc, ob, sc, C, nl, mv, lv);
                            else d->colaff(K, ob, sc, ob, sc, C, nl, mv, lv, av, bp, wp);
                        } else {
                            if (is_sub) d->colsub(K, x, sc, ob, os, C, nl, mv, lv);
                            else d->colaff(K, x, sc, ob, os, C, nl, mv, lv, av, bp, wp);
                            check(c, memcmp(x, blk, (size_t)span * es) == 0, XNAME[k], "%s: input modified", ctx);
                        }
                        /* guards and every element outside the nl real lanes are untouched */
                        int untouched = 1;
                        for (size_t i = 0; i < GUARD * es; i++)
                            if (obuf[i] != 0xA5 || ob[(size_t)C * os * es + i] != 0xA5) untouched = 0;
                        for (int64_t cc = 0; cc < C; cc++)
                            for (int64_t l = nl; l < os; l++) {
                                const unsigned char *p = ob + (size_t)(cc * os + l) * es;
                                const unsigned char *q = inplace ? blk + (size_t)(cc * os + l) * es : NULL;
                                for (size_t b = 0; b < es; b++)
                                    if (p[b] != (q ? q[b] : 0xA5)) untouched = 0;
                            }
                        check(c, untouched, XNAME[k], "%s: wrote outside the nl real lanes", ctx);
                        for (int l = 0; l < nl; l++) {
                            check_elems(c, XNAME[k], lctx[l], d, ob, l, os, C, refs[l].el[e], rows + (size_t)l * MAXC * es,
                                        mv[l], lv[l], is_sub ? ST_SUB : ST_AFF, &reps[a]);
                        }
                    }
                }
            }
        }
    }
    for (int l = 0; l < MAXLANES; l++)
        for (int k = 0; k < E_N; k++) free(refs[l].el[k]);
    free(refs);
    free(rows);
    free(wrow);
    free(blk);
    free(obuf);
}

/* probability targets: u_c = w_c (ta t_c + tb), ta and tb rounded to the float type */
typedef struct {
    int k, use_w; /* case, weighted */
    double ta, tb;
    devref dv;
} softcfg;
static void test_soft(const dtype *d, const fce_kernels **tabs, int nact, isa_report *reps) {
    const int dti = d->is32 ? 0 : 1;
    const size_t es = d->esz;
    static gbuf gx, gt, gw;
    static int init;
    if (!init) {
        gbuf_alloc(&gx, MAXN * sizeof(double));
        gbuf_alloc(&gt, MAXN * sizeof(double));
        gbuf_alloc(&gw, MAXN * sizeof(double));
        init = 1;
    }
    unsigned char *x0 = malloc(MAXN * sizeof(double)), *t0 = malloc(MAXN * sizeof(double));
    unsigned char *w0 = malloc(MAXN * sizeof(double));
    unsigned char *obuf = malloc((MAXN + 2 * GUARD) * sizeof(double));
    LD *uc = malloc(MAXN * sizeof(LD)), *du = malloc(MAXN * sizeof(LD));
    refv *gref[2];
    for (int j = 0; j < 2; j++) gref[j] = malloc(MAXN * sizeof(refv));
    rowref r;
    for (int k = 0; k < E_N; k++) r.el[k] = malloc(MAXN * sizeof(refv));
    const double ga = 0.7, gb = 0.01, gd = 0.6; /* row_soft_grad: a, beta, delta */
    const LD gaf = rnd_dt(d, ga), gbf = rnd_dt(d, gb), gdf = rnd_dt(d, gd);
    static const int SOFT_VARS[] = {V_WIDE, V_RANDOM, V_HUGE, V_HUGE_NEG, V_LAG};
    int64_t sizes[71 + 2];
    const int ns = row_sizes(sizes);
    for (size_t vi = 0; vi < sizeof SOFT_VARS / sizeof SOFT_VARS[0]; vi++) {
        const int var = SOFT_VARS[vi], masked = var == V_RANDOM;
        for (int si = 0; si < ns; si++) {
            const int64_t n = sizes[si];
            rng_state = 0x50f7ull + (uint64_t)n * 3 + (uint64_t)var * 7919;
            make_row(d, var, n, x0, w0);
            /* targets: probabilities (some exactly 0), 0 on masked classes */
            LD tsum = 0;
            for (int64_t i = 0; i < n; i++) {
                LD tv = rng_unif() < 0.2 ? 0 : rng_unif();
                if (d->get(x0, i) == -INFINITY) tv = 0;
                d->set(t0, i, tv);
                tsum += d->get(t0, i);
            }
            if (tsum > 0)
                for (int64_t i = 0; i < n; i++) d->set(t0, i, d->get(t0, i) / tsum);
            ref_row(d, x0, w0, n, &r);
            const LD base = r.n_fin ? (LD)r.m : 0;
            /* the stats configurations of this row: which case, w, ta, tb */
            softcfg cfg[2];
            int ncfg = 0;
            const double tbs = 0.1 / (double)(n > 0 ? n : 1);
            if (!masked) {
                cfg[ncfg++] = (softcfg){.k = X_SOFT_STATS, .use_w = 0, .ta = 1.0, .tb = 0.0};
                cfg[ncfg++] = (softcfg){.k = X_SOFT_STATS_W, .use_w = 1, .ta = 0.9, .tb = tbs};
            } else {
                cfg[ncfg++] = (softcfg){.k = X_SOFT_STATS_MASKED, .use_w = 1, .ta = 1.0, .tb = 0.0};
                cfg[ncfg++] = (softcfg){.k = X_SOFT_STATS_MASKED_LS, .use_w = 0, .ta = 0.9, .tb = tbs};
            }
            for (int q = 0; q < ncfg; q++) {
                /* u_c exactly from the rounded ta, tb; the kernel rounds t' = ta t + tb (once with
                 * an fma, twice without) and w t': within 1.5 eps |w| (|ta t| + |tb|) */
                const LD taf = rnd_dt(d, cfg[q].ta), tbf = rnd_dt(d, cfg[q].tb);
                for (int64_t i = 0; i < n; i++) {
                    const LD wv = cfg[q].use_w ? d->get(w0, i) : 1, tv = d->get(t0, i);
                    uc[i] = wv * (taf * tv + tbf);
                    du[i] = 1.5L * d->eps * fabsl(wv) * (fabsl(taf * tv) + fabsl(tbf));
                }
                dev_ref(d, x0, n, base, uc, du, 0, &cfg[q].dv);
            }
            /* row_soft_grad references, (m, l) = (max, log sum) */
            LD hi, ulo;
            shift_split(d, r.m, r.l, &hi, &ulo);
            for (int64_t i = 0; i < n; i++) {
                const LD xv = d->get(x0, i), tv = d->get(t0, i);
                const LD dd = (xv - (LD)r.m) - (LD)r.l, e = ref_exp(d, dd);
                const LD ae = isfinite(xv) ? arg_err(d, xv, hi, ulo, dd) : 0;
                const LD terr = (e > 0 && isfinite(e)) ? fabsl(gaf * e) * (ae + 4 * d->eps) : 0;
                for (int j = 0; j < 2; j++) {
                    const LD wv = j ? d->get(w0, i) : 1;
                    const LD sub = wv * (gbf + gdf * tv);
                    gref[j][i] = mkref(gaf * e - sub, terr + 2 * d->eps * fabsl(wv) * (fabsl(gbf) + fabsl(gdf * tv)) +
                                                          2 * gaf * d->tmin);
                }
            }
            const size_t nb = (size_t)n * es;
            void *x = gbuf_place(&gx, nb, 1), *t = gbuf_place(&gt, nb, 1), *w = gbuf_place(&gw, nb, 0);
            for (int a = 0; a < nact; a++) {
                const fce_kernels *K = tabs[a];
                g_isa = K->name;
                memcpy(x, x0, nb);
                memcpy(t, t0, nb);
                memcpy(w, w0, nb);
                char ctx[128];
                snprintf(ctx, sizeof ctx, "n=%lld, %s", (long long)n, VNAME[var]);
                for (int q = 0; q < ncfg; q++) {
                    const int k = cfg[q].k;
                    tcase *c = &xcase[a][dti][k];
                    WHERE(XNAME[k], ctx);
                    fce_stats st = {1234.5, 1234.5, 1234.5, 1234.5};
                    d->softstats(K, x, t, n, cfg[q].use_w ? w : NULL, cfg[q].ta, cfg[q].tb, &st);
                    check(c, memcmp(x, x0, nb) == 0 && memcmp(t, t0, nb) == 0 && memcmp(w, w0, nb) == 0, XNAME[k],
                          "%s: input modified", ctx);
                    check_stats(c, XNAME[k], ctx, d, &r, gs_of(&st), &cfg[q].dv, x0, 0, 0, 0, &reps[a]);
                }
                if (masked) continue;
                for (int k = X_SOFT_GRAD; k <= X_SOFT_GRAD_INPLACE; k++) {
                    tcase *c = &xcase[a][dti][k];
                    WHERE(XNAME[k], ctx);
                    const int j = k != X_SOFT_GRAD;
                    void *out = obuf + GUARD * es;
                    memset(obuf, 0xA5, (size_t)(n + 2 * GUARD) * es);
                    if (k == X_SOFT_GRAD_INPLACE) {
                        memcpy(out, x0, nb);
                        d->softgrad(K, out, t, out, n, r.m, r.l, ga, gb, gd, w);
                    } else {
                        d->softgrad(K, x, t, out, n, r.m, r.l, ga, gb, gd, j ? w : NULL);
                        check(c, memcmp(x, x0, nb) == 0, XNAME[k], "%s: input modified", ctx);
                    }
                    check(c, memcmp(t, t0, nb) == 0 && memcmp(w, w0, nb) == 0, XNAME[k], "%s: t or w modified", ctx);
                    check_out_guards(c, d, obuf, n, XNAME[k], ctx);
                    check_elems(c, XNAME[k], ctx, d, out, 0, 1, n, gref[j], x0, r.m, r.l, ST_NONE, &reps[a]);
                }
            }
        }
    }
    for (int k = 0; k < E_N; k++) free(r.el[k]);
    for (int j = 0; j < 2; j++) free(gref[j]);
    free(uc);
    free(du);
    free(x0);
    free(t0);
    free(w0);
    free(obuf);
}

static int is_score(const dtype *d, const void *x, int64_t n, double v) {
    for (int64_t i = 0; i < n; i++)
        if (d->get(x, i) == (LD)v) return 1;
    return 0;
}

/* worked examples, with exact or near-exact answers */
static void test_examples(const dtype *d, const fce_kernels *K, int a) {
    const int dti = d->is32 ? 0 : 1;
    tcase *c = &xcase[a][dti][X_EXAMPLES];
    const char *nm = XNAME[X_EXAMPLES];
    WHERE(nm, "");
    double xb[8], ob[8], wb[8], mx[2], sm[2], dv[2];
    const double one = 1.0;
    fce_stats st;

    /* softmax and log-softmax of K + [0, ..., 0]: 1/n and -log n (the old single-double
     * shift lost log n against K: softmax([1e16, 1e16]) came out [1, 1]) */
    const LD huge = d->is32 ? 1e30L : 1e16L;
    for (int sg = -1; sg <= 1; sg += 2) {
        const LD Kv = rnd_dt(d, sg * huge);
        for (int nn = 2; nn <= 4; nn += 2) {
            for (int i = 0; i < nn; i++) d->set(xb, i, Kv);
            d->stats(K, xb, nn, NULL, 0, &st);
            check(c, st.max == (double)Kv && st.sum == nn, nm, "row_stats(%d x %.9Lg): max %.17g sum %.17g, want %.17Lg, %d",
                  nn, Kv, st.max, st.sum, Kv, nn);
            const double l = log((double)nn);
            d->affine(K, xb, ob, nn, (double)Kv, l, 1, 0, NULL);
            for (int i = 0; i < nn; i++)
                check(c, fabsl(d->get(ob, i) - 1.0L / nn) <= (LD)ulp_d(d, 1.0 / nn), nm,
                      "softmax(%d x %.9Lg)[%d] = %.17Lg, want %.17g", nn, Kv, i, d->get(ob, i), 1.0 / nn);
            d->subsh(K, xb, ob, nn, (double)Kv, l);
            for (int i = 0; i < nn; i++)
                check(c, fabsl(d->get(ob, i) + logl(nn)) <= (LD)ulp_d(d, l), nm,
                      "log_softmax(%d x %.9Lg)[%d] = %.17Lg, want %.17Lg", nn, Kv, i, d->get(ob, i), -logl(nn));
            d->fused(K, xb, ob, nn, NULL, 0, &st);
            check(c, st.max == (double)Kv && st.sum == nn && d->get(ob, 0) == 1 && d->get(ob, nn - 1) == 1, nm,
                  "row_fused_stats(%d x %.9Lg): max %.17g sum %.17g out[0] %.17Lg, want %.17Lg, %d, 1", nn, Kv, st.max,
                  st.sum, d->get(ob, 0), Kv, nn);
            /* one lane of a column block, stride 1 */
            d->colstats(K, xb, 1, nn, 1, NULL, 0, mx, sm, dv);
            check(c, mx[0] == (double)Kv && sm[0] == nn, nm, "col_stats(%d x %.9Lg): max %.17g sum %.17g", nn, Kv,
                  mx[0], sm[0]);
            d->colaff(K, xb, 1, ob, 1, nn, 1, mx, &l, &one, NULL, NULL);
            check(c, fabsl(d->get(ob, nn - 1) - 1.0L / nn) <= (LD)ulp_d(d, 1.0 / nn), nm,
                  "col_exp_affine: softmax(%d x %.9Lg) = %.17Lg, want %.17g", nn, Kv, d->get(ob, nn - 1), 1.0 / nn);
        }
    }

    /* dominated rows: [K, K - G] has sum 1 + e^-G, which float64 cannot hold; the tail is
     * e^-G to a few ulp, and lse - max = log1p(tail) keeps it */
    const LD G = d->is32 ? 20 : 40, Kt = d->is32 ? 0x1p20L : 1e16L;
    for (int kk = 0; kk < 2; kk++) {
        const LD Kv = kk ? Kt : 0;
        const LD want = ref_exp(d, -G), lwant = log1pl(want);
        d->set(xb, 0, Kv);
        d->set(xb, 1, Kv - G);
        d->stats(K, xb, 2, NULL, 0, &st);
        check(c, st.max == (double)Kv && fce_needs_tail(st.sum), nm,
              "row_stats([%.17Lg, %.17Lg]): max %.17g, sum %.17g: want the max and sum - 1 < FCE_TAIL_REFINE", Kv,
              Kv - G, st.max, st.sum);
        const double t = d->tail(K, xb, 2, st.max), lse = st.max + log1p(t);
        check(c, fabsl(t - want) <= 3 * d->eps * want, nm, "row_tail([%.17Lg, %.17Lg]) = %.17g, want %.17Lg", Kv,
              Kv - G, t, want);
        if (kk == 0)
            check(c, fabsl(lse - lwant) <= 4 * d->eps * lwant, nm, "lse([0, %.17Lg]) = %.17g, want %.17Lg", -G, lse,
                  lwant);
        const double top = st.max;
        double tl[2] = {1234.5, 1234.5};
        d->coltail(K, xb, 1, 2, 1, &top, tl);
        check(c, fabsl(tl[0] - want) <= 3 * d->eps * want && tl[1] == 1234.5, nm,
              "col_tail([%.17Lg, %.17Lg]) = %.17g, want %.17Lg", Kv, Kv - G, tl[0], want);
    }
    /* a tied max: the tail counts the other copy (1 + e^-G); -inf entries add nothing */
    d->set(xb, 0, 3);
    d->set(xb, 1, 3 - G);
    d->set(xb, 2, 3);
    {
        const LD want = 1 + ref_exp(d, -G);
        const double t = d->tail(K, xb, 3, 3.0);
        check(c, fabsl(t - want) <= 0x1p-52L + 3 * d->eps * (want - 1), nm, "row_tail([3, %.17Lg, 3]) = %.17g, want %.17Lg",
              3 - G, t, want);
    }
    d->set(xb, 0, -INFINITY);
    d->set(xb, 1, 0);
    d->set(xb, 2, -INFINITY);
    d->stats(K, xb, 3, NULL, 0, &st);
    {
        const double t = d->tail(K, xb, 3, 0.0);
        check(c, st.max == 0 && st.sum == 1 && t == 0, nm, "[-inf, 0, -inf]: max %.17g sum %.17g tail %.17g, want 0, 1, 0",
              st.max, st.sum, t);
    }

    /* dev is shift invariant: K + s k with every operation exact, dev bit-equal at K = 0, +-K
     * (measured from the max reported: row_stats and row_soft_stats may report a score up
     * to 16 below the row max, 4 s here, and dev is then sum u (max - x) from that one) */
    static const int KS[6] = {1, -2, 4, 3, 0, 4};
    static const double WS[6] = {1, 2, 0.5, 1, 3, 0.25};
    const LD s = d->is32 ? 0x1p17L : 2, Kd = d->is32 ? 0x1p40L : 1e16L; /* s = ulp(K) */
    for (int i = 0; i < 6; i++) d->set(wb, i, WS[i]);
    for (int kk = -1; kk <= 1; kk++) {
        const LD Kv = kk * Kd;
        for (int i = 0; i < 6; i++) d->set(xb, i, Kv + s * KS[i]);
        const double dw = (double)(28 * s), d1 = (double)(14 * s), top = (double)(Kv + 4 * s);
        /* sum u (M - x) for a reported max M = top - j s, j in 0..6 (a score of the row) */
#define DEV_AT(M, U) ((U) - (LD)(top - (M)) * ((U) == dw ? 7.75L : 6.0L)) /* dev - (top - M) u */
#define LAZY_OK(M) ((M) <= top && (M) >= top - DEV_LAG && is_score(d, xb, 6, (M)))
        d->stats(K, xb, 6, wb, 1, &st);
        check(c, LAZY_OK(st.max) && st.dev == DEV_AT(st.max, dw) && st.u == 7.75, nm,
              "row_stats(K + s k, w), K = %.9Lg: max %.17g dev %.17g u %.17g, want %.17Lg (for that max), 7.75", Kv,
              st.max, st.dev, st.u, DEV_AT(st.max, dw));
        d->stats(K, xb, 6, NULL, 1, &st);
        check(c, LAZY_OK(st.max) && st.dev == DEV_AT(st.max, d1) && st.u == 6, nm,
              "row_stats(K + s k, w=NULL), K = %.9Lg: max %.17g dev %.17g u %.17g, want %.17Lg, 6", Kv, st.max, st.dev,
              st.u, DEV_AT(st.max, d1));
        d->softstats(K, xb, wb, 6, NULL, 1.0, 0.0, &st); /* t = the weights: u = w */
        check(c, LAZY_OK(st.max) && st.dev == DEV_AT(st.max, dw) && st.u == 7.75, nm,
              "row_soft_stats(K + s k, t=w), K = %.9Lg: max %.17g dev %.17g u %.17g, want %.17Lg, 7.75", Kv, st.max,
              st.dev, st.u, DEV_AT(st.max, dw));
#undef DEV_AT
#undef LAZY_OK
        d->fused(K, xb, ob, 6, wb, 1, &st);
        check(c, st.max == top && st.dev == dw && st.u == 7.75, nm,
              "row_fused_stats(K + s k, w), K = %.9Lg: max %.17g dev %.17g u %.17g, want %.17g, %.17g, 7.75", Kv, st.max,
              st.dev, st.u, top, dw);
        d->colstats(K, xb, 1, 6, 1, wb, 1, mx, sm, dv);
        check(c, mx[0] == top && dv[0] == dw, nm, "col_stats(K + s k, w), K = %.9Lg: max %.17g dev %.17g, want %.17g",
              Kv, mx[0], dv[0], dw);
    }
    check(c, 1, nm, " ");
}

/* ------------------------------------------------------------------------------------ */
/* exp / log: dense sweeps (max ulp) and special values                                  */

enum { M_EXP_SWEEP, M_EXP_SPECIAL, M_LOG_SWEEP, M_LOG_SPECIAL, M_N };
static const char *MNAME[M_N] = {"exp sweep", "exp special values", "log sweep", "log special values"};
static tcase misccase[MAXISA][2][M_N];

#define CHUNK 65536

typedef struct {
    double max_ulp;
    LD worst_x, worst_got, worst_ref;
    long count;
} sweepstat;

/* reference exp / log: double for float32 (error far below a float ulp), long double for float64 */
static LD ref_fn(const dtype *d, int is_log, LD x) {
    return is_log ? ref_log(d, x) : ref_exp(d, x);
}

/* run one chunk of inputs through every active table, updating max ulp errors */
static void sweep_chunk(const dtype *d, int is_log, const fce_kernels **tabs, int nact, const void *xin, int64_t m,
                        LD *ref, void *out, sweepstat *ss) {
    for (int64_t i = 0; i < m; i++) ref[i] = ref_fn(d, is_log, d->get(xin, i));
    for (int a = 0; a < nact; a++) {
        g_isa = tabs[a]->name;
        WHERE(is_log ? "vlog sweep" : "vexp sweep", "");
        (is_log ? d->vlog : d->vexp)(tabs[a], xin, out, m);
        for (int64_t i = 0; i < m; i++) {
            const double got = (double)d->get(out, i);
            const LD rf = ref[i];
            double u;
            if (!isfinite(rf) || !isfinite(got)) u = ((LD)got == rf || (isnan(got) && isnan(rf))) ? 0 : INFINITY;
            else {
                const double hi = (double)rf, lo = (double)(rf - (LD)hi);
                u = fabs((got - hi) - lo) / ulp_d(d, hi);
            }
            if (u > ss[a].max_ulp || isnan(u)) {
                ss[a].max_ulp = isnan(u) ? INFINITY : u;
                ss[a].worst_x = d->get(xin, i);
                ss[a].worst_got = got;
                ss[a].worst_ref = rf;
            }
        }
        ss[a].count += m;
    }
}

/* generators of sweep points: fill up to CHUNK inputs, return how many (0 = done) */
typedef struct {
    int kind;          /* 0: bit patterns [b0, b1] step; 1: uniform grid [lo, hi] with m points; 2: random */
    uint64_t b0, b1, step, cur;
    LD lo, hi;
    uint64_t m, k;
    int rnd;           /* for kind 2: 0 uniform in [lo, hi]; 1 random positive finite bit patterns;
                        * 2 random subnormals; 3: +-2**U(-30, 0) * hi (small |x|) */
} gen;

static int64_t gen_fill(const dtype *d, gen *g, void *buf) {
    int64_t i = 0;
    if (g->kind == 0) {
        for (; i < CHUNK && g->cur <= g->b1; i++, g->cur += g->step) d->setbits(buf, i, g->cur);
    } else if (g->kind == 1) {
        for (; i < CHUNK && g->k < g->m; i++, g->k++) d->set(buf, i, g->lo + (g->hi - g->lo) * (LD)g->k / (LD)(g->m - 1));
    } else {
        for (; i < CHUNK && g->k < g->m; i++, g->k++) {
            if (g->rnd == 0) d->set(buf, i, g->lo + (g->hi - g->lo) * (LD)rng_unif());
            else if (g->rnd == 1) {
                uint64_t top = d->is32 ? 0x7f7fffffull : 0x7fefffffffffffffull;
                uint64_t b = 1 + rng_u64() % top;
                d->setbits(buf, i, b);
            } else if (g->rnd == 2) {
                uint64_t top = d->is32 ? 0x007fffffull : 0x000fffffffffffffull;
                d->setbits(buf, i, 1 + rng_u64() % top);
            } else {
                LD v = ldexpl(1 + rng_unif(), -(int)(rng_unif() * 30)) * (rng_unif() < 0.5 ? -1 : 1) * g->hi;
                d->set(buf, i, v);
            }
        }
    }
    return i;
}

static uint64_t bits_of(const dtype *d, LD v) {
    double buf[1];
    d->set(buf, 0, v);
    return d->getbits(buf, 0);
}

static void run_sweeps(const dtype *d, const fce_kernels **tabs, const int *isa_idx, int nact, double scale,
                       isa_report *reps) {
    const int dti = d->is32 ? 0 : 1;
    void *xin = malloc(CHUNK * sizeof(double)), *out = malloc(CHUNK * sizeof(double));
    LD *ref = malloc(CHUNK * sizeof(LD));
    for (int is_log = 0; is_log <= 1; is_log++) {
        gen gens[8];
        int ng = 0;
        memset(gens, 0, sizeof gens);
        uint64_t S = (uint64_t)(101 / scale);
        if (S < 1) S = 1;
        if (!is_log) {
            /* contract: f32 [-87.33, 88.37]; f64 [-708.39, 709.43] */
            LD lo = d->is32 ? -87.33L : -708.39L, hi = d->is32 ? 88.37L : 709.43L;
            if (d->is32) {
                /* every S-th float in [0, hi] and in [lo, -0] (dense near 0, where most floats are) */
                gens[ng++] = (gen){.kind = 0, .b0 = 0, .b1 = bits_of(d, hi), .step = S};
                gens[ng++] = (gen){.kind = 0, .b0 = 0x80000000u, .b1 = bits_of(d, lo), .step = S};
                /* every float near the ends, up to where the contract flushes to 0 / +inf */
                gens[ng++] = (gen){.kind = 0, .b0 = bits_of(d, 88.36L), .b1 = bits_of(d, 88.3762L), .step = 1};
                gens[ng++] = (gen){.kind = 0, .b0 = bits_of(d, -87.32L), .b1 = bits_of(d, -87.3365L), .step = 1};
            } else {
                gens[ng++] = (gen){.kind = 1, .lo = 709.0L, .hi = 709.436L, .m = (uint64_t)(2e5 * scale) + 2};
                gens[ng++] = (gen){.kind = 1, .lo = -708.3964L, .hi = -708.0L, .m = (uint64_t)(2e5 * scale) + 2};
            }
            gens[ng++] = (gen){.kind = 1, .lo = lo, .hi = hi, .m = (uint64_t)(4e6 * scale) + 2};
            gens[ng++] = (gen){.kind = 2, .rnd = 0, .lo = lo, .hi = hi, .m = (uint64_t)(2e6 * scale) + 2};
            gens[ng++] = (gen){.kind = 2, .rnd = 3, .hi = 1, .m = (uint64_t)(1e6 * scale) + 2};
        } else {
            if (d->is32) {
                /* every S-th positive finite float, subnormals included; denser on [0.5, 2) */
                gens[ng++] = (gen){.kind = 0, .b0 = 1, .b1 = 0x7f7fffffu, .step = S / 2 * 2 + 1};
                gens[ng++] = (gen){.kind = 0, .b0 = bits_of(d, 0.5L), .b1 = bits_of(d, 2.0L), .step = S / 16 + 1};
                gens[ng++] = (gen){.kind = 0, .b0 = 1, .b1 = 0x007fffffu, .step = S * 8 + 1};
            }
            gens[ng++] = (gen){.kind = 2, .rnd = 1, .m = (uint64_t)(3e6 * scale) + 2};
            gens[ng++] = (gen){.kind = 2, .rnd = 2, .m = (uint64_t)(3e5 * scale) + 2};
            gens[ng++] = (gen){.kind = 2, .rnd = 0, .lo = 0.5L, .hi = 2.0L, .m = (uint64_t)(2e6 * scale) + 2};
            gens[ng++] = (gen){.kind = 1, .lo = 1 - 0x1p-10L, .hi = 1 + 0x1p-10L, .m = (uint64_t)(1e6 * scale) + 2};
            gens[ng++] = (gen){.kind = 1, .lo = 1e-3L, .hi = 1e3L, .m = (uint64_t)(1e6 * scale) + 2};
        }
        sweepstat ss[MAXISA];
        memset(ss, 0, sizeof ss);
        rng_state = 0xabcdefull + (uint64_t)is_log * 7 + (uint64_t)dti;
        for (int gi = 0; gi < ng; gi++) {
            gens[gi].cur = gens[gi].b0;
            int64_t m;
            while ((m = gen_fill(d, &gens[gi], xin)) > 0) sweep_chunk(d, is_log, tabs, nact, xin, m, ref, out, ss);
        }
        for (int a = 0; a < nact; a++) {
            g_isa = tabs[a]->name;
            tcase *c = &misccase[isa_idx[a]][dti][is_log ? M_LOG_SWEEP : M_EXP_SWEEP];
            check(c, ss[a].max_ulp <= 2.0, MNAME[is_log ? M_LOG_SWEEP : M_EXP_SWEEP],
                  "max error %.3f ulp > 2 at x = %.17Lg (%La): got %.17Lg, want %.17Lg", ss[a].max_ulp, ss[a].worst_x,
                  ss[a].worst_x, ss[a].worst_got, ss[a].worst_ref);
            if (is_log) reps[a].log_ulp[dti] = ss[a].max_ulp, reps[a].log_worst[dti] = ss[a].worst_x;
            else reps[a].exp_ulp[dti] = ss[a].max_ulp, reps[a].exp_worst[dti] = ss[a].worst_x;
            if (g_verbose)
                printf("  [%s %s] %s: %ld points, max %.3f ulp at x = %.17Lg\n", g_isa, d->name, is_log ? "log" : "exp",
                       ss[a].count, ss[a].max_ulp, ss[a].worst_x);
        }
    }
    free(xin);
    free(out);
    free(ref);
}

/* special values: each at every position of a 37-element buffer (body, loop and tail
 * lanes) and alone (n = 1); want is exact (+0 means +0, not -0; nan means any nan) */
static void special_values(const dtype *d, const fce_kernels *K, int isa, int is_log) {
    const int dti = d->is32 ? 0 : 1;
    LD xs[32], want[32];
    int m = 0;
#define SV(X, W) (xs[m] = (X), want[m] = (W), m++)
    if (!is_log) {
        SV(-INFINITY, 0);
        SV(INFINITY, INFINITY);
        SV(NAN, NAN);
        SV(0, 1);
        SV(-0.0L, 1);
        SV(-d->tmax, 0);
        SV(d->tmax, INFINITY);
        if (d->is32) {
            SV(-87.3366L, 0); /* < -87.3365: flushed to +0 */
            SV(-88.0L, 0);
            SV(-103.5L, 0);
            SV(-1e30L, 0);
            SV(88.3763L, INFINITY); /* > 88.3762: +inf */
            SV(89.0L, INFINITY);
            SV(1e30L, INFINITY);
        } else {
            SV(-708.4L, 0);
            SV(-745.2L, 0);
            SV(-1e300L, 0);
            SV(709.44L, INFINITY);
            SV(710.0L, INFINITY);
            SV(1e300L, INFINITY);
        }
    } else {
        SV(0, -INFINITY);
        SV(-0.0L, -INFINITY);
        SV(-1, NAN);
        SV(-d->tmin, NAN);
        SV(-d->tmax, NAN);
        SV(-INFINITY, NAN);
        SV(INFINITY, INFINITY);
        SV(NAN, NAN);
        SV(1, 0);
    }
#undef SV
    tcase *c = &misccase[isa][dti][is_log ? M_LOG_SPECIAL : M_EXP_SPECIAL];
    const char *nm = MNAME[is_log ? M_LOG_SPECIAL : M_EXP_SPECIAL];
    WHERE(nm, "");
    double xb[40], ob[40];
    const int L = 37;
    for (int s = 0; s < m; s++) {
        for (int pos = -1; pos < L; pos++) {
            int n = pos < 0 ? 1 : L, at = pos < 0 ? 0 : pos;
            for (int i = 0; i < n; i++) d->set(xb, i, 0.5L);
            d->set(xb, at, xs[s]);
            (is_log ? d->vlog : d->vexp)(K, xb, ob, n);
            LD got = d->get(ob, at), x = d->get(xb, at);
            int ok = isnan(want[s]) ? isnan(got) : (got == want[s] && signbit(got) == signbit(want[s]));
            LD other = d->get(ob, n == 1 ? 0 : (at + 1) % n), wo = ref_fn(d, is_log, 0.5L);
            if (n > 1) ok = ok && fabsl(other - wo) <= 2 * ulp_d(d, (double)wo);
            if (!ok) {
                check(c, 0, nm, "%s(%.9Lg) = %.17Lg at position %d of %d, want %.17Lg", is_log ? "log" : "exp", x, got,
                      at, n, want[s]);
                break;
            }
        }
    }
    check(c, 1, nm, " ");
}

/* ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    double scale = 1.0;
    const char *env = getenv("FASTCE_CTEST_SCALE");
    if (env && *env) scale = atof(env);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) g_verbose = 1;
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) scale = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [-v] [-s SCALE]\n", argv[0]);
            return 2;
        }
    }
    if (!(scale > 0)) scale = 1.0;
    if (scale < 1) g_nlong = (int64_t)(MAXN * (scale > 0.25 ? scale : 0.25));
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGILL, on_signal);
    signal(SIGFPE, on_signal);

    const fce_kernels *tabs[MAXISA];
    int isa_idx[MAXISA], nact = 0;
    const int count = fce_isa_count();
#if defined(__x86_64__)
    const char *arch = "x86_64";
#elif defined(__aarch64__)
    const char *arch = "aarch64";
#else
    const char *arch = "other";
#endif
    printf("fastce kernel tests: %s, %d table(s) in this build, sweep scale %g, rows up to %lld\n", arch, count,
           scale, (long long)g_nlong);
    for (int i = 0; i < count && i < MAXISA; i++) {
        const fce_kernels *t = fce_isa_table(i);
        if (!t) {
            printf("FAIL fce_isa_table(%d) is NULL\n", i);
            continue;
        }
        if (!fce_isa_supported(i)) {
            printf("[%s] not supported by this CPU: not tested\n", t->name);
            continue;
        }
        tabs[nact] = t;
        isa_idx[nact] = nact;
        nact++;
    }
    if (fce_isa_table(count) != NULL || fce_isa_table(-1) != NULL || fce_isa_supported(count)) {
        printf("FAIL fce_isa_table/fce_isa_supported accept an index out of range\n");
        return 1;
    }
    g_wl = malloc(MAXN * sizeof(LD));
    g_e = malloc(MAXN * sizeof(LD));
    isa_report reps[MAXISA];
    memset(reps, 0, sizeof reps);
    clock_t t0 = clock();
    for (int dti = 0; dti < 2; dti++) {
        const dtype *d = &DTYPES[dti];
        g_dt = d->name;
        clock_t c0 = clock();
        test_rows(d, tabs, isa_idx, nact, reps);
        test_cols(d, tabs, nact, reps);
        test_soft(d, tabs, nact, reps);
        for (int a = 0; a < nact; a++) {
            g_isa = tabs[a]->name;
            test_examples(d, tabs[a], a);
        }
        clock_t c1 = clock();
        run_sweeps(d, tabs, isa_idx, nact, scale, reps);
        clock_t c2 = clock();
        printf("%s: row kernels %.1f s, exp/log sweeps %.1f s of CPU\n", d->name,
               (double)(c1 - c0) / CLOCKS_PER_SEC, (double)(c2 - c1) / CLOCKS_PER_SEC);
        for (int a = 0; a < nact; a++) {
            g_isa = tabs[a]->name;
            special_values(d, tabs[a], a, 0);
            special_values(d, tabs[a], a, 1);
        }
    }
    WHERE("", "");

    long pass = 0, fail = 0;
    for (int a = 0; a < nact; a++) {
        for (int dti = 0; dti < 2; dti++) {
            for (int k = 0; k < K_N; k++)
                for (int v = 0; v < V_N; v++) {
                    tcase *c = &rowcase[a][dti][k][v];
                    if (!c->checks) continue;
                    if (c->bad) reps[a].fail++;
                    else reps[a].pass++;
                    if (c->bad > c->msgs)
                        printf("FAIL [%s %s] %s / %s: %ld failed checks in all\n", tabs[a]->name, DTYPES[dti].name,
                               KNAME[k], VNAME[v], c->bad);
                    if (g_verbose)
                        printf("  %s [%s %s] %s / %s (%ld checks)\n", c->bad ? "FAIL" : "ok  ", tabs[a]->name,
                               DTYPES[dti].name, KNAME[k], VNAME[v], c->checks);
                }
            for (int xx = 0; xx < X_N; xx++) {
                tcase *c = &xcase[a][dti][xx];
                if (!c->checks) continue;
                if (c->bad) reps[a].fail++;
                else reps[a].pass++;
                if (c->bad > c->msgs)
                    printf("FAIL [%s %s] %s: %ld failed checks in all\n", tabs[a]->name, DTYPES[dti].name, XNAME[xx],
                           c->bad);
                if (g_verbose)
                    printf("  %s [%s %s] %s (%ld checks)\n", c->bad ? "FAIL" : "ok  ", tabs[a]->name, DTYPES[dti].name,
                           XNAME[xx], c->checks);
            }
            for (int mm = 0; mm < M_N; mm++) {
                tcase *c = &misccase[a][dti][mm];
                if (!c->checks) continue;
                if (c->bad) reps[a].fail++;
                else reps[a].pass++;
                if (g_verbose)
                    printf("  %s [%s %s] %s\n", c->bad ? "FAIL" : "ok  ", tabs[a]->name, DTYPES[dti].name, MNAME[mm]);
            }
        }
    }
    for (int a = 0; a < nact; a++) {
        const isa_report *r = &reps[a];
        printf("[%s] %d-bit: exp max ulp f32 %.3f f64 %.3f | log max ulp f32 %.3f f64 %.3f | "
               "stats sum err f32 %.1f eps (%.0f%% of bound) f64 %.1f eps (%.0f%%) | "
               "dev %.0f%% of bound f32, %.0f%% f64 (lazy kernels without the lag allowance: %.0f%%, %.0f%%) | "
               "tail err f32 %.1f eps (%.0f%%) f64 %.1f eps (%.0f%%) | "
               "exp_affine %.0f%% of bound f32, %.0f%% f64 (softmax, |x-lse|<=1: max ulp f32 %.2f f64 %.2f) | "
               "sub_shift max ulp f32 %.2f f64 %.2f | %ld passed, %ld failed\n",
               tabs[a]->name, tabs[a]->vector_bits, r->exp_ulp[0], r->exp_ulp[1], r->log_ulp[0], r->log_ulp[1],
               r->sum_err[0], 100 * r->sum_ratio[0], r->sum_err[1], 100 * r->sum_ratio[1], 100 * r->dev_ratio[0],
               100 * r->dev_ratio[1], 100 * r->dev_strict[0], 100 * r->dev_strict[1], r->tail_err[0],
               100 * r->tail_ratio[0], r->tail_err[1], 100 * r->tail_ratio[1], 100 * r->aff_ratio[0],
               100 * r->aff_ratio[1], r->soft_ulp[0], r->soft_ulp[1], r->sub_ulp[0], r->sub_ulp[1], r->pass, r->fail);
        pass += r->pass;
        fail += r->fail;
    }
    if (nact == 0) {
        printf("FAIL no kernel table is supported on this CPU\n");
        fail++;
    }
    printf("(%.1f s of CPU)\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    printf("%ld passed, %ld failed\n", pass, fail);
    return fail ? 1 : 0;
}
