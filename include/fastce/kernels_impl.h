/* Row kernels, written once for float32 and float64 (template: see template.h).
 *
 * A "row" is n contiguous class scores. Every kernel has the three phases of NumPy's SIMD
 * loops: a body unrolled 4 vectors deep (independent exp chains keep the FMA units
 * busy), a one-vector loop, and a masked tail that computes exactly like the body.
 *
 * row_stats     one read: running max per lane and sum of exp(x - max) (online softmax),
 *               plus optionally sum(w * x). Sums accumulate in float64. A lane's
 *               reference max only moves when a score exceeds it by FCE_RESCALE_MARGIN:
 *               exp(x - max) <= e**16 stays exact enough, and rows whose max creeps up
 *               (sorted scores) pay a handful of rescales instead of one per vector, each
 *               of which rounds the factor exp(old - new) once.
 *               Lanes start at the lowest finite value, not -inf, so -inf scores add
 *               exp(-inf) = 0 instead of exp(-inf - -inf) = nan.
 * exp_affine    out = a * exp(x - shift) - beta * w (w = 1 when NULL): softmax, and the
 *               cross-entropy gradient rows. out may alias x (in-place gradients).
 * sub_shift     out = x - shift: log-softmax rows.
 * fused_stats + scale   the gradient rows of in-cache rows with one exp per element.
 * col_*         the same three for blocks of FCE_VN rows held side by side (see below).
 * soft_*        stats and gradient rows for probability targets (see below).
 * Shifts arrive in float64 and are applied as (x - hi) - lo with hi + lo the float64
 * value: two roundings, so a float32 log-softmax is within 1 ulp of x - shift. */

#if FCE_IS_F32
#define FCE_LOWEST (-3.40282347e38f)
#else
#define FCE_LOWEST (-1.7976931348623157e308)
#endif

#define FCE_RESCALE_MARGIN 16

typedef struct { V mx; ACC s; ACC wx; } FN(stats_acc);

/* move lanes' reference max to bm where bm exceeds it by more than the margin */
static inline int FN(needs_rescale)(V bm, V mx) {
    return VOP(any_gt)(bm, VOP(add)(mx, VOP(set1)((FCE_T)FCE_RESCALE_MARGIN)));
}

/* one vector of the online max/sum update; xz/wz are the (zero-filled) operands of w*x */
static inline void FN(stats_step1)(FN(stats_acc) *A, V xv, V xz, V wz, const int want_wx) {
    const V bm = VOP(max)(A->mx, xv);
    if (FN(needs_rescale)(bm, A->mx)) {
        A->s = AOP(scale)(A->s, FN(exp)(VOP(sub)(A->mx, bm)));
        A->mx = bm;
    }
    A->s = AOP(add)(A->s, FN(exp)(VOP(sub)(xv, A->mx)));
    if (want_wx) A->wx = AOP(add)(A->wx, VOP(mul)(xz, wz));
}

/* lanes -> row: the lanes' sums rescaled to the row max, then added up */
static inline void FN(stats_finish)(const FN(stats_acc) *A, const int want_wx, fce_stats *st) {
    const FCE_T gm = VOP(hmax)(A->mx);
    st->wx = want_wx ? AOP(hsum)(A->wx) : 0.0;
    st->wtx = st->wts = 0.0;
    if (gm == FCE_LOWEST) {
        /* empty, every score -inf (sum 0), nan among -inf (sum nan), or a true maximum of
         * exactly the lowest finite value (sum >= 1) */
        st->sum = AOP(hsum)(A->s);
        st->max = st->sum >= 1.0 ? (double)FCE_LOWEST : -INFINITY;
        return;
    }
    st->max = (double)gm;
    st->sum = AOP(hsum)(AOP(scale)(A->s, FN(exp)(VOP(sub)(A->mx, VOP(set1)(gm)))));
}

static inline void FN(stats_impl)(const FCE_T *x, int64_t n, const FCE_T *w, const int want_wx,
                                  fce_stats *st) {
    FN(stats_acc) A = {VOP(set1)(FCE_LOWEST), AOP(zero)(), AOP(zero)()};
    const V one = VOP(set1)((FCE_T)1);
    int64_t i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        const V x0 = VOP(loadu)(x + i), x1 = VOP(loadu)(x + i + FCE_VN);
        const V x2 = VOP(loadu)(x + i + 2 * FCE_VN), x3 = VOP(loadu)(x + i + 3 * FCE_VN);
        const V bm = VOP(max)(A.mx, VOP(max)(VOP(max)(x0, x1), VOP(max)(x2, x3)));
        if (FN(needs_rescale)(bm, A.mx)) {
            A.s = AOP(scale)(A.s, FN(exp)(VOP(sub)(A.mx, bm)));
            A.mx = bm;
        }
        const V e01 = VOP(add)(FN(exp)(VOP(sub)(x0, A.mx)), FN(exp)(VOP(sub)(x1, A.mx)));
        const V e23 = VOP(add)(FN(exp)(VOP(sub)(x2, A.mx)), FN(exp)(VOP(sub)(x3, A.mx)));
        A.s = AOP(add)(A.s, VOP(add)(e01, e23));
        if (want_wx) {
            V p;
            if (w) {
                p = VOP(fma)(x0, VOP(loadu)(w + i), VOP(mul)(x1, VOP(loadu)(w + i + FCE_VN)));
                p = VOP(fma)(x2, VOP(loadu)(w + i + 2 * FCE_VN), p);
                p = VOP(fma)(x3, VOP(loadu)(w + i + 3 * FCE_VN), p);
            } else {
                p = VOP(add)(VOP(add)(x0, x1), VOP(add)(x2, x3));
            }
            A.wx = AOP(add)(A.wx, p);
        }
    }
    for (; i + FCE_VN <= n; i += FCE_VN) {
        const V xv = VOP(loadu)(x + i);
        FN(stats_step1)(&A, xv, xv, w ? VOP(loadu)(w + i) : one, want_wx);
    }
    if (i < n) {
        const int64_t r = n - i;
        FN(stats_step1)(&A, VOP(load_tail)(x + i, r, (FCE_T)-INFINITY),
                        want_wx ? VOP(load_tail)(x + i, r, (FCE_T)0) : one,
                        w ? VOP(load_tail)(w + i, r, (FCE_T)0) : one, /* x lanes past n are 0 */
                        want_wx);
    }
    FN(stats_finish)(&A, want_wx, st);
}

static void FN(row_stats)(const FCE_T *x, int64_t n, const FCE_T *w, int want_wx, fce_stats *st) {
    /* separate instantiations, so the common want_wx == 0 loop carries no dead work */
    if (want_wx) FN(stats_impl)(x, n, w, 1, st);
    else FN(stats_impl)(x, n, NULL, 0, st);
}

static inline V FN(affine1)(V xv, V hi, V lo, V a, V b, V wv, const int has_beta) {
    const V y = VOP(mul)(a, FN(exp)(VOP(sub)(VOP(sub)(xv, hi), lo)));
    return has_beta ? VOP(sub)(y, VOP(mul)(b, wv)) : y;
}

static inline void FN(exp_affine_impl)(const FCE_T *x, FCE_T *out, int64_t n, double shift, double a,
                                       double beta, const FCE_T *w, const int has_beta) {
    const FCE_T hs = (FCE_T)shift;
    const V hi = VOP(set1)(hs), lo = VOP(set1)((FCE_T)(shift - (double)hs));
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

static void FN(row_exp_affine)(const FCE_T *x, FCE_T *out, int64_t n, double shift, double a, double beta,
                               const FCE_T *w) {
    if (beta != 0.0) FN(exp_affine_impl)(x, out, n, shift, a, beta, w, 1);
    else FN(exp_affine_impl)(x, out, n, shift, a, 0.0, NULL, 0);
}

static void FN(row_sub_shift)(const FCE_T *x, FCE_T *out, int64_t n, double shift) {
    const FCE_T hs = (FCE_T)shift;
    const V hi = VOP(set1)(hs), lo = VOP(set1)((FCE_T)(shift - (double)hs));
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
 * fused_stats   pass 1 reads the row for its exact max (and sum w*x); pass 2 writes
 *               e = exp(x - max) to out while summing it: st as row_stats, with an exact
 *               max. out may alias x (in place): read x[y] before calling.
 * scale         pass 3, in cache: out = a * out - beta * w, so out = a/sum * e - beta w
 *               is the gradient row without a second exp. */
static void FN(row_fused_stats)(const FCE_T *x, FCE_T *out, int64_t n, const FCE_T *w, int want_wx,
                                fce_stats *st) {
    V m0 = VOP(set1)(FCE_LOWEST), m1 = m0;
    ACC wx = AOP(zero)();
    const V one = VOP(set1)((FCE_T)1);
    int64_t i = 0;
    for (; i + 2 * FCE_VN <= n; i += 2 * FCE_VN) {
        const V x0 = VOP(loadu)(x + i), x1 = VOP(loadu)(x + i + FCE_VN);
        m0 = VOP(max)(m0, x0);
        m1 = VOP(max)(m1, x1);
        if (want_wx)
            wx = AOP(add)(wx, w ? VOP(fma)(x0, VOP(loadu)(w + i), VOP(mul)(x1, VOP(loadu)(w + i + FCE_VN)))
                                : VOP(add)(x0, x1));
    }
    for (; i < n; i += FCE_VN) {
        const int64_t r = n - i < FCE_VN ? n - i : FCE_VN;
        const V xv = r == FCE_VN ? VOP(loadu)(x + i) : VOP(load_tail)(x + i, r, (FCE_T)-INFINITY);
        m0 = VOP(max)(m0, xv);
        if (want_wx) {
            const V xz = r == FCE_VN ? xv : VOP(load_tail)(x + i, r, (FCE_T)0);
            const V wz = w ? (r == FCE_VN ? VOP(loadu)(w + i) : VOP(load_tail)(w + i, r, (FCE_T)0)) : one;
            wx = AOP(add)(wx, VOP(mul)(xz, wz));
        }
    }
    const FCE_T gm = VOP(hmax)(VOP(max)(m0, m1));
    /* all -inf: shift by 0 so exp gives 0, not exp(-inf + inf) = nan; the sum is then 0 */
    const V mv = VOP(set1)(gm == FCE_LOWEST ? (FCE_T)0 : gm);
    ACC s = AOP(zero)();
    i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        V e[4];
        for (int k = 0; k < 4; k++) e[k] = FN(exp)(VOP(sub)(VOP(loadu)(x + i + k * FCE_VN), mv));
        for (int k = 0; k < 4; k++) VOP(storeu)(out + i + k * FCE_VN, e[k]);
        s = AOP(add)(s, VOP(add)(VOP(add)(e[0], e[1]), VOP(add)(e[2], e[3])));
    }
    for (; i < n; i += FCE_VN) {
        const int64_t r = n - i < FCE_VN ? n - i : FCE_VN;
        if (r == FCE_VN) {
            const V e = FN(exp)(VOP(sub)(VOP(loadu)(x + i), mv));
            VOP(storeu)(out + i, e);
            s = AOP(add)(s, e);
        } else {
            const V e = FN(exp)(VOP(sub)(VOP(load_tail)(x + i, r, (FCE_T)-INFINITY), mv));
            VOP(store_tail)(out + i, r, e);
            s = AOP(add)(s, e);
        }
    }
    st->wx = want_wx ? AOP(hsum)(wx) : 0.0;
    st->wtx = st->wts = 0.0;
    st->sum = AOP(hsum)(s);
    /* a true lowest-finite max has sum >= 1; otherwise every score was -inf (or nan) */
    st->max = (gm == FCE_LOWEST && !(st->sum >= 1.0)) ? -INFINITY : (double)gm;
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
 * soft_stats    row_stats with w*x always, plus wtx = sum w t x and wts = sum w t
 *               (0 * -inf = nan where a masked class has zero probability, as in torch)
 * soft_grad     out = a * exp(x - shift) - w * (beta + delta * t) */
static void FN(row_soft_stats)(const FCE_T *x, const FCE_T *t, int64_t n, const FCE_T *w, fce_stats *st) {
    FN(stats_acc) A = {VOP(set1)(FCE_LOWEST), AOP(zero)(), AOP(zero)()};
    ACC wtx = AOP(zero)(), wts = AOP(zero)();
    const V one = VOP(set1)((FCE_T)1);
    int64_t i = 0;
    for (; i + FCE_VN <= n; i += FCE_VN) {
        const V xv = VOP(loadu)(x + i), wv = w ? VOP(loadu)(w + i) : one;
        const V wt = VOP(mul)(wv, VOP(loadu)(t + i));
        FN(stats_step1)(&A, xv, xv, wv, 1);
        wts = AOP(add)(wts, wt);
        wtx = AOP(add)(wtx, VOP(mul)(wt, xv));
    }
    if (i < n) {
        const int64_t r = n - i;
        const V xz = VOP(load_tail)(x + i, r, (FCE_T)0), wz = w ? VOP(load_tail)(w + i, r, (FCE_T)0) : one;
        const V wt = VOP(mul)(wz, VOP(load_tail)(t + i, r, (FCE_T)0));
        FN(stats_step1)(&A, VOP(load_tail)(x + i, r, (FCE_T)-INFINITY), xz, wz, 1);
        wts = AOP(add)(wts, wt);
        wtx = AOP(add)(wtx, VOP(mul)(wt, xz));
    }
    FN(stats_finish)(&A, 1, st);
    st->wtx = AOP(hsum)(wtx);
    st->wts = AOP(hsum)(wts);
}

static inline V FN(soft1)(V xv, V tv, V wv, V hi, V lo, V a, V b, V d) {
    const V y = VOP(mul)(a, FN(exp)(VOP(sub)(VOP(sub)(xv, hi), lo)));
    return VOP(sub)(y, VOP(mul)(wv, VOP(fma)(d, tv, b)));
}

static void FN(row_soft_grad)(const FCE_T *x, const FCE_T *t, FCE_T *out, int64_t n, double shift,
                              double a, double beta, double delta, const FCE_T *w) {
    const FCE_T hs = (FCE_T)shift;
    const V hi = VOP(set1)(hs), lo = VOP(set1)((FCE_T)(shift - (double)hs));
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

/* per-lane float64 values as vectors: hi = rounded value, lo = the rounding remainder */
static inline void FN(col_split)(const double *v, int64_t nl, V *hi, V *lo) {
    FCE_T h[FCE_VN], l[FCE_VN];
    for (int64_t k = 0; k < FCE_VN; k++) {
        const double d = k < nl ? v[k] : 0.0;
        h[k] = (FCE_T)d;
        l[k] = (FCE_T)(d - (double)h[k]);
    }
    *hi = VOP(loadu)(h);
    *lo = VOP(loadu)(l);
}

static void FN(col_stats)(const FCE_T *x, int64_t sc, int64_t C, int64_t nl, const FCE_T *w,
                          int want_wx, double *mx, double *sum, double *wx) {
    V m = VOP(set1)(FCE_LOWEST);
    for (int64_t c = 0; c < C; c++) m = VOP(max)(m, FN(col_load)(x + c * sc, nl));
    ACC s = AOP(zero)(), a = AOP(zero)();
    for (int64_t c = 0; c < C; c++) {
        const V xv = FN(col_load)(x + c * sc, nl);
        s = AOP(add)(s, FN(exp)(VOP(sub)(xv, m)));
        if (want_wx) a = AOP(add)(a, w ? VOP(mul)(xv, VOP(set1)(w[c])) : xv);
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
        if (want_wx) wx[l] = at[l];
    }
}

static void FN(col_exp_affine)(const FCE_T *x, int64_t sc, FCE_T *out, int64_t osc, int64_t C, int64_t nl,
                               const double *shift, const double *a, const double *beta, const FCE_T *w) {
    V hi, lo, av, bv = VOP(zero)(), unused;
    FN(col_split)(shift, nl, &hi, &lo);
    FN(col_split)(a, nl, &av, &unused);
    if (beta) FN(col_split)(beta, nl, &bv, &unused);
    for (int64_t c = 0; c < C; c++) {
        const V xv = FN(col_load)(x + c * sc, nl);
        V y = VOP(mul)(av, FN(exp)(VOP(sub)(VOP(sub)(xv, hi), lo)));
        if (beta) y = VOP(sub)(y, w ? VOP(mul)(bv, VOP(set1)(w[c])) : bv);
        FN(col_store)(out + c * osc, nl, y);
    }
}

static void FN(col_sub_shift)(const FCE_T *x, int64_t sc, FCE_T *out, int64_t osc, int64_t C, int64_t nl,
                              const double *shift) {
    V hi, lo;
    FN(col_split)(shift, nl, &hi, &lo);
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
