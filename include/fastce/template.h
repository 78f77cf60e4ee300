/* Token pasting used by the dtype templates (vmath_impl.h, kernels_impl.h).
 * Before including a template, define FCE_DT (f32 or f64), FCE_T (float or double)
 * and FCE_VN (lanes). Inside it:
 *   V, M, ACC      vector, mask and accumulator types of that dtype
 *   VOP(add)       -> fce_f32_add / fce_f64_add ...
 *   AOP(add)       -> fce_f32acc_add ...
 *   FN(name)       -> fce_f32_name: the template's own (static) functions */
#ifndef FASTCE_TEMPLATE_H
#define FASTCE_TEMPLATE_H
#define FCE_CAT2_(a, b) a##b
#define FCE_CAT2(a, b) FCE_CAT2_(a, b)
#define FCE_CAT3_(a, b, c) a##b##c
#define FCE_CAT3(a, b, c) FCE_CAT3_(a, b, c)
#define FCE_CAT4_(a, b, c, d) a##b##c##d
#define FCE_CAT4(a, b, c, d) FCE_CAT4_(a, b, c, d)
#define V FCE_CAT3(fce_, FCE_DT, v)
#define M FCE_CAT3(fce_, FCE_DT, m)
#define ACC FCE_CAT3(fce_, FCE_DT, acc)
#define VOP(name) FCE_CAT4(fce_, FCE_DT, _, name)
#define AOP(name) FCE_CAT4(fce_, FCE_DT, acc_, name)
#define FN(name) FCE_CAT4(fce_, FCE_DT, _, name)
#endif
