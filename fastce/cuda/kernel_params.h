/* fastce/cuda/kernel_params.h -- the parameter list of every kernel, written once.
 *
 * FCE_<FAMILY>_FIELDS(X, ...) lists a kernel family's parameters, in order, as
 * X(type, name); the other arguments are the family's type parameters (the logits'
 * storage S, the output's O, the compute type T; FCE_SCAN_FIELDS takes a T it does not
 * use, so that every list has one).  The kernels expand a list into their parameter list
 * (FCE_PARAMS), the argument struct of the row kernels, and a forwarding call (FCE_ARGS).
 * fastce/cuda/_api.py (kernel_signatures) parses this file into the host's signatures
 * that pack_args follows, so a parameter is added here and nowhere else.
 *
 * Rules for the parser: one X(type, name) per parameter, a type without commas or
 * parentheses (`T *`, `const void *`, `long long`, `int`, `double`), comments in slash-star
 * form only (a line comment would swallow the line continuation).
 */
#ifndef FASTCE_KERNEL_PARAMS_H
#define FASTCE_KERNEL_PARAMS_H

/* X emits ", type name" (or ", name"); FCE_KP_DROP drops the list's leading comma. */
#define FCE_KP_PARAM(type, name) , type name
#define FCE_KP_ARG(type, name) , name
#define FCE_KP_MEMBER(type, name) type name;
#define FCE_KP_TAIL(first, ...) __VA_ARGS__
#define FCE_KP_DROP(...) FCE_KP_TAIL(__VA_ARGS__)
#define FCE_PARAMS(FIELDS, ...) FCE_KP_DROP(FIELDS(FCE_KP_PARAM, __VA_ARGS__))
#define FCE_ARGS(FIELDS, ...) FCE_KP_DROP(FIELDS(FCE_KP_ARG, __VA_ARGS__))
#define FCE_MEMBERS(FIELDS, ...) FIELDS(FCE_KP_MEMBER, __VA_ARGS__)

/* rows.cu: fastce_rows_{warp,block,thread}*, one (A, C, B) row sweep; S logits and
 * probability targets, O the elementwise output, T the compute type. */
#define FCE_ROWS_FIELDS(X, S, O, T)                                                          \
    X(const S *, x)             /* IN  (A, C, B) logits                                 */ \
    X(long long, n_rows)                                                                   \
    X(long long, C)                                                                        \
    X(long long, B)                                                                        \
    X(long long, xa)                                                                       \
    X(long long, xb)                                                                       \
    X(long long, xc)                                                                       \
    X(O *, out)                 /* OUT elementwise result (log_softmax/softmax/grad) or 0 */ \
    X(long long, oa)                                                                       \
    X(long long, ob)                                                                       \
    X(long long, oc)                                                                       \
    X(T *, row_out)             /* OUT per-row result in T (lse, 'none' loss) or 0      */ \
    X(long long, ra)            /*     at row_out[a * ra + b * rb]                      */ \
    X(long long, rb)                                                                       \
    X(double *, row_loss)       /* OUT per-row loss in float64 (for 'mean'/'sum') or 0  */ \
    X(double *, lse_out)        /* OUT per-row lse in float64 (ignored rows too) or 0   */ \
    X(const double *, lse_in)   /* IN  per-row lse to use instead of the row's own, or 0 */ \
    X(const void *, target)     /* IN  (n_rows,) contiguous int32 or int64, or 0        */ \
    X(int, target_is64)                                                                    \
    X(long long, ignore_index)                                                             \
    X(const S *, soft)          /* IN  probability targets, (A, C, B) view, or 0        */ \
    X(long long, ta)                                                                       \
    X(long long, tb)                                                                       \
    X(long long, tc)                                                                       \
    X(const double *, weight)   /* IN  (C,) this array's class weights or 0 (all ones)  */ \
    X(const double *, weight_y) /* IN  (Ctot,) weights of the whole vocabulary, or 0    */ \
    X(double, W)                /*     sum of this array's weights (C when unweighted)  */ \
    X(double, eps)              /*     label smoothing                                  */ \
    X(long long, cstart)        /*     first class of this array in the vocabulary      */ \
    X(double, Ctot)             /*     class count and weight sum of the vocabulary     */ \
    X(double, Wtot)                                                                        \
    X(double, z)                /*     z-loss                                           */ \
    X(double, zrow)             /*     the z-term's factor in row_loss (row.h's zfold)  */ \
    X(double, cap)              /*     softcap, or 0                                    */ \
    X(double, scale)            /*     logit_scale (1: off), applied before the softcap */ \
    X(const double *, gout)     /* IN  grad_output, gout[r * gout_s] (gout_s 0: scalar) */ \
    X(long long, gout_s)                                                                   \
    X(double, gscale)           /*     row scales g = gscale * gout, gz = gzscale * gout */ \
    X(double, gzscale)                                                                     \
    X(double *, part)           /* I/O (n_rows, n_parts, FCE_PART) partial stats        */ \
    X(int, n_parts)                                                                        \
    X(long long, chunk_len)                                                                \
    X(int, mode)                                                                           \
    X(int, phase)               /*     0: whole rows; 1: partial stats; 2: finish       */

/* reduce.cu: fastce_target_scan (T unused). */
#define FCE_SCAN_FIELDS(X, T)                                                                \
    X(const void *, target)                                                                \
    X(int, target_is64)                                                                    \
    X(long long, n)                                                                        \
    X(long long, C)                                                                        \
    X(long long, ignore_index)                                                             \
    X(const double *, weight)                                                              \
    X(double *, result)

/* reduce.cu: fastce_nll_{f32,f64}, the gather of nll_loss. */
#define FCE_NLL_FIELDS(X, T)                                                                 \
    X(const T *, lp)                                                                       \
    X(long long, n_rows)                                                                   \
    X(long long, B)                                                                        \
    X(long long, la)                                                                       \
    X(long long, lb)                                                                       \
    X(long long, lc)                                                                       \
    X(const void *, target)                                                                \
    X(int, target_is64)                                                                    \
    X(long long, ignore_index)                                                             \
    X(const double *, weight)                                                              \
    X(double *, row_loss)                                                                  \
    X(T *, row_out)

/* reduce.cu: fastce_finalize_{f32,f64}, the fixed-order sum of per-row losses. */
#define FCE_FINALIZE_FIELDS(X, T)                                                            \
    X(const double *, row_loss)                                                            \
    X(long long, n)                                                                        \
    X(double, denom)                                                                       \
    X(int, mean)                                                                           \
    X(T *, out)

/* reduce.cu: fastce_nll_backward_{f32,f64}, the scatter of nll_loss's gradient. */
#define FCE_NLL_BACKWARD_FIELDS(X, T)                                                        \
    X(T *, out)                                                                            \
    X(long long, n_rows)                                                                   \
    X(long long, B)                                                                        \
    X(long long, oa)                                                                       \
    X(long long, ob)                                                                       \
    X(long long, oc)                                                                       \
    X(const void *, target)                                                                \
    X(int, target_is64)                                                                    \
    X(long long, ignore_index)                                                             \
    X(const double *, weight)                                                              \
    X(const double *, gout)                                                                \
    X(long long, gout_s)                                                                   \
    X(double, gscale)                                                                      \
    X(double, denom)

/* bce.cu: fastce_bce_{f32,f64}; every operand p comes with its 4 element strides p_s0..3
 * (bce.cu, FCE_B_AT). */
#define FCE_BCE_FIELDS(X, T)                                                                 \
    X(long long, n) X(long long, n1) X(long long, n2) X(long long, n3)                     \
    X(const T *, x) X(long long, x_s0) X(long long, x_s1) X(long long, x_s2) X(long long, x_s3) \
    X(const T *, y) X(long long, y_s0) X(long long, y_s1) X(long long, y_s2) X(long long, y_s3) \
    X(const T *, w) X(long long, w_s0) X(long long, w_s1) X(long long, w_s2) X(long long, w_s3) \
    X(const T *, pw) X(long long, pw_s0) X(long long, pw_s1) X(long long, pw_s2)            \
    X(long long, pw_s3)                                                                    \
    X(const T *, ge) X(long long, ge_s0) X(long long, ge_s1) X(long long, ge_s2)            \
    X(long long, ge_s3)                                                                    \
    X(T *, grad) X(long long, grad_s0) X(long long, grad_s1) X(long long, grad_s2)          \
    X(long long, grad_s3)                                                                  \
    X(T *, le) X(long long, le_s0) X(long long, le_s1) X(long long, le_s2) X(long long, le_s3) \
    X(double, gscale)                                                                      \
    X(double *, part)

#endif
