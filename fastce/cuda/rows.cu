/* fastce/cuda/rows.cu -- the row sweeps of fastce's GPU path.
 *
 * Its two #include lines are expanded by fastce/cuda/_api.py (read_source): NVRTC (CuPy's
 * RawModule), the tests' nvcc and the CPU emulator compile that one text, with no include
 * path.  row.h (include/fastce) has the row formulas, shared with the CPU path;
 * kernel_params.h the kernels' parameter list, which the host parses into its signature.
 * Every kernel is a template over the storage type S of the logits (and of probability
 * targets), the storage type O of the elementwise output, and the compute type T (float
 * for float16/bfloat16 storage),
 * instantiated below under plain extern "C" names:
 *     _f32 (float), _f64 (double), _f16 / _bf16 (half in, half out),
 *     _f16f32 / _bf16f32 (half in, float32 gradient: grad_dtype=float32).
 * Half values are raw 16-bit words converted here (round to nearest even), so no CUDA
 * header is needed; arithmetic is float32, as on the CPU path.
 *
 * 1. Geometry.  Logits are seen as an (A, C, B) view with element strides (xa, xc, xb);
 *    a "row" r = a * B + b is the C class scores x[a, :, b].  (N, C) is (N, C, 1); the
 *    K-dim layout (N, C, d1..dk) is (N, C, d1*..*dk).  Any strides, negative included.
 *    Probability targets have their own strides (ta, tc, tb) over the same view.
 * 2. Three shapes of launch, chosen by the host (fastce/cuda/_api.py, plan_rows):
 *      warp   a warp per row, the row held in registers (VPT values per lane, C <= 32*VPT)
 *      block  a block per row; VPT = 8 or 16 keeps the row in registers
 *             (C <= VPT * blockDim, blockDim <= 512), VPT = 0 streams it (two reads when
 *             an elementwise output is written; the second mostly hits L2).  Long rows of
 *             short batches are split in chunks over gridDim.y (phase 1: partial stats;
 *             phase 2: combine + write).
 *      thread a thread per row, for short rows whose neighbours are adjacent in memory
 *             (class axis strided, e.g. Fortran order or (N, C, H, W)): coalesced.
 * 3. Statistics, one read: running max m and s = sum exp(x - m) (rescaled when m grows),
 *    plus what the loss needs: sum_c w_c (ref - x_c) (label smoothing),
 *    sum_c w_c t_c (ref - x_c) and sum_c w_c t_c (probability targets), x[y] (hard
 *    targets); ref is the row's first score (fce_ref).  Sums in float64; exp in
 *    T (expf / exp, full accuracy, never __expf).  -inf scores are skipped
 *    (exp(-inf - -inf) would be nan); nan propagates through s; a +inf score makes s nan
 *    (exp(inf - inf)), so the row's lse is nan like the CPU path and torch's log_softmax.
 *    With a softcap c every score is first replaced by c * tanh(x / c) (Gemma 2).
 *    A row dominated by one score (s < 1 + 2^-20) takes log1p of its tail, summed over
 *    the row again (fce_tail_add), in every launch shape but a row split in chunks.
 * 4. Reductions: warp shuffles (xor butterfly: every lane ends with the same bits),
 *    then one double per warp in shared memory.  Fixed order for a fixed launch shape:
 *    results are deterministic run to run.
 * 5. Modes: 0 lse, 1 log_softmax, 2 softmax, 3 cross-entropy (per-row loss, lse and/or
 *    the gradient).  The gradient may be written over the logits (in place): every
 *    element is read and written by the same thread, all reads of a row's statistics
 *    happen before the barrier that precedes the first write, and x[y] is read before it.
 *
 * Cross-entropy per row (docs/design.md §1): row.h turns the statistics into the loss and
 * the gradient coefficients (out_c = ca p_c - w_c (cb + cd t_c) - cy [c == y]), as on the
 * CPU path.  The statistics are measured from the row's first score (row.h's mref = ref:
 * dev = sum_c u_c (ref - x_c); the CPU path measures from the max), and the z-term's
 * factor zfold is 1 for row_out ('none') and zrow for row_loss (torch's
 * 'mean' normaliser turned into the z-term's own, the count of rows not ignored).  Here:
 *   logit_scale s:  x_c -> s x_c first (before the softcap); g_c *= s (in the coefficients).
 *   softcap c:      x_c -> c tanh(x_c / c) first; g_c *= 1 - (x_c / c)^2 (capped x_c).
 */

#include "kernel_params.h"
#include "row.h"

#define FCE_MODE_LSE 0
#define FCE_MODE_LOG_SOFTMAX 1
#define FCE_MODE_SOFTMAX 2
#define FCE_MODE_CE 3

#ifndef FCE_FULL_MASK
#define FCE_FULL_MASK 0xffffffffu
#endif

template <typename T> struct fce_num;
template <> struct fce_num<float> {
    static __device__ __forceinline__ float ninf() { return -__int_as_float(0x7f800000); }
    static __device__ __forceinline__ float ex(float v) { return expf(v); }
    static __device__ __forceinline__ float th(float v) { return tanhf(v); }
};
template <> struct fce_num<double> {
    static __device__ __forceinline__ double ninf() { return -__longlong_as_double(0x7ff0000000000000LL); }
    static __device__ __forceinline__ double ex(double v) { return exp(v); }
    static __device__ __forceinline__ double th(double v) { return tanh(v); }
};

/* ------------------------------------------------------------------ storage types */
struct fce_f16 { unsigned short bits; };   /* IEEE binary16 */
struct fce_bf16 { unsigned short bits; };  /* bfloat16: the high half of a float32 */

__device__ __forceinline__ float fce_f16_to_f32(unsigned int h) {
    const unsigned int sign = (h & 0x8000u) << 16, em = h & 0x7fffu;
    if (em >= 0x7c00u) return __uint_as_float(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    /* exponent and mantissa shifted into float32 place, rebiased by 2^112: exact for
     * normal and subnormal halves alike */
    return __uint_as_float(sign | __float_as_uint(__uint_as_float(em << 13) * __uint_as_float(0x77800000u)));
}

__device__ __forceinline__ unsigned short fce_f32_to_f16(float f) {
    const unsigned int u = __float_as_uint(f);
    const unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  /* quiet nan */
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  /* >= 65520 rounds to inf */
    if (a < 0x38800000u) {  /* below 2^-14: a subnormal half; adding 0.5 rounds to 2^-24 units */
        const float v = __uint_as_float(a) + 0.5f;
        return (unsigned short)(sign | (__float_as_uint(v) - 0x3f000000u));
    }
    a += 0xc8000fffu + ((a >> 13) & 1u);  /* rebias (-112 << 23) and round to nearest even */
    return (unsigned short)(sign | (a >> 13));
}

__device__ __forceinline__ unsigned short fce_f32_to_bf16(float f) {
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  /* quiet nan */
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Loads and stores by storage type; T is the compute type. */
template <typename S> struct fce_io;
template <> struct fce_io<float> {
    typedef float T;
    static __device__ __forceinline__ float ld(const float *p) { return *p; }
    static __device__ __forceinline__ void st(float *p, float v) { *p = v; }
};
template <> struct fce_io<double> {
    typedef double T;
    static __device__ __forceinline__ double ld(const double *p) { return *p; }
    static __device__ __forceinline__ void st(double *p, double v) { *p = v; }
};
template <> struct fce_io<fce_f16> {
    typedef float T;
    static __device__ __forceinline__ float ld(const fce_f16 *p) { return fce_f16_to_f32(p->bits); }
    static __device__ __forceinline__ void st(fce_f16 *p, float v) { p->bits = fce_f32_to_f16(v); }
};
template <> struct fce_io<fce_bf16> {
    typedef float T;
    static __device__ __forceinline__ float ld(const fce_bf16 *p) { return __uint_as_float((unsigned int)p->bits << 16); }
    static __device__ __forceinline__ void st(fce_bf16 *p, float v) { p->bits = fce_f32_to_bf16(v); }
};

/* ------------------------------------------------------------------ arguments */
/* The kernels' arguments (kernel_params.h, FCE_ROWS_FIELDS) as one struct, in parameter
 * order: a kernel initialises it from its parameters (FCE_ARGS). */
template <typename S_, typename O_> struct fce_rows_args {
    typedef S_ S;
    typedef O_ O;
    typedef typename fce_io<S_>::T T;
    FCE_MEMBERS(FCE_ROWS_FIELDS, S, O, T)
};

/* ------------------------------------------------------------------ per-row helpers */
/* A row's statistics (partial ones for a chunk) and what it needs besides. */
struct fce_stat {
    double m, s;      /* max, sum exp(x - m)                                   */
    double wx;        /* sum w_c (ref - x_c) (label smoothing)                 */
    double wtx, wts;  /* sum w_c t_c (ref - x_c), sum w_c t_c (prob. targets)  */
    double xy;        /* x at the target, in the part that holds it            */
    double ref;       /* the row's reference score (fce_ref), not reduced      */
};
#define FCE_PART 6    /* doubles per partial statistic in `part` */

/* One row: its target, where it lives, the flags of what to accumulate. */
struct fce_row {
    long long a, b;
    long long y, yl;  /* global target (-1: none) and its index in this array         */
    bool ignored, owns;
};

template <class P>
__device__ __forceinline__ fce_row fce_row_of(const P &p, long long r) {
    fce_row q;
    q.a = r / p.B;
    q.b = r - q.a * p.B;
    q.y = -1;
    q.yl = -1;
    q.ignored = q.owns = false;
    if (p.mode == FCE_MODE_CE && p.target) {
        q.y = p.target_is64 ? ((const long long *)p.target)[r] : (long long)((const int *)p.target)[r];
        q.ignored = (q.y == p.ignore_index);
        q.owns = !q.ignored && q.y >= p.cstart && q.y < p.cstart + p.C;
        if (q.owns) q.yl = q.y - p.cstart;
    }
    return q;
}

/* The point the smoothing and probability sums measure from (row.h's mref): the row's
 * first score, the same for every thread and chunk of the row, so the sums stay plain
 * sums; 0 when that score is not finite (a masked class). A score of the row, like the
 * CPU path's max, keeps sum w (ref - x) free of cancellation at any magnitude of the
 * logits (measured from 0, |x| = 1e16 lost the smoothing term). */
template <class P>
__device__ __forceinline__ double fce_ref(const P &p, const typename P::S *xr) {
    typedef typename P::T T;
    if (p.C == 0) return 0.0;
    const T v = fce_score(p, fce_io<typename P::S>::ld(xr));
    return (v - v == (T)0) ? (double)v : 0.0;  /* inf - inf and nan - nan are nan */
}

/* sum w_c x_c is needed for a smoothed loss only (hard or soft targets); the gradient
 * needs it in neither case. */
template <class P>
__device__ __forceinline__ bool fce_want_wx(const P &p) {
    return p.mode == FCE_MODE_CE && p.eps != 0.0 && (p.row_loss != 0 || p.row_out != 0);
}

/* The score at (row, class) as the kernels see it: loaded, converted, scaled, capped. */
template <class P>
__device__ __forceinline__ typename P::T fce_score(const P &p, typename P::T v) {
    typedef typename P::T T;
    if (p.cap == 0.0) return (p.scale == 1.0) ? v : v * (T)p.scale;
    return (T)p.cap * fce_num<T>::th(v * (T)(p.scale / p.cap));  /* c tanh(s x / c) */
}

/* Add one score v (class c) to a thread's running statistics (online max). */
template <class P>
__device__ __forceinline__ void fce_accumulate(const P &p, const fce_row &q, typename P::T v,
                                               long long c, bool want_wx, fce_stat &st,
                                               typename P::T &m) {
    typedef typename P::T T;
    if (v > m) {                                     /* nan never enters m */
        st.s *= (double)fce_num<T>::ex(m - v);       /* m = -inf: exp(-inf) = 0 */
        m = v;
    }
    if (v != fce_num<T>::ninf()) st.s += (double)fce_num<T>::ex(v - m);
    const double w = p.weight ? p.weight[c] : 1.0;
    if (want_wx) st.wx += w * (st.ref - (double)v);
    if (p.soft) {
        const double t = (double)fce_io<typename P::S>::ld(p.soft + q.a * p.ta + q.b * p.tb + c * p.tc);
        st.wtx += w * t * (st.ref - (double)v);
        st.wts += w * t;
    }
}

/* Rescale a thread's s from its own max m to the common max M (M >= m). */
template <typename T>
__device__ __forceinline__ double fce_rescale(double s, T m, T M) {
    return (m == M) ? s : s * (double)fce_num<T>::ex(m - M);  /* m == M covers -inf == -inf */
}

/* A row's lse as the pair lse = m + l: m its max, l = log(sum exp(x - m)); or the
 * caller's lse and 0. x - lse is then (x - m) - l, exact at any magnitude of x (a rounded
 * lse would lose everything below one ulp of max(x): softmax([1e16, 1e16]) = [1, 1]). */
struct fce_lse2 { double m, l; };

template <class P>
__device__ __forceinline__ fce_lse2 fce_lse(const P &p, long long r, double m, double s) {
    fce_lse2 v;
    v.m = p.lse_in ? p.lse_in[r] : m;
    v.l = p.lse_in ? 0.0 : log(s);
    return v;
}

/* A row whose sum is just above 1 (row.h's fce_needs_tail: one score dominates) takes
 * l = log1p(tail), tail = sum_{x < m} exp(x - m) + (count(x == m) - 1), as the CPU path:
 * log(s) would keep only ~2^-53 / tail of the tail (logsumexp([0, -40]) = 4.25e-18, not
 * 0). One thread's part of tail and of the count, over its scores v. */
template <typename T>
__device__ __forceinline__ void fce_tail_add(T v, T m, double &tail, double &tops) {
    if (v < m) tail += (double)fce_num<T>::ex(v - m);
    else if (v == m) tops += 1.0;
}

/* row.h's per-call parameters; zfold: the z-term's factor in the row value it builds. */
template <class P>
__device__ __forceinline__ fce_row_params fce_params_of(const P &p, double zfold) {
    fce_row_params rp;
    rp.eps = p.eps;
    rp.ctot = p.Ctot;
    rp.W = p.W;
    rp.Wtot = p.Wtot;
    rp.z = p.z;
    rp.zfold = zfold;
    return rp;
}

/* u = sum_c w_c t'_c of probability targets t' = (1 - eps) t + eps / Ctot. */
template <class P>
__device__ __forceinline__ double fce_soft_u(const P &p, const fce_stat &st) {
    return (1.0 - p.eps) * st.wts + p.eps / p.Ctot * p.W;
}

/* A row's loss (row.h) with the z-term's factor zfold; the statistics measure from st.ref. */
template <class P>
__device__ __forceinline__ double fce_ce_loss(const P &p, const fce_row &q, fce_lse2 ls,
                                              const fce_stat &st, double zfold) {
    const fce_row_params rp = fce_params_of(p, zfold);
    if (p.soft) {
        double dev = (1.0 - p.eps) * st.wtx;  /* sum_c w_c t'_c (ref - x_c) */
        if (p.eps != 0.0) dev += p.eps / p.Ctot * st.wx;
        return fce_soft_loss(&rp, ls.m, ls.l, st.ref, dev, fce_soft_u(p, st));
    }
    const double wy = p.weight_y ? p.weight_y[q.y] : 1.0;
    return fce_hard_loss(&rp, wy, q.owns, ls.m, ls.l, st.xy, st.ref, st.wx);
}

/* Per-row results (one thread per row calls this). */
template <class P>
__device__ void fce_row_result(const P &p, long long r, const fce_row &q, fce_lse2 ls,
                               const fce_stat &st) {
    typedef typename P::T T;
    const double lse = ls.m + ls.l;
    if (p.lse_out) p.lse_out[r] = lse;  /* ignored rows too: only their loss is masked */
    if (p.mode == FCE_MODE_LSE) {
        p.row_out[q.a * p.ra + q.b * p.rb] = (T)lse;
        return;
    }
    if (p.mode != FCE_MODE_CE) return;
    if (p.row_loss) p.row_loss[r] = q.ignored ? 0.0 : fce_ce_loss(p, q, ls, st, p.zrow);
    if (p.row_out) p.row_out[q.a * p.ra + q.b * p.rb] = (T)(q.ignored ? 0.0 : fce_ce_loss(p, q, ls, st, 1.0));
}

/* The elementwise stage of one row, as coefficients in T:
 *   log_softmax  x - lse                  softmax  exp(x - lse)
 *   CE gradient  (ca p_c - w_c (cb + cd t_c) - [c == yl] cy) * (1 - (x_c / cap)^2) */
template <typename T> struct fce_apply {
    T hi, lo;      /* lse = hi + lo, hi = m rounded: (x - hi) - lo at any magnitude */
    T ca, cb, cd, cy, icap;
    long long yl;
    int mode;
    bool zero;     /* ignored row: the gradient row is 0                       */
    bool use_w;    /* cb or cd != 0: read w_c (and t_c)                        */
};

template <class P>
__device__ __forceinline__ fce_apply<typename P::T> fce_make_apply(const P &p, long long r,
                                                                   const fce_row &q, fce_lse2 ls,
                                                                   const fce_stat &st) {
    typedef typename P::T T;
    const double lse = ls.m + ls.l;
    fce_apply<T> k;
    k.mode = p.mode;
    k.zero = q.ignored;
    k.yl = q.yl;
    k.hi = (T)ls.m;
    k.lo = (T)((ls.m - (double)k.hi) + ls.l);
    k.ca = k.cb = k.cd = k.cy = (T)0;
    k.icap = (T)(p.cap != 0.0 ? 1.0 / p.cap : 0.0);
    k.use_w = false;
    if (p.mode == FCE_MODE_CE && !q.ignored) {
        const double go = p.gout ? p.gout[r * p.gout_s] : 1.0;
        const double g = p.gscale * go, gz = p.gzscale * go;
        const fce_row_params rp = fce_params_of(p, 1.0);
        double coef[3];
        if (p.soft) {  /* gz == g: the two 'mean' normalisers are the row count */
            fce_soft_coef(&rp, fce_soft_u(p, st), lse, g, coef);
            k.cd = (T)coef[2];
            k.use_w = true;
        } else {
            const double wy = p.weight_y ? p.weight_y[q.y] : 1.0;
            fce_hard_coef(&rp, wy, q.owns, lse, g, gz, coef);
            k.cy = (T)coef[2];
            k.use_w = (p.eps != 0.0);
        }
        const double ca = coef[0];
        k.cb = (T)coef[1];
        k.ca = (T)ca;
        if (p.scale != 1.0) {  /* d(s x)/dx = s: every coefficient is linear in it */
            k.ca = (T)(ca * p.scale);
            k.cb = (T)((double)k.cb * p.scale);
            k.cd = (T)((double)k.cd * p.scale);
            k.cy = (T)((double)k.cy * p.scale);
        }
    }
    return k;
}

/* Output value at class c of a row whose (capped) score is v; t_c read only when needed. */
template <class P>
__device__ __forceinline__ typename P::T fce_apply_one(const P &p, const fce_apply<typename P::T> &k,
                                                       const fce_row &q, typename P::T v, long long c) {
    typedef typename P::T T;
    if (k.mode == FCE_MODE_LOG_SOFTMAX) return (v - k.hi) - k.lo;
    if (k.mode == FCE_MODE_SOFTMAX) return fce_num<T>::ex((v - k.hi) - k.lo);
    if (k.zero) return (T)0;
    T g = k.ca * fce_num<T>::ex((v - k.hi) - k.lo);
    if (k.use_w) {
        const T w = p.weight ? (T)p.weight[c] : (T)1;
        T coef = k.cb;
        if (p.soft) coef += k.cd * fce_io<typename P::S>::ld(p.soft + q.a * p.ta + q.b * p.tb + c * p.tc);
        g -= w * coef;
    }
    if (c == k.yl) g -= k.cy;
    if (p.cap != 0.0) {
        const T u = v * k.icap;
        g *= (T)1 - u * u;
    }
    return g;
}

/* ------------------------------------------------------------------ reductions */
template <typename V>
__device__ __forceinline__ V fce_warp_max(V v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const V u = __shfl_xor_sync(FCE_FULL_MASK, v, o);
        v = (u > v) ? u : v;
    }
    return v;
}

__device__ __forceinline__ double fce_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FCE_FULL_MASK, v, o);
    return v;
}

/* Warp-wide sums of the statistics a row needs (uniform flags). */
__device__ __forceinline__ void fce_warp_stats(fce_stat &st, bool want_wx, bool soft) {
    st.s = fce_warp_sum(st.s);
    if (want_wx) st.wx = fce_warp_sum(st.wx);
    if (soft) {
        st.wtx = fce_warp_sum(st.wtx);
        st.wts = fce_warp_sum(st.wts);
    }
}

/* Block-wide max of T (exact in double); every thread gets the result.
 * blockDim.x is a multiple of 32. sm: 33 doubles of shared memory. */
template <typename T>
__device__ T fce_block_max(T v, double *sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = fce_warp_max(v);
    if (lane == 0) sm[warp] = (double)v;
    __syncthreads();
    if (warp == 0) {
        T t = lane < nw ? (T)sm[lane] : fce_num<T>::ninf();
        t = fce_warp_max(t);
        if (lane == 0) sm[32] = (double)t;
    }
    __syncthreads();
    const T r = (T)sm[32];
    __syncthreads();
    return r;
}

/* Block-wide sums of s, wx, wtx, wts; every thread gets them. sm: 4 * 33 doubles.
 * Sums a statistic only when the (uniform) flags ask for it. */
__device__ void fce_block_stats(fce_stat &st, bool want_wx, bool soft, double *sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int n = soft ? 4 : (want_wx ? 2 : 1);
    fce_warp_stats(st, want_wx || soft, soft);
    if (lane == 0) {
        sm[warp] = st.s;
        sm[33 + warp] = st.wx;
        sm[66 + warp] = st.wtx;
        sm[99 + warp] = st.wts;
    }
    __syncthreads();
    if (warp == 0) {
        for (int j = 0; j < n; ++j) {
            double a = lane < nw ? sm[33 * j + lane] : 0.0;
            a = fce_warp_sum(a);
            if (lane == 0) sm[33 * j + 32] = a;
        }
    }
    __syncthreads();
    st.s = sm[32];
    if (n > 1) st.wx = sm[65];
    if (n > 2) {
        st.wtx = sm[98];
        st.wts = sm[131];
    }
    __syncthreads();
}

/* Zero the per-row results and the output row of an ignored row (columns from..to, step). */
template <class P>
__device__ __forceinline__ void fce_zero_row(const P &p, const fce_row &q, long long from,
                                             long long to, long long step) {
    if (!p.out) return;
    for (long long c = from; c < to; c += step)
        fce_io<typename P::O>::st(p.out + q.a * p.oa + q.b * p.ob + c * p.oc, (typename P::T)0);
}

/* ------------------------------------------------------------------ warp per row */
template <class P, int VPT>
__device__ void fce_rows_warp(const P &p) {
    typedef typename P::T T;
    typedef typename P::S S;
    const int lane = threadIdx.x & 31;
    const long long wpb = blockDim.x >> 5;
    const long long step = (long long)gridDim.x * wpb;
    const T NINF = fce_num<T>::ninf();
    const bool want_wx = fce_want_wx(p), soft = p.soft != 0;
    for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < p.n_rows; r += step) {
        const fce_row q = fce_row_of(p, r);
        const S *xr = p.x + q.a * p.xa + q.b * p.xb;
        fce_stat st = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        if (want_wx || p.soft) st.ref = fce_ref(p, xr);
        if (q.ignored && !p.lse_out) {  /* an ignored row's lse is still wanted */
            if (lane == 0) fce_row_result(p, r, q, fce_lse2{0.0, 0.0}, st);
            fce_zero_row(p, q, lane, p.C, 32);
            continue;
        }
        if (q.owns && lane == 0) st.xy = (double)fce_score(p, fce_io<S>::ld(xr + q.yl * p.xc));  /* before any write */
        T v[VPT];
        T m = NINF;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const long long c = lane + 32LL * k;
            v[k] = (c < p.C) ? fce_score(p, fce_io<S>::ld(xr + c * p.xc)) : NINF;
            m = (v[k] > m) ? v[k] : m;
        }
        m = fce_warp_max(m);
        T mm = m;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const long long c = lane + 32LL * k;
            if (c < p.C) fce_accumulate(p, q, v[k], c, want_wx, st, mm);  /* mm stays m */
        }
        fce_warp_stats(st, want_wx, soft);
        fce_lse2 lse = fce_lse(p, r, (double)m, st.s);
        if (!p.lse_in && fce_needs_tail(st.s)) {  /* uniform over the warp */
            double tail = 0.0, tops = 0.0;
#pragma unroll
            for (int k = 0; k < VPT; ++k)
                if (lane + 32LL * k < p.C) fce_tail_add(v[k], m, tail, tops);
            lse.l = log1p(fce_warp_sum(tail) + (fce_warp_sum(tops) - 1.0));
        }
        if (lane == 0) fce_row_result(p, r, q, lse, st);
        if (p.out && p.mode != FCE_MODE_LSE) {
            const fce_apply<T> k = fce_make_apply(p, r, q, lse, st);
            typename P::O *orow = p.out + q.a * p.oa + q.b * p.ob;
#pragma unroll
            for (int j = 0; j < VPT; ++j) {
                const long long c = lane + 32LL * j;
                if (c < p.C) fce_io<typename P::O>::st(orow + c * p.oc, fce_apply_one(p, k, q, v[j], c));
            }
        }
    }
}

/* ------------------------------------------------------------------ block per row */
template <class P, int VPT>
__device__ void fce_rows_block(const P &p) {
    typedef typename P::T T;
    typedef typename P::S S;
    __shared__ double sm[4 * 33];
    __shared__ double srow[FCE_PART];
    const int tid = threadIdx.x;
    const long long nt = blockDim.x;
    const T NINF = fce_num<T>::ninf();
    const bool want_wx = fce_want_wx(p), soft = p.soft != 0;
    const long long chunk = blockIdx.y;
    long long c0 = 0, c1 = p.C;
    if (p.phase != 0) {
        c0 = chunk * p.chunk_len;
        c1 = (c0 + p.chunk_len < p.C) ? c0 + p.chunk_len : p.C;
    }
    /* the block that writes the per-row results */
    const bool finisher = (p.phase == 0) || (p.phase == 2 && chunk == 0);
    for (long long r = blockIdx.x; r < p.n_rows; r += gridDim.x) {
        const fce_row q = fce_row_of(p, r);
        const S *xr = p.x + q.a * p.xa + q.b * p.xb;
        fce_stat st = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        if (want_wx || p.soft) st.ref = fce_ref(p, xr);
        if (q.ignored && !p.lse_out) {  /* uniform over the block; lse still wanted */
            if (p.phase == 1) continue;
            if (tid == 0 && finisher) fce_row_result(p, r, q, fce_lse2{0.0, 0.0}, st);
            fce_zero_row(p, q, c0 + tid, c1, nt);
            continue;
        }
        fce_lse2 lse;
        T v[VPT > 0 ? VPT : 1];
        if (p.phase == 2) {
            if (tid == 0) {  /* combine the partials in a fixed order */
                const double *pp = p.part + r * (long long)p.n_parts * FCE_PART;
                double M = pp[0];
                for (int j = 1; j < p.n_parts; ++j) M = (pp[FCE_PART * j] > M) ? pp[FCE_PART * j] : M;
                double S_ = 0.0, WX = 0.0, WTX = 0.0, WTS = 0.0;
                for (int j = 0; j < p.n_parts; ++j) {
                    const double *pj = pp + FCE_PART * j;
                    S_ += (pj[0] == M) ? pj[1] : pj[1] * exp(pj[0] - M);
                    WX += pj[2];
                    WTX += pj[3];
                    WTS += pj[4];
                }
                srow[0] = M;
                srow[1] = S_;
                srow[2] = WX;
                srow[3] = WTX;
                srow[4] = WTS;
                srow[5] = q.owns ? pp[FCE_PART * (q.yl / p.chunk_len) + 5] : 0.0;
            }
            __syncthreads();
            st.m = srow[0];
            st.s = srow[1];
            st.wx = srow[2];
            st.wtx = srow[3];
            st.wts = srow[4];
            st.xy = srow[5];
            __syncthreads();
            lse = fce_lse(p, r, st.m, st.s);
        } else {
            if (q.owns && tid == 0 && q.yl >= c0 && q.yl < c1)  /* before the barriers that precede any write */
                st.xy = (double)fce_score(p, fce_io<S>::ld(xr + q.yl * p.xc));
            T m = NINF;
            if (VPT > 0) {  /* the row stays in registers (phase 0 only) */
#pragma unroll
                for (int k = 0; k < (VPT > 0 ? VPT : 1); ++k) {
                    const long long c = tid + nt * k;
                    v[k] = (c < p.C) ? fce_score(p, fce_io<S>::ld(xr + c * p.xc)) : NINF;
                    m = (v[k] > m) ? v[k] : m;
                }
                m = fce_block_max(m, sm);
                T mm = m;
#pragma unroll
                for (int k = 0; k < (VPT > 0 ? VPT : 1); ++k) {
                    const long long c = tid + nt * k;
                    if (c < p.C) fce_accumulate(p, q, v[k], c, want_wx, st, mm);
                }
            } else if (p.cap == 0.0 && p.scale == 1.0 && !soft) {  /* streaming, 4 loads in flight */
                long long c = c0 + tid;
                for (; c + 3 * nt < c1; c += 4 * nt) {
                    const T x0 = fce_io<S>::ld(xr + c * p.xc), x1 = fce_io<S>::ld(xr + (c + nt) * p.xc);
                    const T x2 = fce_io<S>::ld(xr + (c + 2 * nt) * p.xc);
                    const T x3 = fce_io<S>::ld(xr + (c + 3 * nt) * p.xc);
                    T mx = (x1 > x0) ? x1 : x0;
                    mx = (x2 > mx) ? x2 : mx;
                    mx = (x3 > mx) ? x3 : mx;
                    if (mx > m) {
                        st.s *= (double)fce_num<T>::ex(m - mx);
                        m = mx;
                    }
                    if (x0 != NINF) st.s += (double)fce_num<T>::ex(x0 - m);
                    if (x1 != NINF) st.s += (double)fce_num<T>::ex(x1 - m);
                    if (x2 != NINF) st.s += (double)fce_num<T>::ex(x2 - m);
                    if (x3 != NINF) st.s += (double)fce_num<T>::ex(x3 - m);
                    if (want_wx) {
                        if (p.weight) {
                            const double rf = st.ref;
                            st.wx += p.weight[c] * (rf - (double)x0)
                                   + p.weight[c + nt] * (rf - (double)x1)
                                   + p.weight[c + 2 * nt] * (rf - (double)x2)
                                   + p.weight[c + 3 * nt] * (rf - (double)x3);
                        } else {
                            const double rf = st.ref;
                            st.wx += ((rf - (double)x0) + (rf - (double)x1))
                                   + ((rf - (double)x2) + (rf - (double)x3));
                        }
                    }
                }
                for (; c < c1; c += nt) fce_accumulate(p, q, fce_io<S>::ld(xr + c * p.xc), c, want_wx, st, m);
                const T M = fce_block_max(m, sm);
                st.s = fce_rescale(st.s, m, M);
                m = M;
            } else {  /* streaming with a transform or probability targets: one at a time */
                for (long long c = c0 + tid; c < c1; c += nt)
                    fce_accumulate(p, q, fce_score(p, fce_io<S>::ld(xr + c * p.xc)), c, want_wx, st, m);
                const T M = fce_block_max(m, sm);
                st.s = fce_rescale(st.s, m, M);
                m = M;
            }
            fce_block_stats(st, want_wx, soft, sm);
            st.m = (double)m;
            if (p.phase == 1) {
                if (tid == 0) {
                    double *pp = p.part + (r * (long long)p.n_parts + chunk) * FCE_PART;
                    pp[0] = st.m;
                    pp[1] = st.s;
                    pp[2] = st.wx;
                    pp[3] = st.wtx;
                    pp[4] = st.wts;
                    pp[5] = st.xy;  /* meaningful only in the chunk holding y */
                }
                continue;
            }
            lse = fce_lse(p, r, st.m, st.s);
            if (!p.lse_in && fce_needs_tail(st.s)) {  /* uniform over the block (phase 0) */
                fce_stat tl = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  /* s: tail, wx: tops */
                if (VPT > 0) {
#pragma unroll
                    for (int k = 0; k < (VPT > 0 ? VPT : 1); ++k)
                        if (tid + nt * k < p.C) fce_tail_add(v[k], m, tl.s, tl.wx);
                } else {  /* read again: nothing is written before the barriers below */
                    for (long long c = tid; c < p.C; c += nt)
                        fce_tail_add(fce_score(p, fce_io<S>::ld(xr + c * p.xc)), m, tl.s, tl.wx);
                }
                fce_block_stats(tl, true, false, sm);
                lse.l = log1p(tl.s + (tl.wx - 1.0));
            }
        }
        if (tid == 0 && finisher) fce_row_result(p, r, q, lse, st);
        if (p.out && p.mode != FCE_MODE_LSE) {
            const fce_apply<T> k = fce_make_apply(p, r, q, lse, st);
            typename P::O *orow = p.out + q.a * p.oa + q.b * p.ob;
            if (VPT > 0 && p.phase == 0) {
#pragma unroll
                for (int j = 0; j < (VPT > 0 ? VPT : 1); ++j) {
                    const long long c = tid + nt * j;
                    if (c < p.C) fce_io<typename P::O>::st(orow + c * p.oc, fce_apply_one(p, k, q, v[j], c));
                }
            } else {
                for (long long c = c0 + tid; c < c1; c += nt)
                    fce_io<typename P::O>::st(orow + c * p.oc,
                                              fce_apply_one(p, k, q, fce_score(p, fce_io<S>::ld(xr + c * p.xc)), c));
            }
        }
    }
}

/* ------------------------------------------------------------------ thread per row */
template <class P>
__device__ void fce_rows_thread(const P &p) {
    typedef typename P::T T;
    typedef typename P::S S;
    const long long step = (long long)gridDim.x * blockDim.x;
    const T NINF = fce_num<T>::ninf();
    const bool want_wx = fce_want_wx(p);
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < p.n_rows; r += step) {
        const fce_row q = fce_row_of(p, r);
        const S *xr = p.x + q.a * p.xa + q.b * p.xb;
        fce_stat st = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        if (want_wx || p.soft) st.ref = fce_ref(p, xr);
        if (q.ignored && !p.lse_out) {  /* an ignored row's lse is still wanted */
            fce_row_result(p, r, q, fce_lse2{0.0, 0.0}, st);
            fce_zero_row(p, q, 0, p.C, 1);
            continue;
        }
        if (q.owns) st.xy = (double)fce_score(p, fce_io<S>::ld(xr + q.yl * p.xc));
        T m = NINF;
        for (long long c = 0; c < p.C; ++c)
            fce_accumulate(p, q, fce_score(p, fce_io<S>::ld(xr + c * p.xc)), c, want_wx, st, m);
        fce_lse2 lse = fce_lse(p, r, (double)m, st.s);
        if (!p.lse_in && fce_needs_tail(st.s)) {
            double tail = 0.0, tops = 0.0;
            for (long long c = 0; c < p.C; ++c)
                fce_tail_add(fce_score(p, fce_io<S>::ld(xr + c * p.xc)), m, tail, tops);
            lse.l = log1p(tail + (tops - 1.0));
        }
        fce_row_result(p, r, q, lse, st);
        if (p.out && p.mode != FCE_MODE_LSE) {
            const fce_apply<T> k = fce_make_apply(p, r, q, lse, st);
            typename P::O *orow = p.out + q.a * p.oa + q.b * p.ob;
            for (long long c = 0; c < p.C; ++c)
                fce_io<typename P::O>::st(orow + c * p.oc,
                                          fce_apply_one(p, k, q, fce_score(p, fce_io<S>::ld(xr + c * p.xc)), c));
        }
    }
}

/* ------------------------------------------------------------------ instantiations */
/* Every kernel takes FCE_ROWS_FIELDS as parameters and hands them to its sweep as one
 * struct. */
#define FCE_ROWS_KERNEL(NAME, MAXT, S, O)                                                  \
    extern "C" __global__ void __launch_bounds__(MAXT, 1)                                  \
    NAME(FCE_PARAMS(FCE_ROWS_FIELDS, S, O, fce_io<S>::T))
#define FCE_ROWS_P(S, O) const fce_rows_args<S, O> p = {FCE_ARGS(FCE_ROWS_FIELDS, S, O, fce_io<S>::T)}
#define FCE_WARP(S, O, SUF, V)                                                             \
    FCE_ROWS_KERNEL(fastce_rows_warp##V##_##SUF, 256, S, O) {                               \
        FCE_ROWS_P(S, O);                                                                  \
        fce_rows_warp<fce_rows_args<S, O>, V>(p);                                          \
    }
#define FCE_BLOCK(S, O, SUF, V, MAXT)                                                      \
    FCE_ROWS_KERNEL(fastce_rows_block##V##_##SUF, MAXT, S, O) {                             \
        FCE_ROWS_P(S, O);                                                                  \
        fce_rows_block<fce_rows_args<S, O>, V>(p);                                         \
    }
#define FCE_THREAD(S, O, SUF)                                                              \
    FCE_ROWS_KERNEL(fastce_rows_thread_##SUF, 256, S, O) {                                  \
        FCE_ROWS_P(S, O);                                                                  \
        fce_rows_thread<fce_rows_args<S, O> >(p);                                          \
    }
#define FCE_ALL(S, O, SUF)                                                                 \
    FCE_WARP(S, O, SUF, 1) FCE_WARP(S, O, SUF, 2) FCE_WARP(S, O, SUF, 4)                   \
    FCE_WARP(S, O, SUF, 8) FCE_WARP(S, O, SUF, 16) FCE_WARP(S, O, SUF, 32)                 \
    FCE_BLOCK(S, O, SUF, 0, 512) FCE_BLOCK(S, O, SUF, 8, 512)                             \
    FCE_BLOCK(S, O, SUF, 16, 512) FCE_THREAD(S, O, SUF)

/* FCE_ROWS_SET (a compile option) picks one dtype family, so that a process compiles
 * only the kernels it uses (NVRTC at first use); without it, everything is compiled. */
#if !defined(FCE_ROWS_SET) || FCE_ROWS_SET == 1
FCE_ALL(float, float, f32)
#endif
#if !defined(FCE_ROWS_SET) || FCE_ROWS_SET == 2
FCE_ALL(double, double, f64)
#endif
#if !defined(FCE_ROWS_SET) || FCE_ROWS_SET == 3
FCE_ALL(fce_f16, fce_f16, f16)
FCE_ALL(fce_f16, float, f16f32)
#endif
#if !defined(FCE_ROWS_SET) || FCE_ROWS_SET == 4
FCE_ALL(fce_bf16, fce_bf16, bf16)
FCE_ALL(fce_bf16, float, bf16f32)
#endif
