/* Vectorised exp and log, written once for float32 and float64 (template: see template.h).
 *
 * Accuracy contract (checked by tests/test_vmath.py against float64/longdouble references
 * over millions of points, on every ISA path):
 *   exp, float32: <= 2 ulp for x in [-87.33, 88.37] (measured max: see the test);
 *                 x < -87.3365 (result below FLT_MIN) -> +0 (flushed, error < 1.2e-38);
 *                 x > 88.3762 -> +inf; -inf -> 0; nan -> nan.
 *   exp, float64: <= 2 ulp for x in [-708.39, 709.43]; below -> 0, above -> +inf.
 *   log, both:    <= 2 ulp for positive finite x, subnormals included;
 *                 log(+-0) = -inf, log(x < 0) = nan, log(+inf) = +inf, log(nan) = nan.
 * Method: exp: n = round(x / ln2) by the 1.5*2**p "magic" addition (the rounded n stays in
 * the low mantissa bits and becomes 2**n by an integer shift), Cody-Waite reduction
 * r = x - n ln2 in two FMA steps, then a polynomial for e**r on |r| <= ln2/2: Cephes'
 * minimax degree-7 form for float32, Taylor to degree 13 for float64.
 * log: x = 2**e m with m in [sqrt(1/2), sqrt(2)), s = f / (2 + f) with f = m - 1,
 * log m = 2 atanh(s) by its Taylor series in s**2 (|s| <= 0.172), fdlibm's arrangement. */

#if FCE_IS_F32
#define FCE_EXP_LO (-87.33654475f)
#define FCE_EXP_HI (88.37626266f)
#define FCE_MAGIC (12582912.0f) /* 1.5 * 2**23 */
#define FCE_LN2_HI (0.693359375f)
#define FCE_LN2_LO (-2.12194440e-4f)
#define FCE_TMIN (1.17549435e-38f)
#define FCE_TMAX (3.40282347e38f)
#define FCE_SUBNORM_SCALE (8388608.0f) /* 2**23 */
#define FCE_SUBNORM_EXP (23.0f)
#else
#define FCE_EXP_LO (-708.3964185322641)
#define FCE_EXP_HI (709.436138303)
#define FCE_MAGIC (6755399441055744.0) /* 1.5 * 2**52 */
#define FCE_LN2_HI (6.93147180369123816490e-01)
#define FCE_LN2_LO (1.90821492927058770002e-10)
#define FCE_TMIN (2.2250738585072014e-308)
#define FCE_TMAX (1.7976931348623157e308)
#define FCE_SUBNORM_SCALE (4503599627370496.0) /* 2**52 */
#define FCE_SUBNORM_EXP (52.0)
#endif

static inline V FN(exp)(V x) {
    const V t = VOP(fma)(x, VOP(set1)((FCE_T)1.4426950408889634), VOP(set1)(FCE_MAGIC));
    const V n = VOP(sub)(t, VOP(set1)(FCE_MAGIC));
    V r = VOP(fma)(n, VOP(set1)(-FCE_LN2_HI), x);
    r = VOP(fma)(n, VOP(set1)(-FCE_LN2_LO), r);
#if FCE_IS_F32
    V p = VOP(set1)(1.9875691500e-4f);
    p = VOP(fma)(p, r, VOP(set1)(1.3981999507e-3f));
    p = VOP(fma)(p, r, VOP(set1)(8.3334519073e-3f));
    p = VOP(fma)(p, r, VOP(set1)(4.1665795894e-2f));
    p = VOP(fma)(p, r, VOP(set1)(1.6666665459e-1f));
    p = VOP(fma)(p, r, VOP(set1)(5.0000001201e-1f));
#else
    V p = VOP(set1)(1.0 / 6227020800.0); /* 1/13! */
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 479001600.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 39916800.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 3628800.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 362880.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 40320.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 5040.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 720.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 120.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 24.0));
    p = VOP(fma)(p, r, VOP(set1)(1.0 / 6.0));
    p = VOP(fma)(p, r, VOP(set1)(0.5));
#endif
    const V e = VOP(add)(VOP(fma)(VOP(mul)(r, r), p, r), VOP(set1)((FCE_T)1));
    V y = VOP(mul)(e, VOP(pow2n)(t));
    /* out-of-range lanes computed garbage above; nan compares false and flows through */
    y = VOP(select)(VOP(gt)(x, VOP(set1)(FCE_EXP_HI)), VOP(set1)((FCE_T)INFINITY), y);
    y = VOP(select)(VOP(lt)(x, VOP(set1)(FCE_EXP_LO)), VOP(zero)(), y);
    return y;
}

static inline V FN(log)(V x) {
    const V one = VOP(set1)((FCE_T)1);
    /* subnormals: scale into the normal range first */
    const M sub = VOP(lt)(x, VOP(set1)(FCE_TMIN));
    const V xs = VOP(select)(sub, VOP(mul)(x, VOP(set1)(FCE_SUBNORM_SCALE)), x);
    V e = VOP(sub)(VOP(exponent)(xs), VOP(select)(sub, VOP(set1)(FCE_SUBNORM_EXP), VOP(zero)()));
    V m = VOP(mantissa)(xs);
    const M big = VOP(gt)(m, VOP(set1)((FCE_T)1.4142135623730951));
    m = VOP(select)(big, VOP(mul)(m, VOP(set1)((FCE_T)0.5)), m);
    e = VOP(select)(big, VOP(add)(e, one), e);
    const V f = VOP(sub)(m, one);
    const V s = VOP(div)(f, VOP(add)(f, VOP(set1)((FCE_T)2)));
    const V z = VOP(mul)(s, s);
#if FCE_IS_F32
    V R = VOP(set1)(2.0f / 11.0f);
    R = VOP(fma)(R, z, VOP(set1)(2.0f / 9.0f));
    R = VOP(fma)(R, z, VOP(set1)(2.0f / 7.0f));
    R = VOP(fma)(R, z, VOP(set1)(2.0f / 5.0f));
    R = VOP(fma)(R, z, VOP(set1)(2.0f / 3.0f));
#else
    V R = VOP(set1)(2.0 / 25.0);
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 23.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 21.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 19.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 17.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 15.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 13.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 11.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 9.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 7.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 5.0));
    R = VOP(fma)(R, z, VOP(set1)(2.0 / 3.0));
#endif
    R = VOP(mul)(R, z);
    /* log(1 + f) = f - (hfsq - s (hfsq + R)), hfsq = f*f/2 */
    const V hfsq = VOP(mul)(VOP(set1)((FCE_T)0.5), VOP(mul)(f, f));
    const V lm = VOP(sub)(f, VOP(sub)(hfsq, VOP(mul)(s, VOP(add)(hfsq, R))));
    V y = VOP(fma)(e, VOP(set1)(FCE_LN2_HI), VOP(fma)(e, VOP(set1)(FCE_LN2_LO), lm));
    /* x <= 0 or nan: -1 / (x*x) gives -inf for +-0 and nan for nan; negatives -> nan */
    const V special = VOP(div)(VOP(set1)((FCE_T)-1),
                               VOP(select)(VOP(lt)(x, VOP(zero)()), VOP(set1)((FCE_T)NAN), VOP(mul)(x, x)));
    y = VOP(select)(VOP(gt)(x, VOP(zero)()), y, special);
    y = VOP(select)(VOP(gt)(x, VOP(set1)(FCE_TMAX)), x, y);
    return y;
}

/* tanh. Contract (tests/test_vmath.py): float32 <= 4 ulp, float64 <= 16 ulp, for all x;
 * +-inf -> +-1, nan -> nan. |x| < T: odd Taylor polynomial to x**13 (f32, T = 0.4) or
 * x**15 (f64, T = 0.1), truncation below half an ulp; otherwise 1 - 2 / (exp(2|x|) + 1),
 * whose cancellation costs a few ulp just above T. */
static inline V FN(tanh)(V x) {
    const V one = VOP(set1)((FCE_T)1);
    const V a = VOP(max)(x, VOP(sub)(VOP(zero)(), x)); /* |x|; nan stays nan */
    const V big = VOP(sub)(one, VOP(div)(VOP(set1)((FCE_T)2), VOP(add)(FN(exp)(VOP(add)(a, a)), one)));
    const V z = VOP(mul)(a, a);
#if FCE_IS_F32
    const V T = VOP(set1)(0.4f);
    V p = VOP(set1)((FCE_T)(21844.0 / 6081075.0));
#else
    const V T = VOP(set1)(0.1);
    V p = VOP(set1)(-929569.0 / 638512875.0);
    p = VOP(fma)(p, z, VOP(set1)(21844.0 / 6081075.0));
#endif
    p = VOP(fma)(p, z, VOP(set1)((FCE_T)(-1382.0 / 155925.0)));
    p = VOP(fma)(p, z, VOP(set1)((FCE_T)(62.0 / 2835.0)));
    p = VOP(fma)(p, z, VOP(set1)((FCE_T)(-17.0 / 315.0)));
    p = VOP(fma)(p, z, VOP(set1)((FCE_T)(2.0 / 15.0)));
    p = VOP(fma)(p, z, VOP(set1)((FCE_T)(-1.0 / 3.0)));
    const V small = VOP(fma)(VOP(mul)(a, z), p, a);
    const V r = VOP(select)(VOP(lt)(a, T), small, big);
    return VOP(select)(VOP(lt)(x, VOP(zero)()), VOP(sub)(VOP(zero)(), r), r);
}

#undef FCE_EXP_LO
#undef FCE_EXP_HI
#undef FCE_MAGIC
#undef FCE_LN2_HI
#undef FCE_LN2_LO
#undef FCE_TMIN
#undef FCE_TMAX
#undef FCE_SUBNORM_SCALE
#undef FCE_SUBNORM_EXP
