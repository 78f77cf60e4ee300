/* Binary cross-entropy with logits, elementwise, written once for float32 and float64
 * (template: see template.h; included by isa_template.h after vmath_impl.h).
 *
 * For logits x, targets y (probabilities, soft labels allowed), weights w and positive
 * weights pw (torch's pos_weight), with lw = 1 + (pw - 1) y:
 *
 *     l     = w * ((1 - y) x + lw * softplus(-x))                          (torch's formula)
 *           = w * (lw * L + max(x, 0) (1 - y) + max(-x, 0) pw y),  L = log1p(exp(-|x|))
 *     dl/dx = w * (lw * sigmoid(x) - pw y)
 *           = w * ((1 - y) sigmoid(x) - pw y sigmoid(-x))
 *
 * The second forms are what we compute. For y in [0, 1] and pw >= 0 every term of the
 * loss is >= 0, so nothing cancels: torch's form loses all relative accuracy when
 * (1 - y) x and lw * softplus(-x) nearly cancel (x << 0, y = 0: l ~ exp(x), but torch's
 * float32 gives 0 below x ~ -17). Likewise sigmoid(x) and sigmoid(-x) are both formed
 * from t = exp(-|x|) without a subtraction (1 / (1 + t) and t / (1 + t)), so hard labels
 * get a gradient with full relative accuracy where torch's sigmoid(x) - y rounds to 0.
 *
 * Special values follow torch exactly: x = +inf gives l = inf (nan when y = 1: torch's
 * 0 * inf), x = -inf gives l = nan (torch: -inf + inf), x = nan gives nan; the gradient
 * is finite at x = +-inf (sigmoid is 0 or 1 there) and nan at nan.
 *
 * log1p. L = log1p(t) for t = exp(-|x|) in [0, 1]: with u = 1 + t rounded and
 * c = t - (u - 1) its exact rounding error (u - 1 is exact by Sterbenz),
 *     log1p(t) = log(u + c) = log(u) + c / u + O((c / u)^2),   |c / u| <= eps / 2,
 * so L = log(u) + c * r with r = 1 / u, the reciprocal the gradient needs anyway
 * (sigmoid(|x|) = r, sigmoid(-|x|) = t r): one division per element besides the log's,
 * and no special case at u == 1 (t < eps / 2), where log(u) = 0 and c = t.
 * (The same first-order correction as Goldberg's log(u) * t / (u - 1), "What every
 * computer scientist should know about floating-point arithmetic", Thm. 4, without its
 * division.) Accuracy contract:
 * L = log1p(exp(-|x|)) within 4 ulp for every finite x (bound: log <= 2 ulp, the
 * correction and the final fma 1 ulp, exp's <= 2 ulp passed on with a factor
 * t / ((1 + t) log1p(t)) <= 1; measured on every x86 path, over dense sweeps of
 * [-87, 0] / [-708, 0] and of -[1e-30, 1]: 1.82 ulp float32, 1.72 ulp float64,
 * tests/test_bce.py::test_softplus_accuracy). exp(-|x|) is flushed to 0 once below the
 * smallest normal (|x| > 87.3 in float32, 708.4 in float64), so L is 0 there instead of a
 * subnormal (absolute error < 1.2e-38 resp. 2.3e-308). Valid for any |x| (1e4, 1e30, inf).
 *
 * Kernel (one per dtype, in the table as bce_block):
 *     bce_block(x, y, w, pw, pw0, grad, n, gscale, gscale_elem, lscale, loss_sum, loss_elem)
 *   x, y        n logits and targets.
 *   w           n weights, or NULL for none. (A scalar weight is the caller's: folded
 *               into lscale and gscale.)
 *   pw, pw0     n positive weights, or NULL to use the scalar pw0 (1 when there is none).
 *   grad        NULL, or n outputs: gscale * gscale_elem[i] (1 when NULL) * dl/dx.
 *               May alias x (in-place gradients): each vector is read before it is written.
 *   loss_elem   NULL, or n outputs: lscale * l.
 *   loss_sum    NULL, or out: lscale * sum_i l_i, accumulated in float64 lanes.
 * Three phases like every fastce kernel: a body unrolled 4 vectors deep, a one-vector
 * loop, and a masked tail computing exactly like the body. Tail lanes past n load
 * x = lowest finite, y = 0, w = 0, pw = 1, whose loss is exactly +0 (exp(-huge) = 0,
 * log1p(0) = 0, max(x, 0) = 0, max(-x, 0) * pw * 0 = 0), so they add nothing to the sum;
 * masked stores never write them. */

#if FCE_IS_F32
#define FCE_BCE_MAXF (3.40282347e38f)
#else
#define FCE_BCE_MAXF (1.7976931348623157e308)
#endif

/* One vector. Returns the loss (without lscale) when want_loss; stores the gradient
 * (already multiplied by gs, the per-lane gradient scale) into *g when want_grad. */
static inline V FN(bce1)(V x, V y, V w, V pw, V gs, V *g, const int want_loss, const int want_grad,
                         const int has_w) {
    const V zero = VOP(zero)(), one = VOP(set1)((FCE_T)1);
    const V nx = VOP(sub)(zero, x);
    const V t = FN(exp)(VOP(sub)(zero, VOP(max)(x, nx))); /* exp(-|x|) in [0, 1]; nan stays nan */
    const V u = VOP(add)(one, t);
    const V r = VOP(div)(one, u); /* sigmoid(|x|) */
    const V omy = VOP(sub)(one, y);
    const V py = VOP(mul)(pw, y);
    V l = zero;
    if (want_loss) {
        /* log1p(t) = log(u) + log(1 + c / u) = log(u) + c / u (c / u < eps: the rest is
         * below rounding), c = t - (u - 1) the exact rounding error of u = 1 + t */
        const V L = VOP(fma)(VOP(sub)(t, VOP(sub)(u, one)), r, FN(log)(u));
        const V lw = VOP(fma)(VOP(sub)(pw, one), y, one);
        l = VOP(fma)(lw, L, VOP(fma)(VOP(max)(x, zero), omy, VOP(mul)(VOP(max)(nx, zero), py)));
        /* torch: (1 - y) * -inf + lw * inf = nan */
        l = VOP(select)(VOP(lt)(x, VOP(set1)(-FCE_BCE_MAXF)), VOP(set1)((FCE_T)NAN), l);
        if (has_w) l = VOP(mul)(l, w);
    }
    if (want_grad) {
        const V tr = VOP(mul)(t, r); /* sigmoid(-|x|) */
        const M neg = VOP(lt)(x, zero);
        const V s = VOP(select)(neg, tr, r), sn = VOP(select)(neg, r, tr);
        const V core = VOP(sub)(VOP(mul)(omy, s), VOP(mul)(py, sn));
        *g = VOP(mul)(core, has_w ? VOP(mul)(gs, w) : gs);
    }
    return l;
}

static inline void FN(bce_impl)(const FCE_T *x, const FCE_T *y, const FCE_T *w, const FCE_T *pw, double pw0,
                                FCE_T *grad, int64_t n, double gscale, const FCE_T *ge, double lscale,
                                double *loss_sum, FCE_T *loss_elem, const int has_w, const int pw_vec,
                                const int want_grad, const int has_ge, const int want_sum,
                                const int want_elem) {
    const int want_loss = want_sum || want_elem;
    const V one = VOP(set1)((FCE_T)1), pw0v = VOP(set1)((FCE_T)pw0);
    const V gsv = VOP(set1)((FCE_T)gscale), lsv = VOP(set1)((FCE_T)lscale);
    ACC acc0 = AOP(zero)(), acc1 = AOP(zero)();
    V dummy = one;
    int64_t i = 0;
    for (; i + 4 * FCE_VN <= n; i += 4 * FCE_VN) {
        V l[4], g[4];
        for (int k = 0; k < 4; k++) {
            const int64_t j = i + k * FCE_VN;
            const V gs = (want_grad && has_ge) ? VOP(mul)(gsv, VOP(loadu)(ge + j)) : gsv;
            l[k] = FN(bce1)(VOP(loadu)(x + j), VOP(loadu)(y + j), has_w ? VOP(loadu)(w + j) : one,
                            pw_vec ? VOP(loadu)(pw + j) : pw0v, gs, want_grad ? &g[k] : &dummy,
                            want_loss, want_grad, has_w);
        }
        for (int k = 0; k < 4; k++) {
            if (want_grad) VOP(storeu)(grad + i + k * FCE_VN, g[k]);
            if (want_elem) VOP(storeu)(loss_elem + i + k * FCE_VN, VOP(mul)(l[k], lsv));
        }
        if (want_sum) {
            acc0 = AOP(add)(acc0, l[0]);
            acc1 = AOP(add)(acc1, l[1]);
            acc0 = AOP(add)(acc0, l[2]);
            acc1 = AOP(add)(acc1, l[3]);
        }
    }
    for (; i + FCE_VN <= n; i += FCE_VN) {
        V g = one;
        const V gs = (want_grad && has_ge) ? VOP(mul)(gsv, VOP(loadu)(ge + i)) : gsv;
        const V l = FN(bce1)(VOP(loadu)(x + i), VOP(loadu)(y + i), has_w ? VOP(loadu)(w + i) : one,
                             pw_vec ? VOP(loadu)(pw + i) : pw0v, gs, &g, want_loss, want_grad, has_w);
        if (want_grad) VOP(storeu)(grad + i, g);
        if (want_elem) VOP(storeu)(loss_elem + i, VOP(mul)(l, lsv));
        if (want_sum) acc0 = AOP(add)(acc0, l);
    }
    if (i < n) {
        const int64_t r = n - i;
        V g = one;
        const V gs = (want_grad && has_ge) ? VOP(mul)(gsv, VOP(load_tail)(ge + i, r, (FCE_T)0)) : gsv;
        const V l = FN(bce1)(VOP(load_tail)(x + i, r, (FCE_T)-FCE_BCE_MAXF), VOP(load_tail)(y + i, r, (FCE_T)0),
                             has_w ? VOP(load_tail)(w + i, r, (FCE_T)0) : one,
                             pw_vec ? VOP(load_tail)(pw + i, r, (FCE_T)1) : pw0v, gs, &g, want_loss,
                             want_grad, has_w);
        if (want_grad) VOP(store_tail)(grad + i, r, g);
        if (want_elem) VOP(store_tail)(loss_elem + i, r, VOP(mul)(l, lsv));
        if (want_sum) acc1 = AOP(add)(acc1, l);
    }
    if (want_sum) *loss_sum = lscale * (AOP(hsum)(acc0) + AOP(hsum)(acc1));
}

/* Specialised loops for the six call patterns of fastce/_bce.py, times weight / pos_weight
 * present or not; anything else takes a generic loop with run-time flags. */
#define FCE__BCE_CALL(HW, PV, G, GE, LS, LE)                                                      \
    FN(bce_impl)(x, y, w, pw, pw0, grad, n, gscale, ge, lscale, loss_sum, loss_elem, HW, PV, G, GE, LS, LE)
#define FCE__BCE_MODES(HW, PV)                                                                    \
    do {                                                                                          \
        const int g_ = grad != NULL, ge_ = g_ && ge != NULL;                                      \
        const int ls_ = loss_sum != NULL, le_ = loss_elem != NULL;                                \
        if (!g_ && ls_ && !le_) FCE__BCE_CALL(HW, PV, 0, 0, 1, 0);         /* forward, mean/sum */ \
        else if (!g_ && !ls_ && le_) FCE__BCE_CALL(HW, PV, 0, 0, 0, 1);    /* forward, none */     \
        else if (g_ && !ge_ && ls_ && !le_) FCE__BCE_CALL(HW, PV, 1, 0, 1, 0); /* fused, mean/sum */ \
        else if (g_ && ge_ && !ls_ && le_) FCE__BCE_CALL(HW, PV, 1, 1, 0, 1);  /* fused, none */  \
        else if (g_ && !ge_ && !ls_ && !le_) FCE__BCE_CALL(HW, PV, 1, 0, 0, 0); /* backward */    \
        else if (g_ && ge_ && !ls_ && !le_) FCE__BCE_CALL(HW, PV, 1, 1, 0, 0); /* backward, none */ \
        else FCE__BCE_CALL(HW, PV, g_, ge_, ls_, le_);                                            \
    } while (0)

static void FN(bce_block)(const FCE_T *x, const FCE_T *y, const FCE_T *w, const FCE_T *pw, double pw0,
                          FCE_T *grad, int64_t n, double gscale, const FCE_T *ge, double lscale,
                          double *loss_sum, FCE_T *loss_elem) {
    if (w) {
        if (pw) FCE__BCE_MODES(1, 1);
        else FCE__BCE_MODES(1, 0);
    } else {
        if (pw) FCE__BCE_MODES(0, 1);
        else FCE__BCE_MODES(0, 0);
    }
}

#undef FCE__BCE_MODES
#undef FCE__BCE_CALL
#undef FCE_BCE_MAXF
