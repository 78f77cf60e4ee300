/* AVX2 + FMA kernels (x86-64). The target pragma, not a build flag, enables the ISA,
 * so the rest of the extension stays baseline x86-64. */
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#endif
#include "fastce/simd_avx2.h"
#define FCE_TABLE_NAME fce_table_avx2
#include "fastce/isa_template.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int fce_isa_avx2_unused; /* not an x86-64 build */
#endif
