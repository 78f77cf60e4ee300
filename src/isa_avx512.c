/* AVX-512F kernels (x86-64), enabled by a target pragma (see isa_avx2.c). */
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx2,fma")
#endif
#include "fastce/simd_avx512.h"
#define FCE_TABLE_NAME fce_table_avx512
#include "fastce/isa_template.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int fce_isa_avx512_unused; /* not an x86-64 build */
#endif
