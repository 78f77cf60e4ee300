"""Smoke tests of examples/: each script runs in a subprocess, small, and its printed
results are checked (agreement with torch, scikit-learn or a float64 reference).

The scripts run with a working directory outside the repository, so that they import the
installed fastce, never the source tree.
"""
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run_example(name, tmp_path, *args):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
    return proc.stdout


def number(pattern, out):
    m = re.search(pattern, out)
    assert m, f"no match for {pattern!r} in:\n{out}"
    return float(m.group(1))


def test_mlp_digits(tmp_path):
    out = run_example("mlp_digits.py", tmp_path, "--quick")
    assert number(r"test accuracy: ([\d.]+)", out) > 0.85, out
    assert number(r"relative ([\d.eE+-]+)\) over", out) < 1e-5, out
    assert number(r"gradient agreement with torch autograd: max relative difference ([\d.eE+-]+)", out) < 1e-5
    assert re.search(r"time in the loss .*: fastce [\d.]+ ms, torch [\d.]+ ms", out), out


def test_logreg_lbfgs(tmp_path):
    out = run_example("logreg_lbfgs.py", tmp_path)
    assert "converged: True" in out, out
    assert number(r"objective: .* relative difference ([\d.eE+-]+)", out) < 1e-8, out
    assert number(r"max \|w_fastce - w_sklearn\| = ([\d.eE+-]+)", out) < 1e-3, out
    acc = re.search(r"training accuracy: fastce ([\d.]+), scikit-learn ([\d.]+)", out)
    assert acc and float(acc.group(1)) > 0.95 and abs(float(acc.group(1)) - float(acc.group(2))) < 0.01, out


def test_perplexity_bf16(tmp_path):
    out = run_example("perplexity_bf16.py", tmp_path, "--quick")
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0] in ("float32", "bfloat16") and parts[1] in ("fastce", "torch"):
            rows[parts[0], parts[1]] = parts
    assert set(rows) == {("float32", "fastce"), ("float32", "torch"), ("bfloat16", "fastce"),
                         ("bfloat16", "torch")}, out
    # fastce returns a float32 loss for bfloat16 logits, torch a bfloat16 one
    assert rows["bfloat16", "fastce"][2] == "float32" and rows["bfloat16", "torch"][2] == "bfloat16", out
    for dtype in ("float32", "bfloat16"):
        nll = float(rows[dtype, "fastce"][3])
        assert float(rows[dtype, "fastce"][5]) < 2e-6 * nll, out  # error vs float64, same logits
    assert float(rows["float32", "torch"][5]) < 1e-5 * float(rows["float32", "torch"][3]), out
    import ml_dtypes
    import numpy as np

    torch_bf16 = float(rows["bfloat16", "torch"][3])
    assert float(np.float32(torch_bf16).astype(ml_dtypes.bfloat16)) == torch_bf16  # a bfloat16 value


def test_char_lm(tmp_path):
    out = run_example("char_lm.py", tmp_path, "--quick")
    m = re.search(r"check vs explicit logits: loss ([\d.]+) vs ([\d.]+); max relative difference "
                  r"d_hidden ([\d.eE+-]+), d_weight ([\d.eE+-]+), d_bias ([\d.eE+-]+)", out)
    assert m, out
    assert abs(float(m.group(1)) - float(m.group(2))) < 1e-5, out
    assert max(float(m.group(i)) for i in (3, 4, 5)) < 1e-5, out
    assert re.search(r"logits of one step: 512 x \d+ float32 = \d+ KiB .* buffer \(64 KiB\)", out), out
    before = number(r"validation loss before training: ([\d.]+)", out)
    after = number(r"validation loss after \d+ steps: ([\d.]+)", out)
    assert after < before - 1.5, out  # from ~log2(V) = 6.6 bits to < 5 in 40 steps


# ------------------------------------------------------------------ distributed_lm.py
def _launch_example(cmd, tmp_path):
    """A launcher command, bounded, in its own session (killed whole on timeout)."""
    import os
    import signal

    from test_distributed import child_env
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"distributed_lm.py timed out:\n{out[-4000:]}")
    assert proc.returncode == 0, f"distributed_lm.py failed (exit {proc.returncode}):\n{out[-4000:]}"
    return out


def _check_distributed_lm(out):
    m = re.search(r"check vs unsharded: loss ([\d.]+) vs ([\d.]+); max relative difference "
                  r"d_hidden ([\d.eE+-]+), d_weight ([\d.eE+-]+)", out)
    assert m, out
    assert abs(float(m.group(1)) - float(m.group(2))) < 1e-5, out
    assert max(float(m.group(3)), float(m.group(4))) < 1e-5, out
    assert "communication per step: 3 all-reduces" in out, out
    before = number(r"validation loss before training: ([\d.]+)", out)
    after = number(r"validation loss after \d+ steps: ([\d.]+)", out)
    assert after < before - 0.8, out  # 30 steps: ~6.6 -> ~5.3 bits per character
    assert "replicated parameters identical on every rank: True" in out, out


def test_distributed_lm_torchrun(tmp_path):
    out = _launch_example([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(EXAMPLES / "distributed_lm.py"), "--quick"],
                          tmp_path)
    assert "engine torch, 2 processes" in out, out
    _check_distributed_lm(out)


def test_distributed_lm_mpirun(tmp_path):
    from test_distributed import mpirun
    out = _launch_example([mpirun(), "-n", "2", "--oversubscribe", sys.executable,
                           str(EXAMPLES / "distributed_lm.py"), "--quick"], tmp_path)
    assert "engine mpi, 2 processes" in out, out
    _check_distributed_lm(out)
