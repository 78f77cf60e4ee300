/* C-level test of the bce_block kernel (include/fastce/bce_impl.h) on every kernel table
 * this build has and this CPU runs: natively (scalar, AVX2, AVX-512) and, cross-compiled
 * for AArch64 and run under qemu-user, NEON. tests/test_bce.py::test_c_kernel_every_isa
 * builds and runs it both ways (usage: test_bce [longest short length, default 70]).
 *
 * For lengths 0..70 (unrolled body, one-vector loop and masked tail of every vector width),
 * 1000 and 8193, float32 and float64, weights / pos_weights absent, scalar or per element,
 * and every call pattern (loss sum, per-element loss, gradient with a scalar or
 * per-element scale, both, gradient only, in place), the outputs are compared with a long
 * double evaluation of the same formula:
 *   per-element loss  within 16 ulp relative (no cancellation: every term is >= 0),
 *                     plus the flush of exp(-|x|) below the smallest normal;
 *   loss sum          within 16 ulp of the sum of |terms|, plus n float64 roundings;
 *   gradient          within 16 ulp of w * gs * ((1 - y) s + pw y (1 - s)) (the two terms
 *                     may cancel), plus the flush.
 * Outputs carry sentinels on both sides that must stay untouched; inputs must not change.
 * Last line: "N passed, M failed"; exit status 1 on any failure. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastce/fastce.h"

typedef long double LD;

static uint64_t rng_state = 88172645463325252ull;
static double urand(void) { /* xorshift64*, uniform in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double nrand(void) { /* Box-Muller */
    double u = urand(), v = urand();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static int n_pass, n_fail;
static void fail(const char *isa, const char *dt, const char *what, int64_t n, int64_t i, double got, double want) {
    if (n_fail < 40)
        printf("FAIL %s %s %s n=%lld i=%lld: got %.17g want %.17g\n", isa, dt, what, (long long)n, (long long)i, got,
               want);
    n_fail++;
}

/* reference, in long double: loss and the two gradient terms */
static void ref1(LD x, LD y, LD w, LD pw, LD *loss, LD *gpos, LD *gneg) {
    LD ax = fabsl(x), t = expl(-ax), L = log1pl(t);
    LD s = x >= 0 ? 1 / (1 + t) : t / (1 + t), sn = x >= 0 ? t / (1 + t) : 1 / (1 + t);
    LD lw = 1 + (pw - 1) * y;
    *loss = w * (lw * L + (x > 0 ? x : 0) * (1 - y) + (x < 0 ? -x : 0) * pw * y);
    *gpos = w * (1 - y) * s;
    *gneg = w * pw * y * sn;
}

#define PAD 8
#define SENT 12345.0

/* one dtype, written with a macro so float and double get the same code */
#define DEFINE_CASE(DT, T, EPS, TINY)                                                                          \
    static void case_##DT(const fce_kernels *K, int64_t n, int wmode, int pwmode, int pattern) {              \
        const char *isa = K->name;                                                                            \
        T *x = malloc((n + 2 * PAD) * sizeof(T)), *y = malloc((n + 1) * sizeof(T));                           \
        T *w = malloc((n + 1) * sizeof(T)), *pw = malloc((n + 1) * sizeof(T)), *ge = malloc((n + 1) * sizeof(T)); \
        T *g = malloc((n + 2 * PAD) * sizeof(T)), *le = malloc((n + 2 * PAD) * sizeof(T));                    \
        T *x0 = malloc((n + 1) * sizeof(T));                                                                  \
        for (int64_t i = 0; i < n + 2 * PAD; i++) g[i] = le[i] = (T)SENT, x[i] = (T)SENT;                     \
        T *xv = x + PAD;                                                                                      \
        for (int64_t i = 0; i < n; i++) {                                                                     \
            double r = urand();                                                                               \
            xv[i] = (T)(r < 0.02 ? (urand() < 0.5 ? -1.0 : 1.0) * 1e4 : r < 0.05 ? -80.0 * urand() : 3.0 * nrand()); \
            y[i] = (T)(urand() < 0.3 ? (urand() < 0.5 ? 0.0 : 1.0) : urand());                                \
            w[i] = (T)(0.25 + 1.75 * urand());                                                                \
            pw[i] = (T)(0.25 + 1.75 * urand());                                                               \
            ge[i] = (T)(4.0 * urand() - 2.0);                                                                 \
            x0[i] = xv[i];                                                                                    \
        }                                                                                                     \
        const double wscalar = 1.5, pw0 = pwmode == 1 ? 2.5 : 1.0, gs = 0.375;                                 \
        const T *wp = wmode == 2 ? w : NULL, *pwp = pwmode == 2 ? pw : NULL;                                   \
        const double lscale = wmode == 1 ? wscalar : 1.0, gscale = gs * (wmode == 1 ? wscalar : 1.0);         \
        /* patterns: 0 sum, 1 elem, 2 grad+sum, 3 grad(ge)+elem, 4 grad, 5 grad(ge), 6 grad+sum in place */   \
        const int want_sum = pattern == 0 || pattern == 2 || pattern == 6;                                     \
        const int want_elem = pattern == 1 || pattern == 3;                                                    \
        const int want_grad = pattern >= 2, use_ge = pattern == 3 || pattern == 5;                             \
        T *gout = pattern == 6 ? xv : g + PAD;                                                                \
        double sum = -1.0;                                                                                    \
        K->DT.bce_block(xv, y, wp, pwp, pw0, want_grad ? gout : NULL, n, gscale, use_ge ? ge : NULL, lscale,   \
                        want_sum ? &sum : NULL, want_elem ? le + PAD : NULL);                                 \
        LD rsum = 0, rabs = 0;                                                                                \
        int ok = 1;                                                                                           \
        for (int64_t i = 0; i < n; i++) {                                                                     \
            LD wi = wmode == 2 ? (LD)w[i] : wmode == 1 ? (LD)(T)wscalar : 1, pi = pwmode == 2 ? (LD)pw[i] : (LD)(T)pw0; \
            LD l, gp, gn;                                                                                     \
            ref1((LD)x0[i], (LD)y[i], wi, pi, &l, &gp, &gn);                                                  \
            rsum += l;                                                                                        \
            rabs += fabsl(l);                                                                                 \
            if (want_elem) {                                                                                  \
                LD got = le[PAD + i];                                                                         \
                if (!(fabsl(got - l) <= 16 * EPS * fabsl(l) + TINY * wi * 2)) {                                \
                    fail(isa, #DT, "loss_elem", n, i, (double)got, (double)l);                                \
                    ok = 0;                                                                                   \
                }                                                                                             \
            }                                                                                                 \
            if (want_grad) {                                                                                  \
                LD sc = (LD)(T)gs * (use_ge ? (LD)ge[i] : 1);                                                 \
                LD want = sc * (gp - gn), got = gout[i];                                                      \
                if (!(fabsl(got - want) <= 16 * EPS * fabsl(sc) * (gp + gn) + TINY * 4)) {                     \
                    fail(isa, #DT, pattern == 6 ? "grad (in place)" : "grad", n, i, (double)got, (double)want); \
                    ok = 0;                                                                                   \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        /* float64 sums run in float64: allow the n roundings of a plain sum on top */                        \
        if (want_sum && !(fabsl((LD)sum - rsum) <= (16 * EPS + n * (LD)DBL_EPSILON) * rabs + TINY * n * 4)) {   \
            fail(isa, #DT, "loss_sum", n, -1, sum, (double)rsum);                                             \
            ok = 0;                                                                                           \
        }                                                                                                     \
        if (!want_sum && sum != -1.0) {                                                                       \
            fail(isa, #DT, "loss_sum written", n, -1, sum, -1.0);                                             \
            ok = 0;                                                                                           \
        }                                                                                                     \
        for (int64_t i = 0; i < PAD; i++) {                                                                   \
            if (g[i] != (T)SENT || g[PAD + n + i] != (T)SENT || le[i] != (T)SENT || le[PAD + n + i] != (T)SENT || \
                x[i] != (T)SENT || x[PAD + n + i] != (T)SENT) {                                               \
                fail(isa, #DT, "write outside [0, n)", n, i, 0, 0);                                           \
                ok = 0;                                                                                       \
                break;                                                                                        \
            }                                                                                                 \
        }                                                                                                     \
        if (pattern != 6)                                                                                     \
            for (int64_t i = 0; i < n; i++)                                                                   \
                if (memcmp(&xv[i], &x0[i], sizeof(T))) {                                                      \
                    fail(isa, #DT, "input x modified", n, i, (double)xv[i], (double)x0[i]);                   \
                    ok = 0;                                                                                   \
                    break;                                                                                    \
                }                                                                                             \
        if (ok) n_pass++;                                                                                     \
        free(x); free(y); free(w); free(pw); free(ge); free(g); free(le); free(x0);                           \
    }

DEFINE_CASE(f32, float, (LD)FLT_EPSILON, (LD)FLT_MIN)
DEFINE_CASE(f64, double, (LD)DBL_EPSILON, (LD)DBL_MIN)

/* special values: torch's results */
static void specials(const fce_kernels *K) {
    const double xs[6] = {INFINITY, INFINITY, -INFINITY, -INFINITY, NAN, 1e4};
    const double ys[6] = {0.0, 1.0, 0.0, 0.5, 0.5, 1.0};
    const double want_l[6] = {INFINITY, NAN, NAN, NAN, NAN, 0.0};
    const double want_g[6] = {1.0, 0.0, 0.0, -0.5, NAN, 0.0};
    double x[6], y[6], l[6], g[6];
    float xf[6], yf[6], lf[6], gf[6];
    for (int i = 0; i < 6; i++) x[i] = xs[i], y[i] = ys[i], xf[i] = (float)xs[i], yf[i] = (float)ys[i];
    K->f64.bce_block(x, y, NULL, NULL, 1.0, g, 6, 1.0, NULL, 1.0, NULL, l);
    K->f32.bce_block(xf, yf, NULL, NULL, 1.0, gf, 6, 1.0, NULL, 1.0, NULL, lf);
    int ok = 1;
    for (int i = 0; i < 6; i++) {
        double cand[4] = {l[i], g[i], lf[i], gf[i]}, want[4] = {want_l[i], want_g[i], want_l[i], want_g[i]};
        for (int k = 0; k < 4; k++) {
            int same = isnan(want[k]) ? isnan(cand[k]) : cand[k] == want[k];
            if (!same) {
                fail(K->name, k < 2 ? "f64" : "f32", k % 2 ? "special grad" : "special loss", 6, i, cand[k], want[k]);
                ok = 0;
            }
        }
    }
    if (ok) n_pass++;
}

int main(int argc, char **argv) {
    /* argv[1]: the longest short length (default 70; under qemu, 24 covers NEON's tails) */
    const int64_t nmax = argc > 1 ? atoi(argv[1]) : 70;
    int64_t lengths[75];
    int nl = 0;
    for (int64_t n = 0; n <= nmax && n <= 70; n++) lengths[nl++] = n;
    lengths[nl++] = 1000;
    if (nmax >= 70) lengths[nl++] = 8193;
    for (int t = 0; t < fce_isa_count(); t++) {
        if (!fce_isa_supported(t)) continue;
        const fce_kernels *K = fce_isa_table(t);
        int before = n_fail;
        for (int li = 0; li < nl; li++)
            for (int wm = 0; wm < 3; wm++)
                for (int pm = 0; pm < 3; pm++)
                    for (int pat = 0; pat < 7; pat++) {
                        if (lengths[li] > 70 && wm != pm) continue; /* long rows: fewer mixes */
                        case_f32(K, lengths[li], wm, pm, pat);
                        case_f64(K, lengths[li], wm, pm, pat);
                    }
        specials(K);
        printf("%s: %s\n", K->name, n_fail == before ? "ok" : "FAILED");
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
