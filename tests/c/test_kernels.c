/* C-level tests of fastce's kernel tables, on every ISA this build has and this CPU runs.
 *
 * No Python: links src/dispatch.c and src/isa_*.c. For every table i with
 * fce_isa_supported(i), each kernel (float32 and float64) is checked against a reference
 * computed here in long double (double for the float32 exp/log sweeps):
 *
 *   row_stats       lse = max + log(sum exp(x - max)) and sum w*x within error bounds
 *                   derived from the float type (max may be any reference, see
 *                   check_stats_vs_ref); -inf (masked) classes; empty and all -inf rows
 *                   give max -inf, sum 0; a nan or +inf anywhere gives lse = nan.
 *   row_exp_affine  out = a exp(x - shift) - beta w, w NULL or not, out == x (in place).
 *   row_sub_shift   out = x - shift, also in place.
 *   vexp, vlog      max ulp error over dense sweeps, and the special values of the
 *                   accuracy contract in include/fastce/vmath_impl.h.
 *
 * Row sizes 0..70, 1000 and 32000 cover the unrolled body, the one-vector loop and the
 * masked tail of every vector width. Inputs sit against a PROT_NONE page (after the row,
 * then before it), so a read past either end is a SIGSEGV, reported as a failure; output
 * buffers have sentinel elements on both sides that must stay untouched, and inputs must
 * be unchanged after every call.
 *
 * Output: FAIL lines (a few per case), one summary line per ISA with the largest errors
 * measured, and a last line "N passed, M failed" (cases). Exit status 1 on any failure.
 * Options: -s SCALE (or env FASTCE_CTEST_SCALE) scales the sweep sizes (default 1);
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

typedef long double LD;

/* ------------------------------------------------------------------------------------ */
/* dtype descriptors: the test logic is written once, over these                         */

typedef struct {
    const char *name;
    int is32;
    size_t esz;
    int p;       /* significand bits */
    int emin;    /* smallest normal exponent */
    LD eps;      /* ulp of 1: 2**(1-p) */
    LD tmin;     /* smallest normal */
    LD tmax;     /* largest finite */
    LD (*get)(const void *b, int64_t i);
    void (*set)(void *b, int64_t i, LD v); /* rounds to nearest */
    void (*setbits)(void *b, int64_t i, uint64_t bits);
    uint64_t (*getbits)(const void *b, int64_t i);
    void (*stats)(const fce_kernels *k, const void *x, int64_t n, const void *w, int ww, fce_stats *st);
    void (*affine)(const fce_kernels *k, const void *x, void *o, int64_t n, double s, double a, double b,
                   const void *w);
    void (*subsh)(const fce_kernels *k, const void *x, void *o, int64_t n, double s);
    void (*vexp)(const fce_kernels *k, const void *x, void *o, int64_t n);
    void (*vlog)(const fce_kernels *k, const void *x, void *o, int64_t n);
    int (*lanes)(const fce_kernels *k);
    void (*colstats)(const fce_kernels *k, const void *x, int64_t sc, int64_t C, int64_t nl, const void *w, int ww,
                     double *mx, double *sum, double *wx);
    void (*colaff)(const fce_kernels *k, const void *x, int64_t sc, void *o, int64_t osc, int64_t C, int64_t nl,
                   const double *shift, const double *a, const double *beta, const void *w);
    void (*colsub)(const fce_kernels *k, const void *x, int64_t sc, void *o, int64_t osc, int64_t C, int64_t nl,
                   const double *shift);
    void (*softstats)(const fce_kernels *k, const void *x, const void *t, int64_t n, const void *w, fce_stats *st);
    void (*softgrad)(const fce_kernels *k, const void *x, const void *t, void *o, int64_t n, double s, double a,
                     double b, double dl, const void *w);
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
    static void stats_##DT(const fce_kernels *k, const void *x, int64_t n, const void *w, int ww,  \
                           fce_stats *st) {                                                          \
        k->DT.row_stats((const TT *)x, n, (const TT *)w, ww, st);                                    \
    }                                                                                                \
    static void affine_##DT(const fce_kernels *k, const void *x, void *o, int64_t n, double s,      \
                            double a, double b, const void *w) {                                     \
        k->DT.row_exp_affine((const TT *)x, (TT *)o, n, s, a, b, (const TT *)w);                     \
    }                                                                                                \
    static void subsh_##DT(const fce_kernels *k, const void *x, void *o, int64_t n, double s) {     \
        k->DT.row_sub_shift((const TT *)x, (TT *)o, n, s);                                           \
    }                                                                                                \
    static void vexp_##DT(const fce_kernels *k, const void *x, void *o, int64_t n) {                \
        k->DT.vexp((const TT *)x, (TT *)o, n);                                                       \
    }                                                                                                \
    static void vlog_##DT(const fce_kernels *k, const void *x, void *o, int64_t n) {                \
        k->DT.vlog((const TT *)x, (TT *)o, n);                                                       \
    }                                                                                                \
    static int lanes_##DT(const fce_kernels *k) { return k->DT.lanes; }                              \
    static void colstats_##DT(const fce_kernels *k, const void *x, int64_t sc, int64_t C, int64_t nl, \
                              const void *w, int ww, double *mx, double *sum, double *wx) {          \
        k->DT.col_stats((const TT *)x, sc, C, nl, (const TT *)w, ww, mx, sum, wx);                   \
    }                                                                                                \
    static void colaff_##DT(const fce_kernels *k, const void *x, int64_t sc, void *o, int64_t osc,   \
                            int64_t C, int64_t nl, const double *s, const double *a, const double *b, \
                            const void *w) {                                                         \
        k->DT.col_exp_affine((const TT *)x, sc, (TT *)o, osc, C, nl, s, a, b, (const TT *)w);        \
    }                                                                                                \
    static void colsub_##DT(const fce_kernels *k, const void *x, int64_t sc, void *o, int64_t osc,   \
                            int64_t C, int64_t nl, const double *s) {                                \
        k->DT.col_sub_shift((const TT *)x, sc, (TT *)o, osc, C, nl, s);                              \
    }                                                                                                \
    static void softstats_##DT(const fce_kernels *k, const void *x, const void *t, int64_t n,       \
                               const void *w, fce_stats *st) {                                       \
        k->DT.row_soft_stats((const TT *)x, (const TT *)t, n, (const TT *)w, st);                    \
    }                                                                                                \
    static void softgrad_##DT(const fce_kernels *k, const void *x, const void *t, void *o, int64_t n, \
                              double s, double a, double b, double dl, const void *w) {              \
        k->DT.row_soft_grad((const TT *)x, (const TT *)t, (TT *)o, n, s, a, b, dl, (const TT *)w);   \
    }
DT_WRAP(f32, float, uint32_t)
DT_WRAP(f64, double, uint64_t)

static const dtype DTYPES[2] = {
    {"f32", 1, 4, 24, -126, 0x1p-23L, 0x1p-126L, FLT_MAX, get_f32, set_f32, setbits_f32, getbits_f32,
     stats_f32, affine_f32, subsh_f32, vexp_f32, vlog_f32, lanes_f32, colstats_f32, colaff_f32, colsub_f32,
     softstats_f32, softgrad_f32},
    {"f64", 0, 8, 53, -1022, 0x1p-52L, 0x1p-1022L, DBL_MAX, get_f64, set_f64, setbits_f64, getbits_f64,
     stats_f64, affine_f64, subsh_f64, vexp_f64, vlog_f64, lanes_f64, colstats_f64, colaff_f64, colsub_f64,
     softstats_f64, softgrad_f64},
};

/* exp / log for references: double is far more precise than a float32 ulp (and fast
 * everywhere); float64 data needs long double (80-bit on x86, 128-bit on AArch64) */
static LD ref_exp(const dtype *d, LD x) { return d->is32 ? (LD)exp((double)x) : expl(x); }
static LD ref_log(const dtype *d, LD x) { return d->is32 ? (LD)log((double)x) : logl(x); }

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
static char g_where[256]; /* what runs now, for the SIGSEGV message */

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
                       "\nFAIL [%s %s] %s: signal %d (%s)\n0 passed, 1 failed\n", g_isa, g_dt, g_where, sig,
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
    double sum_err[2];    /* row_stats sum: max |got - ref| / (ref * eps) */
    double sum_ratio[2];  /* ... as a fraction of the allowed bound */
    double soft_ulp[2];   /* row_exp_affine with a = 1, beta = 0 (softmax), |x - shift| <= 1: max ulp */
    double aff_ratio[2];  /* row_exp_affine: max error as a fraction of its bound */
    double sub_ulp[2];    /* row_sub_shift: max ulp */
    long pass, fail;
} isa_report;

/* ------------------------------------------------------------------------------------ */
/* row kernels                                                                           */

enum {
    K_STATS, K_STATS_WX, K_STATS_WXW, K_SOFTMAX, K_AFF_AB, K_AFF_ABW, K_AFF_INPLACE, K_AFF_NEG, K_SUB, K_SUB_INPLACE,
    K_N
};
static const char *KNAME[K_N] = {
    "row_stats(want_wx=0)",         "row_stats(want_wx=1,w=NULL)",  "row_stats(want_wx=1,w)",
    "row_exp_affine(a=1,beta=0)",   "row_exp_affine(w=NULL)",       "row_exp_affine(w)",
    "row_exp_affine(w,out==x)",     "row_exp_affine(a<0,beta<0,w)", "row_sub_shift",
    "row_sub_shift(out==x)",
};
enum {
    V_RANDOM, V_WIDE, V_ASCENDING, V_DESCENDING, V_LARGE, V_NEGINF, V_NAN_FIRST, V_NAN_MID, V_NAN_LAST,
    V_PINF_FIRST, V_PINF_MID, V_PINF_LAST, V_NAN_NEGINF, V_LOWEST, V_N
};
static const char *VNAME[V_N] = {
    "random(-inf masked)", "wide",      "ascending", "descending", "large offset", "all -inf",
    "nan first",           "nan middle", "nan last", "+inf first", "+inf middle",  "+inf last",
    "nan, rest -inf",      "all lowest finite",
};

#define GUARD 40
static const int64_t SIZES_EXTRA[] = {1000, 32000};
#define MAXN 32000

static tcase rowcase[MAXISA][2][K_N][V_N];

typedef struct {
    /* reference of one row */
    int64_t n;
    int n_nan, n_pinf, n_fin; /* counts of nan, +inf, finite entries */
    LD max, sum, wx_w, wx_1;  /* max over all non-nan, sum exp(x - max), sum w x, sum x */
    LD wxabs_w, wxabs_1;      /* sum |w x|, sum |x| */
    LD sum_bound;             /* allowed |sum error| */
    LD lse_fin;               /* lse over finite entries (shift for the elementwise kernels) */
    double shift;             /* lse_fin as a double, the shift passed to the kernels */
    refv *aff[K_AFF_NEG - K_SOFTMAX + 1]; /* row_exp_affine references, one array per config */
    refv *sub;                            /* row_sub_shift references */
} rowref;

/* row_exp_affine configurations, K_SOFTMAX .. K_AFF_NEG */
static const struct {
    double a, beta;
    int use_w;
} AFFCFG[] = {{1, 0, 0}, {0.37, 0.21, 0}, {0.37, 0.21, 1}, {0.37, 0.21, 1}, {-1.3, -0.5, 1}};

static void make_row(const dtype *d, int var, int64_t n, void *x, void *w) {
    const LD lowest = -d->tmax;
    int64_t p = var == V_NAN_FIRST || var == V_PINF_FIRST ? 0
                : var == V_NAN_LAST || var == V_PINF_LAST ? n - 1
                                                          : (n * 7) / 13;
    for (int64_t i = 0; i < n; i++) {
        LD v;
        switch (var) {
        case V_WIDE: v = d->is32 ? -60 + 120 * rng_unif() : -400 + 800 * rng_unif(); break;
        case V_ASCENDING: v = -4 + 8.0L * (LD)i / (LD)n; break;
        case V_DESCENDING: v = 4 - 8.0L * (LD)i / (LD)n; break;
        case V_LARGE: v = 1e4 + 3 * rng_normal(); break;
        case V_NEGINF: case V_NAN_NEGINF: v = -INFINITY; break;
        case V_LOWEST: v = lowest; break;
        default: v = 5 + 3 * rng_normal(); if (rng_unif() < 0.1) v = -INFINITY; break;
        }
        d->set(x, i, v);
        /* weights in [0, 2), a few exactly 0 */
        d->set(w, i, rng_unif() < 0.05 ? 0 : 2 * rng_unif());
    }
    if (n > 0) {
        if (var == V_NAN_FIRST || var == V_NAN_MID || var == V_NAN_LAST || var == V_NAN_NEGINF) d->set(x, p, NAN);
        if (var == V_PINF_FIRST || var == V_PINF_MID || var == V_PINF_LAST) d->set(x, p, INFINITY);
    }
}

static void ref_row(const dtype *d, const void *x, const void *w, int64_t n, rowref *r) {
    rowref keep = *r;
    memset(r, 0, sizeof *r);
    memcpy(r->aff, keep.aff, sizeof r->aff);
    r->sub = keep.sub;
    r->n = n;
    r->max = -INFINITY;
    LD fmax = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        LD v = d->get(x, i), wv = d->get(w, i);
        if (isnan(v)) r->n_nan++;
        else if (v == INFINITY) r->n_pinf++;
        else if (isfinite(v)) r->n_fin++;
        if (!isnan(v) && v > r->max) r->max = v;
        if (isfinite(v) && v > fmax) fmax = v;
        r->wx_w += wv * v;
        r->wx_1 += v;
        r->wxabs_w += fabsl(wv * v);
        r->wxabs_1 += fabsl(v);
    }
    /* sum and its error bound. Each term exp(x - m) is computed in the float type:
     * fl(x - m) costs 0.5 |x - m| eps relative, exp itself 2 ulp; the online rescaling
     * exp(m_old - m_new) adds a few eps per rescale of a lane (bounded below by the
     * number of times a lane's max can grow, which for these rows is small except in
     * the ascending ones: there every block grows the max). */
    LD s = 0, sfin = 0, terr = 0;
    for (int64_t i = 0; i < n; i++) {
        LD v = d->get(x, i);
        if (isfinite(r->max) && !isnan(v)) {
            LD dd = v - r->max, e = ref_exp(d, dd);
            s += e;
            if (e > 0) terr += e * (0.5L * fabsl(dd) + 3);
            if (isfinite(v) && fmax == r->max) sfin += e;
        } else if (isfinite(v) && isfinite(fmax)) {
            sfin += ref_exp(d, v - fmax);
        }
    }
    if (isfinite(fmax) && fmax != r->max) {
        sfin = 0;
        for (int64_t i = 0; i < n; i++) {
            LD v = d->get(x, i);
            if (isfinite(v)) sfin += ref_exp(d, v - fmax);
        }
    }
    r->sum = s;
    r->lse_fin = isfinite(fmax) ? fmax + ref_log(d, sfin) : 0;
    r->shift = (double)r->lse_fin;

    /* elementwise references, shared by every ISA and placement */
    const LD shift = (LD)r->shift, hi = d->is32 ? (LD)(float)r->shift : shift;
    for (int64_t i = 0; i < n; i++) {
        const LD xv = d->get(x, i), dd = xv - shift, e = ref_exp(d, dd);
        for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) {
            /* float32 gets a and beta rounded to float */
            const LD af = d->is32 ? (LD)(float)AFFCFG[k].a : (LD)AFFCFG[k].a;
            const LD bf = d->is32 ? (LD)(float)AFFCFG[k].beta : (LD)AFFCFG[k].beta;
            const LD wv = AFFCFG[k].use_w ? d->get(w, i) : 1;
            /* fl(fl(x - hi) - lo) rounds twice: up to ulp(d) <= |d| eps of argument error,
             * which exp turns into |d| eps relative; then exp's 2 ulp, a rounded, the
             * product and the difference */
            const LD terr = (e > 0 && isfinite(e)) ? fabsl(af * e) * (fabsl(dd) + 4) : 0;
            r->aff[k][i] = mkref(af * e - bf * wv, d->eps * (terr + 1.5L * fabsl(bf * wv)) + 2 * fabsl(af) * d->tmin);
        }
        /* x - shift: two roundings, of x - hi and of the result */
        r->sub[i] = mkref(dd, (LD)ulp_d(d, (double)dd) + 0.5L * (LD)ulp_d(d, (double)(xv - hi)));
    }
    LD rescale = 8 + 4 * log2l((LD)n + 1);
    r->sum_bound = d->eps * (terr + s * rescale) + s * (LD)n * 0x1p-53L + 4 * d->tmin;
}

static void check_out_guards(tcase *c, const dtype *d, const unsigned char *obuf, int64_t n, const char *nm,
                             const char *ctx) {
    const unsigned char *lo = obuf, *hi = obuf + (GUARD + n) * d->esz;
    int ok = 1;
    for (size_t i = 0; i < GUARD * d->esz; i++)
        if (lo[i] != 0xA5 || hi[i] != 0xA5) ok = 0;
    check(c, ok, nm, "%s: wrote outside [0, n) of the output", ctx);
}

static void check_stats_vs_ref(tcase *c, const char *nm, const char *ctx, const dtype *d, const rowref *r,
                               double mx, double sum, int want_wx, double wx, int use_w, isa_report *rep) {
    const int dti = d->is32 ? 0 : 1;
    const int special = r->n_nan || r->n_pinf;
    const double lse = mx + log(sum);
    if (special) {
        check(c, isnan(lse), nm, "%s: lse = %.17g (max %.17g, sum %.17g), want nan", ctx, lse, mx, sum);
    } else if (!isfinite(r->max)) {
        check(c, mx == -INFINITY && sum == 0.0, nm, "%s: max %.17g sum %.17g, want -inf and 0", ctx, mx, sum);
    } else {
        /* The summary must give lse = max + log(sum). Its max need not be the row max (a
         * kernel may keep a lower reference and rescale lazily), so the sum is compared
         * after moving it to the true max: S = sum * exp(max - row max), in long double.
         * A reference below the row max by D makes every exp argument longer by D:
         * 0.5 D eps more relative error. */
        const LD off = (LD)mx - r->max;
        const LD S = (LD)sum * (off == 0 ? 1.0L : expl(off));
        const LD bound = r->sum_bound + 0.5L * fabsl(off) * d->eps * r->sum;
        const int ok = isfinite(mx) && isfinite(sum) && fabsl(off) <= 100 && fabsl(S - r->sum) <= bound;
        check(c, ok, nm, "%s: max %.17g, sum %.17g: lse %.17g, want max %.17Lg sum %.17Lg lse %.17Lg "
              "(sum error %.3Lg eps relative, bound %.3Lg)", ctx, mx, sum, lse, r->max, r->sum, r->max + logl(r->sum),
              fabsl(S - r->sum) / (r->sum * d->eps), bound / (r->sum * d->eps));
        if (ok && r->sum > 0) {
            double e = (double)(fabsl(S - r->sum) / (r->sum * d->eps));
            double q = (double)(fabsl(S - r->sum) / bound);
            if (e > rep->sum_err[dti]) rep->sum_err[dti] = e;
            if (q > rep->sum_ratio[dti]) rep->sum_ratio[dti] = q;
        }
    }
    if (want_wx) {
        /* products (for float32 also sums of 4 of them) in the float type, then a float64
         * sum: n 2**-53 is the worst case of a recursive float64 sum. Where the terms
         * overflow the float type, an infinity of the right sign is the answer. */
        const LD want = use_w ? r->wx_w : r->wx_1, wabs = use_w ? r->wxabs_w : r->wxabs_1;
        const LD tol = (8 * d->eps + (LD)r->n * 0x1p-53L) * wabs + 8 * d->tmin;
        const int ovf = wabs > d->tmax / 8 && isinf(wx) && (wx < 0) == (want < 0);
        if (isnan(want)) check(c, isnan(wx), nm, "%s: wx %.17g, want nan", ctx, wx);
        else if (!special)
            check(c, ovf || close_to(wx, want, tol), nm, "%s: wx %.17g, want %.17Lg (tol %.3Lg)", ctx, wx, want, tol);
    }
}

static void run_rows(const dtype *d, const fce_kernels *K, int isa, int var, int64_t n, int at_end, const void *x,
                     const void *w, const void *x0, const void *w0, const rowref *r, unsigned char *obuf,
                     isa_report *rep) {
    const int dti = d->is32 ? 0 : 1;
    char ctx[96];
    snprintf(ctx, sizeof ctx, "n=%lld placed %s", (long long)n, at_end ? "before a guard page" : "after a guard page");
    void *out = obuf + GUARD * d->esz;
    const size_t nb = (size_t)n * d->esz;

    /* ---- row_stats ---- */
    for (int k = K_STATS; k <= K_STATS_WXW; k++) {
        tcase *c = &rowcase[isa][dti][k][var];
        char nm[128];
        snprintf(nm, sizeof nm, "%s / %s", KNAME[k], VNAME[var]);
        snprintf(g_where, sizeof g_where, "%s %s", nm, ctx);
        int ww = k != K_STATS;
        const void *wp = k == K_STATS_WXW ? w : NULL;
        fce_stats st = {.max = 1234.5, .sum = 1234.5, .wx = 1234.5};
        d->stats(K, x, n, wp, ww, &st);
        check(c, memcmp(x, x0, nb) == 0 && memcmp(w, w0, nb) == 0, nm, "%s: input modified", ctx);
        check_stats_vs_ref(c, nm, ctx, d, r, st.max, st.sum, ww, st.wx, k == K_STATS_WXW, rep);
    }

    /* ---- row_exp_affine ---- */
    const double shift = r->shift;
    for (int k = K_SOFTMAX; k <= K_AFF_NEG; k++) {
        tcase *c = &rowcase[isa][dti][k][var];
        char nm[128];
        snprintf(nm, sizeof nm, "%s / %s", KNAME[k], VNAME[var]);
        snprintf(g_where, sizeof g_where, "%s %s", nm, ctx);
        const double a = AFFCFG[k - K_SOFTMAX].a, beta = AFFCFG[k - K_SOFTMAX].beta;
        const void *wp = AFFCFG[k - K_SOFTMAX].use_w ? w : NULL;
        memset(obuf, 0xA5, (size_t)(n + 2 * GUARD) * d->esz);
        if (k == K_AFF_INPLACE) {
            memcpy(out, x, nb);
            d->affine(K, out, out, n, shift, a, beta, wp);
        } else {
            d->affine(K, x, out, n, shift, a, beta, wp);
            check(c, memcmp(x, x0, nb) == 0, nm, "%s: input modified", ctx);
        }
        check(c, memcmp(w, w0, nb) == 0, nm, "%s: weights modified", ctx);
        check_out_guards(c, d, obuf, n, nm, ctx);
        const refv *rf = r->aff[k - K_SOFTMAX];
        for (int64_t i = 0; i < n; i++) {
            const double got = (double)d->get(out, i);
            if (!meets(got, &rf[i])) {
                check(c, 0, nm, "%s: out[%lld] = %.17g, want %.17g (x %.17Lg, shift %.17g, a %g, beta %g, w %.9Lg)",
                      ctx, (long long)i, got, rf[i].hi, d->get(x0, i), shift, a, beta, wp ? d->get(w0, i) : 1.0L);
                break;
            }
            if (isfinite(rf[i].hi) && rf[i].tol > 0) {
                double q = ref_err(got, &rf[i]) / rf[i].tol;
                if (q > rep->aff_ratio[dti]) rep->aff_ratio[dti] = q;
            }
            if (k == K_SOFTMAX && isfinite(rf[i].hi) && rf[i].hi >= d->tmin &&
                fabs((double)d->get(x0, i) - shift) <= 1) {
                double u = ref_err(got, &rf[i]) / ulp_d(d, rf[i].hi);
                if (u > rep->soft_ulp[dti]) rep->soft_ulp[dti] = u;
            }
        }
        check(c, 1, nm, " ");
    }

    /* ---- row_sub_shift ---- */
    for (int k = K_SUB; k <= K_SUB_INPLACE; k++) {
        tcase *c = &rowcase[isa][dti][k][var];
        char nm[128];
        snprintf(nm, sizeof nm, "%s / %s", KNAME[k], VNAME[var]);
        snprintf(g_where, sizeof g_where, "%s %s", nm, ctx);
        memset(obuf, 0xA5, (size_t)(n + 2 * GUARD) * d->esz);
        if (k == K_SUB_INPLACE) {
            memcpy(out, x, nb);
            d->subsh(K, out, out, n, shift);
        } else {
            d->subsh(K, x, out, n, shift);
            check(c, memcmp(x, x0, nb) == 0, nm, "%s: input modified", ctx);
        }
        check_out_guards(c, d, obuf, n, nm, ctx);
        for (int64_t i = 0; i < n; i++) {
            const refv *rf = &r->sub[i];
            const double got = (double)d->get(out, i);
            if (!meets(got, rf)) {
                check(c, 0, nm, "%s: out[%lld] = %.17g, want %.17g (x %.17Lg, shift %.17g)", ctx, (long long)i, got,
                      rf->hi, d->get(x0, i), shift);
                break;
            }
            if (isfinite(rf->hi) && rf->hi != 0) {
                double u = ref_err(got, rf) / ulp_d(d, rf->hi);
                if (u > rep->sub_ulp[dti]) rep->sub_ulp[dti] = u;
            }
        }
        check(c, 1, nm, " ");
    }
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
    rowref r;
    for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) r.aff[k] = malloc(MAXN * sizeof(refv));
    r.sub = malloc(MAXN * sizeof(refv));
    int64_t sizes[71 + 2];
    int ns = 0;
    for (int i = 0; i <= 70; i++) sizes[ns++] = i;
    for (int i = 0; i < 2; i++) sizes[ns++] = SIZES_EXTRA[i];
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
                    run_rows(d, tabs[a], isa_idx[a], var, n, at_end, x, w, x0, w0, &r, obuf, &reps[a]);
                }
            }
        }
    }
    free(x0);
    free(w0);
    free(obuf);
    for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) free(r.aff[k]);
    free(r.sub);
}

/* ------------------------------------------------------------------------------------ */
/* column blocks (col_*: `lanes` rows side by side, element (c, l) at x[c * sc + l]) and  */
/* probability targets (row_soft_stats, row_soft_grad)                                   */

enum {
    X_COL_STATS, X_COL_STATS_WX, X_COL_STATS_WXW, X_COL_SOFTMAX, X_COL_AFF_AB, X_COL_AFF_ABW, X_COL_AFF_INPLACE,
    X_COL_SUB, X_COL_SUB_INPLACE, X_SOFT_STATS, X_SOFT_STATS_W, X_SOFT_STATS_MASKED, X_SOFT_GRAD, X_SOFT_GRAD_W,
    X_SOFT_GRAD_INPLACE, X_N
};
static const char *XNAME[X_N] = {
    "col_stats(want_wx=0)", "col_stats(want_wx=1,w=NULL)", "col_stats(want_wx=1,w)",
    "col_exp_affine(a=1,beta=NULL)", "col_exp_affine(w=NULL)", "col_exp_affine(w)", "col_exp_affine(w,out==x)",
    "col_sub_shift", "col_sub_shift(out==x)", "row_soft_stats(w=NULL)", "row_soft_stats(w)",
    "row_soft_stats(-inf classes with t=0: wtx nan)", "row_soft_grad(w=NULL)", "row_soft_grad(w)",
    "row_soft_grad(w,out==x)",
};
static tcase xcase[MAXISA][2][X_N];

#define MAXLANES 64
#define MAXC 257

/* lane kinds of a column block; the row variants they borrow */
static const int LANE_VARS[] = {V_RANDOM, V_NEGINF, V_WIDE, V_NAN_MID, V_LARGE, V_PINF_FIRST, V_DESCENDING,
                                V_NAN_NEGINF, V_LOWEST};
#define N_LANE_VARS ((int)(sizeof LANE_VARS / sizeof LANE_VARS[0]))

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
    for (int l = 0; l < MAXLANES; l++) {
        for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) refs[l].aff[k] = malloc(MAXC * sizeof(refv));
        refs[l].sub = malloc(MAXC * sizeof(refv));
    }
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
                    char ctx[128];
                    snprintf(ctx, sizeof ctx, "C=%lld nl=%d of %d lanes, stride %lld", (long long)C, nl, L, (long long)sc);

                    /* ---- col_stats ---- */
                    for (int k = X_COL_STATS; k <= X_COL_STATS_WXW; k++) {
                        tcase *c = &xcase[a][dti][k];
                        snprintf(g_where, sizeof g_where, "%s %s", XNAME[k], ctx);
                        double mx[MAXLANES + 1], sm[MAXLANES + 1], wx[MAXLANES + 1];
                        for (int l = 0; l <= MAXLANES; l++) mx[l] = sm[l] = wx[l] = 1234.5;
                        const int ww = k != X_COL_STATS, use_w = k == X_COL_STATS_WXW;
                        d->colstats(K, x, sc, C, nl, use_w ? wrow : NULL, ww, mx, sm, wx);
                        check(c, memcmp(x, blk, (size_t)span * es) == 0, XNAME[k], "%s: input modified", ctx);
                        int untouched = 1;
                        for (int l = nl; l <= MAXLANES; l++)
                            if (mx[l] != 1234.5 || sm[l] != 1234.5 || wx[l] != 1234.5) untouched = 0;
                        check(c, untouched, XNAME[k], "%s: wrote results for lanes >= nl", ctx);
                        for (int l = 0; l < nl; l++) {
                            char lctx[160];
                            snprintf(lctx, sizeof lctx, "%s, lane %d (%s)", ctx, l, VNAME[LANE_VARS[(l + C) % N_LANE_VARS]]);
                            check_stats_vs_ref(c, XNAME[k], lctx, d, &refs[l], mx[l], sm[l], ww, wx[l], use_w, &reps[a]);
                        }
                    }

                    /* ---- col_exp_affine, col_sub_shift ---- */
                    double shift[MAXLANES], av[MAXLANES], bv[MAXLANES];
                    for (int k = X_COL_SOFTMAX; k <= X_COL_SUB_INPLACE; k++) {
                        tcase *c = &xcase[a][dti][k];
                        snprintf(g_where, sizeof g_where, "%s %s", XNAME[k], ctx);
                        const int is_sub = k >= X_COL_SUB, inplace = k == X_COL_AFF_INPLACE || k == X_COL_SUB_INPLACE;
                        const int cfg = is_sub ? 0 : k - X_COL_SOFTMAX; /* AFFCFG index */
                        for (int l = 0; l < L; l++) {
                            shift[l] = l < nl ? refs[l].shift : 0;
                            av[l] = AFFCFG[cfg].a;
                            bv[l] = AFFCFG[cfg].beta;
                        }
                        const int64_t os = inplace ? sc : osc;
                        unsigned char *ob = obuf + GUARD * es;
                        memset(obuf, 0xA5, ((size_t)C * os + 2 * GUARD) * es);
                        const void *wp = AFFCFG[cfg].use_w ? wrow : NULL;
                        if (inplace) {
                            /* the whole block, gaps included, so untouched gaps can be checked */
                            memcpy(ob, blk, (size_t)C * sc * es);
                            if (is_sub) d->colsub(K, ob, sc, ob, sc, C, nl, shift);
                            else d->colaff(K, ob, sc, ob, sc, C, nl, shift, av, bv, wp);
                        } else {
                            if (is_sub) d->colsub(K, x, sc, ob, os, C, nl, shift);
                            else d->colaff(K, x, sc, ob, os, C, nl, shift, av, k == X_COL_SOFTMAX ? NULL : bv, wp);
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
                            const refv *rf = is_sub ? refs[l].sub : refs[l].aff[cfg];
                            for (int64_t cc = 0; cc < C; cc++) {
                                const double got = (double)d->get(ob, cc * os + l);
                                if (!meets(got, &rf[cc])) {
                                    check(c, 0, XNAME[k], "%s: lane %d class %lld = %.17g, want %.17g (x %.17Lg, shift %.17g)",
                                          ctx, l, (long long)cc, got, rf[cc].hi,
                                          d->get(rows + (size_t)l * MAXC * es, cc), shift[l]);
                                    break;
                                }
                            }
                        }
                        check(c, 1, XNAME[k], " ");
                    }
                }
            }
        }
    }
    for (int l = 0; l < MAXLANES; l++) {
        for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) free(refs[l].aff[k]);
        free(refs[l].sub);
    }
    free(refs);
    free(rows);
    free(wrow);
    free(blk);
    free(obuf);
}

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
    refv *gref[2];
    for (int j = 0; j < 2; j++) gref[j] = malloc(MAXN * sizeof(refv));
    rowref r;
    for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) r.aff[k] = malloc(MAXN * sizeof(refv));
    r.sub = malloc(MAXN * sizeof(refv));
    const double ga = 0.7, gb = 0.01, gd = 0.6; /* row_soft_grad: a, beta, delta */
    const LD gaf = d->is32 ? (LD)(float)ga : (LD)ga, gbf = d->is32 ? (LD)(float)gb : (LD)gb;
    const LD gdf = d->is32 ? (LD)(float)gd : (LD)gd;
    int64_t sizes[71 + 2];
    int ns = 0;
    for (int i = 0; i <= 70; i++) sizes[ns++] = i;
    for (int i = 0; i < 2; i++) sizes[ns++] = SIZES_EXTRA[i];
    for (int masked = 0; masked <= 1; masked++) {
        for (int si = 0; si < ns; si++) {
            const int64_t n = sizes[si];
            rng_state = 0x50f7ull + (uint64_t)n * 3 + (uint64_t)masked;
            make_row(d, masked ? V_RANDOM : V_WIDE, n, x0, w0);
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
            /* references for wtx = sum w t x, wts = sum w t */
            LD wtx[2] = {0, 0}, wts[2] = {0, 0}, awtx[2] = {0, 0}, awts[2] = {0, 0};
            for (int64_t i = 0; i < n; i++) {
                const LD xv = d->get(x0, i), tv = d->get(t0, i);
                for (int j = 0; j < 2; j++) {
                    const LD wv = j ? d->get(w0, i) : 1;
                    wtx[j] += wv * tv * xv;
                    wts[j] += wv * tv;
                    awtx[j] += fabsl(wv * tv * xv);
                    awts[j] += fabsl(wv * tv);
                }
                const LD dd = xv - (LD)r.shift, e = ref_exp(d, dd);
                const LD terr = (e > 0 && isfinite(e)) ? fabsl(gaf * e) * (fabsl(dd) + 4) : 0;
                for (int j = 0; j < 2; j++) {
                    const LD wv = j ? d->get(w0, i) : 1;
                    const LD sub = wv * (gbf + gdf * tv);
                    gref[j][i] = mkref(gaf * e - sub, d->eps * (terr + 2 * fabsl(wv) * (fabsl(gbf) + fabsl(gdf * tv))) +
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
                char ctx[96];
                snprintf(ctx, sizeof ctx, "n=%lld%s", (long long)n, masked ? ", -inf masked classes" : "");
                for (int j = 0; j < 2; j++) {
                    const int k = masked ? X_SOFT_STATS_MASKED : (j ? X_SOFT_STATS_W : X_SOFT_STATS);
                    if (masked && !j) continue;
                    tcase *c = &xcase[a][dti][k];
                    snprintf(g_where, sizeof g_where, "%s %s", XNAME[k], ctx);
                    fce_stats st = {.max = 1234.5, .sum = 1234.5, .wx = 1234.5};
                    st.wtx = st.wts = 1234.5;
                    d->softstats(K, x, t, n, j ? w : NULL, &st);
                    check(c, memcmp(x, x0, nb) == 0 && memcmp(t, t0, nb) == 0 && memcmp(w, w0, nb) == 0, XNAME[k],
                          "%s: input modified", ctx);
                    check_stats_vs_ref(c, XNAME[k], ctx, d, &r, st.max, st.sum, 1, st.wx, j, &reps[a]);
                    const LD tx = (2 * d->eps + (LD)n * 0x1p-53L) * awtx[j] + 8 * d->tmin;
                    const LD ts = (2 * d->eps + (LD)n * 0x1p-53L) * awts[j] + 8 * d->tmin;
                    check(c, close_to(st.wtx, wtx[j], tx), XNAME[k], "%s: wtx %.17g, want %.17Lg (tol %.3Lg)", ctx, st.wtx,
                          wtx[j], tx);
                    check(c, close_to(st.wts, wts[j], ts), XNAME[k], "%s: wts %.17g, want %.17Lg (tol %.3Lg)", ctx, st.wts,
                          wts[j], ts);
                }
                if (masked) continue;
                for (int k = X_SOFT_GRAD; k <= X_SOFT_GRAD_INPLACE; k++) {
                    tcase *c = &xcase[a][dti][k];
                    snprintf(g_where, sizeof g_where, "%s %s", XNAME[k], ctx);
                    const int j = k != X_SOFT_GRAD;
                    void *out = obuf + GUARD * es;
                    memset(obuf, 0xA5, (size_t)(n + 2 * GUARD) * es);
                    if (k == X_SOFT_GRAD_INPLACE) {
                        memcpy(out, x0, nb);
                        d->softgrad(K, out, t, out, n, r.shift, ga, gb, gd, w);
                    } else {
                        d->softgrad(K, x, t, out, n, r.shift, ga, gb, gd, j ? w : NULL);
                        check(c, memcmp(x, x0, nb) == 0, XNAME[k], "%s: input modified", ctx);
                    }
                    check(c, memcmp(t, t0, nb) == 0 && memcmp(w, w0, nb) == 0, XNAME[k], "%s: t or w modified", ctx);
                    check_out_guards(c, d, obuf, n, XNAME[k], ctx);
                    for (int64_t i = 0; i < n; i++) {
                        const double got = (double)d->get(out, i);
                        if (!meets(got, &gref[j][i])) {
                            check(c, 0, XNAME[k], "%s: out[%lld] = %.17g, want %.17g (x %.17Lg, t %.9Lg, shift %.17g)", ctx,
                                  (long long)i, got, gref[j][i].hi, d->get(x0, i), d->get(t0, i), r.shift);
                            break;
                        }
                    }
                    check(c, 1, XNAME[k], " ");
                }
            }
        }
    }
    for (int k = 0; k <= K_AFF_NEG - K_SOFTMAX; k++) free(r.aff[k]);
    free(r.sub);
    for (int j = 0; j < 2; j++) free(gref[j]);
    free(x0);
    free(t0);
    free(w0);
    free(obuf);
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
        snprintf(g_where, sizeof g_where, "%s sweep", is_log ? "vlog" : "vexp");
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
    snprintf(g_where, sizeof g_where, "%s", nm);
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
    printf("fastce kernel tests: %s, %d table(s) in this build, sweep scale %g\n", arch, count, scale);
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
    g_where[0] = 0;

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
               "row_stats sum err f32 %.1f eps (%.0f%% of bound) f64 %.1f eps (%.0f%%) | "
               "exp_affine %.0f%% of bound f32, %.0f%% f64 (softmax, |x-shift|<=1: max ulp f32 %.2f f64 %.2f) | "
               "sub_shift max ulp f32 %.2f f64 %.2f | %ld passed, %ld failed\n",
               tabs[a]->name, tabs[a]->vector_bits, r->exp_ulp[0], r->exp_ulp[1], r->log_ulp[0], r->log_ulp[1],
               r->sum_err[0], 100 * r->sum_ratio[0], r->sum_err[1], 100 * r->sum_ratio[1], 100 * r->aff_ratio[0],
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
