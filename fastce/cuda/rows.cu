/* fastce/cuda/rows.cu -- the row sweeps of fastce's GPU path.
 *
 * Self-contained: no #include, so NVRTC (CuPy's RawModule) and a standalone
 * `nvcc -c` compile exactly the same text.  Every kernel is a template instantiated
 * below under a plain extern "C" name, float32 (`_f32`) and float64 (`_f64`).
 *
 * 1. Geometry.  Logits are seen as an (A, C, B) view with element strides (xa, xc, xb);
 *    a "row" r = a * B + b is the C class scores x[a, :, b].  (N, C) is (N, C, 1); the
 *    K-dim layout (N, C, d1..dk) is (N, C, d1*..*dk).  Any strides, negative included.
 * 2. Three shapes of launch, chosen by the host (fastce/cuda/_api.py, plan_rows):
 *      warp   a warp per row, the row held in registers (VPT values per lane, C <= 32*VPT)
 *      block  a block per row; VPT = 8 or 16 keeps the row in registers
 *             (C <= VPT * blockDim, blockDim <= 512), VPT = 0 streams it (two reads when an elementwise output is written;
 *             the second mostly hits L2).  Long rows of short batches are split in
 *             chunks over gridDim.y (phase 1: partial stats; phase 2: combine + write).
 *      thread a thread per row, for short rows whose neighbours are adjacent in memory
 *             (class axis strided, e.g. Fortran order or (N, C, H, W)): coalesced.
 * 3. Statistics, one read: running max m and s = sum exp(x - m) (rescaled when m
 *    grows), plus sum_c w_c x_c for label smoothing.  Sums in float64; exp in the
 *    logits' dtype (expf / exp, full accuracy, never __expf).
 *    -inf scores are skipped (exp(-inf - -inf) would be nan); nan propagates through s;
 *    a +inf score makes s nan (exp(inf - inf)), so the row's lse is nan like the CPU
 *    path and torch's log_softmax.
 * 4. Reductions: warp shuffles (xor butterfly: every lane ends with the same bits),
 *    then one double per warp in shared memory.  Fixed order for a fixed launch shape:
 *    results are deterministic run to run.
 * 5. Modes: 0 lse, 1 log_softmax, 2 softmax, 3 cross-entropy (per-row loss and/or the
 *    gradient).  The gradient may be written over the logits (in place): every element
 *    is read and written by the same thread, all reads of a row's statistics happen
 *    before the barrier that precedes the first write, and x[y] is read before it too.
 *
 * Gradient of the hard-target loss (design.md section 1), per row with scale s:
 *     g_c = s * [ ((1-eps) w_y + eps W / C) p_c - (eps / C) w_c - (1-eps) w_y [c == y] ]
 */

#define FCE_MODE_LSE 0
#define FCE_MODE_LOG_SOFTMAX 1
#define FCE_MODE_SOFTMAX 2
#define FCE_MODE_CE 3

#define FCE_FULL_MASK 0xffffffffu

__device__ __forceinline__ double fce_dnan() { return __longlong_as_double(0x7ff8000000000000LL); }

template <typename T> struct fce_num;
template <> struct fce_num<float> {
    static __device__ __forceinline__ float ninf() { return -__int_as_float(0x7f800000); }
    static __device__ __forceinline__ float ex(float v) { return expf(v); }
};
template <> struct fce_num<double> {
    static __device__ __forceinline__ double ninf() { return -__longlong_as_double(0x7ff0000000000000LL); }
    static __device__ __forceinline__ double ex(double v) { return exp(v); }
};

/* ------------------------------------------------------------------ arguments */
template <typename T> struct fce_rows_args {
    const T *x;                 /* IN  (A, C, B) logits                                 */
    long long n_rows, C, B, xa, xb, xc;
    T *out;                     /* OUT elementwise result (log_softmax/softmax/grad) or 0 */
    long long oa, ob, oc;
    T *row_out;                 /* OUT per-row result in T (lse, 'none' loss) or 0      */
    long long ra, rb;           /*     at row_out[a * ra + b * rb]                      */
    double *row_loss;           /* OUT per-row loss in float64 (for 'mean'/'sum') or 0  */
    const void *target;         /* IN  (n_rows,) contiguous int32 or int64, or 0        */
    int target_is64;
    long long ignore_index;
    const double *weight;       /* IN  (C,) class weights or 0 (all ones)               */
    double W;                   /*     sum of the weights (C when unweighted)           */
    double eps;                 /*     label smoothing                                  */
    const double *gout;         /* IN  grad_output, gout[r * gout_s] (gout_s 0: scalar) */
    long long gout_s;
    double gscale;              /*     row scale = gscale * (gout ? gout[..] : 1)       */
    double *part;               /* I/O (n_rows, n_parts, 4) partial stats (chunked)     */
    int n_parts;
    long long chunk_len;
    int mode, phase;            /*     phase 0: whole rows; 1: partial stats; 2: finish  */
};

/* The flat kernel parameter list. fastce/cuda/_api.py (ROWS_SIGNATURE) mirrors it,
 * and a CPU test parses this macro to check that the two agree. */
#define FCE_ROWS_PARAMS(T)                                                              \
    const T *x, long long n_rows, long long C, long long B, long long xa, long long xb,  \
    long long xc, T *out, long long oa, long long ob, long long oc, T *row_out,         \
    long long ra, long long rb, double *row_loss, const void *target, int target_is64,  \
    long long ignore_index, const double *weight, double W, double eps,                 \
    const double *gout, long long gout_s, double gscale, double *part, int n_parts,     \
    long long chunk_len, int mode, int phase

template <typename T>
__device__ __forceinline__ fce_rows_args<T> fce_make_args(FCE_ROWS_PARAMS(T)) {
    fce_rows_args<T> p;
    p.x = x; p.n_rows = n_rows; p.C = C; p.B = B; p.xa = xa; p.xb = xb; p.xc = xc;
    p.out = out; p.oa = oa; p.ob = ob; p.oc = oc;
    p.row_out = row_out; p.ra = ra; p.rb = rb; p.row_loss = row_loss;
    p.target = target; p.target_is64 = target_is64; p.ignore_index = ignore_index;
    p.weight = weight; p.W = W; p.eps = eps;
    p.gout = gout; p.gout_s = gout_s; p.gscale = gscale;
    p.part = part; p.n_parts = n_parts; p.chunk_len = chunk_len;
    p.mode = mode; p.phase = phase;
    return p;
}

#define FCE_ROWS_ARGS                                                                    \
    x, n_rows, C, B, xa, xb, xc, out, oa, ob, oc, row_out, ra, rb, row_loss, target,     \
    target_is64, ignore_index, weight, W, eps, gout, gout_s, gscale, part, n_parts,     \
    chunk_len, mode, phase

/* ------------------------------------------------------------------ per-row helpers */
template <typename T>
__device__ __forceinline__ long long fce_target(const fce_rows_args<T> &p, long long r) {
    return p.target_is64 ? ((const long long *)p.target)[r]
                         : (long long)((const int *)p.target)[r];
}

/* Does the per-row stage need sum_c w_c x_c?  Only a smoothed loss does. */
template <typename T>
__device__ __forceinline__ bool fce_want_wx(const fce_rows_args<T> &p) {
    return p.mode == FCE_MODE_CE && p.eps != 0.0 && (p.row_loss != 0 || p.row_out != 0);
}

/* Per-row results (one thread per row calls this). y < 0 is never passed for CE;
 * `ignored` rows get loss 0. */
template <typename T>
__device__ void fce_row_result(const fce_rows_args<T> &p, long long r, long long a, long long b,
                               bool ignored, long long y, double lse, double wx, double xy) {
    if (p.mode == FCE_MODE_LSE) {
        p.row_out[a * p.ra + b * p.rb] = (T)lse;
        return;
    }
    if (p.mode != FCE_MODE_CE) return;
    double loss = 0.0;
    if (!ignored) {
        const double wy = p.weight ? p.weight[y] : 1.0;
        loss = (1.0 - p.eps) * wy * (lse - xy);
        if (p.eps != 0.0)  /* skipped at eps == 0: 0 * inf would turn masked rows into nan */
            loss += p.eps / (double)p.C * (p.W * lse - wx);
    }
    if (p.row_loss) p.row_loss[r] = loss;
    if (p.row_out) p.row_out[a * p.ra + b * p.rb] = (T)loss;
}

/* The elementwise stage of one row, as coefficients in T. */
template <typename T> struct fce_apply {
    T hi, lo;      /* lse = hi + lo: x - lse is computed as (x - hi) - lo        */
    T ca, cb, cy;  /* CE gradient: ca * p_c - cb * w_c - [c == y] * cy          */
    long long y;
    int mode;
    bool zero;     /* ignored row: the gradient row is 0                       */
    bool use_w;    /* cb != 0: read w_c                                       */
};

template <typename T>
__device__ __forceinline__ fce_apply<T> fce_make_apply(const fce_rows_args<T> &p, long long r,
                                                       bool ignored, long long y, double lse) {
    fce_apply<T> k;
    k.mode = p.mode;
    k.zero = ignored;
    k.y = y;
    k.hi = (T)lse;
    k.lo = (T)(lse - (double)k.hi);
    k.ca = k.cb = k.cy = (T)0;
    k.use_w = false;
    if (p.mode == FCE_MODE_CE && !ignored) {
        const double s = p.gscale * (p.gout ? p.gout[r * p.gout_s] : 1.0);
        const double wy = p.weight ? p.weight[y] : 1.0;
        const double e = p.eps, ec = p.eps / (double)p.C;
        k.ca = (T)(s * ((1.0 - e) * wy + ec * p.W));
        k.cb = (T)(s * ec);
        k.cy = (T)(s * (1.0 - e) * wy);
        k.use_w = (e != 0.0);
    }
    return k;
}

template <typename T>
__device__ __forceinline__ T fce_apply_one(const fce_apply<T> &k, const double *weight, T v,
                                           long long c) {
    if (k.mode == FCE_MODE_LOG_SOFTMAX) return (v - k.hi) - k.lo;
    if (k.mode == FCE_MODE_SOFTMAX) return fce_num<T>::ex((v - k.hi) - k.lo);
    if (k.zero) return (T)0;
    T g = k.ca * fce_num<T>::ex((v - k.hi) - k.lo);
    if (k.use_w) g -= k.cb * (weight ? (T)weight[c] : (T)1);
    if (c == k.y) g -= k.cy;
    return g;
}

/* Online update of (m, s) by one score; s in float64. */
template <typename T>
__device__ __forceinline__ void fce_online1(T v, T &m, double &s) {
    if (v > m) {                         /* nan never enters m */
        s *= (double)fce_num<T>::ex(m - v); /* m = -inf: exp(-inf) = 0 (nan s stays nan) */
        m = v;
    }
    if (v != fce_num<T>::ninf()) s += (double)fce_num<T>::ex(v - m);
}

/* Rescale a thread's s from its own max m to the common max M (M >= m). */
template <typename T>
__device__ __forceinline__ double fce_rescale(double s, T m, T M) {
    return (m == M) ? s : s * (double)fce_num<T>::ex(m - M);  /* m == M covers -inf == -inf */
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

/* Block-wide sums of two doubles; every thread gets both. sm: 66 doubles. */
__device__ void fce_block_sum2(double &u, double &v, double *sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    u = fce_warp_sum(u);
    v = fce_warp_sum(v);
    if (lane == 0) { sm[warp] = u; sm[33 + warp] = v; }
    __syncthreads();
    if (warp == 0) {
        double a = lane < nw ? sm[lane] : 0.0;
        double b = lane < nw ? sm[33 + lane] : 0.0;
        a = fce_warp_sum(a);
        b = fce_warp_sum(b);
        if (lane == 0) { sm[32] = a; sm[65] = b; }
    }
    __syncthreads();
    u = sm[32];
    v = sm[65];
    __syncthreads();
}

/* ------------------------------------------------------------------ warp per row */
template <typename T, int VPT>
__device__ void fce_rows_warp(const fce_rows_args<T> &p) {
    const int lane = threadIdx.x & 31;
    const long long wpb = blockDim.x >> 5;
    const long long step = (long long)gridDim.x * wpb;
    const T NINF = fce_num<T>::ninf();
    const bool want_wx = fce_want_wx(p);
    for (long long r = (long long)blockIdx.x * wpb + (threadIdx.x >> 5); r < p.n_rows; r += step) {
        const long long a = r / p.B, b = r - a * p.B;
        const T *xr = p.x + a * p.xa + b * p.xb;
        T *orow = p.out ? p.out + a * p.oa + b * p.ob : 0;
        long long y = 0;
        bool ignored = false;
        if (p.mode == FCE_MODE_CE) {
            y = fce_target(p, r);
            ignored = (y == p.ignore_index);
        }
        if (ignored) {
            if (lane == 0) fce_row_result(p, r, a, b, true, y, 0.0, 0.0, 0.0);
            if (orow)
                for (long long c = lane; c < p.C; c += 32) orow[c * p.oc] = (T)0;
            continue;
        }
        double xy = 0.0;
        if (p.mode == FCE_MODE_CE && lane == 0) xy = (double)xr[y * p.xc];  /* before any write */
        T v[VPT];
        T m = NINF;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const long long c = lane + 32LL * k;
            v[k] = (c < p.C) ? xr[c * p.xc] : NINF;
            m = (v[k] > m) ? v[k] : m;
        }
        m = fce_warp_max(m);
        double s = 0.0, wx = 0.0;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const long long c = lane + 32LL * k;
            if (c < p.C) {
                if (v[k] != NINF) s += (double)fce_num<T>::ex(v[k] - m);
                if (want_wx) wx += (p.weight ? p.weight[c] : 1.0) * (double)v[k];
            }
        }
        s = fce_warp_sum(s);
        if (want_wx) wx = fce_warp_sum(wx);
        const double lse = (double)m + log(s);
        if (lane == 0) fce_row_result(p, r, a, b, false, y, lse, wx, xy);
        if (orow && p.mode != FCE_MODE_LSE) {
            const fce_apply<T> k = fce_make_apply(p, r, false, y, lse);
#pragma unroll
            for (int j = 0; j < VPT; ++j) {
                const long long c = lane + 32LL * j;
                if (c < p.C) orow[c * p.oc] = fce_apply_one(k, p.weight, v[j], c);
            }
        }
    }
}

/* ------------------------------------------------------------------ block per row */
template <typename T, int VPT>
__device__ void fce_rows_block(const fce_rows_args<T> &p) {
    __shared__ double sm[66];
    __shared__ double srow[4];
    const int tid = threadIdx.x;
    const long long nt = blockDim.x;
    const T NINF = fce_num<T>::ninf();
    const bool want_wx = fce_want_wx(p);
    const long long chunk = blockIdx.y;
    long long c0 = 0, c1 = p.C;
    if (p.phase != 0) {
        c0 = chunk * p.chunk_len;
        c1 = (c0 + p.chunk_len < p.C) ? c0 + p.chunk_len : p.C;
    }
    /* the block that writes the per-row results */
    const bool finisher = (p.phase == 0) || (p.phase == 2 && chunk == 0);
    for (long long r = blockIdx.x; r < p.n_rows; r += gridDim.x) {
        const long long a = r / p.B, b = r - a * p.B;
        const T *xr = p.x + a * p.xa + b * p.xb;
        T *orow = p.out ? p.out + a * p.oa + b * p.ob : 0;
        long long y = 0;
        bool ignored = false;
        if (p.mode == FCE_MODE_CE) {
            y = fce_target(p, r);
            ignored = (y == p.ignore_index);
        }
        if (ignored) {  /* uniform over the block */
            if (p.phase == 1) continue;
            if (tid == 0 && finisher) fce_row_result(p, r, a, b, true, y, 0.0, 0.0, 0.0);
            if (orow)
                for (long long c = c0 + tid; c < c1; c += nt) orow[c * p.oc] = (T)0;
            continue;
        }
        double lse, wx = 0.0, xy = 0.0;
        T v[VPT > 0 ? VPT : 1];
        if (p.phase == 2) {
            if (tid == 0) {  /* combine the partials in a fixed order */
                const double *pp = p.part + r * (long long)p.n_parts * 4;
                double M = pp[0];
                for (int j = 1; j < p.n_parts; ++j) M = (pp[4 * j] > M) ? pp[4 * j] : M;
                double S = 0.0, WX = 0.0;
                for (int j = 0; j < p.n_parts; ++j) {
                    const double mj = pp[4 * j];
                    S += (mj == M) ? pp[4 * j + 1] : pp[4 * j + 1] * exp(mj - M);
                    WX += pp[4 * j + 2];
                }
                srow[0] = M + log(S);
                srow[1] = WX;
                srow[2] = (p.mode == FCE_MODE_CE) ? pp[4 * (y / p.chunk_len) + 3] : 0.0;
            }
            __syncthreads();
            lse = srow[0];
            wx = srow[1];
            xy = srow[2];
            __syncthreads();
        } else {
            if (p.mode == FCE_MODE_CE && tid == 0 && y >= c0 && y < c1)
                xy = (double)xr[y * p.xc];  /* before the barriers that precede any write */
            T m = NINF;
            double s = 0.0, wxt = 0.0;
            if (VPT > 0) {  /* the row stays in registers (phase 0 only) */
#pragma unroll
                for (int k = 0; k < (VPT > 0 ? VPT : 1); ++k) {
                    const long long c = tid + nt * k;
                    v[k] = (c < p.C) ? xr[c * p.xc] : NINF;
                    m = (v[k] > m) ? v[k] : m;
                }
                const T M = fce_block_max(m, sm);
#pragma unroll
                for (int k = 0; k < (VPT > 0 ? VPT : 1); ++k) {
                    const long long c = tid + nt * k;
                    if (c < p.C) {
                        if (v[k] != NINF) s += (double)fce_num<T>::ex(v[k] - M);
                        if (want_wx) wxt += (p.weight ? p.weight[c] : 1.0) * (double)v[k];
                    }
                }
                m = M;
            } else {  /* streaming: online max/sum, 4 loads in flight per thread */
                long long c = c0 + tid;
                for (; c + 3 * nt < c1; c += 4 * nt) {
                    const T x0 = xr[c * p.xc], x1 = xr[(c + nt) * p.xc];
                    const T x2 = xr[(c + 2 * nt) * p.xc], x3 = xr[(c + 3 * nt) * p.xc];
                    T mx = (x1 > x0) ? x1 : x0;
                    mx = (x2 > mx) ? x2 : mx;
                    mx = (x3 > mx) ? x3 : mx;
                    if (mx > m) {
                        s *= (double)fce_num<T>::ex(m - mx);
                        m = mx;
                    }
                    if (x0 != NINF) s += (double)fce_num<T>::ex(x0 - m);
                    if (x1 != NINF) s += (double)fce_num<T>::ex(x1 - m);
                    if (x2 != NINF) s += (double)fce_num<T>::ex(x2 - m);
                    if (x3 != NINF) s += (double)fce_num<T>::ex(x3 - m);
                    if (want_wx) {
                        if (p.weight) {
                            wxt += p.weight[c] * (double)x0 + p.weight[c + nt] * (double)x1
                                 + p.weight[c + 2 * nt] * (double)x2 + p.weight[c + 3 * nt] * (double)x3;
                        } else {
                            wxt += ((double)x0 + (double)x1) + ((double)x2 + (double)x3);
                        }
                    }
                }
                for (; c < c1; c += nt) {
                    const T xv = xr[c * p.xc];
                    fce_online1(xv, m, s);
                    if (want_wx) wxt += (p.weight ? p.weight[c] : 1.0) * (double)xv;
                }
                const T M = fce_block_max(m, sm);
                s = fce_rescale(s, m, M);
                m = M;
            }
            fce_block_sum2(s, wxt, sm);
            if (p.phase == 1) {
                if (tid == 0) {
                    double *pp = p.part + (r * (long long)p.n_parts + chunk) * 4;
                    pp[0] = (double)m;
                    pp[1] = s;
                    pp[2] = wxt;
                    pp[3] = xy;  /* meaningful only in the chunk holding y */
                }
                continue;
            }
            lse = (double)m + log(s);
            wx = wxt;
        }
        if (tid == 0 && finisher) fce_row_result(p, r, a, b, false, y, lse, wx, xy);
        if (orow && p.mode != FCE_MODE_LSE) {
            const fce_apply<T> k = fce_make_apply(p, r, false, y, lse);
            if (VPT > 0 && p.phase == 0) {
#pragma unroll
                for (int j = 0; j < (VPT > 0 ? VPT : 1); ++j) {
                    const long long c = tid + nt * j;
                    if (c < p.C) orow[c * p.oc] = fce_apply_one(k, p.weight, v[j], c);
                }
            } else {
                for (long long c = c0 + tid; c < c1; c += nt)
                    orow[c * p.oc] = fce_apply_one(k, p.weight, xr[c * p.xc], c);
            }
        }
    }
}

/* ------------------------------------------------------------------ thread per row */
template <typename T>
__device__ void fce_rows_thread(const fce_rows_args<T> &p) {
    const long long step = (long long)gridDim.x * blockDim.x;
    const T NINF = fce_num<T>::ninf();
    const bool want_wx = fce_want_wx(p);
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < p.n_rows; r += step) {
        const long long a = r / p.B, b = r - a * p.B;
        const T *xr = p.x + a * p.xa + b * p.xb;
        T *orow = p.out ? p.out + a * p.oa + b * p.ob : 0;
        long long y = 0;
        bool ignored = false;
        if (p.mode == FCE_MODE_CE) {
            y = fce_target(p, r);
            ignored = (y == p.ignore_index);
        }
        if (ignored) {
            fce_row_result(p, r, a, b, true, y, 0.0, 0.0, 0.0);
            if (orow)
                for (long long c = 0; c < p.C; ++c) orow[c * p.oc] = (T)0;
            continue;
        }
        const double xy = (p.mode == FCE_MODE_CE) ? (double)xr[y * p.xc] : 0.0;
        T m = NINF;
        double s = 0.0, wx = 0.0;
        for (long long c = 0; c < p.C; ++c) {
            const T xv = xr[c * p.xc];
            fce_online1(xv, m, s);
            if (want_wx) wx += (p.weight ? p.weight[c] : 1.0) * (double)xv;
        }
        const double lse = (double)m + log(s);
        fce_row_result(p, r, a, b, false, y, lse, wx, xy);
        if (orow && p.mode != FCE_MODE_LSE) {
            const fce_apply<T> k = fce_make_apply(p, r, false, y, lse);
            for (long long c = 0; c < p.C; ++c)
                orow[c * p.oc] = fce_apply_one(k, p.weight, xr[c * p.xc], c);
        }
    }
}

/* ------------------------------------------------------------------ instantiations */
#define FCE_WARP(T, SUF, V)                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                      \
    fastce_rows_warp##V##_##SUF(FCE_ROWS_PARAMS(T)) {                                      \
        fce_rows_warp<T, V>(fce_make_args<T>(FCE_ROWS_ARGS));                              \
    }
#define FCE_BLOCK(T, SUF, V, MAXT)                                                         \
    extern "C" __global__ void __launch_bounds__(MAXT)                                     \
    fastce_rows_block##V##_##SUF(FCE_ROWS_PARAMS(T)) {                                     \
        fce_rows_block<T, V>(fce_make_args<T>(FCE_ROWS_ARGS));                             \
    }
#define FCE_THREAD(T, SUF)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                      \
    fastce_rows_thread_##SUF(FCE_ROWS_PARAMS(T)) {                                         \
        fce_rows_thread<T>(fce_make_args<T>(FCE_ROWS_ARGS));                               \
    }
#define FCE_ALL(T, SUF)                                                                    \
    FCE_WARP(T, SUF, 1) FCE_WARP(T, SUF, 2) FCE_WARP(T, SUF, 4) FCE_WARP(T, SUF, 8)        \
    FCE_WARP(T, SUF, 16) FCE_WARP(T, SUF, 32)                                              \
    FCE_BLOCK(T, SUF, 0, 1024) FCE_BLOCK(T, SUF, 8, 512) FCE_BLOCK(T, SUF, 16, 512)        \
    FCE_THREAD(T, SUF)

FCE_ALL(float, f32)
FCE_ALL(double, f64)
