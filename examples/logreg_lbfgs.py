"""Logistic regression on breast_cancer: fastce's BCE gradient inside SciPy's L-BFGS-B.

The objective is scikit-learn's for ``LogisticRegression(C=C)`` (L2 penalty, intercept
not penalised)::

    f(w, b) = C * sum_i BCE(x_i . w + b, y_i) + ||w||^2 / 2

:func:`fastce.binary_cross_entropy_with_logits_with_grad` gives the summed loss and
d loss / d logits in one call; ``X.T @ dlogits`` turns it into the gradient.  The script
fits the same model with scikit-learn's own L-BFGS solver and prints both objectives,
the distance between the two solutions, and the accuracies.

Run::

    python examples/logreg_lbfgs.py
"""
import argparse
import time

import numpy as np
from scipy.optimize import minimize
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import fastce


def objective(params, X, y, C):
    """scikit-learn's L2 logistic-regression objective and its gradient (float64)."""
    w, b = params[:-1], params[-1]
    z = X @ w + b
    loss, dz = fastce.binary_cross_entropy_with_logits_with_grad(z, y, reduction="sum")
    f = C * float(loss) + 0.5 * float(w @ w)
    grad = np.empty_like(params)
    grad[:-1] = C * (X.T @ dz) + w
    grad[-1] = C * dz.sum()
    return f, grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength (default 1)")
    p.add_argument("--quick", action="store_true", help="accepted for symmetry: this example is already quick")
    args = p.parse_args(argv)

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    y = y.astype(np.float64)

    t0 = time.perf_counter()
    res = minimize(objective, np.zeros(X.shape[1] + 1), args=(X, y, args.C), jac=True,
                   method="L-BFGS-B", options={"maxiter": 10000, "gtol": 1e-10, "ftol": 1e-15})
    t_fastce = time.perf_counter() - t0
    w, b = res.x[:-1], res.x[-1]

    t0 = time.perf_counter()
    sk = LogisticRegression(C=args.C, solver="lbfgs", tol=1e-12, max_iter=10000).fit(X, y)
    t_sk = time.perf_counter() - t0
    sk_params = np.concatenate([sk.coef_.ravel(), sk.intercept_])

    f_fastce = objective(res.x, X, y, args.C)[0]
    f_sk = objective(sk_params, X, y, args.C)[0]
    print(f"L-BFGS-B with fastce: {res.nit} iterations, {res.nfev} evaluations, {t_fastce * 1e3:.0f} ms, "
          f"converged: {res.success}")
    print(f"objective: fastce + scipy {f_fastce:.10f}, scikit-learn {f_sk:.10f}, "
          f"relative difference {abs(f_fastce - f_sk) / abs(f_sk):.3g}")
    print(f"max |w_fastce - w_sklearn| = {np.abs(res.x - sk_params).max():.3g} "
          f"(max |w| = {np.abs(sk_params).max():.3g}); scikit-learn took {t_sk * 1e3:.0f} ms")
    acc = float(np.mean(((X @ w + b) > 0) == (y > 0.5)))
    print(f"training accuracy: fastce {acc:.4f}, scikit-learn {sk.score(X, y):.4f}")
    return res


if __name__ == "__main__":
    main()
