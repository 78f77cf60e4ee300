/* fastce/cuda/reduce.cu -- the O(N) kernels of fastce's GPU path.
 *
 * The parameter lists are kernel_params.h's (FCE_*_FIELDS); fastce/cuda/_api.py
 * (read_source) expands the #include below, so NVRTC needs no include path.
 *
 *   fastce_target_scan      one block: checks every class index, finds the first bad
 *                           one, and sums the 'mean' normaliser sum_{i not ignored} w[y_i]
 *                           and W = sum_c w_c, in float64 and in a fixed order.
 *   fastce_nll_{f32,f64}    a thread per row: l_i = -w[y_i] * log_probs[i, y_i].
 *   fastce_finalize_{f32,f64}
 *                           one block: sum of the per-row float64 losses in a fixed
 *                           order, divided by the normaliser for 'mean', rounded once
 *                           to the logits' dtype.
 *   fastce_nll_backward_{f32,f64}
 *                           a thread per row: the one non-zero entry of nll_loss's
 *                           gradient, grad[i, y_i] = -w[y_i] * g_i / denom, scattered
 *                           into an output the host has zero-filled.
 *
 * Single-block reductions are deterministic (fixed thread-to-element assignment,
 * fixed shuffle/shared-memory tree) and touch O(N) or O(C) data only.
 */

#include "kernel_params.h"

#ifndef FCE_FULL_MASK
#define FCE_FULL_MASK 0xffffffffu
#endif
#define FCE_LLONG_MAX 0x7fffffffffffffffLL

__device__ __forceinline__ double fce_r_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FCE_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ long long fce_r_warp_min(long long v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const long long u = __shfl_xor_sync(FCE_FULL_MASK, v, o);
        v = (u < v) ? u : v;
    }
    return v;
}

/* Sum of up to three doubles and the min of one long long over the block; the results
 * are valid in thread 0. blockDim.x is a multiple of 32. */
__device__ void fce_r_block_reduce(double &s0, double &s1, double &s2, long long &mn) {
    __shared__ double sd[3][32];
    __shared__ long long sl[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    s0 = fce_r_warp_sum(s0);
    s1 = fce_r_warp_sum(s1);
    s2 = fce_r_warp_sum(s2);
    mn = fce_r_warp_min(mn);
    if (lane == 0) {
        sd[0][warp] = s0;
        sd[1][warp] = s1;
        sd[2][warp] = s2;
        sl[warp] = mn;
    }
    __syncthreads();
    if (warp == 0) {
        s0 = lane < nw ? sd[0][lane] : 0.0;
        s1 = lane < nw ? sd[1][lane] : 0.0;
        s2 = lane < nw ? sd[2][lane] : 0.0;
        mn = lane < nw ? sl[lane] : FCE_LLONG_MAX;
        s0 = fce_r_warp_sum(s0);
        s1 = fce_r_warp_sum(s1);
        s2 = fce_r_warp_sum(s2);
        mn = fce_r_warp_min(mn);
    }
}

/* result[0] = position of the first target outside [0, C) that is not ignore_index, or -1
 * result[1] = sum of w[y_i] over the rows not ignored (their count when weight is 0)
 * result[2] = number of rows not ignored
 * result[3] = sum_c w_c (C when weight is 0)
 * Launch: one block (grid 1), blockDim.x a multiple of 32. */
extern "C" __global__ void __launch_bounds__(1024)
fastce_target_scan(FCE_PARAMS(FCE_SCAN_FIELDS, void)) {
    double wsum = 0.0, count = 0.0, wtot = 0.0;
    long long bad = FCE_LLONG_MAX;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const long long y = target_is64 ? ((const long long *)target)[i]
                                        : (long long)((const int *)target)[i];
        if (y == ignore_index) continue;
        if (y < 0 || y >= C) {
            bad = (i < bad) ? i : bad;
            continue;
        }
        wsum += weight ? weight[y] : 1.0;
        count += 1.0;
    }
    if (weight) {
        for (long long c = threadIdx.x; c < C; c += blockDim.x) wtot += weight[c];
    }
    fce_r_block_reduce(wsum, count, wtot, bad);
    if (threadIdx.x == 0) {
        result[0] = (bad == FCE_LLONG_MAX) ? -1.0 : (double)bad;
        result[1] = wsum;
        result[2] = count;
        result[3] = weight ? wtot : (double)C;
    }
}

/* ------------------------------------------------------------------ nll gather */
template <typename T>
__device__ void fce_nll(FCE_PARAMS(FCE_NLL_FIELDS, T)) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < n_rows; r += step) {
        const long long y = target_is64 ? ((const long long *)target)[r]
                                        : (long long)((const int *)target)[r];
        double l = 0.0;
        if (y != ignore_index) {
            const long long a = r / B, b = r - a * B;
            const double wy = weight ? weight[y] : 1.0;
            l = -wy * (double)lp[a * la + b * lb + y * lc];
        }
        if (row_loss) row_loss[r] = l;
        if (row_out) row_out[r] = (T)l;
    }
}

extern "C" __global__ void __launch_bounds__(256) fastce_nll_f32(FCE_PARAMS(FCE_NLL_FIELDS, float)) {
    fce_nll<float>(FCE_ARGS(FCE_NLL_FIELDS, float));
}
extern "C" __global__ void __launch_bounds__(256) fastce_nll_f64(FCE_PARAMS(FCE_NLL_FIELDS, double)) {
    fce_nll<double>(FCE_ARGS(FCE_NLL_FIELDS, double));
}

/* ------------------------------------------------------------------ final reduction */
/* out[0] = (T)(sum_i row_loss[i] / denom) when mean, else (T)sum_i row_loss[i]. A zero
 * 'mean' normaliser gives nan whatever the sum (torch: its nll term is then 0 / 0).
 * Launch: one block (grid 1), blockDim.x a multiple of 32. */
template <typename T>
__device__ void fce_finalize(FCE_PARAMS(FCE_FINALIZE_FIELDS, T)) {
    double s = 0.0, z1 = 0.0, z2 = 0.0;
    long long z3 = 0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += row_loss[i];
    fce_r_block_reduce(s, z1, z2, z3);
    if (threadIdx.x == 0)
        out[0] = (T)(!mean ? s : denom != 0.0 ? s / denom : __longlong_as_double(0x7ff8000000000000LL));
}

extern "C" __global__ void __launch_bounds__(1024) fastce_finalize_f32(FCE_PARAMS(FCE_FINALIZE_FIELDS, float)) {
    fce_finalize<float>(FCE_ARGS(FCE_FINALIZE_FIELDS, float));
}
extern "C" __global__ void __launch_bounds__(1024) fastce_finalize_f64(FCE_PARAMS(FCE_FINALIZE_FIELDS, double)) {
    fce_finalize<double>(FCE_ARGS(FCE_FINALIZE_FIELDS, double));
}

/* ------------------------------------------------------------------ nll scatter (backward) */
/* out[a, y_r, b] = (T)(-(w[y_r] * g_r)), g_r = (gout ? gout[r * gout_s] * gscale : gscale) / denom,
 * for every row r = a * B + b not ignored; other entries are left as they are (zero).
 * Rounded once, from double, like the CPU path's assignment of the float64 product.
 * Launch: any 1-D grid (grid-stride loop over rows). */
template <typename T>
__device__ void fce_nll_backward(FCE_PARAMS(FCE_NLL_BACKWARD_FIELDS, T)) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < n_rows; r += step) {
        const long long y = target_is64 ? ((const long long *)target)[r]
                                        : (long long)((const int *)target)[r];
        if (y == ignore_index) continue;
        const long long a = r / B, b = r - a * B;
        const double wy = weight ? weight[y] : 1.0;
        const double g = (gout ? gout[r * gout_s] * gscale : gscale) / denom;
        out[a * oa + b * ob + y * oc] = (T)(-(wy * g));
    }
}

extern "C" __global__ void __launch_bounds__(256)
fastce_nll_backward_f32(FCE_PARAMS(FCE_NLL_BACKWARD_FIELDS, float)) {
    fce_nll_backward<float>(FCE_ARGS(FCE_NLL_BACKWARD_FIELDS, float));
}
extern "C" __global__ void __launch_bounds__(256)
fastce_nll_backward_f64(FCE_PARAMS(FCE_NLL_BACKWARD_FIELDS, double)) {
    fce_nll_backward<double>(FCE_ARGS(FCE_NLL_BACKWARD_FIELDS, double));
}
