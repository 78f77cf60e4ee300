"""fastce's GPU path: the public functions on CuPy arrays.

Layers (each testable on its own; only the last one needs CuPy and a GPU):

1. Pure planning (no array library at all): ``collapse_strides`` / ``rows3_strides``
   turn shapes and strides into the kernels' ``(A, C, B)`` geometry, ``plan_rows``
   picks the kernel shape (warp, block, thread per row, chunked rows) and launch
   configuration, ``pack_args`` lays the arguments out in the order of the kernels'
   C signatures (``*_SIGNATURE``, parsed from ``kernel_params.h``, the header whose lists
   the kernels expand into their parameters),
   ``byte_extent`` decides overlap between arrays, ``self_overlapping`` within one.
2. ``Ops``: validation (the messages and exception classes of the CPU path, reusing
   ``fastce._validation`` for everything that does not touch array memory), output
   allocation, launches and the host side of the reductions, written against a small
   *backend* (array module + kernel launcher).  ``CupyBackend`` is the real one; the
   test suite drives the same ``Ops`` with a CPU emulation of the CUDA execution model.
3. The module-level functions (``logsumexp`` ...), which check that no NumPy array is
   mixed in and run ``Ops`` on the CuPy backend.

CuPy is imported lazily, by ``CupyBackend`` only.

Host synchronisation: cross-entropy and nll_loss read 4 numbers back from the device
per call (the class-index check, so that a bad target raises ``IndexError`` before any
output is written, like the CPU path, and the normalisers); a weighted vocabulary shard
reads one more (its weight sum).  Everything else is asynchronous on CuPy's current
stream.  Scalar losses come back as 0-d CuPy arrays.
"""
import functools
import numbers
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from .. import _validation as V

__all__ = [
    "logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad",
    "cross_entropy_backward", "nll_loss", "is_cupy_call", "describe",
]

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------
# 1. kernels, signatures, planning (pure Python)
# ---------------------------------------------------------------------------------------
MODE_LSE, MODE_LOG_SOFTMAX, MODE_SOFTMAX, MODE_CE = 0, 1, 2, 3

WARP_VPTS = (1, 2, 4, 8, 16, 32)
BLOCK_VPTS = (0, 8, 16)  # 0: streaming

#: rows.cu's dtype families: kernel suffix -> FCE_ROWS_SET, the compile option that
#: builds only that family (a process compiles what it uses)
ROWS_SETS = {"f32": 1, "f64": 2, "f16": 3, "f16f32": 3, "bf16": 4, "bf16f32": 4}
_SUFFIX = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}


def rows_suffix(x_dtype, out_dtype=None):
    """rows.cu kernel suffix for logits of ``x_dtype`` and an elementwise output of
    ``out_dtype`` (default: the logits' dtype)."""
    suf = _SUFFIX[np.dtype(x_dtype).name]
    if out_dtype is not None and np.dtype(out_dtype) != np.dtype(x_dtype):
        suf += "f32"  # half logits, float32 gradient
    return suf


def _row_kernels():
    names = []
    for suf in ROWS_SETS:
        names += [f"fastce_rows_warp{v}_{suf}" for v in WARP_VPTS]
        names += [f"fastce_rows_block{v}_{suf}" for v in BLOCK_VPTS]
        names.append(f"fastce_rows_thread_{suf}")
    return tuple(names)


def compile_options(kernel):
    """Extra compiler options of the module that holds ``kernel``."""
    if kernel.startswith("fastce_rows_"):
        return (f"-DFCE_ROWS_SET={ROWS_SETS[kernel.rsplit('_', 1)[1]]}",)
    return ()


#: every kernel, by the .cu file that defines it
KERNEL_FILES = {
    "rows.cu": _row_kernels(),
    "reduce.cu": ("fastce_target_scan", "fastce_nll_f32", "fastce_nll_f64",
                  "fastce_finalize_f32", "fastce_finalize_f64",
                  "fastce_nll_backward_f32", "fastce_nll_backward_f64"),
    "bce.cu": ("fastce_bce_f32", "fastce_bce_f64"),
}
FILE_OF_KERNEL = {k: f for f, ks in KERNEL_FILES.items() for k in ks}


def _read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# Parameter lists of the kernels, in order, as pack_args takes them: ``(name, kind)`` with
# kind ptr (device pointer, None = NULL), i32 (int), i64 (long long), f64 (double).
# They are kernel_params.h's FCE_<FAMILY>_FIELDS lists, read from the header that the
# kernels expand into their parameter lists: one list per family, written once.
_PARAM_KINDS = {"long long": "i64", "int": "i32", "double": "f64"}


def _param_kind(ctype):
    ctype = " ".join(ctype.split())
    if "*" in ctype:
        return "ptr"
    try:
        return _PARAM_KINDS[ctype]
    except KeyError:
        raise ValueError(f"kernel_params.h: unsupported parameter type {ctype!r}") from None


_FIELD = re.compile(r"\bX\(([^,()]*),\s*(\w+)\s*\)")


def parse_kernel_params(text):
    """``{family: ((name, kind), ...)}`` of every ``FCE_<FAMILY>_FIELDS(X, ...)`` list in
    ``text`` (kernel_params.h).

    Raises ValueError for anything in a list that is not an ``X(type, name)`` field.
    """
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S).replace("\\\n", " ")
    sigs = {}
    for family, body in re.findall(r"^[ \t]*#[ \t]*define FCE_(\w+)_FIELDS\(X(?:,\s*\w+)*\)(.*)$",
                                   text, re.M):
        fields = _FIELD.findall(body)
        rest = _FIELD.sub("", body).strip()
        if rest or not fields:
            raise ValueError(f"kernel_params.h: FCE_{family}_FIELDS is not a list of X(type, name): "
                             f"{rest!r}")
        sigs[family] = tuple((name, _param_kind(ctype)) for ctype, name in fields)
    return sigs


@functools.lru_cache(maxsize=None)
def kernel_signatures():
    """The kernels' parameter lists, read once from ``fastce/cuda/kernel_params.h``
    (see ``parse_kernel_params``)."""
    return parse_kernel_params(_read_text(os.path.join(HERE, "kernel_params.h")))


ROWS_SIGNATURE = kernel_signatures()["ROWS"]
SCAN_SIGNATURE = kernel_signatures()["SCAN"]
NLL_SIGNATURE = kernel_signatures()["NLL"]
FINALIZE_SIGNATURE = kernel_signatures()["FINALIZE"]
#: doubles per chunk in the partial statistics of split rows (rows.cu FCE_PART)
PART_DOUBLES = 6


_SCALAR_TYPES = {"i32": np.int32, "i64": np.int64, "f64": np.float64}
_I64_MIN, _I64_MAX = -(2 ** 63), 2 ** 63 - 1


def pack_args(signature, values, null):
    """Kernel arguments in signature order: arrays (or ``null`` for None) and numpy scalars.

    Explicit numpy scalar types fix each argument's width (CuPy would pass a Python int
    as 64 bits and a float as double). Raises KeyError for a missing or unknown name.
    """
    extra = set(values) - {n for n, _ in signature}
    if extra:
        raise KeyError(f"unknown kernel arguments {sorted(extra)}")
    out = []
    for name, kind in signature:
        v = values[name]
        if kind == "ptr":
            out.append(null if v is None else v)
        else:
            out.append(_SCALAR_TYPES[kind](v))
    return tuple(out)


def collapse_strides(shape, strides):
    """One stride walking ``shape`` (C order) with the given element strides, or None.

    Returns 0 for an empty group or one whose dimensions are all 1.
    """
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims:
        return 0
    for (n0, s0), (n1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * n1:
            return None
    return dims[-1][1]


def rows3_strides(shape, strides, axis):
    """Element strides ``(sa, sc, sb)`` of the ``(A, C, B)`` view around ``axis``, or None."""
    sa = collapse_strides(shape[:axis], strides[:axis])
    sb = collapse_strides(shape[axis + 1:], strides[axis + 1:])
    if sa is None or sb is None:
        return None
    return sa, strides[axis], sb


def rows2_strides(shape, strides, split):
    """Element strides ``(sa, sb)`` of the ``(A, B)`` view of a reduced array, or None."""
    sa = collapse_strides(shape[:split], strides[:split])
    sb = collapse_strides(shape[split:], strides[split:])
    if sa is None or sb is None:
        return None
    return sa, sb


def element_strides(strides, itemsize):
    """Byte strides as element strides, or None when one is not a multiple of itemsize."""
    if any(s % itemsize for s in strides):
        return None
    return tuple(s // itemsize for s in strides)


@dataclass(frozen=True)
class RowPlan:
    """How one row sweep is launched.

    kernel      name of the extern "C" kernel in rows.cu
    block       threads per block
    grid        blocks along x (rows; the kernels loop when there are more rows)
    n_parts     1, or the number of chunks each row is split into (two launches:
                phase 1 partial statistics over grid (grid, n_parts), then phase 2)
    chunk_len   classes per chunk (n_parts > 1)
    grid_y2     grid.y of phase 2: n_parts when an elementwise output is written, else 1
    """
    kernel: str
    block: int
    grid: int
    n_parts: int = 1
    chunk_len: int = 0
    grid_y2: int = 1

    @property
    def launches(self):
        """``[(grid, block, phase), ...]`` in launch order."""
        if self.n_parts == 1:
            return [((self.grid, 1, 1), (self.block, 1, 1), 0)]
        return [((self.grid, self.n_parts, 1), (self.block, 1, 1), 1),
                ((self.grid, self.grid_y2, 1), (self.block, 1, 1), 2)]


THREAD_MAX_C = 64          # thread per row: short rows only
WARP_MAX_C = {4: 1024, 8: 512}  # warp per row, by itemsize (registers: VPT <= 32 / 16)
CACHED_MAX_THREADS = 512   # block kernels that keep the row in registers
CHUNK_MIN_C = 32768        # split rows only when they are this long ...
CHUNK_TARGET = 4096        # ... into chunks of about this many classes
MAX_PARTS = 64


def _next_pow2(n):
    return 1 << max(0, int(n - 1).bit_length())


def plan_rows(n_rows, n_classes, itemsize, *, row_step, class_stride, elementwise, sm_count,
              suffix=None):
    """Choose the kernel and launch shape of a row sweep (see rows.cu, section 2).

    Parameters
    ----------
    n_rows, n_classes : int
        Rows (A * B) and their length C (both >= 1).
    itemsize : {4, 8}
        Of the compute type (4 for float16/bfloat16 logits, computed in float32).
    row_step, class_stride : int
        Element distance between rows r and r + 1, and between classes c and c + 1.
    elementwise : bool
        Whether an (N, C) output (log-softmax, softmax, gradient) is written.
    sm_count : int
        Streaming multiprocessors of the device (sizes the grid and the chunking).
    suffix : str, optional
        The kernels' dtype suffix (``rows_suffix``); default from ``itemsize``.
    """
    suf = suffix or ("f32" if itemsize == 4 else "f64")
    C = int(n_classes)
    cap = max(1, int(sm_count)) * 64
    if C <= THREAD_MAX_C and abs(class_stride) != 1 and abs(row_step) == 1:
        block = 256
        return RowPlan(f"fastce_rows_thread_{suf}", block, min(-(-n_rows // block), cap))
    if C <= WARP_MAX_C[itemsize]:
        vpt = next(v for v in WARP_VPTS if 32 * v >= C)
        block = 256
        return RowPlan(f"fastce_rows_warp{vpt}_{suf}", block, min(-(-n_rows // (block // 32)), cap))
    for vpt in (8, 16):
        if C <= vpt * CACHED_MAX_THREADS:
            block = min(CACHED_MAX_THREADS, max(128, _next_pow2(-(-C // vpt))))
            return RowPlan(f"fastce_rows_block{vpt}_{suf}", block, min(n_rows, cap))
    block = 512  # rows.cu: __launch_bounds__(512, 1), up to 128 registers, no spills
    name = f"fastce_rows_block0_{suf}"
    if C >= CHUNK_MIN_C and n_rows < 2 * sm_count:
        parts = min(-(-2 * sm_count // n_rows), -(-C // CHUNK_TARGET), MAX_PARTS)
        if parts > 1:
            chunk = -(-C // parts)
            parts = -(-C // chunk)
            return RowPlan(name, block, min(n_rows, cap), parts, chunk,
                           parts if elementwise else 1)
    return RowPlan(name, block, min(n_rows, cap))


# ---------------------------------------------------------------------------------------
# 2. backends
# ---------------------------------------------------------------------------------------
#: where read_source finds a file: this folder (the .cu files, kernel_params.h, and in an
#: installed package row.h, which setup.py's build_py copies here), then the source tree's
#: include/fastce (row.h, shared with the CPU build)
SOURCE_DIRS = (HERE, os.path.join(os.path.dirname(os.path.dirname(HERE)), "include", "fastce"))
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


def _find_source(name, dirs):
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"fastce's GPU kernels need {name!r}, found in none of {list(dirs)}")


@functools.lru_cache(maxsize=None)
def read_source(filename, dirs=SOURCE_DIRS):
    """The text NVRTC compiles for ``filename``: the file with every ``#include "name"``
    replaced by that file's text (expanded the same way, each file once), so the compiler
    needs no include path.  ``#line`` directives keep its messages pointing at the files.

    Raises FileNotFoundError when an included file is in none of ``dirs``.
    """
    done = set()

    def expand(name):
        path = _find_source(name, dirs)
        done.add(name)
        text = _read_text(path)
        parts, pos = [], 0
        for m in _INCLUDE.finditer(text):
            line = text.count("\n", 0, m.end()) + 1
            parts.append(text[pos:m.start()])
            inc = m.group(1)
            if inc not in done:
                parts.append(f'#line 1 "{inc}"\n{expand(inc)}\n')
            parts.append(f'#line {line + 1} "{name}"')
            pos = m.end()
        parts.append(text[pos:])
        return "".join(parts)

    return expand(filename)


class CupyBackend:
    """Arrays and launches on CuPy's current device and stream."""

    name = "cupy"
    array_name = "cupy.ndarray"
    #: NVRTC options; part of CuPy's cache key with the source text
    options = ("--std=c++11",)

    def __init__(self):
        import cupy
        self.xp = cupy
        self._modules = {}
        self._sms = {}
        self.null = np.uintp(0)

    def is_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def address(self, a):
        return int(a.data.ptr)

    def to_host(self, a):
        return self.xp.asnumpy(a)

    def sm_count(self):
        dev = self.xp.cuda.Device()
        n = self._sms.get(dev.id)
        if n is None:
            n = self._sms[dev.id] = int(dev.attributes["MultiProcessorCount"])
        return n

    def module(self, filename, extra=()):
        key = (filename, tuple(extra))
        mod = self._modules.get(key)
        # compiled by NVRTC at the first get_function, cached on disk by CuPy under a key of
        # the text: headers expanded into it (read_source), an edit of row.h recompiles
        if mod is None:
            mod = self._modules[key] = self.xp.RawModule(
                code=read_source(filename), options=self.options + tuple(extra))
        return mod

    def launch(self, kernel, grid, block, args):
        mod = self.module(FILE_OF_KERNEL[kernel], compile_options(kernel))
        mod.get_function(kernel)(grid, block, args)


_BACKEND = None


def cupy_backend():
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = CupyBackend()
    return _BACKEND


# ---------------------------------------------------------------------------------------
# argument checks shared by the operations
# ---------------------------------------------------------------------------------------
def _check_threads(n_threads):
    """Accepted and validated like the CPU path's, then ignored."""
    if n_threads is not None:
        V.check_n_threads(n_threads)


def _is_numpy_array(a):
    return isinstance(a, np.ndarray)


# the overlap rules of the contract (fastce/_contract.pxi), by their planning-layer names
byte_extent, extents_overlap, self_overlapping = V.byte_extent, V.extents_overlap, V.self_overlapping


class Ops:
    """fastce's functions on one backend's arrays (signatures of the CPU functions)."""

    def __init__(self, backend):
        self.b = backend
        self.xp = backend.xp

    # ------------------------------------------------------------------ arrays
    def _foreign(self, a):
        """A NumPy array handed to the GPU path (the emulator backend has none)."""
        return _is_numpy_array(a) and not self.b.is_array(a)

    def _mix_error(self, name):
        return V.mix_error("the other arguments", name)

    def _asarray(self, a, name):
        if self.b.is_array(a):
            return a
        if self._foreign(a):
            raise self._mix_error(name)
        return self.xp.asarray(a)

    def _as_float(self, x, name, allow_half=True):
        """A float32/float64 (and float16/bfloat16) device array (the CPU path's dtypes)."""
        arr = self._asarray(x, name)
        V.check_float_dtype(arr.dtype, name, allow_half)
        return arr

    def _geometry(self, x, axis):
        """``(x', A, C, B, (sa, sc, sb))``: x' is x, or a C-contiguous copy when its
        layout has no (A, C, B) view."""
        a, c, b = V.rows3_shape(x.shape, axis)
        es = element_strides(x.strides, x.itemsize)
        st = rows3_strides(x.shape, es, axis) if es is not None else None
        if st is None:
            x = self.xp.ascontiguousarray(x)
            st = rows3_strides(x.shape, element_strides(x.strides, x.itemsize), axis)
        return x, a, c, b, st

    # The checks of outputs are the contract's (V.check_out, check_inplace,
    # check_grad_buffer) on this backend's arrays; only the mix error is the GPU path's.
    def _check_out(self, out, shape, dtype, inputs, name="out"):
        if self._foreign(out):
            raise self._mix_error(name)
        return V.check_out(out, shape, dtype, inputs, name, self.b)

    def _check_inplace(self, logits, out):
        if out is None and self._foreign(logits):
            raise self._mix_error("logits")
        V.check_inplace(logits, out, self.b)

    def _check_grad_buffer(self, x, out, inplace, dtype, inputs, name="logits"):
        if not inplace and self._foreign(out):
            raise self._mix_error("out")
        V.check_grad_buffer(x, out, inplace, dtype, inputs, name, self.b)

    def _checked_grad_output(self, grad_output, reduction, shape, what):
        """``(number, None)`` for a host number, ``(None, device array)`` otherwise, checked
        by the contract (``V.checked_grad_output``) without reading device memory."""
        if isinstance(grad_output, (numbers.Number, np.generic)) and not self.b.is_array(grad_output):
            return V.checked_grad_output(grad_output, reduction, shape, what)[0], None
        g = self._asarray(grad_output, "grad_output")
        V.check_grad_output_array(g.dtype, g.shape, reduction, shape, what)
        return None, g

    def _out_view(self, out, axis_or_split, kind):
        """Element strides of an output in the kernels' geometry, or (temp, strides) when
        the layout has none: returns ``(dest, strides, copy_to)``."""
        es = element_strides(out.strides, out.itemsize)
        fn = rows3_strides if kind == 3 else rows2_strides
        st = fn(out.shape, es, axis_or_split) if es is not None else None
        if st is not None:
            return out, st, None
        tmp = self.xp.empty(out.shape, dtype=out.dtype)
        st = fn(tmp.shape, element_strides(tmp.strides, tmp.itemsize), axis_or_split)
        return tmp, st, out

    # ------------------------------------------------------------------ launches
    #: the row kernels' arguments that a sweep leaves at their neutral value
    _ROW_DEFAULTS = dict(
        out=None, oa=0, ob=0, oc=0, row_out=None, ra=0, rb=0, row_loss=None, lse_out=None,
        lse_in=None, target=None, target_is64=0, ignore_index=0, soft=None, ta=0, tb=0, tc=0,
        weight=None, weight_y=None, W=0.0, eps=0.0, cstart=0, Ctot=0.0, Wtot=0.0, z=0.0,
        zrow=0.0, cap=0.0, scale=1.0, gout=None, gout_s=0, gscale=1.0, gzscale=1.0)

    def _rows(self, x, n_rows, C, B, xs, *, mode, os_=(0, 0, 0), rs=(0, 0), ts=(0, 0, 0),
              **kw):
        """One row sweep over the (A, C, B) view ``xs = (sa, sc, sb)`` of x.

        ``os_``, ``rs``, ``ts``: (a, c, b) strides of the elementwise output, (a, b) strides
        of ``row_out``, (a, c, b) strides of probability targets; ``kw``: the other
        arguments of ROWS_SIGNATURE by name (unknown names raise KeyError).
        """
        sa, sc, sb = xs
        out = kw.get("out")
        row_step = sb if B > 1 else sa
        suffix = rows_suffix(x.dtype, out.dtype if out is not None else None)
        plan = plan_rows(n_rows, C, np.dtype(V.compute_dtype(x.dtype)).itemsize, row_step=row_step,
                         class_stride=sc, elementwise=out is not None,
                         sm_count=self.b.sm_count(), suffix=suffix)
        part = None
        if plan.n_parts > 1:
            part = self.xp.empty(n_rows * plan.n_parts * PART_DOUBLES, dtype=np.float64)
        target = kw.get("target")
        vals = dict(self._ROW_DEFAULTS, x=x, n_rows=n_rows, C=C, B=B, xa=sa, xb=sb, xc=sc,
                    oa=os_[0], oc=os_[1], ob=os_[2], ra=rs[0], rb=rs[1],
                    ta=ts[0], tc=ts[1], tb=ts[2],
                    target_is64=int(target is not None and target.dtype == np.int64),
                    part=part, n_parts=plan.n_parts, chunk_len=plan.chunk_len, mode=mode)
        vals.update(kw)
        for grid, block, phase in plan.launches:
            vals["phase"] = phase
            self.b.launch(plan.kernel, grid, block, pack_args(ROWS_SIGNATURE, vals, self.b.null))
        return plan

    def _finalize(self, row_loss, n, denom, mean, dtype):
        res = self.xp.empty((), dtype=dtype)
        suf = "f32" if np.dtype(dtype).itemsize == 4 else "f64"
        self.b.launch(f"fastce_finalize_{suf}", (1, 1, 1), (1024, 1, 1),
                      pack_args(FINALIZE_SIGNATURE, dict(row_loss=row_loss, n=n, denom=denom,
                                                         mean=int(mean), out=res), self.b.null))
        return res

    # ------------------------------------------------------------------ lse family
    def logsumexp(self, x, axis=-1, *, out=None, n_threads=None):
        x = self._as_float(x, "x")
        ax = V.array_axis(x.ndim, axis)
        _check_threads(n_threads)
        shape = x.shape[:ax] + x.shape[ax + 1:]
        rdtype = V.compute_dtype(x.dtype)  # float32 for half precision, as on the CPU
        if out is not None:
            self._check_out(out, shape, rdtype, {"x": x})
        res = out if out is not None else self.xp.empty(shape, dtype=rdtype)
        a, c, b = V.rows3_shape(x.shape, ax)
        if a * b == 0:
            return res
        if c == 0:
            res[...] = -np.inf
            return res
        xin = x
        x, a, c, b, xs = self._geometry(x, ax)
        dest, rs, copy_to = self._out_view(res, ax, 2)
        self._rows(x, a * b, c, b, xs, mode=MODE_LSE, row_out=dest, rs=rs)
        if copy_to is not None:
            copy_to[...] = dest
        V.posinf_lse(xin, ax, res, xp=self.xp)
        return res

    def _softmax(self, x, axis, out, n_threads, mode):
        x = self._as_float(x, "x")
        ax = V.array_axis(x.ndim, axis)
        _check_threads(n_threads)
        if out is None:
            out = self.xp.empty(x.shape, dtype=x.dtype)
        else:
            self._check_out(out, x.shape, x.dtype, {"x": x})
        a, c, b = V.rows3_shape(x.shape, ax)
        if a * b * c == 0:
            return out
        x, a, c, b, xs = self._geometry(x, ax)
        dest, os_, copy_to = self._out_view(out, ax, 3)
        self._rows(x, a * b, c, b, xs, mode=mode, out=dest, os_=os_)
        if copy_to is not None:
            copy_to[...] = dest
        return out

    def log_softmax(self, x, axis=-1, *, out=None, n_threads=None):
        return self._softmax(x, axis, out, n_threads, MODE_LOG_SOFTMAX)

    def softmax(self, x, axis=-1, *, out=None, n_threads=None):
        return self._softmax(x, axis, out, n_threads, MODE_SOFTMAX)

    # ------------------------------------------------------------------ cross-entropy
    def _ce_setup(self, logits, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, n_threads=None, inplace=False, out=None, name="logits",
                  z_loss=0.0, softcap=None,
                  lse=None, class_start=0, num_classes=None, grad_dtype=None, allow_soft=True,
                  logit_scale=1.0, num_items=None, grad_output=None):
        """Validate one cross-entropy/nll call; returns a dict of what the sweep needs.

        The contract's checks (fastce/_contract.pxi), in ``ce_call``'s order, on the
        backend's arrays (metadata only: the class indices are checked by the scan)."""
        reduction = V.check_reduction(reduction)
        cap = V.check_softcap(softcap)
        eps = V.check_label_smoothing(label_smoothing)
        z = V.check_z_loss(z_loss)
        scale = V.check_logit_scale(logit_scale)
        items = V.check_num_items(num_items, reduction)
        ignore_index = V.check_ignore_index(ignore_index)
        _check_threads(n_threads)
        if inplace:
            self._check_inplace(logits, out)
        x = self._as_float(logits, name)
        grad_dtype = V.check_ce_logits(tuple(x.shape), x.dtype, grad_dtype, inplace, name)
        axis = 0 if x.ndim == 1 else 1
        C = x.shape[axis]
        target_shape = V.expected_target_shape(x.shape)
        cstart, ctot = V.check_shard(class_start, num_classes, C)
        sharded = ctot != C
        t = soft = None
        if allow_soft and V.is_probability_target(target, x.shape, self.b):
            V.check_soft_target(x.shape, ignore_index, sharded)
            soft = self._asarray(target, "target")
            soft = soft if soft.dtype == x.dtype else soft.astype(x.dtype)
        else:
            t = self._asarray(target, "target")
            V.check_class_target(t.dtype, t.shape, x.shape, name)
        w_all = None  # the whole vocabulary's weights, indexed by target
        if weight is not None:
            w_all = self._asarray(weight, "weight")
            V.check_class_weight(w_all.dtype, w_all.shape, ctot)
            w_all = self.xp.ascontiguousarray(w_all, dtype=np.float64)
        w = w_all[cstart:cstart + C] if sharded and w_all is not None else w_all
        lse_in = None  # the caller's per-row log-sum-exp, flat float64
        if lse is not None:
            lse_in = self._asarray(lse, "lse")
            V.check_lse(lse_in.dtype, lse_in.shape, target_shape)
            lse_in = self.xp.ascontiguousarray(lse_in, dtype=np.float64).reshape(-1)
        V.check_shard_lse(sharded, lse_in is not None)
        if inplace or out is not None:
            self._check_grad_buffer(x, out, inplace, grad_dtype,
                                    V.ce_inputs(target, weight, lse, grad_output), name)
        return dict(x=x, axis=axis, C=C, t=t, soft=soft, target_shape=target_shape, w=w,
                    w_all=w_all, reduction=reduction, eps=eps, ignore_index=ignore_index,
                    inplace=inplace, out=out, z=z, cap=cap, scale=scale, items=items,
                    lse_in=lse_in, cstart=cstart,
                    ctot=ctot, grad_dtype=grad_dtype, cdtype=V.compute_dtype(x.dtype))

    def _flat_target(self, t):
        """Targets as the kernels read them: contiguous int32 or int64, flat."""
        if t.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            t = t.astype(np.int64)
        return self.xp.ascontiguousarray(t).reshape(-1)

    def _scan(self, call):
        """Check the class indices and sum the normalisers (one device -> host copy):
        ``(sum of w[y] over the rows kept, number of rows kept, sum of all weights)``."""
        t = call["tflat"]
        res = self.xp.empty(4, dtype=np.float64)
        self.b.launch("fastce_target_scan", (1, 1, 1), (1024, 1, 1), pack_args(SCAN_SIGNATURE, dict(
            target=t, target_is64=int(t is not None and t.dtype == np.int64),
            n=0 if t is None else t.size, C=call["ctot"], ignore_index=call["ignore_k"],
            weight=call["w_all"], result=res), self.b.null))
        host = self.b.to_host(res)
        bad = int(host[0])
        if bad >= 0:
            value = int(self.b.to_host(t[bad:bad + 1].astype(np.int64))[0])
            raise V.bad_target_error(call["target_shape"], bad, value, call["ctot"],
                                     call["ignore_index"])
        return float(host[1]), float(host[2]), float(host[3])

    def _prepare(self, call):
        """Targets for the kernels, the index check and the normalisers (``norm``: torch's
        'mean' divisor, ``valid``: rows kept, ``W``/``Wtot``: weight sums of this array's
        classes / of the vocabulary)."""
        ii = call["ignore_index"]
        # an ignore_index outside int64 can match no target (a Python int has no bound)
        call["ignore_k"] = ii if _I64_MIN <= ii <= _I64_MAX else _I64_MIN
        call["tflat"] = None if call["t"] is None else self._flat_target(call["t"])
        if call["tflat"] is None and call["w_all"] is None:  # probabilities, unweighted
            rows = float(int(np.prod(call["target_shape"], dtype=np.int64)))
            norm, valid, wtot = rows, rows, float(call["C"])
        else:
            norm, valid, wtot = self._scan(call)
            if call["tflat"] is None:  # probabilities: 'mean' divides by the row count
                norm = valid = float(int(np.prod(call["target_shape"], dtype=np.int64)))
        if call.get("items") is not None:  # the caller's 'mean' divisor, for both terms
            norm = valid = call["items"]
        call["norm"], call["valid"], call["Wtot"] = norm, valid, wtot
        if call["ctot"] == call["C"]:
            call["W"] = wtot
        elif call["w"] is None:
            call["W"] = float(call["C"])
        else:
            call["W"] = float(call["w"].sum())
        return call

    def _grad_scales(self, grad_output, call):
        """``(gout array or None, gout stride, gscale, gzscale)``: the row scale of the
        cross-entropy term is ``gscale * gout[r]`` and of the z-term ``gzscale * gout[r]``."""
        reduction, shape = call["reduction"], tuple(call["target_shape"])
        value, g = self._checked_grad_output(grad_output, reduction, shape, V.GRAD_OUTPUT_ROWS)
        if reduction == "none" and g is not None and g.ndim:  # broadcast like NumPy
            g = self.xp.broadcast_to(g, shape)
            return self.xp.ascontiguousarray(g, dtype=np.float64).reshape(-1), 1, 1.0, 1.0
        if reduction == "none":  # a scalar scales every row
            value = value if g is None else float(g)
            return None, 0, value, value
        one = np.float64(1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = reduction == "mean"
            inv = one / np.float64(call["norm"]) if mean else one
            zinv = one / np.float64(call["valid"]) if mean else one
            if g is None:
                return None, 0, float(np.float64(value) * inv), float(np.float64(value) * zinv)
        return self.xp.ascontiguousarray(g, dtype=np.float64), 0, float(inv), float(zinv)

    def _grad_output(self, grad_output, call):
        """``(gout array or None, gout stride, gscale)`` (see ``_grad_scales``)."""
        return self._grad_scales(grad_output, call)[:3]

    def _ce_sweep(self, call, want_loss, grad_output=None, want_grad=False, want_lse=False):
        """Run the row sweep; returns ``(loss or None, grad or None, lse rows or None)``."""
        xp = self.xp
        reduction, soft, z = call["reduction"], call["soft"], call["z"]
        gout, gout_s, gscale, gzscale = None, 0, 1.0, 1.0
        if want_grad:
            gout, gout_s, gscale, gzscale = self._grad_scales(grad_output, call)
        x, a, c, b, xs = self._geometry(call["x"], call["axis"])  # inplace: C-contiguous, no copy
        n = a * b
        ts = (0, 0, 0)
        if soft is not None:
            soft, _, _, _, ts = self._geometry(soft, call["axis"])
        # the caller's lse is used for class-index targets; probabilities recompute it (CPU path)
        lse_in = call["lse_in"] if soft is None else None
        row_out = row_loss = lse_rows = None
        if want_loss:
            if reduction == "none":
                row_out = xp.empty(call["target_shape"], dtype=call["cdtype"])
            else:
                row_loss = xp.empty(n, dtype=np.float64)
        lse_out = None
        if want_lse:
            lse_rows = lse_in if lse_in is not None else xp.empty(n, dtype=np.float64)
            lse_out = None if lse_in is not None else lse_rows
        grad = dest = copy_to = None
        os_ = (0, 0, 0)
        if want_grad:
            if call["inplace"]:
                grad = call["x"]
            elif call["out"] is not None:
                grad = call["out"]
            else:
                grad = xp.empty(x.shape, dtype=call["grad_dtype"])
            dest, os_, copy_to = self._out_view(grad, call["axis"], 3)
        zrow = 0.0
        if z != 0.0 and reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):  # mean: sum / norm, z-term / valid
                zrow = float(np.float64(call["norm"]) / np.float64(call["valid"]))
        elif z != 0.0:
            zrow = 1.0
        if n:
            self._rows(x, n, c, b, xs, mode=MODE_CE, out=dest, os_=os_, row_out=row_out,
                       rs=(b, 1), row_loss=row_loss, lse_out=lse_out, lse_in=lse_in,
                       target=call["tflat"], ignore_index=call["ignore_k"], soft=soft, ts=ts,
                       weight=call["w"], weight_y=call["w_all"], W=call["W"], eps=call["eps"],
                       cstart=call["cstart"], Ctot=float(call["ctot"]), Wtot=call["Wtot"], z=z,
                       zrow=zrow, cap=call["cap"], scale=call.get("scale", 1.0), gout=gout, gout_s=gout_s, gscale=gscale,
                       gzscale=gzscale)
            if copy_to is not None:
                copy_to[...] = dest
        loss = None
        if want_loss:
            loss = row_out if reduction == "none" else self._finalize(
                row_loss, n, call["norm"], reduction == "mean", call["cdtype"])
        if lse_rows is not None:
            lse_rows = lse_rows.reshape(call["target_shape"])
            if lse_in is None and call["cap"] == 0.0:  # a softcap keeps +inf finite
                V.posinf_lse(call["x"], call["axis"], lse_rows, call.get("scale", 1.0), xp=self.xp)
        return loss, grad, lse_rows

    def cross_entropy(self, logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                      label_smoothing=0.0, z_loss=0.0, softcap=None, logit_scale=1.0,
                      num_items=None, lse=None, return_lse=False, class_start=0,
                      num_classes=None, n_threads=None):
        call = self._prepare(self._ce_setup(
            logits, target, weight, ignore_index, reduction, label_smoothing, n_threads,
            z_loss=z_loss, softcap=softcap, lse=lse, class_start=class_start,
            num_classes=num_classes, logit_scale=logit_scale, num_items=num_items))
        loss, _, lse_rows = self._ce_sweep(call, want_loss=True, want_lse=bool(return_lse))
        return (loss, lse_rows) if return_lse else loss

    def _grad_call(self, logits, target, grad_output, **options):
        """A validated, prepared call that writes a gradient: ``grad_output``'s argument
        errors come before the target scan, as on the CPU path."""
        call = self._ce_setup(logits, target, grad_output=grad_output, **options)
        self._grad_scales(grad_output, dict(call, norm=1.0, valid=1.0))
        return self._prepare(call)

    def cross_entropy_with_grad(self, logits, target, *, return_lse=False, grad_output=1.0,
                                **options):
        """Keywords: those of ``_ce_setup`` (the CPU function's, less ``return_lse`` and
        ``grad_output``)."""
        call = self._grad_call(logits, target, grad_output, **options)
        loss, grad, lse_rows = self._ce_sweep(call, want_loss=True, grad_output=grad_output,
                                              want_grad=True, want_lse=bool(return_lse))
        return (loss, grad, lse_rows) if return_lse else (loss, grad)

    def cross_entropy_backward(self, logits, target, grad_output=1.0, **options):
        call = self._grad_call(logits, target, grad_output, **options)
        return self._ce_sweep(call, want_loss=False, grad_output=grad_output, want_grad=True)[1]

    def nll_loss(self, log_probs, target, *, weight=None, ignore_index=-100, reduction="mean",
                 n_threads=None):
        call = self._prepare(self._ce_setup(log_probs, target, weight, ignore_index, reduction,
                                            0.0, n_threads, name="log_probs", allow_soft=False))
        lp, axis = call["x"], call["axis"]
        if V.is_half(lp.dtype):  # the gather reads one value per row: convert, compute in float32
            lp = lp.astype(np.float32)
        lp, a, c, b, (sa, sc, sb) = self._geometry(lp, axis)
        n = a * b
        row_out = row_loss = None
        if call["reduction"] == "none":
            row_out = self.xp.empty(call["target_shape"], dtype=lp.dtype)
        else:
            row_loss = self.xp.empty(n, dtype=np.float64)
        if n:
            t = call["tflat"]
            suf = "f32" if lp.itemsize == 4 else "f64"
            block = 256
            grid = min(-(-n // block), max(1, self.b.sm_count()) * 64)
            self.b.launch(f"fastce_nll_{suf}", (grid, 1, 1), (block, 1, 1), pack_args(NLL_SIGNATURE, dict(
                lp=lp, n_rows=n, B=b, la=sa, lb=sb, lc=sc, target=t,
                target_is64=int(t.dtype == np.int64), ignore_index=call["ignore_k"],
                weight=call["w"], row_loss=row_loss, row_out=row_out), self.b.null))
        if row_out is not None:
            return row_out
        return self._finalize(row_loss, n, call["norm"], call["reduction"] == "mean", lp.dtype)


# ---------------------------------------------------------------------------------------
# 3. the public GPU functions
# ---------------------------------------------------------------------------------------
def is_cupy_call(*arrays, names=None):
    """Whether a call goes to the GPU path: True when any argument is a ``cupy.ndarray``.

    Never imports CuPy: with CuPy not yet imported no argument can be a CuPy array.
    Raises TypeError, naming the arguments, when CuPy and NumPy arrays are mixed.

    Parameters
    ----------
    *arrays
        The call's array arguments (None and Python scalars are ignored).
    names : sequence of str, optional
        Their names, for the error message (default ``arg0``, ``arg1``, ...).
    """
    cp = sys.modules.get("cupy")
    nd = getattr(cp, "ndarray", None) if cp is not None else None
    if nd is None:
        return False
    gpu = [i for i, a in enumerate(arrays) if isinstance(a, nd)]
    if not gpu:
        return False
    cpu = [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray) and not isinstance(a, nd)]
    if cpu:
        nm = list(names) if names is not None else [f"arg{i}" for i in range(len(arrays))]
        g = ", ".join(nm[i] for i in gpu)
        c = ", ".join(nm[i] for i in cpu)
        raise V.mix_error(g, c)
    return True


def _ops():
    return Ops(cupy_backend())


def logsumexp(x, axis=-1, *, out=None, n_threads=None):
    """GPU twin of :func:`fastce.logsumexp`; 1-D input gives a 0-d CuPy array."""
    return _ops().logsumexp(x, axis, out=out, n_threads=n_threads)


def log_softmax(x, axis=-1, *, out=None, n_threads=None):
    """GPU twin of :func:`fastce.log_softmax`."""
    return _ops().log_softmax(x, axis, out=out, n_threads=n_threads)


def softmax(x, axis=-1, *, out=None, n_threads=None):
    """GPU twin of :func:`fastce.softmax`."""
    return _ops().softmax(x, axis, out=out, n_threads=n_threads)


def cross_entropy(logits, target, **kwargs):
    """GPU twin of :func:`fastce.cross_entropy` (same keyword arguments); 'mean'/'sum'
    give a 0-d CuPy array."""
    return _ops().cross_entropy(logits, target, **kwargs)


def cross_entropy_with_grad(logits, target, **kwargs):
    """GPU twin of :func:`fastce.cross_entropy_with_grad`: one kernel writes loss and gradient."""
    return _ops().cross_entropy_with_grad(logits, target, **kwargs)


def cross_entropy_backward(logits, target, grad_output=1.0, **kwargs):
    """GPU twin of :func:`fastce.cross_entropy_backward`."""
    return _ops().cross_entropy_backward(logits, target, grad_output, **kwargs)


def nll_loss(log_probs, target, **kwargs):
    """GPU twin of :func:`fastce.nll_loss`."""
    return _ops().nll_loss(log_probs, target, **kwargs)


def describe():
    """One line on the GPU path for ``show_config``: None when CuPy is not installed."""
    try:
        import cupy
    except ImportError:
        return None
    except Exception as exc:  # a broken install should not break show_config
        return f"CuPy present but unusable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy {cupy.__version__}, no usable GPU ({type(exc).__name__}: {exc})"
    if n == 0:
        return f"CuPy {cupy.__version__}, no GPU"
    try:
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        mem = props["totalGlobalMem"] / 2 ** 30
        rt = cupy.cuda.runtime.runtimeGetVersion()
        return (f"CuPy {cupy.__version__}, CUDA runtime {rt // 1000}.{rt % 1000 // 10}, device "
                f"{dev.id}/{n}: {name} (sm_{dev.compute_capability}, {mem:.0f} GiB), "
                f"kernels: fastce/cuda/*.cu via NVRTC")
    except Exception as exc:
        return f"CuPy {cupy.__version__}, GPU query failed ({type(exc).__name__}: {exc})"

