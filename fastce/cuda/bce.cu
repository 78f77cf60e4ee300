/* fastce/cuda/bce.cu -- binary cross-entropy with logits on fastce's GPU path.
 *
 * The parameter list is kernel_params.h's FCE_BCE_FIELDS; fastce/cuda/_api.py (read_source)
 * expands the #include below, so NVRTC needs no include path.  The CPU emulator compiles
 * every .cu file of this folder into one translation unit, so every name here starts with
 * fce_b_ / fastce_bce_ (macros: FCE_B_ / FASTCE_BCE_, each guarded).
 *
 * 1. Math (as include/fastce/bce_impl.h, the CPU kernel), for logits x, targets y,
 *    weights w, positive weights pw and lw = 1 + (pw - 1) y:
 *        l     = w (lw log1p(exp(-|x|)) + max(x, 0) (1 - y) + max(-x, 0) pw y)
 *        dl/dx = w ((1 - y) sigmoid(x) - pw y sigmoid(-x))
 *    Every term of l is >= 0 for y in [0, 1], pw >= 0: nothing cancels. sigmoid(+-x) come
 *    from t = exp(-|x|) without a subtraction (1 / (1 + t), t / (1 + t)).  Computed in the
 *    logits' dtype with the full-accuracy expf/exp and log1pf/log1p (never __expf).
 *    Special values as torch: x = -inf -> l = nan; x = +inf -> l = inf (nan when y = 1);
 *    x = nan -> nan; the gradient is finite at +-inf.
 * 2. Geometry.  Every operand is a strided view of the logits' shape, collapsed by the host
 *    (fastce/cuda/_bce.py, bce_dims) to 4 dimensions (n0, n1, n2, n3), each operand with
 *    its own element strides (0 along broadcast axes: a pos_weight of shape (C,) is
 *    read in place, never tiled).  Element i of the walk has the mixed-radix digits
 *    (i0, i1, i2, i3) of i in (n0, n1, n2, n3); operand p sits at
 *    p[i0 p_s0 + i1 p_s1 + i2 p_s2 + i3 p_s3].  Absent operands are null pointers: no
 *    weight (1), no pos_weight (1), no per-element gradient scale (1), no gradient,
 *    no elementwise loss.
 * 3. Launch: grid-stride loop, thread k of T handles i = k, k + T, k + 2T, ...; its digits
 *    advance by the digits of T with carries (an odometer: no division per element).
 *    Element i is read and written by one thread only, so the gradient may overwrite the
 *    logits (in place).
 * 4. Loss sum ('mean'/'sum'): each thread adds its elements' losses in float64 in a fixed
 *    order, the block reduces them with a fixed butterfly/shared-memory tree, thread 0
 *    writes part[blockIdx.x]; fastce_finalize_f32/f64 (reduce.cu) then sums the grid's
 *    partials in a fixed order.  The host picks T from the element count only (not from
 *    the GPU's number of SMs), so the result is bitwise reproducible.
 */

#include "kernel_params.h"

#ifndef FCE_B_FULL_MASK
#define FCE_B_FULL_MASK 0xffffffffu
#endif

template <typename T> struct fce_b_num;
template <> struct fce_b_num<float> {
    static __device__ __forceinline__ float ex(float v) { return expf(v); }
    static __device__ __forceinline__ float l1p(float v) { return log1pf(v); }
    static __device__ __forceinline__ float ab(float v) { return fabsf(v); }
    static __device__ __forceinline__ float nan() { return __int_as_float(0x7fc00000); }
    static __device__ __forceinline__ float lowest() { return -__int_as_float(0x7f7fffff); }
};
template <> struct fce_b_num<double> {
    static __device__ __forceinline__ double ex(double v) { return exp(v); }
    static __device__ __forceinline__ double l1p(double v) { return log1p(v); }
    static __device__ __forceinline__ double ab(double v) { return fabs(v); }
    static __device__ __forceinline__ double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
    static __device__ __forceinline__ double lowest() { return -__longlong_as_double(0x7fefffffffffffffLL); }
};

/* One element: returns the loss (weighted) when want_loss; *g = gs * w * dl/dx when want_grad. */
template <typename T>
__device__ __forceinline__ T fce_b_elem(T x, T y, T w, T pw, T gs, T *g, bool want_loss, bool want_grad) {
    typedef fce_b_num<T> N;
    const T zero = (T)0, one = (T)1;
    const T t = N::ex(-N::ab(x)); /* exp(-|x|) in [0, 1]; nan stays nan */
    const T r = one / (one + t);  /* sigmoid(|x|) */
    const T omy = one - y, py = pw * y;
    T l = zero;
    if (want_loss) {
        const T lw = (pw - one) * y + one;
        l = lw * N::l1p(t) + (x > zero ? x : zero) * omy + (x < zero ? -x : zero) * py;
        if (x < N::lowest()) l = N::nan(); /* torch: (1 - y) * -inf + lw * inf */
        l = l * w;
    }
    if (want_grad) {
        const T tr = t * r; /* sigmoid(-|x|) */
        const bool neg = x < zero;
        const T s = neg ? tr : r, sn = neg ? r : tr;
        *g = (omy * s - py * sn) * (gs * w);
    }
    return l;
}

/* Mixed-radix digits of i in (n0, n1, n2, n3); d0 is unbounded. */
__device__ __forceinline__ void fce_b_digits(long long i, long long n1, long long n2, long long n3,
                                             long long &d0, long long &d1, long long &d2, long long &d3) {
    d3 = i % n3;
    i /= n3;
    d2 = i % n2;
    i /= n2;
    d1 = i % n1;
    d0 = i / n1;
}

__device__ __forceinline__ double fce_b_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FCE_B_FULL_MASK, v, o);
    return v;
}

/* Sum over the block, valid in thread 0; every thread must call it. blockDim.x % 32 == 0. */
__device__ double fce_b_block_sum(double v) {
    __shared__ double fce_b_warps[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = fce_b_warp_sum(v);
    if (lane == 0) fce_b_warps[warp] = v;
    __syncthreads();
    if (warp == 0) v = fce_b_warp_sum(lane < nw ? fce_b_warps[lane] : 0.0);
    return v;
}

/* The kernel parameters (kernel_params.h, FCE_BCE_FIELDS; fastce/cuda/_bce.py's
 * BCE_SIGNATURE is parsed from it):
 *   n                 elements; n1, n2, n3: the inner dimensions of the walk (n0 = n / ...)
 *   x, y              IN  logits, targets
 *   w, pw             IN  weight, pos_weight (broadcast: zero strides), or null
 *   ge                IN  per-element gradient scale (grad_output), or null
 *   grad              OUT gradient (may be x itself), or null
 *   le                OUT elementwise loss ('none'), or null
 *   gscale            gradient scale (1 / numel for 'mean'), times ge[...] when given
 *   part              OUT gridDim.x float64 loss sums ('mean'/'sum'), or null */
#ifndef FCE_B_AT
#define FCE_B_AT(p) p[i0 * p##_s0 + i1 * p##_s1 + i2 * p##_s2 + i3 * p##_s3]
#endif

template <typename T>
__device__ void fce_b_sweep(FCE_PARAMS(FCE_BCE_FIELDS, T)) {
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long i0, i1, i2, i3, d0, d1, d2, d3;
    fce_b_digits(i, n1, n2, n3, i0, i1, i2, i3);
    fce_b_digits(step, n1, n2, n3, d0, d1, d2, d3);
    const bool want_loss = part != 0 || le != 0, want_grad = grad != 0;
    const T one = (T)1, gs0 = (T)gscale;
    double acc = 0.0;
    for (; i < n; i += step) {
        const T wv = w ? FCE_B_AT(w) : one;
        const T pwv = pw ? FCE_B_AT(pw) : one;
        const T gs = ge ? gs0 * FCE_B_AT(ge) : gs0;
        T g = one;
        const T l = fce_b_elem<T>(FCE_B_AT(x), FCE_B_AT(y), wv, pwv, gs, &g, want_loss, want_grad);
        if (want_grad) FCE_B_AT(grad) = g; /* after every read of element i (in place) */
        if (le) FCE_B_AT(le) = l;
        acc += (double)l;
        /* odometer: (i0, i1, i2, i3) += (d0, d1, d2, d3) with carries; each digit sum is
         * below twice its radix, so one subtraction suffices */
        long long c;
        i3 += d3;
        c = i3 >= n3;
        i3 -= c * n3;
        i2 += d2 + c;
        c = i2 >= n2;
        i2 -= c * n2;
        i1 += d1 + c;
        c = i1 >= n1;
        i1 -= c * n1;
        i0 += d0 + c;
    }
    if (part) { /* uniform over the grid: every thread of the block reaches the barrier */
        acc = fce_b_block_sum(acc);
        if (threadIdx.x == 0) part[blockIdx.x] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(256) fastce_bce_f32(FCE_PARAMS(FCE_BCE_FIELDS, float)) {
    fce_b_sweep<float>(FCE_ARGS(FCE_BCE_FIELDS, float));
}
extern "C" __global__ void __launch_bounds__(256) fastce_bce_f64(FCE_PARAMS(FCE_BCE_FIELDS, double)) {
    fce_b_sweep<double>(FCE_ARGS(FCE_BCE_FIELDS, double));
}
