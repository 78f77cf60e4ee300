"""The package as a user meets it: one version everywhere, and a clear error when Python
imports a source tree that was never built."""
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import fastce
from conftest import require_in_ci

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_one_version_everywhere(capsys):
    """fastce.__version__, show_config, the changelog and the pyproject agree."""
    v = fastce.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", v), v
    fastce.show_config()
    assert re.search(rf"^  fastce +{re.escape(v)}$", capsys.readouterr().out, flags=re.M)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "fastce._version.__version__" }' in pyproject
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.M)
    assert released and released[0] == v, (released, v)  # the newest entry is this version
    assert "## Unreleased" in changelog


def test_unbuilt_source_tree_says_so(tmp_path):
    """A copy of fastce/ without the compiled module: the ImportError explains what to do."""
    src = pathlib.Path(fastce.__file__).parent
    dst = tmp_path / "fastce"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_kernels.*", "__pycache__"))
    assert not list(dst.glob("_kernels.*"))
    proc = subprocess.run([sys.executable, "-c", "import fastce"], cwd=tmp_path, text=True,
                          capture_output=True)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("ImportError: fastce is not built in "), proc.stderr
    for hint in (str(dst), "pip install .", "pip install -e .", "another directory"):
        assert hint in err, (hint, err)
    assert "circular import" not in proc.stderr


def test_installed_metadata_has_the_version():
    try:
        installed = importlib.metadata.version("fastce")
    except importlib.metadata.PackageNotFoundError:
        require_in_ci("fastce is not installed (an in-place build on PYTHONPATH): no metadata to check")
    assert installed == fastce.__version__


def test_api_reference_documents_every_public_name():
    api = (ROOT / "docs" / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?:function|class|exception):: fastce\.(\w+)$", api, flags=re.M))
    assert documented == set(fastce.__all__), (set(fastce.__all__) ^ documented)
