"""A NumPy MLP on scikit-learn's digits, trained with fastce's loss and gradient.

The model (64 -> 128 ReLU -> 10) and its training loop are plain NumPy; the loss and
d loss / d logits come from :func:`fastce.cross_entropy_with_grad` in one call.  At every
step the same logits also go through torch's ``F.cross_entropy`` (and its autograd), so
the script shows that fastce's loss and gradient are torch's, and how much time each
library spends in the loss.

Run::

    python examples/mlp_digits.py            # 300 steps, a few seconds
    python examples/mlp_digits.py --quick    # 60 steps (the smoke test)
"""
import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import fastce


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="60 steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    steps = 60 if args.quick else args.steps
    try:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(1)
    except ImportError:
        torch = F = None
        print("torch is not installed: no comparison with torch")

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    test, train = order[:360], order[360:]

    H, C, lr, batch = 128, 10, 0.1, 128
    W1 = (rng.standard_normal((64, H)) * np.sqrt(2 / 64)).astype(np.float32)
    b1 = np.zeros(H, np.float32)
    W2 = (rng.standard_normal((H, C)) * np.sqrt(1 / H)).astype(np.float32)
    b2 = np.zeros(C, np.float32)

    t_fastce = t_torch = 0.0
    max_loss_diff = max_rel_loss_diff = max_grad_diff = 0.0
    dlogits = np.empty((batch, C), np.float32)  # reused: the gradient is written into it
    for step in range(steps):
        idx = rng.choice(train, batch, replace=False)
        xb, yb = X[idx], y[idx]
        h = np.maximum(xb @ W1 + b1, 0)
        logits = h @ W2 + b2

        t0 = time.perf_counter()
        loss, _ = fastce.cross_entropy_with_grad(logits, yb, out=dlogits)
        t_fastce += time.perf_counter() - t0
        if torch is not None:
            t0 = time.perf_counter()
            lt = torch.from_numpy(logits).requires_grad_(True)
            loss_t = F.cross_entropy(lt, torch.from_numpy(yb))
            loss_t.backward()
            t_torch += time.perf_counter() - t0
            diff = abs(float(loss) - loss_t.item())
            max_loss_diff = max(max_loss_diff, diff)
            max_rel_loss_diff = max(max_rel_loss_diff, diff / abs(loss_t.item()))
            g = lt.grad.numpy()
            max_grad_diff = max(max_grad_diff, float(np.abs(dlogits - g).max() / np.abs(g).max()))

        # backward through the MLP, then SGD
        dW2 = h.T @ dlogits
        db2 = dlogits.sum(0)
        dh = (dlogits @ W2.T) * (h > 0)
        dW1 = xb.T @ dh
        db1 = dh.sum(0)
        for param, grad in ((W1, dW1), (b1, db1), (W2, dW2), (b2, db2)):
            param -= lr * grad
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")

    logits = np.maximum(X[test] @ W1 + b1, 0) @ W2 + b2
    acc = float(np.mean(logits.argmax(1) == y[test]))
    test_loss = float(fastce.cross_entropy(logits, y[test]))
    print(f"test accuracy: {acc:.4f} ({len(test)} held-out digits), test loss {test_loss:.4f}")
    if torch is not None:
        print(f"loss agreement with torch: max |fastce - torch| = {max_loss_diff:.3g} "
              f"(relative {max_rel_loss_diff:.3g}) over {steps} steps")
        print(f"gradient agreement with torch autograd: max relative difference {max_grad_diff:.3g}")
        print(f"time in the loss (forward + backward, {steps} calls of {batch}x{C}): "
              f"fastce {t_fastce * 1e3:.1f} ms, torch {t_torch * 1e3:.1f} ms")
    else:
        print(f"time in the loss (forward + backward, {steps} calls of {batch}x{C}): fastce {t_fastce * 1e3:.1f} ms")
    return acc


if __name__ == "__main__":
    main()
