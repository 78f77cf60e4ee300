/* fastce SIMD layer: AVX2 + FMA backend (8 x float32, 4 x float64).
 * Same vocabulary as simd_avx512.h (see there). AVX2 has no mask registers: masks are
 * all-ones lanes, and tails use maskload/maskstore, which never touch masked-out memory. */
#ifndef FASTCE_SIMD_AVX2_H
#define FASTCE_SIMD_AVX2_H
#include <immintrin.h>
#include <stdint.h>

#define FCE_ISA_NAME avx2

/* ---- float32 ---- */
typedef __m256 fce_f32v;
typedef __m256 fce_f32m;
#define FCE_F32_N 8
static inline fce_f32v fce_f32_set1(float a) { return _mm256_set1_ps(a); }
static inline fce_f32v fce_f32_zero(void) { return _mm256_setzero_ps(); }
static inline fce_f32v fce_f32_loadu(const float *p) { return _mm256_loadu_ps(p); }
static inline void fce_f32_storeu(float *p, fce_f32v v) { _mm256_storeu_ps(p, v); }
static inline __m256i fce_f32_tailmask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline fce_f32v fce_f32_load_tail(const float *p, int64_t n, float fill) {
    __m256i m = fce_f32_tailmask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
static inline void fce_f32_store_tail(float *p, int64_t n, fce_f32v v) {
    _mm256_maskstore_ps(p, fce_f32_tailmask(n), v);
}
/* lanes p[0], p[s], p[2 s], ...: a gather; |s| (N - 1) must fit in int32 */
static inline fce_f32v fce_f32_load_strided(const float *p, int64_t s) {
    const __m256i k = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_i32gather_ps(p, _mm256_mullo_epi32(k, _mm256_set1_epi32((int)s)), 4);
}
static inline fce_f32v fce_f32_add(fce_f32v a, fce_f32v b) { return _mm256_add_ps(a, b); }
static inline fce_f32v fce_f32_sub(fce_f32v a, fce_f32v b) { return _mm256_sub_ps(a, b); }
static inline fce_f32v fce_f32_mul(fce_f32v a, fce_f32v b) { return _mm256_mul_ps(a, b); }
static inline fce_f32v fce_f32_div(fce_f32v a, fce_f32v b) { return _mm256_div_ps(a, b); }
static inline fce_f32v fce_f32_fma(fce_f32v a, fce_f32v b, fce_f32v c) { return _mm256_fmadd_ps(a, b, c); }
static inline fce_f32v fce_f32_max(fce_f32v a, fce_f32v b) { return _mm256_max_ps(a, b); }
static inline fce_f32v fce_f32_min(fce_f32v a, fce_f32v b) { return _mm256_min_ps(a, b); }
static inline fce_f32m fce_f32_lt(fce_f32v a, fce_f32v b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline fce_f32m fce_f32_gt(fce_f32v a, fce_f32v b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline fce_f32v fce_f32_select(fce_f32m m, fce_f32v a, fce_f32v b) { return _mm256_blendv_ps(b, a, m); }
static inline int fce_f32_any_gt(fce_f32v a, fce_f32v b) { return _mm256_movemask_ps(fce_f32_gt(a, b)) != 0; }
static inline float fce_f32_hmax(fce_f32v v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}
static inline fce_f32v fce_f32_pow2n(fce_f32v t) {
    __m256i b = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(b, 23));
}
static inline fce_f32v fce_f32_exponent(fce_f32v x) {
    __m256i e = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(e, _mm256_set1_epi32(127)));
}
static inline fce_f32v fce_f32_mantissa(fce_f32v x) {
    __m256i m = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x007fffff));
    return _mm256_castsi256_ps(_mm256_or_si256(m, _mm256_set1_epi32(0x3f800000)));
}
typedef struct { __m256d lo, hi; } fce_f32acc;
static inline fce_f32acc fce_f32acc_zero(void) { fce_f32acc a = {_mm256_setzero_pd(), _mm256_setzero_pd()}; return a; }
static inline fce_f32acc fce_f32acc_add(fce_f32acc a, fce_f32v v) {
    a.lo = _mm256_add_pd(a.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a.hi = _mm256_add_pd(a.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return a;
}
static inline fce_f32acc fce_f32acc_scale(fce_f32acc a, fce_f32v f) {
    a.lo = _mm256_mul_pd(a.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
    a.hi = _mm256_mul_pd(a.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
    return a;
}
static inline double fce__hsum4d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
static inline double fce_f32acc_hsum(fce_f32acc a) { return fce__hsum4d(_mm256_add_pd(a.lo, a.hi)); }
static inline void fce_f32acc_store(double *p, fce_f32acc a) { _mm256_storeu_pd(p, a.lo); _mm256_storeu_pd(p + 4, a.hi); }

/* ---- float64 ---- */
typedef __m256d fce_f64v;
typedef __m256d fce_f64m;
#define FCE_F64_N 4
static inline fce_f64v fce_f64_set1(double a) { return _mm256_set1_pd(a); }
static inline fce_f64v fce_f64_zero(void) { return _mm256_setzero_pd(); }
static inline fce_f64v fce_f64_loadu(const double *p) { return _mm256_loadu_pd(p); }
static inline void fce_f64_storeu(double *p, fce_f64v v) { _mm256_storeu_pd(p, v); }
static inline __m256i fce_f64_tailmask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
static inline fce_f64v fce_f64_load_tail(const double *p, int64_t n, double fill) {
    __m256i m = fce_f64_tailmask(n);
    return _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
}
static inline void fce_f64_store_tail(double *p, int64_t n, fce_f64v v) {
    _mm256_maskstore_pd(p, fce_f64_tailmask(n), v);
}
static inline fce_f64v fce_f64_load_strided(const double *p, int64_t s) {
    const __m128i k = _mm_setr_epi32(0, 1, 2, 3);
    return _mm256_i32gather_pd(p, _mm_mullo_epi32(k, _mm_set1_epi32((int)s)), 8);
}
static inline fce_f64v fce_f64_add(fce_f64v a, fce_f64v b) { return _mm256_add_pd(a, b); }
static inline fce_f64v fce_f64_sub(fce_f64v a, fce_f64v b) { return _mm256_sub_pd(a, b); }
static inline fce_f64v fce_f64_mul(fce_f64v a, fce_f64v b) { return _mm256_mul_pd(a, b); }
static inline fce_f64v fce_f64_div(fce_f64v a, fce_f64v b) { return _mm256_div_pd(a, b); }
static inline fce_f64v fce_f64_fma(fce_f64v a, fce_f64v b, fce_f64v c) { return _mm256_fmadd_pd(a, b, c); }
static inline fce_f64v fce_f64_max(fce_f64v a, fce_f64v b) { return _mm256_max_pd(a, b); }
static inline fce_f64v fce_f64_min(fce_f64v a, fce_f64v b) { return _mm256_min_pd(a, b); }
static inline fce_f64m fce_f64_lt(fce_f64v a, fce_f64v b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
static inline fce_f64m fce_f64_gt(fce_f64v a, fce_f64v b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
static inline fce_f64v fce_f64_select(fce_f64m m, fce_f64v a, fce_f64v b) { return _mm256_blendv_pd(b, a, m); }
static inline int fce_f64_any_gt(fce_f64v a, fce_f64v b) { return _mm256_movemask_pd(fce_f64_gt(a, b)) != 0; }
static inline double fce_f64_hmax(fce_f64v v) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}
static inline double fce_f64_hsum(fce_f64v v) { return fce__hsum4d(v); }
static inline fce_f64v fce_f64_pow2n(fce_f64v t) {
    __m256i b = _mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023));
    return _mm256_castsi256_pd(_mm256_slli_epi64(b, 52));
}
static inline fce_f64v fce_f64_exponent(fce_f64v x) {
    __m256i e = _mm256_srli_epi64(_mm256_castpd_si256(x), 52);
    __m256i k = _mm256_or_si256(e, _mm256_castpd_si256(_mm256_set1_pd(4503599627370496.0)));
    return _mm256_sub_pd(_mm256_castsi256_pd(k), _mm256_set1_pd(4503599627370496.0 + 1023.0));
}
static inline fce_f64v fce_f64_mantissa(fce_f64v x) {
    __m256i m = _mm256_and_si256(_mm256_castpd_si256(x), _mm256_set1_epi64x(0x000fffffffffffffLL));
    return _mm256_castsi256_pd(_mm256_or_si256(m, _mm256_set1_epi64x(0x3ff0000000000000LL)));
}
typedef fce_f64v fce_f64acc;
static inline fce_f64acc fce_f64acc_zero(void) { return _mm256_setzero_pd(); }
static inline fce_f64acc fce_f64acc_add(fce_f64acc a, fce_f64v v) { return _mm256_add_pd(a, v); }
static inline fce_f64acc fce_f64acc_scale(fce_f64acc a, fce_f64v f) { return _mm256_mul_pd(a, f); }
static inline double fce_f64acc_hsum(fce_f64acc a) { return fce__hsum4d(a); }
static inline void fce_f64acc_store(double *p, fce_f64acc a) { _mm256_storeu_pd(p, a); }


/* ---- float16 / bfloat16 storage, float32 compute (F16C) ---- */
static inline fce_f32v fce_f32_load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline void fce_f32_store_f16(uint16_t *p, fce_f32v v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline fce_f32v fce_f32_load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline void fce_f32_store_bf16(uint16_t *p, fce_f32v v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40)), nan);
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

#endif
