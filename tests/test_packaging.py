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


def _import_graph():
    """fastce's modules and the fastce modules each one imports, at module level or inside
    a function (``from . import x``, ``from ..y import z``, ``import fastce.w``)."""
    import ast

    pkg_dir = pathlib.Path(fastce.__file__).resolve().parent
    mods = {}
    for path in pkg_dir.rglob("*.py"):
        parts = ("fastce",) + path.relative_to(pkg_dir).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                for alias in node.names:  # a submodule (.py or compiled) if it is one, else
                    sub = f"{base}.{alias.name}"  # a name from the module itself
                    edges.add(sub if sub in mods or sub in sys.modules else base)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def test_imports_form_a_tree():
    """No import cycle among fastce's modules, counting the imports inside functions (a
    cycle held together by function-level imports is still one)."""
    graph = _import_graph()
    assert {"fastce._api", "fastce.cuda._api", "fastce.distributed._comm"} <= set(graph)
    state, path = {}, []

    def visit(mod):
        state[mod] = "open"
        path.append(mod)
        for dep in sorted(graph[mod]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep)
        path.pop()
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)
