/* Scalar float16 / bfloat16 <-> float32 conversions (IEEE round-to-nearest-even),
 * portable C through memcpy. The vector backends convert whole vectors with
 * F16C/AVX-512/NEON instructions or integer ops, and use these for tails; both round
 * the same way, so results do not depend on where a row's tail falls. */
#ifndef FASTCE_HALF_H
#define FASTCE_HALF_H
#include <stdint.h>
#include <string.h>

static inline float fce_cvt_f16_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (e == 0) { /* zero or subnormal: m * 2**-24, exact in float32 */
        f = (float)m * 5.9604644775390625e-08f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (e == 0x1f) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t fce_cvt_f32_f16(float f) {
    uint32_t x, ax;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf, or nan kept quiet */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (ax < 0x38800000u) { /* below 2**-14: a subnormal half; round |f| * 2**24 to an integer */
        float v;
        memcpy(&v, &ax, 4);
        v = v * 16777216.0f + 8388608.0f; /* adding 2**23 rounds to nearest even */
        uint32_t b;
        memcpy(&b, &v, 4);
        return (uint16_t)(sign | (b - 0x4b000000u));
    }
    ax += 0xfffu + ((ax >> 13) & 1u); /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((ax - (112u << 23)) >> 13));
}

static inline float fce_cvt_bf16_f32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t fce_cvt_f32_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

#endif
