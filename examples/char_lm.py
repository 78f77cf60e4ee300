"""A character language model trained in NumPy with ``linear_cross_entropy_with_grad``.

The text is the one ``pydoc`` shows for ``help('topics')``: about 460 000 characters of
the Python reference, shipped with every CPython as ``pydoc_data.topics``.  The model reads
the previous 16 characters (embedded, concatenated), one tanh layer, and an LM head whose
logits fastce never materialises: :func:`fastce.linear_cross_entropy_with_grad` computes
the loss and the gradients of the hidden states, the head's weight and its bias chunk by
chunk, in one reused buffer (here 64 KiB, so that the chunking is visible even at this
small vocabulary).  Adam, in NumPy.

The matrix products here are small (512 x 128 x 94), and BLAS threads cost more than
they give on them; with fastce's OpenMP threads also running, the two pools fight for
the cores (on a busy 2-core machine a step took 40x longer).  The script therefore
limits BLAS to one thread with ``threadpoolctl`` (``--blas-threads`` to change it); see
the docs' page on threads.

The script checks the fused call once against explicit logits (``hidden @ W.T + b`` and
:func:`fastce.cross_entropy_with_grad`), reports the memory the logits would have taken,
the validation loss in bits per character before and after training, and samples a line.

Run::

    python examples/char_lm.py           # 400 steps, under a minute on 2 cores
    python examples/char_lm.py --quick   # 40 steps (the smoke test)
"""
import argparse
import math
import time

import numpy as np

import fastce

CONTEXT, EMBED, HIDDEN, BATCH = 16, 16, 128, 512
BUDGET = 64 * 1024  # bytes of the reused logits buffer


def load_text():
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    # printable ASCII and newline; anything else becomes '?'
    return "".join(ch if (" " <= ch <= "~" or ch == "\n") else "?" for ch in text)


class Adam:
    def __init__(self, params, lr):
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr * (m / (1 - b1 ** self.t)) / (np.sqrt(v / (1 - b2 ** self.t)) + eps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--quick", action="store_true", help="40 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (default 1; 0: the BLAS default)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    if args.blas_threads > 0:
        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            return train(args)
    return train(args)


def train(args):
    steps = 40 if args.quick else args.steps
    rng = np.random.default_rng(args.seed)

    text = load_text()
    chars = sorted(set(text))
    V = len(chars)
    ids = np.frombuffer(text.encode("ascii"), np.uint8)
    lut = np.zeros(128, np.int64)
    lut[[ord(c) for c in chars]] = np.arange(V)
    data = lut[ids]
    split = int(0.9 * len(data))
    print(f"text: {len(text)} characters of pydoc_data.topics, vocabulary V = {V}")

    f32 = np.float32
    emb = (rng.standard_normal((V, EMBED)) * 0.3).astype(f32)
    W1 = (rng.standard_normal((CONTEXT * EMBED, HIDDEN)) / math.sqrt(CONTEXT * EMBED)).astype(f32)
    b1 = np.zeros(HIDDEN, f32)
    head = (rng.standard_normal((V, HIDDEN)) / math.sqrt(HIDDEN)).astype(f32)  # (V, H), as nn.Linear
    bias = np.zeros(V, f32)
    params = [emb, W1, b1, head, bias]
    opt = Adam(params, lr=3e-3)
    offsets = np.arange(CONTEXT)

    def batch(lo, hi, n):
        pos = rng.integers(lo + CONTEXT, hi, n)
        return data[pos[:, None] - CONTEXT + offsets], data[pos]

    def forward(ctx):
        x = emb[ctx].reshape(len(ctx), CONTEXT * EMBED)
        return x, np.tanh(x @ W1 + b1)

    def val_bits(n=8192):
        r = np.random.default_rng(1)  # the same validation positions every time
        pos = r.integers(split + CONTEXT, len(data), n)
        _, h = forward(data[pos[:, None] - CONTEXT + offsets])
        return float(fastce.linear_cross_entropy(h, head, data[pos], bias=bias, memory_budget=BUDGET)) / math.log(2)

    # one check of the fused call against explicit logits
    ctx, y = batch(0, split, BATCH)
    _, h = forward(ctx)
    loss, d_h, d_head, d_bias = fastce.linear_cross_entropy_with_grad(h, head, y, bias=bias, memory_budget=BUDGET)
    logits = h @ head.T + bias
    loss_ref, g = fastce.cross_entropy_with_grad(logits, y)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    print(f"check vs explicit logits: loss {float(loss):.6f} vs {float(loss_ref):.6f}; max relative "
          f"difference d_hidden {rel(d_h, g @ head):.2g}, d_weight {rel(d_head, g.T @ h):.2g}, "
          f"d_bias {rel(d_bias, g.sum(0)):.2g}")
    chunk = max(1, BUDGET // (V * 4))
    print(f"logits of one step: {BATCH} x {V} float32 = {logits.nbytes / 1024:.0f} KiB (and as much again "
          f"for their gradient); fastce held one reused {chunk} x {V} buffer ({chunk * V * 4 / 1024:.0f} KiB); "
          f"the whole text's logits would take {len(data) * V * 4 / 2**20:.0f} MiB")
    del logits, g

    start_bits = val_bits()
    print(f"validation loss before training: {start_bits:.3f} bits/char (uniform: {math.log2(V):.3f})")
    t_loss = 0.0
    t0 = time.perf_counter()
    for step in range(steps):
        ctx, y = batch(0, split, BATCH)
        x, h = forward(ctx)
        t1 = time.perf_counter()
        loss, d_h, d_head, d_bias = fastce.linear_cross_entropy_with_grad(h, head, y, bias=bias, memory_budget=BUDGET)
        t_loss += time.perf_counter() - t1
        d_pre = d_h * (1 - h * h)
        d_W1 = x.T @ d_pre
        d_b1 = d_pre.sum(0)
        d_emb = np.zeros_like(emb)
        np.add.at(d_emb, ctx.reshape(-1), (d_pre @ W1.T).reshape(-1, EMBED))
        opt.step([d_emb, d_W1, d_b1, d_head, d_bias])
        if step % max(1, steps // 6) == 0 or step == steps - 1:
            print(f"step {step:4d}  train loss {float(loss) / math.log(2):.3f} bits/char")
    train_s = time.perf_counter() - t0
    end_bits = val_bits()
    print(f"validation loss after {steps} steps: {end_bits:.3f} bits/char (before: {start_bits:.3f})")
    print(f"training: {train_s:.1f} s, of which {t_loss:.1f} s in linear_cross_entropy_with_grad")

    # sample a line, temperature 0.8
    ctx = list(data[split:split + CONTEXT])
    out = []
    for _ in range(120):
        _, h = forward(np.array([ctx[-CONTEXT:]]))
        prob = fastce.softmax((h @ head.T + bias)[0] / 0.8)
        nxt = int(rng.choice(V, p=prob / prob.sum()))
        ctx.append(nxt)
        out.append(chars[nxt])
    print("sample: " + repr("".join(out)))
    return start_bits, end_bits


if __name__ == "__main__":
    main()
