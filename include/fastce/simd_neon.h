/* fastce SIMD layer: AArch64 NEON backend (4 x float32, 2 x float64).
 * Same vocabulary as simd_avx512.h. NEON has no masked memory access, so tails go
 * through a small stack buffer (once per row). */
#ifndef FASTCE_SIMD_NEON_H
#define FASTCE_SIMD_NEON_H
#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#define FCE_ISA_NAME neon

/* ---- float32 ---- */
typedef float32x4_t fce_f32v;
typedef uint32x4_t fce_f32m;
#define FCE_F32_N 4
static inline fce_f32v fce_f32_set1(float a) { return vdupq_n_f32(a); }
static inline fce_f32v fce_f32_zero(void) { return vdupq_n_f32(0.0f); }
static inline fce_f32v fce_f32_loadu(const float *p) { return vld1q_f32(p); }
static inline void fce_f32_storeu(float *p, fce_f32v v) { vst1q_f32(p, v); }
static inline fce_f32v fce_f32_load_tail(const float *p, int64_t n, float fill) {
    float b[4] = {fill, fill, fill, fill};
    memcpy(b, p, (size_t)n * sizeof(float));
    return vld1q_f32(b);
}
static inline void fce_f32_store_tail(float *p, int64_t n, fce_f32v v) {
    float b[4];
    vst1q_f32(b, v);
    memcpy(p, b, (size_t)n * sizeof(float));
}
/* lanes p[0], p[s], p[2 s], p[3 s] (no gather instruction: lane inserts) */
static inline fce_f32v fce_f32_load_strided(const float *p, int64_t s) {
    fce_f32v v = vdupq_n_f32(p[0]);
    v = vsetq_lane_f32(p[s], v, 1);
    v = vsetq_lane_f32(p[2 * s], v, 2);
    return vsetq_lane_f32(p[3 * s], v, 3);
}
static inline fce_f32v fce_f32_add(fce_f32v a, fce_f32v b) { return vaddq_f32(a, b); }
static inline fce_f32v fce_f32_sub(fce_f32v a, fce_f32v b) { return vsubq_f32(a, b); }
static inline fce_f32v fce_f32_mul(fce_f32v a, fce_f32v b) { return vmulq_f32(a, b); }
static inline fce_f32v fce_f32_div(fce_f32v a, fce_f32v b) { return vdivq_f32(a, b); }
static inline fce_f32v fce_f32_fma(fce_f32v a, fce_f32v b, fce_f32v c) { return vfmaq_f32(c, a, b); }
static inline fce_f32v fce_f32_max(fce_f32v a, fce_f32v b) { return vmaxq_f32(a, b); }
static inline fce_f32v fce_f32_min(fce_f32v a, fce_f32v b) { return vminq_f32(a, b); }
static inline fce_f32m fce_f32_lt(fce_f32v a, fce_f32v b) { return vcltq_f32(a, b); }
static inline fce_f32m fce_f32_gt(fce_f32v a, fce_f32v b) { return vcgtq_f32(a, b); }
static inline fce_f32v fce_f32_select(fce_f32m m, fce_f32v a, fce_f32v b) { return vbslq_f32(m, a, b); }
static inline int fce_f32_any_gt(fce_f32v a, fce_f32v b) { return vmaxvq_u32(vcgtq_f32(a, b)) != 0; }
static inline float fce_f32_hmax(fce_f32v v) { return vmaxvq_f32(v); }
static inline fce_f32v fce_f32_pow2n(fce_f32v t) {
    int32x4_t b = vaddq_s32(vreinterpretq_s32_f32(t), vdupq_n_s32(127));
    return vreinterpretq_f32_s32(vshlq_n_s32(b, 23));
}
static inline fce_f32v fce_f32_exponent(fce_f32v x) {
    uint32x4_t e = vshrq_n_u32(vreinterpretq_u32_f32(x), 23);
    return vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(e), vdupq_n_s32(127)));
}
static inline fce_f32v fce_f32_mantissa(fce_f32v x) {
    uint32x4_t m = vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x007fffff));
    return vreinterpretq_f32_u32(vorrq_u32(m, vdupq_n_u32(0x3f800000)));
}
typedef struct { float64x2_t lo, hi; } fce_f32acc;
static inline fce_f32acc fce_f32acc_zero(void) { fce_f32acc a = {vdupq_n_f64(0.0), vdupq_n_f64(0.0)}; return a; }
static inline fce_f32acc fce_f32acc_add(fce_f32acc a, fce_f32v v) {
    a.lo = vaddq_f64(a.lo, vcvt_f64_f32(vget_low_f32(v)));
    a.hi = vaddq_f64(a.hi, vcvt_high_f64_f32(v));
    return a;
}
static inline fce_f32acc fce_f32acc_scale(fce_f32acc a, fce_f32v f) {
    a.lo = vmulq_f64(a.lo, vcvt_f64_f32(vget_low_f32(f)));
    a.hi = vmulq_f64(a.hi, vcvt_high_f64_f32(f));
    return a;
}
static inline double fce_f32acc_hsum(fce_f32acc a) { return vaddvq_f64(vaddq_f64(a.lo, a.hi)); }
static inline void fce_f32acc_store(double *p, fce_f32acc a) { vst1q_f64(p, a.lo); vst1q_f64(p + 2, a.hi); }

/* ---- float64 ---- */
typedef float64x2_t fce_f64v;
typedef uint64x2_t fce_f64m;
#define FCE_F64_N 2
static inline fce_f64v fce_f64_set1(double a) { return vdupq_n_f64(a); }
static inline fce_f64v fce_f64_zero(void) { return vdupq_n_f64(0.0); }
static inline fce_f64v fce_f64_loadu(const double *p) { return vld1q_f64(p); }
static inline void fce_f64_storeu(double *p, fce_f64v v) { vst1q_f64(p, v); }
static inline fce_f64v fce_f64_load_tail(const double *p, int64_t n, double fill) {
    double b[2] = {fill, fill};
    memcpy(b, p, (size_t)n * sizeof(double));
    return vld1q_f64(b);
}
static inline void fce_f64_store_tail(double *p, int64_t n, fce_f64v v) {
    double b[2];
    vst1q_f64(b, v);
    memcpy(p, b, (size_t)n * sizeof(double));
}
static inline fce_f64v fce_f64_load_strided(const double *p, int64_t s) {
    return vsetq_lane_f64(p[s], vdupq_n_f64(p[0]), 1);
}
static inline fce_f64v fce_f64_add(fce_f64v a, fce_f64v b) { return vaddq_f64(a, b); }
static inline fce_f64v fce_f64_sub(fce_f64v a, fce_f64v b) { return vsubq_f64(a, b); }
static inline fce_f64v fce_f64_mul(fce_f64v a, fce_f64v b) { return vmulq_f64(a, b); }
static inline fce_f64v fce_f64_div(fce_f64v a, fce_f64v b) { return vdivq_f64(a, b); }
static inline fce_f64v fce_f64_fma(fce_f64v a, fce_f64v b, fce_f64v c) { return vfmaq_f64(c, a, b); }
static inline fce_f64v fce_f64_max(fce_f64v a, fce_f64v b) { return vmaxq_f64(a, b); }
static inline fce_f64v fce_f64_min(fce_f64v a, fce_f64v b) { return vminq_f64(a, b); }
static inline fce_f64m fce_f64_lt(fce_f64v a, fce_f64v b) { return vcltq_f64(a, b); }
static inline fce_f64m fce_f64_gt(fce_f64v a, fce_f64v b) { return vcgtq_f64(a, b); }
static inline fce_f64v fce_f64_select(fce_f64m m, fce_f64v a, fce_f64v b) { return vbslq_f64(m, a, b); }
static inline int fce_f64_any_gt(fce_f64v a, fce_f64v b) {
    uint64x2_t g = vcgtq_f64(a, b);
    return (vgetq_lane_u64(g, 0) | vgetq_lane_u64(g, 1)) != 0;
}
static inline double fce_f64_hmax(fce_f64v v) { return vmaxvq_f64(v); }
static inline double fce_f64_hsum(fce_f64v v) { return vaddvq_f64(v); }
static inline fce_f64v fce_f64_pow2n(fce_f64v t) {
    int64x2_t b = vaddq_s64(vreinterpretq_s64_f64(t), vdupq_n_s64(1023));
    return vreinterpretq_f64_s64(vshlq_n_s64(b, 52));
}
static inline fce_f64v fce_f64_exponent(fce_f64v x) {
    uint64x2_t e = vshrq_n_u64(vreinterpretq_u64_f64(x), 52);
    return vcvtq_f64_s64(vsubq_s64(vreinterpretq_s64_u64(e), vdupq_n_s64(1023)));
}
static inline fce_f64v fce_f64_mantissa(fce_f64v x) {
    uint64x2_t m = vandq_u64(vreinterpretq_u64_f64(x), vdupq_n_u64(0x000fffffffffffffULL));
    return vreinterpretq_f64_u64(vorrq_u64(m, vdupq_n_u64(0x3ff0000000000000ULL)));
}
typedef fce_f64v fce_f64acc;
static inline fce_f64acc fce_f64acc_zero(void) { return vdupq_n_f64(0.0); }
static inline fce_f64acc fce_f64acc_add(fce_f64acc a, fce_f64v v) { return vaddq_f64(a, v); }
static inline fce_f64acc fce_f64acc_scale(fce_f64acc a, fce_f64v f) { return vmulq_f64(a, f); }
static inline double fce_f64acc_hsum(fce_f64acc a) { return vaddvq_f64(a); }
static inline void fce_f64acc_store(double *p, fce_f64acc a) { vst1q_f64(p, a); }


/* ---- float16 / bfloat16 storage, float32 compute ---- */
static inline fce_f32v fce_f32_load_f16(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline void fce_f32_store_f16(uint16_t *p, fce_f32v v) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v))); }
static inline fce_f32v fce_f32_load_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
static inline void fce_f32_store_bf16(uint16_t *p, fce_f32v v) {
    const uint32x4_t x = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(1));
    uint32x4_t r = vshrq_n_u32(vaddq_u32(x, vaddq_u32(odd, vdupq_n_u32(0x7fff))), 16);
    const uint32x4_t num = vceqq_f32(v, v); /* all-ones where not nan */
    r = vbslq_u32(num, r, vorrq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(0x40)));
    vst1_u16(p, vmovn_u32(r));
}

#endif
