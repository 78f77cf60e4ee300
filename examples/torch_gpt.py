"""A small GPT-style word model trained on CPU with torch's loss and with fastce's.

Data: a word-level corpus built from the Python standard library's own source files
(``*.py`` under ``sysconfig.get_paths()['stdlib']``: several MB of English comments,
docstrings and identifiers that ship with every Python), tokenised as words and
punctuation; the vocabulary is the most frequent ``--vocab - 1`` tokens plus ``<unk>``
(default 8192). No download, no synthetic tokens.

Model: token + position embeddings, ``--layers`` causal transformer blocks
(``nn.TransformerEncoderLayer``), a linear LM head (V x d). The same initial weights and
the same batches are trained with four losses:

``torch``             ``F.cross_entropy(head(h), y)``
``fastce``            ``fastce.torch.cross_entropy(head(h), y)`` (a drop-in)
``fastce-linear``     ``fastce.torch.linear_cross_entropy(h, head.weight, y, head.bias)``
                      (the N x V logits never exist)
``torch-linear``      ``F.linear_cross_entropy(h, head.weight, y, linear_bias=head.bias,
                      options=LinearCrossEntropyOptions())`` (torch 2.13's chunked path)

For each it prints the median time per training step, the peak memory torch's allocator
held during one step (torch's profiler memory events; fastce allocates its outputs through
torch), and the loss curve, with the largest difference from torch's curve.

    python examples/torch_gpt.py --quick      # < 1 minute on 2 cores
    python examples/torch_gpt.py --steps 200  # longer curves
"""
import argparse
import collections
import pathlib
import re
import statistics
import sys
import sysconfig
import time

import torch
import torch.nn.functional as F

import fastce.torch as fce
from fastce.bench import peak_extra_torch


def corpus(max_bytes):
    """Word tokens of the standard library's sources, up to ``max_bytes`` of text."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    text, size = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        try:
            t = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text.append(t)
        size += len(t)
        if size >= max_bytes:
            break
    return re.findall(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]", "\n".join(text))


def encode(tokens, vocab_size):
    counts = collections.Counter(tokens)
    vocab = ["<unk>"] + [w for w, _ in counts.most_common(vocab_size - 1)]
    if len(vocab) < vocab_size:
        sys.exit(f"the corpus has only {len(vocab)} distinct tokens; lower --vocab")
    index = {w: i for i, w in enumerate(vocab)}
    return torch.tensor([index.get(w, 0) for w in tokens], dtype=torch.long), len(counts)


class GPT(torch.nn.Module):
    def __init__(self, vocab, d, layers, heads, ctx):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Embedding(ctx, d)
        block = torch.nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                                 norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def hidden(self, x):
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t))
        return self.norm(self.blocks(h, mask=self.mask[:t, :t], is_causal=True))


def loss_fn(name, model, x, y):
    h = model.hidden(x).reshape(-1, model.head.in_features)
    y = y.reshape(-1)
    if name == "torch":
        return F.cross_entropy(model.head(h), y)
    if name == "fastce":
        return fce.cross_entropy(model.head(h), y)
    if name == "fastce-linear":
        return fce.linear_cross_entropy(h, model.head.weight, y, model.head.bias)
    if name == "torch-linear":
        return F.linear_cross_entropy(h, model.head.weight, y, linear_bias=model.head.bias,
                                      options=torch.nn.LinearCrossEntropyOptions())
    raise ValueError(name)


def train(name, init, data, args):
    torch.manual_seed(0)
    model = GPT(args.vocab, args.dim, args.layers, args.heads, args.ctx)
    model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1)  # the same batches for every loss
    losses, times = [], []

    def batch():
        start = torch.randint(0, len(data) - args.ctx - 1, (args.batch,), generator=gen)
        idx = start[:, None] + torch.arange(args.ctx + 1)
        chunk = data[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(name, model, x, y)
        loss.backward()
        opt.step()
        return loss.item()

    peak = None
    for i in range(args.steps):
        x, y = batch()
        if i == 1:  # one profiled step (after a warm-up step) for the memory peak
            box = []
            peak = peak_extra_torch(torch, lambda: box.append(step(x, y)))
            losses.append(box[0])
            continue
        t0 = time.perf_counter()
        losses.append(step(x, y))
        times.append(time.perf_counter() - t0)
    return losses, statistics.median(times[1:] or times), peak


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run (< 1 minute on 2 cores)")
    p.add_argument("--steps", type=int, default=None, help="training steps per loss (default 60, quick 8)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (fastce follows it)")
    p.add_argument("--losses", default="torch,fastce,fastce-linear,torch-linear")
    args = p.parse_args()
    if args.steps is None:
        args.steps = 8 if args.quick else 60
    args.steps = max(args.steps, 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    tokens = corpus(3_000_000 if args.quick else 12_000_000)
    data, distinct = encode(tokens, args.vocab)
    unk = (data == 0).float().mean().item()
    print(f"corpus: {len(tokens):,} word tokens from the stdlib sources, {distinct:,} distinct; "
          f"vocab {args.vocab} ({unk:.1%} <unk>); built in {time.perf_counter() - t0:.1f} s")
    print(f"model: d={args.dim}, {args.layers} layers, ctx {args.ctx}, batch {args.batch} "
          f"-> {args.batch * args.ctx} tokens x {args.vocab} classes per step; "
          f"{torch.get_num_threads()} threads")
    torch.manual_seed(0)
    init = GPT(args.vocab, args.dim, args.layers, args.heads, args.ctx).state_dict()

    results = {}
    for name in args.losses.split(","):
        results[name] = train(name, init, data, args)
    ref = results.get("torch", next(iter(results.values())))[0]
    logits_mb = args.batch * args.ctx * args.vocab * 4 / 2**20
    print(f"\n{'loss':15s} {'ms/step':>9s} {'peak MiB':>9s} {'first':>8s} {'last':>8s} {'max |diff| vs torch':>20s}"
          f"   (logits: {logits_mb:.0f} MiB)")
    for name, (losses, t, peak) in results.items():
        diff = max(abs(a - b) for a, b in zip(losses, ref))
        pk = f"{peak / 2**20:9.1f}" if peak is not None else f"{'n/a':>9s}"
        print(f"{name:15s} {t * 1e3:9.1f} {pk} {losses[0]:8.4f} {losses[-1]:8.4f} {diff:20.2e}")
    every = max(1, args.steps // 6)
    print("\nloss curves (every %d steps):" % every)
    for name, (losses, _, _) in results.items():
        print(f"  {name:15s} " + " ".join(f"{v:.4f}" for v in losses[::every]))


if __name__ == "__main__":
    main()
