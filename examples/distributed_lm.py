"""A vocabulary-parallel language-model step over 2 (or more) processes, in NumPy.

A character model (the previous 8 characters embedded and concatenated, one tanh layer)
whose LM head ``W (V, H)`` is split by rows over the processes: rank r holds the rows of
the classes ``[class_start, class_start + C_local)``.  Each step calls
:func:`fastce.distributed.linear_cross_entropy_with_grad`, which computes the full loss
(the same on every rank), this rank's d_W rows, and d_hidden (one SUM all-reduce of
N x H); the layers below the head are replicated and get identical gradients everywhere.

The text is the Python reference that ``help('topics')`` shows (``pydoc_data.topics``,
shipped with CPython), so nothing is downloaded.  At step 0 every rank also builds the
full head (all ranks draw it from one seed) and checks the sharded loss and gradients
against the unsharded :func:`fastce.linear_cross_entropy_with_grad` (rank 0 prints it).

Run with either engine (2 processes; the vocabulary of ~95 characters splits unevenly)::

    torchrun --nproc-per-node 2 examples/distributed_lm.py            # torch.distributed, gloo
    mpirun -n 2 python examples/distributed_lm.py                     # mpi4py
    ... examples/distributed_lm.py --quick                            # 30 steps (the smoke test)

The engine is taken from the launcher's environment (torchrun sets ``RANK``; mpirun its
own variables) or from ``--engine``.
"""
import argparse
import os
import time

import numpy as np

import fastce
import fastce.distributed as fd

CONTEXT, EMBED, HIDDEN, BATCH = 8, 16, 96, 256


def load_text():
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return "".join(ch if (" " <= ch <= "~" or ch == "\n") else "?" for ch in text)


def setup(engine):
    """(communicator for fastce.distributed, rank, size) for the chosen engine."""
    if engine == "auto":
        engine = "torch" if "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ else "mpi"
    if engine == "torch":
        import torch.distributed as dist
        dist.init_process_group("gloo")
        return None, dist.get_rank(), dist.get_world_size(), engine  # None: the default group
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size(), engine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("auto", "torch", "mpi"), default="auto")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="30 steps")
    args = ap.parse_args()
    steps = 30 if args.quick else args.steps
    comm, rank, size, engine = setup(args.engine)
    comm = fd.CountingCommunicator(comm)  # counts the float64 values sent
    say = print if rank == 0 else (lambda *a, **k: None)

    text = load_text()
    chars = sorted(set(text))
    V = len(chars)
    ids = np.frombuffer(text.encode("ascii"), np.uint8)
    lut = np.zeros(256, np.int64)
    lut[[ord(c) for c in chars]] = np.arange(V)
    data = lut[ids]
    split = len(data) * 9 // 10

    # every rank draws the same parameters; rank r keeps its rows of the head
    rng = np.random.default_rng(0)
    E = rng.standard_normal((V, EMBED)).astype(np.float32) * 0.1
    W1 = rng.standard_normal((CONTEXT * EMBED, HIDDEN)) / np.sqrt(CONTEXT * EMBED)
    W1 = W1.astype(np.float32)
    head = rng.standard_normal((V, HIDDEN)).astype(np.float32) * 0.02
    bounds = np.linspace(0, V, size + 1).astype(int)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    W_loc, b_loc = head[lo:hi].copy(), np.zeros(hi - lo, np.float32)
    say(f"engine {engine}, {size} processes; vocabulary {V} characters, rank 0 holds classes "
        f"[{lo}, {hi}); batch {BATCH}, hidden {HIDDEN}")

    def batch(rs, start, stop):
        pos = rs.integers(start + CONTEXT, stop, BATCH)  # the same rows on every rank
        ctx = data[pos[:, None] - CONTEXT + np.arange(CONTEXT)]
        return ctx, data[pos]

    def forward(ctx):
        x = E[ctx].reshape(BATCH, -1)
        return x, np.tanh(x @ W1)

    def step_loss(ctx, y, grads=True):
        x, h = forward(ctx)
        loss, dh, dW, db = fd.linear_cross_entropy_with_grad(
            h, W_loc, y, class_start=lo, num_classes=V, comm=comm, local_bias=b_loc,
            label_smoothing=0.05)
        return float(loss), x, h, dh, dW, db

    # the check: sharded against unsharded, at step 0
    ctx, y = batch(np.random.default_rng(1), 0, split)
    loss, x, h, dh, dW, db = step_loss(ctx, y)
    full_b = np.zeros(V, np.float32)
    rl, rdh, rdw, _ = fastce.linear_cross_entropy_with_grad(h, head, y, bias=full_b,
                                                            label_smoothing=0.05)
    rel = lambda a, b: float(np.max(np.abs(a - b)) / np.max(np.abs(b)))  # noqa: E731
    say(f"check vs unsharded: loss {loss:.6f} vs {float(rl):.6f}; max relative difference "
        f"d_hidden {rel(dh, rdh):.2e}, d_weight {rel(dW, rdw[lo:hi]):.2e}")
    per_call = comm.values
    parts = ("one fused (max, sum) of 8(N+2), sum N*H for d_hidden" if comm.fused_lse else
             "max N+5, sum 3N+2, sum N*H for d_hidden")
    say(f"communication per step: {comm.calls} all-reduces, {per_call} float64 values "
        f"({8 * per_call} bytes) per rank: {parts} (N={BATCH}, H={HIDDEN})")

    val_rs = np.random.default_rng(2)
    val = [batch(val_rs, split, len(data)) for _ in range(4)]

    def val_bits():
        return np.mean([step_loss(c, t)[0] for c, t in val]) / np.log(2)

    before = val_bits()
    lr, rs, t0 = 0.5, np.random.default_rng(3), time.perf_counter()
    for step in range(steps):
        ctx, y = batch(rs, 0, split)
        loss, x, h, dh, dW, db = step_loss(ctx, y)
        dpre = dh * (1.0 - h * h)  # identical on every rank: dh is all-reduced
        dW1 = x.T @ dpre
        dx = (dpre @ W1.T).reshape(BATCH, CONTEXT, EMBED)
        dE = np.zeros_like(E)
        np.add.at(dE, ctx, dx)
        for p, g in ((W_loc, dW), (b_loc, db), (W1, dW1), (E, dE)):
            p -= lr * g
        if step % 50 == 0:
            say(f"step {step}: loss {loss:.4f}")
    dt = time.perf_counter() - t0
    after = val_bits()
    say(f"validation loss before training: {before:.3f} bits/char")
    say(f"validation loss after {steps} steps: {after:.3f} bits/char "
        f"({dt / steps * 1e3:.1f} ms/step)")
    # the replicated layers stayed identical on every rank
    chk = np.array([float(np.abs(W1).sum()), float(np.abs(E).sum())])
    mx, mn = chk.copy(), -chk
    comm.allreduce_max(mx)
    comm.allreduce_max(mn)
    say(f"replicated parameters identical on every rank: {bool(np.all(mx == -mn))}")
    if engine == "torch":
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
