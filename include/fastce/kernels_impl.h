/* Row kernels, written once for float32 and float64 (template: see template.h).
 *
 * A "row" is n contiguous class scores. Every kernel has the three phases of NumPy's SIMD
 * loops: a body unrolled 4 vectors deep (independent exp chains keep the FMA units
 * busy), a one-vector loop, and a masked tail that computes exactly like the body.
 *
 * row_stats     one read: the row's max, sum of exp(x - max) (online softmax), and
 *               optionally dev = sum w (max - x) with u = sum w (fastce.h). Sums
 *               accumulate in float64 (the sum of exp compensated for float64 data).
 *               A lane's reference max only moves when a score exceeds it by
 *               FCE_RESCALE_MARGIN: exp(x - ref) <= e**16 stays exact enough,
 *               and rows whose max creeps up (sorted scores) pay a handful of
 *               rescales instead of one per vector, each of which rounds the factor
 *               exp(old - new) once. st->max is the largest lane reference: a score of
 *               the row, so x - max is exact-ish at any magnitude, and the row max itself
 *               whenever sum < 2 (a larger score would add more than 1 to the sum).
 *               Lanes start at the lowest finite value, not -inf, so -inf scores add
 *               exp(-inf) = 0 instead of exp(-inf - -inf) = nan.
 * row_tail      sum exp(x - top) minus one top score's 1, for rows whose sum is within
 *               FCE_TAIL_REFINE of 1: their log(sum) is then log1p(tail), accurate to the
 *               last bit (SciPy's logsumexp does the same).
 * exp_affine    out = a * exp(x - lse) - beta * w (w = 1 when NULL): softmax, and the
 *               cross-entropy gradient rows. out may alias x (in-place gradients).
 * sub_shift     out = x - lse: log-softmax rows.
 * fused_stats + scale   the gradient rows of in-cache rows with one exp per element.
 * col_*         the same for blocks of FCE_VN rows held side by side (see below).
 * soft_*        stats and gradient rows for probability targets (see below).
 * lse arrives as the float64 pair (m, l), lse = m + l, with m the row max (exact in the
 * input dtype) and l = log(sum): x - lse is computed as (x - hi) - lo, hi = m rounded
 * (exact), lo = the rest. Three roundings, whatever the magnitude of x: a log-softmax is
 * within 1.5 ulp of x - lse, and softmax([1e16, 1e16]) is [0.5, 0.5]. */

#if FCE_IS_F32
#define FCE_LOWEST (-3.40282347e38f)
#else
#define FCE_LOWEST (-1.7976931348623157e308)
#endif

#define FCE_RESCALE_MARGIN 16

/* s += v, compensated for float64 rows (Kahan: sc collects what each add rounds away,
 * the sum is s - sc). A float64 row can add many terms far below its running sums: 69998
 * classes at exp(-40) beside two at 1 lost 85 ulp of the lse uncompensated. A float32 row
 * sums float32 terms in float64, 29 bits below its sums: there sc is unused (compiled
 * away). No -ffast-math anywhere (setup.py), which would fold the compensation to 0. */
static inline void FN(sum_add)(ACC *s, ACC *sc, V v) {
#if FCE_IS_F32
    (void)sc;
    *s = AOP(add)(*s, v);
#else
    const V y = VOP(sub)(v, *sc), t = VOP(add)(*s, y);
    *sc = VOP(sub)(VOP(sub)(t, *s), y);
    *s = t;
#endif
}

/* the lanes' compensated sums */
static inline ACC FN(sum_lanes)(ACC s, ACC sc) {
#if FCE_IS_F32
    (void)sc;
    return s;
#else
    return VOP(sub)(s, sc);
#endif
}

/* per-lane state: reference max mx, sum of exp(x - mx) (with its compensation sc), and
 * for dev the weighted deviations d = sum u (mx - x), weights us = sum u, and corr, the
 * float64 correction the reference moves have added to dev (kept apart: they are rare) */
typedef struct { V mx; ACC s, sc, d, us; double corr; } FN(stats_acc);

static inline void FN(stats_init)(FN(stats_acc) *A) {
    A->mx = VOP(set1)(FCE_LOWEST);
    A->s = A->sc = A->d = A->us = AOP(zero)();
    A->corr = 0.0;
}

/* move lanes' reference max to bm where bm exceeds it by more than the margin */
static inline int FN(needs_rescale)(V bm, V mx) {
    return VOP(any_gt)(bm, VOP(add)(mx, VOP(set1)((FCE_T)FCE_RESCALE_MARGIN)));
}

static inline void FN(rebase)(FN(stats_acc) *A, V bm, const int want_dev) {
    const V f = FN(exp)(VOP(sub)(A->mx, bm));
    A->s = AOP(scale)(A->s, f);
    A->sc = AOP(scale)(A->sc, f);
    if (want_dev) { /* sum u (mx - x) -> sum u (bm - x): + (bm - mx) us per lane */
        FCE_T b[FCE_VN], m[FCE_VN];
        double us[FCE_VN];
        VOP(storeu)(b, bm);
        VOP(storeu)(m, A->mx);
        AOP(store)(us, A->us);
        for (int k = 0; k < FCE_VN; k++)
            if (us[k] != 0.0) A->corr += ((double)b[k] - (double)m[k]) * us[k];
    }
    A->mx = bm;
}

/* one vector of the online update; xd/uv: the (zero-filled) operands of u (mx - x) */
static inline void FN(stats_step1)(FN(stats_acc) *A, V xv, V xd, V uv, const int want_dev) {
    const V bm = VOP(max)(A->mx, xv);
    if (FN(needs_rescale)(bm, A->mx)) FN(rebase)(A, bm, want_dev);
    FN(sum_add)(&A->s, &A->sc, FN(exp)(VOP(sub)(xv, A->mx)));
    if (want_dev) {
        A->d = AOP(add)(A->d, VOP(mul)(uv, VOP(sub)(A->mx, xd)));
        A->us = AOP(add)(A->us, uv);
    }
}

/* lanes -> row: every lane moved to the largest reference, then added up */
static inline void FN(stats_finish)(const FN(stats_acc) *A, const int want_dev, fce_stats *st) {
    const FCE_T gm = VOP(hmax)(A->mx);
    st->dev = st->u = 0.0;
    if (gm == FCE_LOWEST) {
        /* empty, every score -inf (sum 0), nan among -inf (sum nan), or a true maximum of
         * exactly the lowest finite value (sum >= 1) */
        st->sum = AOP(hsum)(FN(sum_lanes)(A->s, A->sc));
        st->max = st->sum >= 1.0 ? (double)FCE_LOWEST : -INFINITY;
        if (want_dev) {
            st->dev = AOP(hsum)(A->d) + A->corr;
            st->u = AOP(hsum)(A->us);
        }
        return;
    }
    st->max = (double)gm;
    st->sum = AOP(hsum)(AOP(scale)(FN(sum_lanes)(A->s, A->sc), FN(exp)(VOP(sub)(A->mx, VOP(set1)(gm)))));
    if (want_dev) {
        FCE_T m[FCE_VN];
        double d[FCE_VN], us[FCE_VN], dev = A->corr, u = 0.0;
        VOP(storeu)(m, A->mx);
        AOP(store)(d, A->d);
        AOP(store)(us, A->us);
        for (int k = 0; k < FCE_VN; k++) {
            dev += d[k];
            if (us[k] != 0.0) dev += ((double)gm - (double)m[k]) * us[k];
            u += us[k];
        }
        st->dev = dev;
        st->u = u;
    }
}

/* u for the tail of an unweighted row: 1 on the real lanes, 0 past n */
static inline V FN(ones_tail)(int64_t r) {
    static const FCE_T ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    return VOP(load_tail)(ones, r, (FCE_T)0);
}

static inline void FN(stats_impl)(const FCE_T *x, int64_t n, const FCE_T *w, const int want_dev,
                                  fce_stats *st) {
    FN(stats_acc) A;
    FN(stats_init)(&A);
    const V one = VOP(set1)((FCE_T)1), four = VOP(set1)((FCE_T)4);
    int64_t i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        const V x0 = VOP(loadu)(x + i), x1 = VOP(loadu)(x + i + FCE_VN);
        const V x2 = VOP(loadu)(x + i + 2 * FCE_VN), x3 = VOP(loadu)(x + i + 3 * FCE_VN);
        const V bm = VOP(max)(A.mx, VOP(max)(VOP(max)(x0, x1), VOP(max)(x2, x3)));
        if (FN(needs_rescale)(bm, A.mx)) FN(rebase)(&A, bm, want_dev);
        const V e01 = VOP(add)(FN(exp)(VOP(sub)(x0, A.mx)), FN(exp)(VOP(sub)(x1, A.mx)));
        const V e23 = VOP(add)(FN(exp)(VOP(sub)(x2, A.mx)), FN(exp)(VOP(sub)(x3, A.mx)));
        FN(sum_add)(&A.s, &A.sc, VOP(add)(e01, e23));
        if (want_dev) {
            V p;
            if (w) {
                const V w0 = VOP(loadu)(w + i), w1 = VOP(loadu)(w + i + FCE_VN);
                const V w2 = VOP(loadu)(w + i + 2 * FCE_VN), w3 = VOP(loadu)(w + i + 3 * FCE_VN);
                p = VOP(fma)(w0, VOP(sub)(A.mx, x0), VOP(mul)(w1, VOP(sub)(A.mx, x1)));
                p = VOP(fma)(w2, VOP(sub)(A.mx, x2), p);
                p = VOP(fma)(w3, VOP(sub)(A.mx, x3), p);
                A.us = AOP(add)(A.us, VOP(add)(VOP(add)(w0, w1), VOP(add)(w2, w3)));
            } else {
                /* deviations first: 4 mx - sum x would cancel at large magnitudes */
                p = VOP(add)(VOP(add)(VOP(sub)(A.mx, x0), VOP(sub)(A.mx, x1)),
                             VOP(add)(VOP(sub)(A.mx, x2), VOP(sub)(A.mx, x3)));
                A.us = AOP(add)(A.us, four);
            }
            A.d = AOP(add)(A.d, p);
        }
    }
    for (; i + FCE_VN <= n; i += FCE_VN) {
        const V xv = VOP(loadu)(x + i);
        FN(stats_step1)(&A, xv, xv, w ? VOP(loadu)(w + i) : one, want_dev);
    }
    if (i < n) {
        const int64_t r = n - i;
        FN(stats_step1)(&A, VOP(load_tail)(x + i, r, (FCE_T)-INFINITY),
                        want_dev ? VOP(load_tail)(x + i, r, (FCE_T)0) : one,
                        w ? VOP(load_tail)(w + i, r, (FCE_T)0) : FN(ones_tail)(r), want_dev);
    }
    FN(stats_finish)(&A, want_dev, st);
}

static void FN(row_stats)(const FCE_T *x, int64_t n, const FCE_T *w, int want_dev, fce_stats *st) {
    /* separate instantiations, so the common want_dev == 0 loop carries no dead work */
    if (want_dev) FN(stats_impl)(x, n, w, 1, st);
    else FN(stats_impl)(x, n, NULL, 0, st);
}

/* sum_c exp(x_c - top) - 1 in float64, the 1 being one score equal to top (the max):
 * every term is below 1 and none is lost against it */
static double FN(row_tail)(const FCE_T *x, int64_t n, double top) {
    const V tv = VOP(set1)((FCE_T)top), one = VOP(set1)((FCE_T)1), zero = VOP(zero)();
    ACC s = AOP(zero)(), c = AOP(zero)();
    int64_t i = 0;
    for (; i < n; i += FCE_VN) {
        const V xv = n - i >= FCE_VN ? VOP(loadu)(x + i) : VOP(load_tail)(x + i, n - i, (FCE_T)-INFINITY);
        const M below = VOP(lt)(xv, tv);
        s = AOP(add)(s, VOP(select)(below, FN(exp)(VOP(sub)(xv, tv)), zero));
        c = AOP(add)(c, VOP(select)(below, zero, one));
    }
    return AOP(hsum)(s) + (AOP(hsum)(c) - 1.0);
}

/* the lse pair (m, l) as two vectors: hi = m rounded, lo = the rest plus l */
static inline void FN(split_lse)(double m, double l, V *hi, V *lo) {
    const FCE_T h = (FCE_T)m;
    *hi = VOP(set1)(h);
    *lo = VOP(set1)((FCE_T)((m - (double)h) + l));
}

static inline V FN(affine1)(V xv, V hi, V lo, V a, V b, V wv, const int has_beta) {
    const V y = VOP(mul)(a, FN(exp)(VOP(sub)(VOP(sub)(xv, hi), lo)));
    return has_beta ? VOP(sub)(y, VOP(mul)(b, wv)) : y;
}

static inline void FN(exp_affine_impl)(const FCE_T *x, FCE_T *out, int64_t n, double m, double l, double a,
                                       double beta, const FCE_T *w, const int has_beta) {
    V hi, lo;
    FN(split_lse)(m, l, &hi, &lo);
    const V av = VOP(set1)((FCE_T)a), bv = VOP(set1)((FCE_T)beta), one = VOP(set1)((FCE_T)1);
    int64_t i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        V y[4];
        for (int k = 0; k < 4; k++) {
            const V wv = (has_beta && w) ? VOP(loadu)(w + i + k * FCE_VN) : one;
            y[k] = FN(affine1)(VOP(loadu)(x + i + k * FCE_VN), hi, lo, av, bv, wv, has_beta);
        }
        for (int k = 0; k < 4; k++) VOP(storeu)(out + i + k * FCE_VN, y[k]);
    }
    for (; i + FCE_VN <= n; i += FCE_VN) {
        const V wv = (has_beta && w) ? VOP(loadu)(w + i) : one;
        VOP(storeu)(out + i, FN(affine1)(VOP(loadu)(x + i), hi, lo, av, bv, wv, has_beta));
    }
    if (i < n) {
        const int64_t r = n - i;
        const V wv = (has_beta && w) ? VOP(load_tail)(w + i, r, (FCE_T)0) : one;
        VOP(store_tail)(out + i, r, FN(affine1)(VOP(load_tail)(x + i, r, (FCE_T)0), hi, lo, av, bv, wv, has_beta));
    }
}

static void FN(row_exp_affine)(const FCE_T *x, FCE_T *out, int64_t n, double m, double l, double a,
                               double beta, const FCE_T *w) {
    if (beta != 0.0) FN(exp_affine_impl)(x, out, n, m, l, a, beta, w, 1);
    else FN(exp_affine_impl)(x, out, n, m, l, a, 0.0, NULL, 0);
}

static void FN(row_sub_shift)(const FCE_T *x, FCE_T *out, int64_t n, double m, double l) {
    V hi, lo;
    FN(split_lse)(m, l, &hi, &lo);
    int64_t i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        V y[4];
        for (int k = 0; k < 4; k++) y[k] = VOP(sub)(VOP(sub)(VOP(loadu)(x + i + k * FCE_VN), hi), lo);
        for (int k = 0; k < 4; k++) VOP(storeu)(out + i + k * FCE_VN, y[k]);
    }
    for (; i + FCE_VN <= n; i += FCE_VN) VOP(storeu)(out + i, VOP(sub)(VOP(sub)(VOP(loadu)(x + i), hi), lo));
    if (i < n) {
        const int64_t r = n - i;
        VOP(store_tail)(out + i, r, VOP(sub)(VOP(sub)(VOP(load_tail)(x + i, r, (FCE_T)0), hi), lo));
    }
}

/* elementwise exp and log over a buffer: for the accuracy tests and elementwise losses */
#define FCE__ELEMENTWISE(NAME, OP)                                                           \
    static void FN(NAME)(const FCE_T *x, FCE_T *out, int64_t n) {                            \
        int64_t i = 0;                                                                       \
        for (; i + FCE_VN <= n; i += FCE_VN) VOP(storeu)(out + i, OP(VOP(loadu)(x + i)));    \
        if (i < n) VOP(store_tail)(out + i, n - i, OP(VOP(load_tail)(x + i, n - i, (FCE_T)1))); \
    }
FCE__ELEMENTWISE(vexp, FN(exp))
FCE__ELEMENTWISE(vlog, FN(log))
#undef FCE__ELEMENTWISE

/* ---- fused gradient rows with one exp per element -------------------------------------
 * fused_stats   pass 1 reads the row for its max; pass 2 writes e = exp(x - max) to out
 *               while summing it (and dev): st as row_stats. out may alias x (in place):
 *               read x[y] before calling.
 * scale         pass 3, in cache: out = a * out - beta * w, so out = a/sum * e - beta w
 *               is the gradient row without a second exp. */
static inline void FN(fused_stats_impl)(const FCE_T *x, FCE_T *out, int64_t n, const FCE_T *w,
                                        const int want_dev, fce_stats *st) {
    V m0 = VOP(set1)(FCE_LOWEST), m1 = m0;
    int64_t i = 0;
    for (; i + 2 * FCE_VN <= n; i += 2 * FCE_VN) {
        m0 = VOP(max)(m0, VOP(loadu)(x + i));
        m1 = VOP(max)(m1, VOP(loadu)(x + i + FCE_VN));
    }
    for (; i < n; i += FCE_VN)
        m0 = VOP(max)(m0, n - i >= FCE_VN ? VOP(loadu)(x + i) : VOP(load_tail)(x + i, n - i, (FCE_T)-INFINITY));
    const FCE_T gm = VOP(hmax)(VOP(max)(m0, m1));
    /* all -inf: gm stays the lowest finite value, and exp(-inf - gm) = 0: the sum is 0 */
    const V mv = VOP(set1)(gm), one = VOP(set1)((FCE_T)1);
    ACC s = AOP(zero)(), sc = AOP(zero)(), d = AOP(zero)(), us = AOP(zero)();
    i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        V e[4], xv[4];
        for (int k = 0; k < 4; k++) xv[k] = VOP(loadu)(x + i + k * FCE_VN);
        for (int k = 0; k < 4; k++) e[k] = FN(exp)(VOP(sub)(xv[k], mv));
        if (want_dev)
            for (int k = 0; k < 4; k++) { /* before the store: out may alias x */
                const V uv = w ? VOP(loadu)(w + i + k * FCE_VN) : one;
                d = AOP(add)(d, VOP(mul)(uv, VOP(sub)(mv, xv[k])));
                us = AOP(add)(us, uv);
            }
        for (int k = 0; k < 4; k++) VOP(storeu)(out + i + k * FCE_VN, e[k]);
        FN(sum_add)(&s, &sc, VOP(add)(VOP(add)(e[0], e[1]), VOP(add)(e[2], e[3])));
    }
    for (; i < n; i += FCE_VN) {
        const int64_t r = n - i < FCE_VN ? n - i : FCE_VN;
        const V xv = r == FCE_VN ? VOP(loadu)(x + i) : VOP(load_tail)(x + i, r, (FCE_T)-INFINITY);
        const V e = FN(exp)(VOP(sub)(xv, mv));
        if (want_dev) {
            const V xd = r == FCE_VN ? xv : VOP(load_tail)(x + i, r, (FCE_T)0);
            const V uv = w ? (r == FCE_VN ? VOP(loadu)(w + i) : VOP(load_tail)(w + i, r, (FCE_T)0))
                           : (r == FCE_VN ? one : FN(ones_tail)(r));
            d = AOP(add)(d, VOP(mul)(uv, VOP(sub)(mv, xd)));
            us = AOP(add)(us, uv);
        }
        if (r == FCE_VN) VOP(storeu)(out + i, e);
        else VOP(store_tail)(out + i, r, e);
        FN(sum_add)(&s, &sc, e);
    }
    st->dev = want_dev ? AOP(hsum)(d) : 0.0;
    st->u = want_dev ? AOP(hsum)(us) : 0.0;
    st->sum = AOP(hsum)(FN(sum_lanes)(s, sc));
    /* a true lowest-finite max has sum >= 1; otherwise every score was -inf (or nan) */
    st->max = (gm == FCE_LOWEST && !(st->sum >= 1.0)) ? -INFINITY : (double)gm;
}

static void FN(row_fused_stats)(const FCE_T *x, FCE_T *out, int64_t n, const FCE_T *w, int want_dev,
                                fce_stats *st) {
    if (want_dev) FN(fused_stats_impl)(x, out, n, w, 1, st);
    else FN(fused_stats_impl)(x, out, n, NULL, 0, st);
}

static inline void FN(scale_impl)(FCE_T *out, int64_t n, double a, double beta, const FCE_T *w,
                                  const int has_beta) {
    const V av = VOP(set1)((FCE_T)a), bv = VOP(set1)((FCE_T)beta), one = VOP(set1)((FCE_T)1);
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN) {
        V y = VOP(mul)(av, VOP(loadu)(out + i));
        if (has_beta) y = VOP(sub)(y, VOP(mul)(bv, w ? VOP(loadu)(w + i) : one));
        VOP(storeu)(out + i, y);
    }
    if (i < n) {
        const int64_t r = n - i;
        V y = VOP(mul)(av, VOP(load_tail)(out + i, r, (FCE_T)0));
        if (has_beta) y = VOP(sub)(y, VOP(mul)(bv, w ? VOP(load_tail)(w + i, r, (FCE_T)0) : one));
        VOP(store_tail)(out + i, r, y);
    }
}

static void FN(row_scale)(FCE_T *out, int64_t n, double a, double beta, const FCE_T *w) {
    if (beta != 0.0) FN(scale_impl)(out, n, a, beta, w, 1);
    else FN(scale_impl)(out, n, a, 0.0, NULL, 0);
}

/* ---- probability targets t (a second stream, same length as the row) -----------------
 * soft_stats    row_stats with u = w t', t' = ta t + tb (the smoothed targets), always:
 *               dev = sum w t' (max - x), u = sum w t' (0 * inf = nan where a -inf class
 *               has t' = 0, as in torch)
 * soft_grad     out = a * exp(x - lse) - w * (beta + delta * t) */
static void FN(row_soft_stats)(const FCE_T *x, const FCE_T *t, int64_t n, const FCE_T *w, double ta,
                               double tb, fce_stats *st) {
    FN(stats_acc) A;
    FN(stats_init)(&A);
    const V av = VOP(set1)((FCE_T)ta), bv = VOP(set1)((FCE_T)tb);
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN) {
        const V xv = VOP(loadu)(x + i), tp = VOP(fma)(av, VOP(loadu)(t + i), bv);
        FN(stats_step1)(&A, xv, xv, w ? VOP(mul)(VOP(loadu)(w + i), tp) : tp, 1);
    }
    if (i < n) {
        const int64_t r = n - i;
        const V tp = VOP(fma)(av, VOP(load_tail)(t + i, r, (FCE_T)0), bv);
        const V wz = w ? VOP(load_tail)(w + i, r, (FCE_T)0) : FN(ones_tail)(r);
        FN(stats_step1)(&A, VOP(load_tail)(x + i, r, (FCE_T)-INFINITY), VOP(load_tail)(x + i, r, (FCE_T)0),
                        VOP(mul)(wz, tp), 1);
    }
    FN(stats_finish)(&A, 1, st);
}

static inline V FN(soft1)(V xv, V tv, V wv, V hi, V lo, V a, V b, V d) {
    const V y = VOP(mul)(a, FN(exp)(VOP(sub)(VOP(sub)(xv, hi), lo)));
    return VOP(sub)(y, VOP(mul)(wv, VOP(fma)(d, tv, b)));
}

static void FN(row_soft_grad)(const FCE_T *x, const FCE_T *t, FCE_T *out, int64_t n, double m, double l,
                              double a, double beta, double delta, const FCE_T *w) {
    V hi, lo;
    FN(split_lse)(m, l, &hi, &lo);
    const V av = VOP(set1)((FCE_T)a), bv = VOP(set1)((FCE_T)beta), dv = VOP(set1)((FCE_T)delta);
    const V one = VOP(set1)((FCE_T)1);
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN)
        VOP(storeu)(out + i, FN(soft1)(VOP(loadu)(x + i), VOP(loadu)(t + i), w ? VOP(loadu)(w + i) : one,
                                       hi, lo, av, bv, dv));
    if (i < n) {
        const int64_t r = n - i;
        VOP(store_tail)(out + i, r, FN(soft1)(VOP(load_tail)(x + i, r, (FCE_T)0), VOP(load_tail)(t + i, r, (FCE_T)0),
                                              w ? VOP(load_tail)(w + i, r, (FCE_T)0) : one, hi, lo, av, bv, dv));
    }
}

/* ---- logit softcapping (Gemma 2): x -> c tanh(x / c), and the gradient's chain rule ----
 * softcap       out = c * tanh(x / c)          (out may alias x)
 * softcap_grad  g *= 1 - (xc / c)**2, xc the capped logits */
static void FN(row_softcap)(const FCE_T *x, FCE_T *out, int64_t n, double cap) {
    const V c = VOP(set1)((FCE_T)cap), ic = VOP(set1)((FCE_T)(1.0 / cap));
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN)
        VOP(storeu)(out + i, VOP(mul)(c, FN(tanh)(VOP(mul)(VOP(loadu)(x + i), ic))));
    if (i < n)
        VOP(store_tail)(out + i, n - i, VOP(mul)(c, FN(tanh)(VOP(mul)(VOP(load_tail)(x + i, n - i, (FCE_T)0), ic))));
}

static void FN(row_softcap_grad)(const FCE_T *xc, FCE_T *g, int64_t n, double cap) {
    const V one = VOP(set1)((FCE_T)1), ic = VOP(set1)((FCE_T)(1.0 / cap));
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN) {
        const V t = VOP(mul)(VOP(loadu)(xc + i), ic);
        VOP(storeu)(g + i, VOP(mul)(VOP(loadu)(g + i), VOP(sub)(one, VOP(mul)(t, t))));
    }
    if (i < n) {
        const V t = VOP(mul)(VOP(load_tail)(xc + i, n - i, (FCE_T)0), ic);
        VOP(store_tail)(g + i, n - i, VOP(mul)(VOP(load_tail)(g + i, n - i, (FCE_T)0), VOP(sub)(one, VOP(mul)(t, t))));
    }
}

/* elementwise tanh over a buffer (accuracy tests) */
static void FN(vtanh)(const FCE_T *x, FCE_T *out, int64_t n) {
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN) VOP(storeu)(out + i, FN(tanh)(VOP(loadu)(x + i)));
    if (i < n) VOP(store_tail)(out + i, n - i, FN(tanh)(VOP(load_tail)(x + i, n - i, (FCE_T)0)));
}

/* ---- column blocks: FCE_VN rows side by side ------------------------------------------
 * Element (class c, lane l) is x[c * sc + l]; lanes l < nl are real rows, the others are
 * loaded as zeros and never stored. One vector holds one class of FCE_VN rows, so a row
 * costs no tail and no horizontal reduction: the path for small class counts (blocks
 * transposed into scratch by the caller) and for class-strided layouts (K-dim inputs,
 * Fortran order), which are read in place. Two passes per block (max, then sum of
 * exp): a block of small C lives in L1. */

static inline V FN(col_load)(const FCE_T *p, int64_t nl) {
    return nl == FCE_VN ? VOP(loadu)(p) : VOP(load_tail)(p, nl, (FCE_T)0);
}

static inline void FN(col_store)(FCE_T *p, int64_t nl, V v) {
    if (nl == FCE_VN) VOP(storeu)(p, v);
    else VOP(store_tail)(p, nl, v);
}

/* The small-C blocks: nl rows of C contiguous scores (row l at x + l * rs) transposed into
 * blk, class c of lane l at blk[c * FCE_VN + l], and back, by strided loads (gathers) and
 * contiguous stores. Lanes past nl are not touched (col_load masks them); col_unpack reads
 * blk up to class ceil(C / FCE_VN) FCE_VN (the caller pads it), stores only classes < C. */
#define FCE_STRIDED_MAX ((int64_t)(INT32_MAX / FCE_VN)) /* gather offsets are int32 */

static void FN(col_pack)(const FCE_T *x, int64_t rs, int64_t C, int64_t nl, FCE_T *blk) {
    if (nl == FCE_VN && rs <= FCE_STRIDED_MAX) {
        for (int64_t c = 0; c < C; c++) VOP(storeu)(blk + c * FCE_VN, VOP(load_strided)(x + c, rs));
        return;
    }
    for (int64_t l = 0; l < nl; l++)
        for (int64_t c = 0; c < C; c++) blk[c * FCE_VN + l] = x[l * rs + c];
}

static void FN(col_unpack)(const FCE_T *blk, int64_t C, int64_t nl, FCE_T *x, int64_t rs) {
    for (int64_t l = 0; l < nl; l++) {
        FCE_T *row = x + l * rs;
        int64_t c = 0;
        for (; c + FCE_VN <= C; c += FCE_VN) VOP(storeu)(row + c, VOP(load_strided)(blk + c * FCE_VN + l, FCE_VN));
        if (c < C) VOP(store_tail)(row + c, C - c, VOP(load_strided)(blk + c * FCE_VN + l, FCE_VN));
    }
}
#undef FCE_STRIDED_MAX

/* per-lane lse pairs (m, l) as vectors: hi = m rounded, lo = the rest plus l; lanes past nl 0 */
static inline void FN(col_split)(const double *m, const double *l, int64_t nl, V *hi, V *lo) {
    FCE_T h[FCE_VN], r[FCE_VN];
    for (int64_t k = 0; k < FCE_VN; k++) {
        const double d = k < nl ? m[k] : 0.0;
        h[k] = (FCE_T)d;
        r[k] = (FCE_T)((d - (double)h[k]) + (l && k < nl ? l[k] : 0.0));
    }
    *hi = VOP(loadu)(h);
    *lo = VOP(loadu)(r);
}

/* per lane: max, sum of exp(x - max), and dev = sum w (max - x) (its u is the sum of w) */
static void FN(col_stats)(const FCE_T *x, int64_t sc, int64_t C, int64_t nl, const FCE_T *w,
                          int want_dev, double *mx, double *sum, double *dev) {
    V m = VOP(set1)(FCE_LOWEST);
    for (int64_t c = 0; c < C; c++) m = VOP(max)(m, FN(col_load)(x + c * sc, nl));
    ACC s = AOP(zero)(), a = AOP(zero)();
    for (int64_t c = 0; c < C; c++) {
        const V xv = FN(col_load)(x + c * sc, nl);
        s = AOP(add)(s, FN(exp)(VOP(sub)(xv, m)));
        if (want_dev) a = AOP(add)(a, w ? VOP(mul)(VOP(set1)(w[c]), VOP(sub)(m, xv)) : VOP(sub)(m, xv));
    }
    FCE_T mt[FCE_VN];
    double st[FCE_VN], at[FCE_VN];
    VOP(storeu)(mt, m);
    AOP(store)(st, s);
    AOP(store)(at, a);
    for (int64_t l = 0; l < nl; l++) {
        sum[l] = st[l];
        /* all -inf (sum 0) or nan among -inf (sum nan); a true lowest-finite max has sum >= 1 */
        mx[l] = (mt[l] == FCE_LOWEST && !(st[l] >= 1.0)) ? -INFINITY : (double)mt[l];
        if (want_dev) dev[l] = at[l];
    }
}

/* row_tail per lane, top[l] the lane's max */
static void FN(col_tail)(const FCE_T *x, int64_t sc, int64_t C, int64_t nl, const double *top, double *tail) {
    V tv, unused;
    FN(col_split)(top, NULL, nl, &tv, &unused);
    const V one = VOP(set1)((FCE_T)1), zero = VOP(zero)();
    ACC s = AOP(zero)(), c1 = AOP(zero)();
    for (int64_t c = 0; c < C; c++) {
        const V xv = FN(col_load)(x + c * sc, nl);
        const M below = VOP(lt)(xv, tv);
        s = AOP(add)(s, VOP(select)(below, FN(exp)(VOP(sub)(xv, tv)), zero));
        c1 = AOP(add)(c1, VOP(select)(below, zero, one));
    }
    double st[FCE_VN], ct[FCE_VN];
    AOP(store)(st, s);
    AOP(store)(ct, c1);
    for (int64_t l = 0; l < nl; l++) tail[l] = st[l] + (ct[l] - 1.0);
}

static void FN(col_exp_affine)(const FCE_T *x, int64_t sc, FCE_T *out, int64_t osc, int64_t C, int64_t nl,
                               const double *m, const double *l, const double *a, const double *beta,
                               const FCE_T *w) {
    V hi, lo, av, bv = VOP(zero)(), unused;
    FN(col_split)(m, l, nl, &hi, &lo);
    FN(col_split)(a, NULL, nl, &av, &unused);
    if (beta) FN(col_split)(beta, NULL, nl, &bv, &unused);
    for (int64_t c = 0; c < C; c++) {
        const V xv = FN(col_load)(x + c * sc, nl);
        V y = VOP(mul)(av, FN(exp)(VOP(sub)(VOP(sub)(xv, hi), lo)));
        if (beta) y = VOP(sub)(y, w ? VOP(mul)(bv, VOP(set1)(w[c])) : bv);
        FN(col_store)(out + c * osc, nl, y);
    }
}

static void FN(col_sub_shift)(const FCE_T *x, int64_t sc, FCE_T *out, int64_t osc, int64_t C, int64_t nl,
                              const double *m, const double *l) {
    V hi, lo;
    FN(col_split)(m, l, nl, &hi, &lo);
    for (int64_t c = 0; c < C; c++)
        FN(col_store)(out + c * osc, nl, VOP(sub)(VOP(sub)(FN(col_load)(x + c * sc, nl), hi), lo));
}

#if FCE_IS_F32
/* ---- half-precision storage: rows convert to and from float32 scratch ------------------
 * src/dst contiguous; the tail goes through the scalar converters (half.h), which round
 * exactly like the vector instructions. */
#define FCE__CONVERT(KIND)                                                                   \
    static void FN(from_##KIND)(const uint16_t *src, float *dst, int64_t n) {                \
        int64_t i = 0;                                                                       \
        for (; i + FCE_VN <= n; i += FCE_VN) VOP(storeu)(dst + i, VOP(load_##KIND)(src + i)); \
        for (; i < n; i++) dst[i] = fce_cvt_##KIND##_f32(src[i]);                              \
    }                                                                                        \
    static void FN(to_##KIND)(const float *src, uint16_t *dst, int64_t n) {                  \
        int64_t i = 0;                                                                       \
        for (; i + FCE_VN <= n; i += FCE_VN) VOP(store_##KIND)(dst + i, VOP(loadu)(src + i)); \
        for (; i < n; i++) dst[i] = fce_cvt_f32_##KIND(src[i]);                                \
    }
FCE__CONVERT(f16)
FCE__CONVERT(bf16)
#undef FCE__CONVERT
#endif

#undef FCE_LOWEST
#undef FCE_RESCALE_MARGIN
