/* NEON kernels (AArch64, where NEON is architectural). */
#if defined(__aarch64__)
#include "fastce/simd_neon.h"
#define FCE_TABLE_NAME fce_table_neon
#include "fastce/isa_template.h"
#else
typedef int fce_isa_neon_unused; /* not an AArch64 build */
#endif
