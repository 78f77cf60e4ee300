/* fastce SIMD layer: AVX-512F backend (16 x float32, 8 x float64).
 *
 * Every backend defines the same small vocabulary, for DT in {f32, f64}:
 *   fce_DTv / fce_DTm       vector and lane-mask types, FCE_DT_N lanes
 *   set1 zero loadu storeu  full-vector memory access (unaligned)
 *   load_tail store_tail    the last n < N elements; masked lanes never touch memory
 *   load_strided            lanes p[0], p[s], ..., p[(N-1) s] (a gather where the ISA has one)
 *   add sub mul div fma max min, lt gt select any_gt
 *   hmax hsum               horizontal reductions (hsum returns double)
 *   pow2n                   2**n for n held in the low mantissa bits of t = n + 1.5*2**(mant bits)
 *   exponent / mantissa     x = 2**e * m, m in [1, 2), for positive normal x
 *   load_f16/bf16, store_f16/bf16  (f32 only) half storage <-> float32 vectors, rounding to nearest even
 *   fce_DTacc               a float64 accumulator for sums of DT vectors (two f64 vectors for f32):
 *                           zero, add, scale (lane-wise multiply), hsum, store (N doubles)
 * Kernels are written once against this vocabulary (kernels.h, vmath.h).
 */
#ifndef FASTCE_SIMD_AVX512_H
#define FASTCE_SIMD_AVX512_H
#include <immintrin.h>
#include <stdint.h>

#define FCE_ISA_NAME avx512

/* ---- float32 ---- */
typedef __m512 fce_f32v;
typedef __mmask16 fce_f32m;
#define FCE_F32_N 16
static inline fce_f32v fce_f32_set1(float a) { return _mm512_set1_ps(a); }
static inline fce_f32v fce_f32_zero(void) { return _mm512_setzero_ps(); }
static inline fce_f32v fce_f32_loadu(const float *p) { return _mm512_loadu_ps(p); }
static inline void fce_f32_storeu(float *p, fce_f32v v) { _mm512_storeu_ps(p, v); }
static inline fce_f32m fce_f32_tailmask(int64_t n) { return (__mmask16)((1u << n) - 1u); }
static inline fce_f32v fce_f32_load_tail(const float *p, int64_t n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), fce_f32_tailmask(n), p);
}
static inline void fce_f32_store_tail(float *p, int64_t n, fce_f32v v) {
    _mm512_mask_storeu_ps(p, fce_f32_tailmask(n), v);
}
/* lanes p[0], p[s], p[2 s], ...: a gather; |s| (N - 1) must fit in int32 */
static inline fce_f32v fce_f32_load_strided(const float *p, int64_t s) {
    const __m512i k = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_i32gather_ps(_mm512_mullo_epi32(k, _mm512_set1_epi32((int)s)), p, 4);
}
static inline fce_f32v fce_f32_add(fce_f32v a, fce_f32v b) { return _mm512_add_ps(a, b); }
static inline fce_f32v fce_f32_sub(fce_f32v a, fce_f32v b) { return _mm512_sub_ps(a, b); }
static inline fce_f32v fce_f32_mul(fce_f32v a, fce_f32v b) { return _mm512_mul_ps(a, b); }
static inline fce_f32v fce_f32_div(fce_f32v a, fce_f32v b) { return _mm512_div_ps(a, b); }
static inline fce_f32v fce_f32_fma(fce_f32v a, fce_f32v b, fce_f32v c) { return _mm512_fmadd_ps(a, b, c); }
static inline fce_f32v fce_f32_max(fce_f32v a, fce_f32v b) { return _mm512_max_ps(a, b); }
static inline fce_f32v fce_f32_min(fce_f32v a, fce_f32v b) { return _mm512_min_ps(a, b); }
static inline fce_f32m fce_f32_lt(fce_f32v a, fce_f32v b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline fce_f32m fce_f32_gt(fce_f32v a, fce_f32v b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline fce_f32v fce_f32_select(fce_f32m m, fce_f32v a, fce_f32v b) { return _mm512_mask_blend_ps(m, b, a); }
static inline int fce_f32_any_gt(fce_f32v a, fce_f32v b) { return fce_f32_gt(a, b) != 0; }
static inline float fce_f32_hmax(fce_f32v v) { return _mm512_reduce_max_ps(v); }
static inline fce_f32v fce_f32_pow2n(fce_f32v t) {
    __m512i b = _mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(b, 23));
}
static inline fce_f32v fce_f32_exponent(fce_f32v x) {
    __m512i e = _mm512_srli_epi32(_mm512_castps_si512(x), 23);
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(127)));
}
static inline fce_f32v fce_f32_mantissa(fce_f32v x) {
    __m512i m = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x007fffff));
    return _mm512_castsi512_ps(_mm512_or_si512(m, _mm512_set1_epi32(0x3f800000)));
}
/* float32 sums accumulate in float64 lanes: results do not drift with the row length. */
typedef struct { __m512d lo, hi; } fce_f32acc;
static inline fce_f32acc fce_f32acc_zero(void) { fce_f32acc a = {_mm512_setzero_pd(), _mm512_setzero_pd()}; return a; }
static inline __m512d fce__lo8(fce_f32v v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline __m512d fce__hi8(fce_f32v v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
static inline fce_f32acc fce_f32acc_add(fce_f32acc a, fce_f32v v) {
    a.lo = _mm512_add_pd(a.lo, fce__lo8(v)); a.hi = _mm512_add_pd(a.hi, fce__hi8(v)); return a;
}
static inline fce_f32acc fce_f32acc_scale(fce_f32acc a, fce_f32v f) {
    a.lo = _mm512_mul_pd(a.lo, fce__lo8(f)); a.hi = _mm512_mul_pd(a.hi, fce__hi8(f)); return a;
}
static inline double fce_f32acc_hsum(fce_f32acc a) { return _mm512_reduce_add_pd(_mm512_add_pd(a.lo, a.hi)); }
static inline void fce_f32acc_store(double *p, fce_f32acc a) { _mm512_storeu_pd(p, a.lo); _mm512_storeu_pd(p + 8, a.hi); }

/* ---- float64 ---- */
typedef __m512d fce_f64v;
typedef __mmask8 fce_f64m;
#define FCE_F64_N 8
static inline fce_f64v fce_f64_set1(double a) { return _mm512_set1_pd(a); }
static inline fce_f64v fce_f64_zero(void) { return _mm512_setzero_pd(); }
static inline fce_f64v fce_f64_loadu(const double *p) { return _mm512_loadu_pd(p); }
static inline void fce_f64_storeu(double *p, fce_f64v v) { _mm512_storeu_pd(p, v); }
static inline fce_f64m fce_f64_tailmask(int64_t n) { return (__mmask8)((1u << n) - 1u); }
static inline fce_f64v fce_f64_load_tail(const double *p, int64_t n, double fill) {
    return _mm512_mask_loadu_pd(_mm512_set1_pd(fill), fce_f64_tailmask(n), p);
}
static inline void fce_f64_store_tail(double *p, int64_t n, fce_f64v v) {
    _mm512_mask_storeu_pd(p, fce_f64_tailmask(n), v);
}
static inline fce_f64v fce_f64_load_strided(const double *p, int64_t s) {
    const __m256i k = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm512_i32gather_pd(_mm256_mullo_epi32(k, _mm256_set1_epi32((int)s)), p, 8);
}
static inline fce_f64v fce_f64_add(fce_f64v a, fce_f64v b) { return _mm512_add_pd(a, b); }
static inline fce_f64v fce_f64_sub(fce_f64v a, fce_f64v b) { return _mm512_sub_pd(a, b); }
static inline fce_f64v fce_f64_mul(fce_f64v a, fce_f64v b) { return _mm512_mul_pd(a, b); }
static inline fce_f64v fce_f64_div(fce_f64v a, fce_f64v b) { return _mm512_div_pd(a, b); }
static inline fce_f64v fce_f64_fma(fce_f64v a, fce_f64v b, fce_f64v c) { return _mm512_fmadd_pd(a, b, c); }
static inline fce_f64v fce_f64_max(fce_f64v a, fce_f64v b) { return _mm512_max_pd(a, b); }
static inline fce_f64v fce_f64_min(fce_f64v a, fce_f64v b) { return _mm512_min_pd(a, b); }
static inline fce_f64m fce_f64_lt(fce_f64v a, fce_f64v b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
static inline fce_f64m fce_f64_gt(fce_f64v a, fce_f64v b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
static inline fce_f64v fce_f64_select(fce_f64m m, fce_f64v a, fce_f64v b) { return _mm512_mask_blend_pd(m, b, a); }
static inline int fce_f64_any_gt(fce_f64v a, fce_f64v b) { return fce_f64_gt(a, b) != 0; }
static inline double fce_f64_hmax(fce_f64v v) { return _mm512_reduce_max_pd(v); }
static inline double fce_f64_hsum(fce_f64v v) { return _mm512_reduce_add_pd(v); }
static inline fce_f64v fce_f64_pow2n(fce_f64v t) {
    __m512i b = _mm512_add_epi64(_mm512_castpd_si512(t), _mm512_set1_epi64(1023));
    return _mm512_castsi512_pd(_mm512_slli_epi64(b, 52));
}
static inline fce_f64v fce_f64_exponent(fce_f64v x) {
    /* exponent field as a double, without AVX512DQ's int64->double conversion:
     * put the 11 exponent bits into the mantissa of 2**52 and subtract. */
    __m512i e = _mm512_srli_epi64(_mm512_castpd_si512(x), 52);
    __m512i k = _mm512_or_si512(e, _mm512_castpd_si512(_mm512_set1_pd(4503599627370496.0)));
    return _mm512_sub_pd(_mm512_castsi512_pd(k), _mm512_set1_pd(4503599627370496.0 + 1023.0));
}
static inline fce_f64v fce_f64_mantissa(fce_f64v x) {
    __m512i m = _mm512_and_si512(_mm512_castpd_si512(x), _mm512_set1_epi64(0x000fffffffffffffLL));
    return _mm512_castsi512_pd(_mm512_or_si512(m, _mm512_set1_epi64(0x3ff0000000000000LL)));
}
typedef fce_f64v fce_f64acc;
static inline fce_f64acc fce_f64acc_zero(void) { return _mm512_setzero_pd(); }
static inline fce_f64acc fce_f64acc_add(fce_f64acc a, fce_f64v v) { return _mm512_add_pd(a, v); }
static inline fce_f64acc fce_f64acc_scale(fce_f64acc a, fce_f64v f) { return _mm512_mul_pd(a, f); }
static inline double fce_f64acc_hsum(fce_f64acc a) { return _mm512_reduce_add_pd(a); }
static inline void fce_f64acc_store(double *p, fce_f64acc a) { _mm512_storeu_pd(p, a); }


/* ---- float16 / bfloat16 storage, float32 compute ---- */
static inline fce_f32v fce_f32_load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline void fce_f32_store_f16(uint16_t *p, fce_f32v v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline fce_f32v fce_f32_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline void fce_f32_store_bf16(uint16_t *p, fce_f32v v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40)));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}

#endif
