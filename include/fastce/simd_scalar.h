/* fastce SIMD layer: portable scalar backend (one lane). Same vocabulary as
 * simd_avx512.h. It is the reference path, the fallback on unknown CPUs, and what
 * FASTCE_ISA=scalar selects. Bit tricks go through memcpy: no aliasing or
 * float->int conversion UB, even for nan or huge inputs. */
#ifndef FASTCE_SIMD_SCALAR_H
#define FASTCE_SIMD_SCALAR_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#define FCE_ISA_NAME scalar

#define FCE__SCALAR_OPS(DT, T, UI, MANT, BIAS, ONEBITS)                                          \
    typedef T fce_##DT##v;                                                                      \
    typedef int fce_##DT##m;                                                                    \
    static inline fce_##DT##v fce_##DT##_set1(T a) { return a; }                                \
    static inline fce_##DT##v fce_##DT##_zero(void) { return (T)0; }                            \
    /* memcpy: like the vector ISAs' loadu/storeu, defined at any address (one plain move) */ \
    static inline fce_##DT##v fce_##DT##_loadu(const T *p) { T v; memcpy(&v, p, sizeof v); return v; } \
    static inline void fce_##DT##_storeu(T *p, fce_##DT##v v) { memcpy(p, &v, sizeof v); }     \
    static inline fce_##DT##v fce_##DT##_load_tail(const T *p, int64_t n, T fill) {             \
        return n > 0 ? fce_##DT##_loadu(p) : fill;                                              \
    }                                                                                           \
    static inline void fce_##DT##_store_tail(T *p, int64_t n, fce_##DT##v v) {                  \
        if (n > 0) fce_##DT##_storeu(p, v);                                                     \
    }                                                                                           \
    static inline fce_##DT##v fce_##DT##_load_strided(const T *p, int64_t s) { (void)s; return fce_##DT##_loadu(p); } \
    static inline fce_##DT##v fce_##DT##_add(T a, T b) { return a + b; }                        \
    static inline fce_##DT##v fce_##DT##_sub(T a, T b) { return a - b; }                        \
    static inline fce_##DT##v fce_##DT##_mul(T a, T b) { return a * b; }                        \
    static inline fce_##DT##v fce_##DT##_div(T a, T b) { return a / b; }                        \
    static inline fce_##DT##v fce_##DT##_fma(T a, T b, T c) { return a * b + c; }               \
    /* like x86 max/min: the second operand wins when either is nan */                          \
    static inline fce_##DT##v fce_##DT##_max(T a, T b) { return a > b ? a : b; }                \
    static inline fce_##DT##v fce_##DT##_min(T a, T b) { return a < b ? a : b; }                \
    static inline fce_##DT##m fce_##DT##_lt(T a, T b) { return a < b; }                         \
    static inline fce_##DT##m fce_##DT##_gt(T a, T b) { return a > b; }                         \
    static inline fce_##DT##v fce_##DT##_select(fce_##DT##m m, T a, T b) { return m ? a : b; }  \
    static inline int fce_##DT##_any_gt(T a, T b) { return a > b; }                             \
    static inline T fce_##DT##_hmax(T v) { return v; }                                          \
    static inline fce_##DT##v fce_##DT##_pow2n(T t) {                                           \
        UI b; memcpy(&b, &t, sizeof b);                                                         \
        b = (b + (UI)BIAS) << MANT;                                                             \
        T r; memcpy(&r, &b, sizeof r); return r;                                                \
    }                                                                                           \
    static inline fce_##DT##v fce_##DT##_exponent(T x) {                                        \
        UI b; memcpy(&b, &x, sizeof b);                                                         \
        return (T)((int64_t)(b >> MANT) - BIAS);                                                \
    }                                                                                           \
    static inline fce_##DT##v fce_##DT##_mantissa(T x) {                                        \
        UI b; memcpy(&b, &x, sizeof b);                                                         \
        b = (b & ((((UI)1) << MANT) - 1)) | (UI)ONEBITS;                                        \
        T r; memcpy(&r, &b, sizeof r); return r;                                                \
    }

FCE__SCALAR_OPS(f32, float, uint32_t, 23, 127, 0x3f800000u)
FCE__SCALAR_OPS(f64, double, uint64_t, 52, 1023, 0x3ff0000000000000ull)
#undef FCE__SCALAR_OPS
#define FCE_F32_N 1
#define FCE_F64_N 1

typedef double fce_f32acc;
static inline fce_f32acc fce_f32acc_zero(void) { return 0.0; }
static inline fce_f32acc fce_f32acc_add(fce_f32acc a, float v) { return a + (double)v; }
static inline fce_f32acc fce_f32acc_scale(fce_f32acc a, float f) { return a * (double)f; }
static inline double fce_f32acc_hsum(fce_f32acc a) { return a; }
static inline void fce_f32acc_store(double *p, fce_f32acc a) { *p = a; }
typedef double fce_f64acc;
static inline fce_f64acc fce_f64acc_zero(void) { return 0.0; }
static inline fce_f64acc fce_f64acc_add(fce_f64acc a, double v) { return a + v; }
static inline fce_f64acc fce_f64acc_scale(fce_f64acc a, double f) { return a * f; }
static inline double fce_f64acc_hsum(fce_f64acc a) { return a; }
static inline void fce_f64acc_store(double *p, fce_f64acc a) { *p = a; }
static inline double fce_f64_hsum(double v) { return v; }


/* ---- float16 / bfloat16 storage, float32 compute ---- */
#include "fastce/half.h"
static inline float fce_f32_load_f16(const uint16_t *p) { return fce_cvt_f16_f32(*p); }
static inline void fce_f32_store_f16(uint16_t *p, float v) { *p = fce_cvt_f32_f16(v); }
static inline float fce_f32_load_bf16(const uint16_t *p) { return fce_cvt_bf16_f32(*p); }
static inline void fce_f32_store_bf16(uint16_t *p, float v) { *p = fce_cvt_f32_bf16(v); }

#endif
