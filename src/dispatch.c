/* Which kernel tables this build has, and which the running CPU can execute.
 * The order is most capable first; the Python layer picks the first supported one
 * (or the one FASTCE_ISA names). */
#include "fastce/fastce.h"

extern const fce_kernels fce_table_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const fce_kernels fce_table_avx512, fce_table_avx2;
static const fce_kernels *const tables[] = {&fce_table_avx512, &fce_table_avx2, &fce_table_scalar};
#elif defined(__aarch64__)
extern const fce_kernels fce_table_neon;
static const fce_kernels *const tables[] = {&fce_table_neon, &fce_table_scalar};
#else
static const fce_kernels *const tables[] = {&fce_table_scalar};
#endif

int fce_isa_count(void) { return (int)(sizeof tables / sizeof tables[0]); }

const fce_kernels *fce_isa_table(int i) { return (i >= 0 && i < fce_isa_count()) ? tables[i] : 0; }

int fce_isa_supported(int i) {
    const fce_kernels *t = fce_isa_table(i);
    if (!t) return 0;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0) */
    if (t == &fce_table_avx512) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (t == &fce_table_avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return 1; /* scalar everywhere; NEON is architectural on AArch64 */
}
