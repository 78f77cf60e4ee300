"""Build script for fastce's compiled core.

One extension module, ``fastce._kernels``: the Cython row loops plus one C translation
unit per instruction set (``src/isa_*.c``).  Each ISA unit selects its target with a
pragma, so every unit builds with the same flags and no ``-march=native`` is ever used;
the kernel table is picked at import time from the CPU's features.

OpenMP is probed the way scikit-learn does it: compile and link a tiny program with the
compiler's OpenMP flag.  Without it the build still succeeds, serial, and says so loudly.
"""
import atexit
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

OMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n > 0);
        return 0;
    }
    """
)


def openmp_flags():
    """Return (compile_args, link_args) enabling OpenMP, or ([], []) if unavailable.

    gcc and LLVM clang take ``-fopenmp``; Apple's clang needs ``-Xpreprocessor -fopenmp``
    and ``-lomp`` from a separately installed libomp (Homebrew's, as the macOS wheels use;
    its include and lib directories come in through CPPFLAGS/CFLAGS and LDFLAGS, which the
    probe passes on as the real build does).
    """
    if os.environ.get("FASTCE_DISABLE_OPENMP"):
        return [], []
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    cc = os.environ.get("CC", cc).split()[0]
    if shutil.which(cc) is None:
        cc = "cc"
    env_c = [*os.environ.get("CPPFLAGS", "").split(), *os.environ.get("CFLAGS", "").split()]
    env_l = os.environ.get("LDFLAGS", "").split()
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OMP_PROBE)
        for cflags, lflags in candidates:
            try:
                subprocess.run([cc, *env_c, *cflags, src, "-o", exe, *env_l, *lflags], check=True,
                               capture_output=True)
                out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
            except (OSError, subprocess.CalledProcessError):
                continue
            if out.strip() == "1":
                return cflags, lflags
    return [], []


CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}


class BuildExt(build_ext):
    def build_extensions(self):
        cflags, lflags = openmp_flags()
        if not cflags:
            warnings.warn(
                "\n\n*** fastce: the C compiler has no working OpenMP. Building a SERIAL "
                "extension: every call will use one thread. Install a compiler with "
                "OpenMP (gcc, or clang with libomp) and rebuild for multi-threading. ***\n",
                stacklevel=1,
            )
            print("fastce: building WITHOUT OpenMP (serial)", file=sys.stderr)
        # Cythonize here, not at setup() level: the generated C goes to the build
        # directory (a temporary one for a wheel), never into fastce/ beside the .pyx.
        # (Only the sources are taken over: setuptools keeps state on its own objects.)
        for ext, done in zip(self.extensions, cythonize(
                self.extensions, build_dir=os.path.join(self.build_temp, "cython"),
                compiler_directives=CYTHON_DIRECTIVES)):
            ext.sources = done.sources
        for ext in self.extensions:
            ext.extra_compile_args += cflags
            ext.extra_link_args += lflags
        super().build_extensions()


class BuildPy(build_py):
    """Package data, plus include/fastce/row.h in fastce/cuda/: the row formulas are one
    header for the CPU build and the GPU kernels, whose text the GPU path hands to NVRTC at
    run time (fastce/cuda/_api.py, read_source), so an installed package needs it too."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, "include", "fastce", "row.h"),
                       os.path.join(self.build_lib, "fastce", "cuda", "row.h"))


def _build_dirs():
    """Where the intermediate files go: ``(build_base, egg_base)``, None for the defaults.

    A wheel build (``pip install .``, ``pip wheel .``, and the metadata hooks pip calls
    first) works in a temporary directory, removed at exit, so that installing leaves the
    clone as it was: no ``build/``, ``fastce.egg-info/`` or generated ``_kernels.c``.  An
    in-place or editable build (``build_ext --inplace``, ``pip install -e .``) keeps them
    under ``build/`` (gitignored) for incremental rebuilds; the generated C is in
    ``build/temp.*/cython/``.
    """
    in_place = any(a in ("develop", "editable_wheel", "--inplace", "-i") for a in sys.argv[1:])
    if in_place:
        return None, None
    tmp = tempfile.mkdtemp(prefix="fastce-build-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return os.path.join(tmp, "build"), tmp


BUILD_BASE, EGG_BASE = _build_dirs()
OPTIONS = {}
if BUILD_BASE is not None:
    OPTIONS = {"build": {"build_base": BUILD_BASE}, "egg_info": {"egg_base": EGG_BASE}}

extensions = [
    Extension(
        "fastce._kernels",
        sources=[
            "fastce/_kernels.pyx",
            "src/dispatch.c",
            "src/isa_scalar.c",
            "src/isa_avx2.c",
            "src/isa_avx512.c",
            "src/isa_neon.c",
        ],
        include_dirs=["include", "src", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        # -fno-math-errno lets libm calls in scalar code inline; we never use -ffast-math:
        # inf and nan semantics are part of the contract.
        extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"],
        depends=[os.path.join("include", "fastce", f) for f in os.listdir(os.path.join(HERE, "include", "fastce"))],
    )
]

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
    options=OPTIONS,
)
