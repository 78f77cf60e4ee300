"""fastce's version: the one source the package, the docs and show_config read."""

__version__ = "0.1.0"
