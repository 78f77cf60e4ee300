"""Run fastce's CUDA kernels on the CPU: a test harness, not part of the package.

``EmuBackend`` is a backend for ``fastce.cuda._api.Ops`` whose arrays are NumPy arrays
and whose launches run the real ``fastce/cuda/*.cu`` kernels (the text NVRTC gets,
``read_source``), compiled with the host C++ compiler against ``emu_runtime.h`` (a
fiber-per-thread emulation of CUDA blocks, warps, shuffles and barriers).  It checks the
kernels' arithmetic, indexing, reductions and barrier structure on machines without a
GPU; it says nothing about speed, occupancy or the GPU memory model.
"""
import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


class EmulatorUnavailable(RuntimeError):
    pass


def _harness_source(kernels):
    """The emulator's translation unit: the runtime, then the text NVRTC compiles for each
    .cu file (``read_source``: its #include lines expanded, so the emulator tests that text),
    then the launcher."""
    from fastce.cuda._api import read_source
    lines = ['#include "emu_runtime.h"', "#include <utility>", "#include <type_traits>"]
    for cu in sorted({f for f, _ in kernels}):
        lines.append(read_source(cu))
    lines.append('extern "C" int emu_launch(const char *name, unsigned gx, unsigned gy, unsigned gz,'
                 ' unsigned bx, unsigned by, unsigned bz, void **args, int nargs, int order,'
                 ' char *err, int errlen) {')
    lines.append("    bool ok;")
    first = True
    for _, k in kernels:
        kw = "if" if first else "else if"
        first = False
        lines.append(f'    {kw} (!strcmp(name, "{k}")) ok = emu::launch_kernel({k}, dim3(gx, gy, gz), '
                     f'dim3(bx, by, bz), order, args, nargs);')
    lines.append('    else { snprintf(err, errlen, "unknown kernel %s", name); return 2; }')
    lines.append('    if (!ok) { snprintf(err, errlen, "%s", emu::g.error.c_str()); return 1; }')
    lines.append("    return 0;")
    lines.append("}")
    lines.append('extern "C" int emu_signature(const char *name, char *out, int len) {')
    first = True
    for _, k in kernels:
        kw = "if" if first else "else if"
        first = False
        lines.append(f'    {kw} (!strcmp(name, "{k}")) emu::signature({k}, out, len);')
    lines.append("    else return 2;")
    lines.append("    return 0;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def build(kernel_files):
    """Compile the harness for ``{file: [kernel, ...]}``; returns the loaded library."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise EmulatorUnavailable(f"no C++ compiler ({cxx}) on PATH")
    kernels = [(f, k) for f, ks in kernel_files.items() for k in ks]
    src = _harness_source(kernels)
    h = hashlib.sha256(src.encode())
    h.update((HERE / "emu_runtime.h").read_bytes())
    out_dir = pathlib.Path(tempfile.gettempdir()) / "fastce_cuda_emu"
    out_dir.mkdir(exist_ok=True)
    lib = out_dir / f"emu_{h.hexdigest()[:16]}.so"
    if not lib.exists():
        cpp = out_dir / f"emu_{h.hexdigest()[:16]}.cpp"
        cpp.write_text(src)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off",
               "-I", str(HERE), "-x", "c++", str(cpp), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_launch.restype = ctypes.c_int
    dll.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    dll.emu_signature.restype = ctypes.c_int
    dll.emu_signature.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    return dll


def kernel_signature(dll, kernel):
    """The compiled kernel's parameter kinds, as the host's signatures write them:
    ``["ptr", "i64", ...]`` (what C types the kernel really takes, one per parameter)."""
    buf = ctypes.create_string_buffer(4096)
    if dll.emu_signature(kernel.encode(), buf, len(buf)) != 0:
        raise KeyError(kernel)
    return buf.value.decode().split()


class EmuBackend:
    """``fastce.cuda._api`` backend: NumPy arrays, kernels run by the emulator.

    order: 0 runs each block's threads first to last, 1 last to first (a missing
    barrier shows up as a difference between the two).  sm_count sizes the plans.
    """

    name = "emulator"
    array_name = "numpy.ndarray"

    def __init__(self, dll, order=0, sm_count=4):
        self.xp = np
        self.dll = dll
        self.order = order
        self._sm = sm_count
        self.null = np.uintp(0)
        self.launches = []  # (kernel, grid, block) of every launch, for the tests

    def is_array(self, a):
        return isinstance(a, np.ndarray)

    def address(self, a):
        return int(a.__array_interface__["data"][0])

    def to_host(self, a):
        return np.array(a, copy=True)

    def sm_count(self):
        return self._sm

    def launch(self, kernel, grid, block, args):
        keep = []
        ptrs = (ctypes.c_void_p * len(args))()
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                buf = ctypes.c_uint64(self.address(a))
            else:
                buf = ctypes.create_string_buffer(np.asarray(a).tobytes())
            keep.append(buf)
            ptrs[i] = ctypes.addressof(buf)
        err = ctypes.create_string_buffer(512)
        rc = self.dll.emu_launch(kernel.encode(), *grid, *block, ptrs, len(args), self.order, err, 512)
        if rc != 0:
            raise RuntimeError(f"emulated launch of {kernel} grid={grid} block={block} failed: "
                               f"{err.value.decode()}")
        self.launches.append((kernel, tuple(grid), tuple(block)))
