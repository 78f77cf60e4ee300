/* fastce/row.h -- one row's statistics -> its loss share and gradient coefficients.
 *
 * The cross-entropy row formulas of docs/design.md §1, written once for every sweep of
 * the CPU path (fastce/_kernels.pyx) and of the CUDA kernels (fastce/cuda/rows.cu: NVRTC
 * gets this file's text in place of its #include, fastce/cuda/_api.py read_source). Plain
 * C, no dependency.
 *
 * A row arrives as
 *   m, l     lse = m + l: m the row max and l = log(sum exp(x - m)), or a given lse and 0
 *   mref     the point dev is measured from, a score of the row (the row max the CPU
 *            statistics used; the CUDA kernels' first score of the row)
 *   dev, u   dev = sum_c u_c (mref - x_c), u = sum_c u_c over this array's classes, with
 *            u_c = w_c (label smoothing) or w_c t'_c (probability targets)
 * so every difference below is between nearby numbers: lse - x_y = (m - x_y) + l and
 * sum_c u_c (lse - x_c) = dev + u ((m - mref) + l). The loss is shift invariant and exact
 * at any magnitude of the logits (1e16 + [0, 0] gives log 2, not 0), and with u >= 0 the
 * smoothing sum adds non-negative terms. The z-term enters as zfold * z * lse^2 (the
 * 'mean' reduction divides by its own normaliser, see _contract.pxi). */
#ifndef FASTCE_ROW_H
#define FASTCE_ROW_H

#ifdef __CUDACC__
#define FCE_ROW_FN __host__ __device__ __forceinline__
#else
#define FCE_ROW_FN static inline
#endif

/* Below this, sum exp(x - max) - 1 is recomputed exactly (row_tail): log(sum) would keep
 * only ~2^-53 / tail of the tail's relative accuracy (logsumexp([0, -40]) = 4.2e-18). */
#define FCE_TAIL_REFINE (1.0 / 1048576.0) /* 2^-20; no hex float: NVRTC takes C++11 */

/* What every row of one call shares. */
typedef struct {
    double eps;   /* label smoothing */
    double ctot;  /* classes of the whole vocabulary */
    double W;     /* sum of this array's class weights (its class count when unweighted) */
    double Wtot;  /* the same over the whole vocabulary */
    double z;     /* z-loss coefficient */
    double zfold; /* the row value is ce + zfold * z * lse^2 */
} fce_row_params;

/* Hard target y with weight wy; owns: this array holds class y (its logit is xy). */
FCE_ROW_FN double fce_hard_loss(const fce_row_params *p, double wy, int owns, double m, double l,
                                double xy, double mref, double dev) {
    double loss = owns ? (1.0 - p->eps) * wy * ((m - xy) + l) : 0.0;
    if (p->eps != 0.0) /* skipped at eps == 0: 0 * inf would turn masked rows into nan */
        loss += p->eps / p->ctot * (dev + p->W * ((m - mref) + l));
    if (p->z != 0.0 && owns) {
        const double lse = m + l;
        loss += p->zfold * p->z * lse * lse;
    }
    return loss;
}

/* The gradient row of a hard target, as out_c = a p_c - beta w_c - gamma [c == y]:
 *   d loss / d x_c = g [((1-eps) w_y + eps Wtot / Ctot) p_c - (eps / Ctot) w_c
 *                       - (1-eps) w_y [c == y]] + gz 2 z lse p_c
 * g the row's gradient scale, gz the z-term's ('mean' normalises the two apart). */
FCE_ROW_FN void fce_hard_coef(const fce_row_params *p, double wy, int owns, double lse, double g,
                              double gz, double coef[3]) {
    coef[0] = g * ((1.0 - p->eps) * wy + p->eps / p->ctot * p->Wtot);
    if (p->z != 0.0) coef[0] += gz * 2.0 * p->z * lse;
    coef[1] = g * p->eps / p->ctot;
    coef[2] = owns ? g * (1.0 - p->eps) * wy : 0.0;
}

/* Probability targets t' = (1-eps) t + eps / C: loss = sum_c w_c t'_c (lse - x_c) + z lse^2,
 * with dev and u over u_c = w_c t'_c. */
FCE_ROW_FN double fce_soft_loss(const fce_row_params *p, double m, double l, double mref, double dev,
                                double u) {
    const double lse = m + l;
    const double loss = dev + u * ((m - mref) + l);
    return p->z != 0.0 ? loss + p->zfold * p->z * lse * lse : loss;
}

/* Its gradient row, out_c = a p_c - w_c (beta + delta t_c):
 *   d loss / d x_c = g [(u + 2 z lse) p_c - w_c ((1 - eps) t_c + eps / C)] */
FCE_ROW_FN void fce_soft_coef(const fce_row_params *p, double u, double lse, double g, double coef[3]) {
    coef[0] = g * u + (p->z != 0.0 ? g * 2.0 * p->z * lse : 0.0);
    coef[1] = g * p->eps / p->ctot;
    coef[2] = g * (1.0 - p->eps);
}

/* Whether a row with this sum of exp(x - max) takes l = log1p(row_tail) instead of log(sum).
 * Such a sum is below 2, so max is the row max (fastce.h), the top row_tail measures from. */
FCE_ROW_FN int fce_needs_tail(double sum) { return sum >= 1.0 && sum - 1.0 < FCE_TAIL_REFINE; }

#endif
