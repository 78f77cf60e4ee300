"""Sphinx configuration of fastce's documentation.

Build (from the repository root, with fastce installed: autodoc imports it)::

    pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html
"""
import fastce

project = "fastce"
author = "the fastce authors"
copyright = "the fastce authors"
# the one version source (fastce/_version.py), as the package metadata and show_config
version = release = fastce.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
numpydoc_show_class_members = False   # the classes' methods are documented in their docstrings
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

myst_heading_anchors = 3
# BENCHMARKS.md and the design document link to files of the repository (bench/, tools/),
# which are not pages of this site; BENCHMARKS.md's generated option tables (tools/
# bench_report.py) sit two levels below their section, which renders fine
suppress_warnings = ["myst.xref_missing", "myst.header"]

html_theme = "alabaster"
html_title = f"fastce {release}"
