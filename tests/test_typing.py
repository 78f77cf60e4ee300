"""Static types: ``mypy --strict`` on the public modules, the stub of the compiled module
against the built one, and what a user's code sees.

mypy is required (the ``test`` extra installs it), like torch: a missing mypy is a failure,
not a skip.  Every run uses a fresh cache in a temporary directory, which the module's four
mypy runs share: 25-40 s in all on the 2-core development VM with mypy 2.4.1 (23 s of CPU;
1.19.1, the pin for Python 3.9, takes about twice that).
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "pyproject.toml")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: pip install '.[test]' (the test extra pins it)")
    return str(tmp_path_factory.mktemp("mypy_cache"))


def _mypy(args, cache, cwd=ROOT):
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", cache, *args],
                          cwd=cwd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_mypy_strict_on_the_package(mypy_cache):
    """``python -m mypy`` from the repository root: its [tool.mypy] (strict) over fastce/."""
    rc, out = _mypy([], mypy_cache)
    assert rc == 0 and "Success: no issues found" in out, "mypy reported:\n" + out


def test_mypy_strict_on_fastce_torch(tmp_path_factory, mypy_cache):
    """fastce.torch, strict, against torch's own annotations (followed silently, so only
    fastce's code is judged). A run of its own, without [tool.mypy]: the package run keeps
    torch unparsed, which would make every torch class Any here. ~30 s."""
    files = sorted(os.path.join("fastce", "torch", f) for f in os.listdir(os.path.join(ROOT, "fastce", "torch"))
                   if f.endswith(".py"))
    rc, out = _mypy(["--config-file=", "--strict", "--follow-imports=silent", "--ignore-missing-imports",
                     *files], str(tmp_path_factory.mktemp("mypy_cache_torch")))
    assert rc == 0 and "Success: no issues found" in out, "mypy reported:\n" + out


def _fastce_env(cache):
    """The environment of a mypy run outside the repository that sees fastce as the tests
    import it: installed (found in site-packages through its py.typed), or a tree built in
    place (put on MYPYPATH).  Never the source tree by accident: the runs start elsewhere."""
    import fastce
    env = dict(os.environ, MYPY_CACHE_DIR=cache)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(fastce.__file__)))
    if "site-packages" not in parent and "dist-packages" not in parent:
        env["MYPYPATH"] = parent
    return env


def test_kernels_stub_matches_the_compiled_module(mypy_cache, tmp_path):
    """fastce/_kernels.pyi names what the built fastce._kernels has, with its signatures."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastce._kernels", "--mypy-config-file", CONFIG],
        cwd=str(tmp_path), capture_output=True, text=True, env=_fastce_env(mypy_cache))
    assert proc.returncode == 0, "stubtest reported:\n" + proc.stdout + proc.stderr


USER_CODE = '''
import numpy as np
import fastce
from fastce.distributed import cross_entropy_with_grad as dist_ce_with_grad

x = np.zeros((4, 10), np.float32)
y = np.zeros(4, np.int64)
reveal_type(fastce.cross_entropy(x, y))
reveal_type(fastce.cross_entropy(x, y, reduction="none"))
reveal_type(fastce.cross_entropy(x, y, return_lse=True))
reveal_type(fastce.cross_entropy_with_grad(x, y, label_smoothing=0.1))
reveal_type(fastce.linear_cross_entropy_with_grad(x, x, y, reduction="sum"))
reveal_type(fastce.binary_cross_entropy_with_logits(x, x, reduction="none"))
reveal_type(fastce.CrossEntropyLoss(reduction="sum").backward())
reveal_type(fastce.get_isa())
reveal_type(dist_ce_with_grad(x, y, class_start=0, num_classes=10, return_lse=True))
loss, grad = fastce.cross_entropy_with_grad(x, y, inplace=True)
grad -= 0.1 * grad
'''

# what mypy reveals, in order ("builtins." dropped: mypy versions differ in spelling it)
_A = "numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]"
_A64 = "numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.float64]]"
_S = "numpy.floating[Any]"
EXPECTED = [
    _S,
    _A,
    f"tuple[{_S}, {_A64}]",
    f"tuple[{_S}, {_A}]",
    f"tuple[{_S}, {_A}, {_A}, {_A} | None]",
    _A,
    _A,
    "str",
    f"tuple[{_S} | {_A}, {_A}, {_A64}]",
]

WRONG_CODE = '''
import numpy as np
import fastce

x = np.zeros((4, 10), np.float32)
y = np.zeros(4, np.int64)
fastce.cross_entropy(x, y, reduction="avg")
fastce.linear_cross_entropy(x, x, y, chunk_size="64")
fastce.cross_entropy(x, y, label_smoothing=None)
fastce.set_num_threads("2")
loss, lse = fastce.cross_entropy(x, y)
'''


@pytest.fixture(scope="module")
def user_code_report(mypy_cache, tmp_path_factory):
    """mypy --strict over the two snippets (one run): ``{file stem: [(line, message)]}``."""
    tmp = tmp_path_factory.mktemp("user_code")
    for name, code in (("good", USER_CODE), ("wrong", WRONG_CODE)):
        (tmp / f"{name}.py").write_text(textwrap.dedent(code))
    # a user's project, not the repository's config: --strict, and torch (which
    # fastce.distributed imports lazily) not followed, only to keep this test fast
    (tmp / "mypy.ini").write_text("[mypy]\nstrict = True\n[mypy-torch.*]\nfollow_imports = skip\n"
                                  "ignore_missing_imports = True\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary",
         "--python-executable", sys.executable, "good.py", "wrong.py"],
        cwd=str(tmp), capture_output=True, text=True, env=_fastce_env(mypy_cache))
    report = {"good": [], "wrong": [], "raw": proc.stdout + proc.stderr}
    for line in proc.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] in ("good.py", "wrong.py") and parts[1].isdigit():
            report[parts[0][:-3]].append((int(parts[1]), parts[2].strip().replace("builtins.", "")))
    return report


def test_user_code_sees_precise_types(user_code_report):
    """The overloads give each call form its own return type (loss scalar vs per-row array,
    with or without the lse), so user code unpacks results without casts."""
    msgs = user_code_report["good"]
    out = user_code_report["raw"]
    assert not [m for _, m in msgs if m.startswith("error:")], out
    revealed = [m.split('Revealed type is "', 1)[1].rstrip('"') for _, m in msgs
                if "Revealed type is" in m]
    assert revealed == EXPECTED, out


def test_wrong_calls_are_flagged(user_code_report):
    """A misspelt reduction, a string chunk size, None for a float, a str thread count and
    unpacking an lse that was not asked for are all errors, each on its own line."""
    out = user_code_report["raw"]
    flagged = {n for n, m in user_code_report["wrong"] if m.startswith("error:")}
    lines = textwrap.dedent(WRONG_CODE).splitlines()
    expected = {i + 1 for i, line in enumerate(lines) if line.startswith(("fastce.", "loss, lse"))}
    assert flagged == expected, out
    # the misspelt reduction matches none of cross_entropy's overloads (which accept only
    # 'mean', 'sum' and 'none')
    avg = lines.index('fastce.cross_entropy(x, y, reduction="avg")') + 1
    assert any(n == avg and 'No overload variant of "cross_entropy"' in m
               for n, m in user_code_report["wrong"]), out
