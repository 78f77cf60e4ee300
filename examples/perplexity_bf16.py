"""Perplexity at GPT-2's vocabulary (V = 50257) from float32 and bfloat16 logits.

A language model's evaluation ends in ``exp(mean NLL)`` over many tokens.  Here the
"model" is synthetic: logits with a heavy-tailed spread like a trained LM head's, and
targets sampled from their own softmax (so the perplexity is a real one).  The same logits are scored

- in float64 (the reference: fastce on the exact values),
- in float32 by fastce and by torch,
- rounded to bfloat16, by fastce (``ml_dtypes.bfloat16`` input, computed in float32, the
  loss returned as float32) and by torch (whose bfloat16 ``F.cross_entropy`` returns a
  bfloat16 loss: 8 significant bits, so a mean NLL between 4 and 8 is rounded to a
  multiple of 2**-5, and the perplexity moves by ~3% a step).

Every error is measured against float64 evaluated on the same (rounded) logits, so it
shows the arithmetic, not the rounding of the inputs.

Run::

    python examples/perplexity_bf16.py           # 1024 tokens (~200 MB of logits)
    python examples/perplexity_bf16.py --quick   # 128 tokens
"""
import argparse
import math
import time

import numpy as np

import fastce

V = 50257


def make_eval_set(n, seed):
    """float32 logits (n, V) and targets drawn from their softmax (Gumbel-max), in chunks."""
    rng = np.random.default_rng(seed)
    logits = np.empty((n, V), np.float32)
    target = np.empty(n, np.int64)
    for i in range(0, n, 128):
        rows = min(128, n - i)
        # a few very likely classes per row over a long tail, like an LM head's output
        x = rng.standard_normal((rows, V), dtype=np.float32) * 1.5
        x += rng.gumbel(size=(rows, V)).astype(np.float32) * 0.8
        logits[i:i + rows] = x
        g = rng.gumbel(size=(rows, V))
        target[i:i + rows] = np.argmax(x + g, axis=1)
    return logits, target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="128 tokens")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = 128 if args.quick else args.tokens
    import ml_dtypes

    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = F = None
        print("torch is not installed: fastce only")

    logits32, target = make_eval_set(n, args.seed)
    logits16 = logits32.astype(ml_dtypes.bfloat16)
    print(f"{n} tokens, V = {V}: float32 logits {logits32.nbytes / 2**20:.0f} MiB, "
          f"bfloat16 {logits16.nbytes / 2**20:.0f} MiB")

    def ref(x):  # float64 reference on exactly these values, 64 rows at a time
        return float(np.mean(np.concatenate([
            fastce.cross_entropy(x[i:i + 64].astype(np.float64), target[i:i + 64], reduction="none")
            for i in range(0, n, 64)])))

    refs = {"float32": ref(logits32), "bfloat16": ref(logits16)}
    rows = []

    def add(dtype, lib, fn):
        t0 = time.perf_counter()
        nll = fn()
        ms = (time.perf_counter() - t0) * 1e3
        rows.append((dtype, lib, nll, ms))

    add("float32", "fastce", lambda: fastce.cross_entropy(logits32, target))
    add("bfloat16", "fastce", lambda: fastce.cross_entropy(logits16, target))
    if torch is not None:
        yt = torch.from_numpy(target)
        x32 = torch.from_numpy(logits32)
        x16 = x32.to(torch.bfloat16)
        add("float32", "torch", lambda: F.cross_entropy(x32, yt))
        add("bfloat16", "torch", lambda: F.cross_entropy(x16, yt))

    print(f"{'logits':<9} {'library':<7} {'loss dtype':<10} {'mean NLL':>14} {'perplexity':>12} "
          f"{'NLL error vs float64':>21} {'ms':>8}")
    for dtype, lib, nll, ms in sorted(rows, key=lambda r: (r[0] != "float32", r[1])):
        if torch is not None and isinstance(nll, torch.Tensor):
            loss_dtype = str(nll.dtype).replace("torch.", "")
            value = nll.float().item()
        else:
            loss_dtype = np.asarray(nll).dtype.name
            value = float(nll)
        err = abs(value - refs[dtype])
        print(f"{dtype:<9} {lib:<7} {loss_dtype:<10} {value:>14.8f} {math.exp(value):>12.4f} "
              f"{err:>21.3g} {ms:>8.1f}")
    print(f"float64 reference: mean NLL {refs['float32']:.8f} (float32 logits), "
          f"{refs['bfloat16']:.8f} (bfloat16 logits); perplexity {math.exp(refs['float32']):.4f}")
    return rows, refs


if __name__ == "__main__":
    main()
