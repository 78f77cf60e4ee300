"""Time per call of fastce.distributed at V = 128256 split 2 and 4 ways (float32).

One command runs everything and prints the BENCHMARKS.md table::

    python bench/bench_distributed.py            # ~1-2 minutes on 2 cores

It times the unsharded ``fastce.cross_entropy(_with_grad)`` in this process, then
launches itself (``--worker``) under ``torchrun`` (gloo) and ``mpirun`` with 2 and 4
processes.  Each worker times, per row count N: ``fastce.distributed.cross_entropy``
(forward) and ``cross_entropy_with_grad`` (loss + gradient slice, in place), and under
torchrun torch's own ``loss_parallel`` (DTensor logits sharded on the class dim, forward
and forward + backward) on the same shards.  Each repetition starts after a barrier;
the time of a repetition is the slowest rank's, the figure the median over repetitions.
Bytes are the float64 payload each rank puts into all-reduces (a counting wrapper
around the communicator), not the wire traffic of the engine's algorithm.

The machine load (``uptime``) is printed before and after; 4 processes on 2 cores are
oversubscribed (each rank gets half a core, and waiting ranks spin in the engines).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

V = 128256
ROWS = (64, 256)
REPS = {64: 15, 256: 7}


def make(N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, V), dtype=np.float32)
    y = rng.integers(0, V, N)
    return x, y


def median_ms(ts):
    return float(np.median(ts) * 1e3)


def single():
    """The unsharded calls in this process, timed as the workers time theirs (the fused
    call in place over a copy, the copy's time subtracted)."""
    import fastce

    def timed(fn, reps):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return median_ms(ts)

    res = {}
    for N in ROWS:
        x, y = make(N)
        scratch = x.copy()

        def fused():
            np.copyto(scratch, x)
            fastce.cross_entropy_with_grad(scratch, y, inplace=True, n_threads=1)
        res[f"{N} forward"] = timed(lambda: fastce.cross_entropy(x, y, n_threads=1), REPS[N])
        res[f"{N} fwd+bwd"] = timed(fused, REPS[N]) - timed(lambda: np.copyto(scratch, x), REPS[N])
    return res


def worker(engine, outdir):
    import fastce.distributed as fd
    if engine == "torch":
        import torch
        import torch.distributed as dist
        dist.init_process_group("gloo")
        rank, size, comm = dist.get_rank(), dist.get_world_size(), None
        barrier = dist.barrier
    else:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank, size, barrier = comm.Get_rank(), comm.Get_size(), comm.Barrier
    base = fd.as_communicator(comm)

    def slowest(t):  # the slowest rank's time of one repetition
        b = np.array([t])
        base.allreduce_max(b)
        return b[0]

    def timed(fn, reps):
        fn()
        ts = []
        for _ in range(reps):
            barrier()
            t0 = time.perf_counter()
            fn()
            ts.append(slowest(time.perf_counter() - t0))
        return median_ms(ts)

    bounds = np.linspace(0, V, size + 1).astype(int)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    res = {}
    for N in ROWS:
        x, y = make(N)
        xl = np.ascontiguousarray(x[:, lo:hi])
        scratch = xl.copy()
        cc = fd.CountingCommunicator(base)
        fd.cross_entropy(xl, y, class_start=lo, num_classes=V, comm=cc, n_threads=1)
        res[f"{N} bytes"] = 8 * cc.values
        res[f"{N} forward"] = timed(lambda: fd.cross_entropy(
            xl, y, class_start=lo, num_classes=V, comm=comm, n_threads=1), REPS[N])

        def fused():
            np.copyto(scratch, xl)  # in place over a copy: the copy is timed apart below
            fd.cross_entropy_with_grad(scratch, y, class_start=lo, num_classes=V, comm=comm,
                                       inplace=True, n_threads=1)
        res[f"{N} fwd+bwd"] = timed(fused, REPS[N]) - timed(lambda: np.copyto(scratch, xl), REPS[N])
        if engine == "torch":
            res.update(loss_parallel(torch, dist, xl, y, N, size, timed))
    if rank == 0:
        with open(os.path.join(outdir, f"{engine}-{size}.json"), "w") as f:
            json.dump(res, f)
    if engine == "torch":
        dist.destroy_process_group()


def loss_parallel(torch, dist, xl, y, N, size, timed):
    """torch's loss_parallel on the same shards, or the reason it does not run."""
    try:
        import torch.nn.functional as F
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard
        from torch.distributed.tensor.parallel import loss_parallel as lp
        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (size,))
        yt = torch.from_numpy(y)
        local = torch.from_numpy(xl)

        def fwd():
            with lp():
                return F.cross_entropy(DTensor.from_local(local, mesh, [Shard(1)]), yt)

        def fwd_bwd():
            leaf = local.clone().requires_grad_(True)
            with lp():
                F.cross_entropy(DTensor.from_local(leaf, mesh, [Shard(1)]), yt).backward()

        with torch.no_grad():
            loss = fwd()
        want = float(torch.nn.functional.cross_entropy(torch.from_numpy(make(N)[0]), yt))
        ok = abs(float(loss.full_tensor()) - want) < 1e-4 * want
        with torch.no_grad():
            t_f = timed(fwd, REPS[N])
        t_fb = timed(fwd_bwd, REPS[N])
        return {f"{N} loss_parallel forward": t_f, f"{N} loss_parallel fwd+bwd": t_fb,
                f"{N} loss_parallel agrees": ok}
    except Exception as e:  # noqa: BLE001  (reported in the table)
        return {f"{N} loss_parallel error": f"{type(e).__name__}: {e}"[:300]}


def _set_vocab(v):
    global V
    V = v


def launch(engine, size, outdir):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl="self,sm", OMPI_MCA_pml="ob1")
    me = os.path.abspath(__file__)
    if engine == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={size}", me, "--worker", engine, outdir, f"--vocab={V}"]
    else:
        mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
        cmd = [mpirun if os.path.exists(mpirun) else "mpirun", "-n", str(size), "--oversubscribe",
               sys.executable, me, "--worker", engine, outdir, f"--vocab={V}"]
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=300)
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{engine} x{size} failed")
    with open(os.path.join(outdir, f"{engine}-{size}.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "OUTDIR"))
    ap.add_argument("--vocab", type=int, default=V, help="classes (a smoke test: small)")
    args = ap.parse_args()
    _set_vocab(args.vocab)
    if args.worker:
        return worker(*args.worker)
    import tempfile
    def up():
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)")
    print(f"load before: {up()}")
    t0 = time.perf_counter()
    one = single()
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        for engine in ("torch", "mpi"):
            for size in (2, 4):
                runs[engine, size] = launch(engine, size, d)
    print(f"load after:  {up()}  ({time.perf_counter() - t0:.0f} s)\n")
    print(f"ms per call (median; slowest rank), float32, V = {V}, 1 thread per process\n")
    print("| N | call | 1 process (unsharded) | torch gloo x2 | torch gloo x4 | MPI x2 | MPI x4 | "
          "loss_parallel x2 | loss_parallel x4 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for N in ROWS:
        for call in ("forward", "fwd+bwd"):
            cells = [f"{one[f'{N} {call}']:.2f}"]
            for key in (("torch", 2), ("torch", 4), ("mpi", 2), ("mpi", 4)):
                cells.append(f"{runs[key][f'{N} {call}']:.2f}")
            for size in (2, 4):
                r = runs["torch", size]
                v = r.get(f"{N} loss_parallel {call}")
                cells.append("n/a" if v is None else f"{v:.2f}")
            print(f"| {N} | {call} | " + " | ".join(cells) + " |")
    print()
    for N in ROWS:
        b = {k: runs[k][f"{N} bytes"] for k in runs}
        print(f"bytes into all-reduces per rank per call, N = {N}: "
              + ", ".join(f"{e} x{s}: {v}" for (e, s), v in b.items())
              + f" (8 * (N + 5) + 8 * (3N + 2) = {8 * (4 * N + 7)})")
    for size in (2, 4):
        r = runs["torch", size]
        for N in ROWS:
            if f"{N} loss_parallel error" in r:
                print(f"loss_parallel x{size}, N = {N}: {r[f'{N} loss_parallel error']}")
            else:
                print(f"loss_parallel x{size}, N = {N}: agrees with F.cross_entropy: "
                      f"{r[f'{N} loss_parallel agrees']}")


if __name__ == "__main__":
    main()
