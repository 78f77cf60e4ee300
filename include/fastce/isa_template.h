/* Instantiates the dtype templates for the ISA whose simd_*.h was included just before,
 * and defines that ISA's kernel table, FCE_TABLE_NAME. */
#include "fastce/fastce.h"
#include "fastce/template.h"

#define FCE_DT f32
#define FCE_T float
#define FCE_VN FCE_F32_N
#define FCE_IS_F32 1
#include "fastce/vmath_impl.h"
#include "fastce/kernels_impl.h"
#include "fastce/bce_impl.h" /* binary cross-entropy with logits */
#undef FCE_DT
#undef FCE_T
#undef FCE_VN
#undef FCE_IS_F32

#define FCE_DT f64
#define FCE_T double
#define FCE_VN FCE_F64_N
#define FCE_IS_F32 0
#include "fastce/vmath_impl.h"
#include "fastce/kernels_impl.h"
#include "fastce/bce_impl.h" /* binary cross-entropy with logits */
#undef FCE_DT
#undef FCE_T
#undef FCE_VN
#undef FCE_IS_F32

#define FCE__STR_(x) #x
#define FCE__STR(x) FCE__STR_(x)
#define FCE__TABLE(DT) \
    { fce_##DT##_row_stats, fce_##DT##_row_tail, fce_##DT##_row_exp_affine, fce_##DT##_row_sub_shift,                         \
      fce_##DT##_row_fused_stats, fce_##DT##_row_scale,                                                  \
      fce_##DT##_row_soft_stats, fce_##DT##_row_soft_grad,                                               \
      fce_##DT##_row_softcap, fce_##DT##_row_softcap_grad, fce_##DT##_vtanh,                             \
      FCE_##DT##_LANES, fce_##DT##_col_stats, fce_##DT##_col_tail, fce_##DT##_col_exp_affine, fce_##DT##_col_sub_shift, fce_##DT##_col_pack, fce_##DT##_col_unpack,       \
      fce_##DT##_vexp, fce_##DT##_vlog, \
      /* bce */ fce_##DT##_bce_block }
#define FCE_f32_LANES FCE_F32_N
#define FCE_f64_LANES FCE_F64_N

const fce_kernels FCE_TABLE_NAME = {
    FCE__STR(FCE_ISA_NAME),
    FCE_F32_N * 32,
    FCE__TABLE(f32),
    FCE__TABLE(f64),
    fce_f32_from_f16,
    fce_f32_to_f16,
    fce_f32_from_bf16,
    fce_f32_to_bf16,
};
