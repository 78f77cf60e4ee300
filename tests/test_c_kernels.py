"""The C-level kernel tests (tests/c/test_kernels.c), run through tests/c/run.sh.

run.sh builds the kernel tables without Python and checks every kernel on every ISA this
machine can reach: natively (scalar, AVX2, AVX-512 where the CPU has them) and, with
Debian's gcc-aarch64-linux-gnu and qemu-user installed, the NEON table cross-compiled
for AArch64 and run under qemu. This wrapper only runs it and reports its exit status.

Skipped when no C compiler is on PATH. Without the cross tools the native run still has
to pass, and then the test is skipped with "NEON not tested"; in CI (``CI=true``) the
NEON run is required and missing tools are a failure.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import IN_CI, require_in_ci

RUN_SH = Path(__file__).resolve().parent / "c" / "run.sh"


def _compiler():
    cc = os.environ.get("CC", "").split()
    for name in ([cc[0]] if cc else []) + ["cc", "gcc", "clang"]:
        if shutil.which(name):
            return name
    return None


@pytest.mark.skipif(not RUN_SH.exists(), reason="tests/c/run.sh is not in this tree")
def test_c_kernels_every_isa():
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on PATH: the C-level kernel tests need one")
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run tests/c/run.sh")
    env = dict(os.environ, CC=os.environ.get("CC") or cc)
    if IN_CI:
        env["FASTCE_REQUIRE_NEON"] = "1"  # run.sh fails instead of printing a notice
    proc = subprocess.run(
        ["bash", str(RUN_SH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=1800,
    )
    out = proc.stdout
    log = RUN_SH.parent / "build" / "run.log"
    try:
        log.write_text(out)
    except OSError:
        log = None
    if proc.returncode != 0:
        lines = out.splitlines()
        fails = [ln for ln in lines if ln.startswith("FAIL")]
        summary = [ln for ln in lines if not ln.startswith("FAIL")]
        shown = "\n".join(fails[:60] + (["... (%d FAIL lines in all)" % len(fails)] if len(fails) > 60 else []))
        pytest.fail(
            "tests/c/run.sh exited with %d (full output: %s)\n--- FAIL lines ---\n%s\n--- summary ---\n%s"
            % (proc.returncode, log or "not saved", shown, "\n".join(summary[-40:])),
            pytrace=False,
        )
    if "NEON not tested" in out:  # run.sh passed the native ISAs and found no cross tools
        require_in_ci("native ISAs passed; " + next(ln for ln in out.splitlines() if "NEON not tested" in ln))
