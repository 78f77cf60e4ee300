/* Portable scalar kernels: always built, always supported. */
#include "fastce/simd_scalar.h"
#define FCE_TABLE_NAME fce_table_scalar
#include "fastce/isa_template.h"
