# The cross-entropy family's contract, compiled (included by _kernels.pyx).
#
# Every check of a cross-entropy or NLL call lives here, once: the scalar options, the
# arrays (dtype, shape, layout, target range, weight, lse, out=, inplace, overlap), the
# 'mean' normalisers and the reduction.  The common call (NumPy arrays in a layout the
# kernels read directly) never leaves C after the argument parsing; unusual inputs
# (lists, other integer dtypes, K-dim logits that need a reshape, unaligned or
# byte-swapped buffers) are first converted by the same code, then take the same path.
# Error messages name the argument and the bad value; their classes follow
# docs/design.md ("Errors").
#
# Layers of one call (ce_call):
#   1. scalar options            check_* below (also used by the other loss families)
#   2. arrays -> kernel views    logits, target, weight, lse, out / inplace, grad_output
#   3. scan_targets              the class-index check and the normalisers, one C pass,
#                                before anything is written
#   4. the row sweep             dispatch() of _kernels.pyx
#   5. the reduction             a fixed-order pairwise sum of the per-row values
import numbers
import sys

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from fastce._errors import ArgumentTypeError, ArgumentValueError

cdef extern from "numpy/arrayobject.h":
    enum:
        NPY_HALF_T "NPY_HALF"
        NPY_USERDEF_T "NPY_USERDEF"  # the first user dtype's number (ml_dtypes' are above)
    object PyArray_NewLikeArray(cnp.ndarray prototype, cnp.NPY_ORDER order, cnp.dtype descr, int subok)
    object PyArray_Scalar(void *data, cnp.dtype descr, PyObject *base)  # borrows descr

cdef extern from *:
    """
    #if defined(_OPENMP)
    /* omp_get_num_procs() asks the kernel for the affinity mask at every call: once is enough */
    static int fce_num_procs(void) {
        static int procs = 0;
        if (procs == 0) procs = omp_get_num_procs();
        return procs;
    }
    #else
    static int fce_num_procs(void) { return 1; }
    #endif
    """
    int fce_num_procs() nogil

DEF KIND_LOSS = 0       # cross_entropy
DEF KIND_LOSS_GRAD = 1  # cross_entropy_with_grad
DEF KIND_GRAD = 2       # cross_entropy_backward
DEF KIND_NLL = 3        # nll_loss
DEF KIND_NLL_GRAD = 4   # nll_loss_backward

DEF RED_MEAN = 0
DEF RED_SUM = 1
DEF RED_NONE = 2

REDUCTIONS = ("mean", "sum", "none")
MAX_THREADS = 1 << 20   # n_threads above this is refused; the run-time count is clamped lower

cdef object _f32 = np.dtype(np.float32)
cdef object _f64 = np.dtype(np.float64)
cdef object _i64 = np.dtype(np.int64)
cdef int _default_threads = 0   # 0: OpenMP's default (OMP_NUM_THREADS, threadpoolctl)
cdef object _gpu_route = None   # set by fastce._api: where CuPy calls go


def set_gpu_route(route):
    """Register the callable that takes ``ce_call``'s arguments for CuPy arrays."""
    global _gpu_route
    _gpu_route = route


# ---------------------------------------------------------------------------------------
# 1. scalar options
# ---------------------------------------------------------------------------------------
cdef inline bint _is_bool(object v):
    return isinstance(v, (bool, np.bool_))


cdef inline bint _is_int(object v):
    return type(v) is int or (not _is_bool(v) and isinstance(v, numbers.Integral))


cdef inline bint _is_real(object v):
    return type(v) is float or type(v) is int or (not _is_bool(v) and isinstance(v, numbers.Real))


def check_n_threads(n, name="n_threads"):
    """``n`` as a positive int (at most ``MAX_THREADS``), or raise naming ``name``."""
    if not _is_int(n):
        raise TypeError(f"{name} must be a positive int or None, got {n!r} ({type(n).__name__})")
    n = int(n)
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"{name} must be <= {MAX_THREADS}, got {n}")
    return n


def set_default_threads(n):
    """The thread count of calls without ``n_threads`` (None: OpenMP's default)."""
    global _default_threads
    _default_threads = 0 if n is None else check_n_threads(n, name="n")


def default_threads():
    """The thread count a call without ``n_threads`` asks for."""
    return _default_threads if _default_threads else max(1, fce_omp_max_threads())


cdef int resolve_threads(object n_threads) except -1:
    if n_threads is None:
        return _default_threads if _default_threads else max(1, fce_omp_max_threads())
    if type(n_threads) is int and 1 <= n_threads <= MAX_THREADS:  # compared as Python ints:
        return n_threads                                          # a C cast would overflow
    return check_n_threads(n_threads)


cdef inline int clamp_threads(int n_threads, int64_t work) noexcept nogil:
    """Threads a sweep of ``work`` elements really uses: waking threads costs more than
    small inputs take, and no more than the machine's processors (OpenMP's thread_limit
    in spirit); results never depend on the count."""
    cdef int64_t by_work = work // MIN_WORK_PER_THREAD
    cdef int procs = fce_num_procs()
    if n_threads > procs:
        n_threads = procs
    if by_work < n_threads:
        n_threads = <int> by_work
    return n_threads if n_threads > 1 else 1


def check_reduction(reduction):
    reduction_code(reduction)
    return reduction


cdef int reduction_code(object reduction) except -1:
    if type(reduction) is str:
        if reduction == "mean":
            return RED_MEAN
        if reduction == "sum":
            return RED_SUM
        if reduction == "none":
            return RED_NONE
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_ignore_index(ignore_index):
    if not _is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return int(ignore_index)


def check_label_smoothing(label_smoothing):
    if type(label_smoothing) is float and 0.0 <= <double> label_smoothing <= 1.0:
        return label_smoothing
    if not _is_real(label_smoothing):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ArgumentValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def check_z_loss(z_loss):
    if not _is_real(z_loss):
        raise TypeError(f"z_loss must be a float >= 0, got {z_loss!r}")
    z = float(z_loss)
    if not (z >= 0.0 and z != INFINITY):
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")
    return z


def check_softcap(softcap):
    """Logit softcap: None (off) -> 0.0, else a finite float > 0."""
    if softcap is None:
        return 0.0
    if not _is_real(softcap):
        raise TypeError(f"softcap must be a float > 0 or None, got {softcap!r}")
    c = float(softcap)
    if not (c > 0.0 and c != INFINITY):
        raise ValueError(f"softcap must be a finite float > 0, got {softcap!r}")
    return c


def check_logit_scale(logit_scale):
    """Logit scale: a finite real number (1.0: off)."""
    if type(logit_scale) is float and logit_scale == 1.0:
        return 1.0
    if not _is_real(logit_scale):
        raise TypeError(f"logit_scale must be a float, got {logit_scale!r}")
    s = float(logit_scale)
    if not (-INFINITY < s < INFINITY):
        raise ValueError(f"logit_scale must be finite, got {logit_scale!r}")
    return s


def check_num_items(num_items, reduction):
    """The external 'mean' divisor: None, or a finite number > 0 with reduction='mean'."""
    if num_items is None:
        return None
    if not _is_real(num_items):
        raise TypeError(f"num_items must be a number > 0 or None, got {num_items!r}")
    k = float(num_items)
    if not (0.0 < k < INFINITY):
        raise ValueError(f"num_items must be a finite number > 0, got {num_items!r}")
    if reduction != "mean":
        raise ValueError(f"num_items divides the 'mean' reduction; it has no meaning with "
                         f"reduction={reduction!r}")
    return k


_INT64_MAX = (1 << 63) - 1


def check_shard(class_start, num_classes, n_classes):
    """``(class_start, total classes)`` of a vocabulary shard holding ``n_classes`` classes."""
    for name, v in (("class_start", class_start), ("num_classes", num_classes)):
        if v is not None and not _is_int(v):
            raise TypeError(f"{name} must be an int, got {v!r}")
    start = int(class_start)
    if start < 0:
        raise ValueError(f"class_start must be >= 0, got {start}")
    if num_classes is None and start > 0:
        raise ValueError(f"class_start={start} describes a vocabulary shard: pass num_classes=, "
                         f"the number of classes of the whole vocabulary")
    total = start + n_classes if num_classes is None else int(num_classes)
    if total > _INT64_MAX:
        raise ValueError(f"num_classes must be < 2**63, got {total}")
    if total < start + n_classes:
        raise ValueError(f"num_classes={total} is too small for a shard of {n_classes} classes "
                         f"starting at class_start={start}")
    return start, total


# ---------------------------------------------------------------------------------------
# 2. arrays
# ---------------------------------------------------------------------------------------
cdef inline bint is_cupy(object x):
    """A ``cupy.ndarray``; never imports CuPy (not imported: no argument can be one)."""
    if type(x) is np.ndarray or x is None:
        return False
    cp = sys.modules.get("cupy")
    nd = getattr(cp, "ndarray", None) if cp is not None else None
    return nd is not None and isinstance(x, nd)


def mix_error(on_gpu, on_host="logits"):
    """The one error for a call that mixes CuPy arrays (named by ``on_gpu``) with NumPy
    arrays (``on_host``), whichever path finds it."""
    return TypeError(f"mix of CuPy and NumPy arrays: {on_gpu} on the GPU (cupy.ndarray) but "
                     f"{on_host} on the host (numpy.ndarray); pass all arrays of one kind "
                     f"(cupy.asarray(...) or .get())")


def is_half(dtype):
    """float16, or ml_dtypes' bfloat16 (recognised by name: no import needed)."""
    return dtype == np.float16 or is_bf16(dtype)


def compute_dtype(dtype):
    """The dtype kernels compute in and reductions are returned in: float32 for halves."""
    return _f32 if is_half(dtype) else np.dtype(dtype)


cdef inline bint kernel_ready(cnp.ndarray a):
    """Aligned, native byte order, strides in whole elements: the kernels read it as is."""
    cdef int i
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    if not (cnp.PyArray_ISALIGNED(a) and cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    for i in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_STRIDES(a)[i] % item != 0:
            return False
    return True


cdef inline bint is_float_logits(cnp.ndarray a):
    cdef int t = cnp.PyArray_TYPE(a)
    if not cnp.PyArray_ISNOTSWAPPED(a):
        return False
    return t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE or t == NPY_HALF_T or is_bf16(a.dtype)


def as_float_array(x, name, allow_half=False):
    """``x`` as a float32/float64 (optionally float16/bfloat16) ndarray, no copy of ndarrays."""
    if is_cupy(x):
        raise mix_error(name, "another argument")
    arr = np.asarray(x)
    check_float_dtype(arr.dtype, name, allow_half)
    return arr


def check_grad_dtype(grad_dtype, dtype):
    """The gradient's dtype: the logits' (default) or, for half logits, float32."""
    if grad_dtype is None:
        return np.dtype(dtype)
    try:
        g = np.dtype(grad_dtype)
    except TypeError:
        raise TypeError(f"grad_dtype must be a NumPy dtype, got {grad_dtype!r}") from None
    if g != dtype and not (is_half(dtype) and g == _f32):
        raise ValueError(f"grad_dtype must be the logits' dtype {np.dtype(dtype)}"
                         f"{' or float32' if is_half(dtype) else ''}, got {g}")
    return g


def expected_target_shape(logits_shape):
    if len(logits_shape) == 1:
        return ()
    return (logits_shape[0],) + tuple(logits_shape[2:])


def rows3_shape(shape, axis):
    cdef int64_t a = 1, b = 1
    cdef Py_ssize_t i
    for i in range(axis):
        a *= shape[i]
    for i in range(axis + 1, len(shape)):
        b *= shape[i]
    return (a, shape[axis], b)


cdef bint _strides_ok(cnp.ndarray arr):
    cdef int i
    for i in range(cnp.PyArray_NDIM(arr)):
        if cnp.PyArray_STRIDES(arr)[i] % cnp.PyArray_ITEMSIZE(arr) != 0:
            return False
    return True


def kernel_array(a, dtype=None):
    """``a`` as a C-contiguous, aligned array (of ``dtype``) that the kernels can read: a
    copy only when it is not all of that already (``np.ascontiguousarray`` alone returns
    contiguous data at an unaligned address as it is)."""
    a = np.asarray(a, dtype=dtype, order="C")
    return a if a.flags.aligned else a.copy()


def as_rows3(x, axis):
    """Read-only ``(A, C, B)`` view of ``x`` with the class axis in the middle.

    A view whenever NumPy can express one (always for contiguous arrays, and for 2-D
    arrays of any strides); otherwise a copy.  Unaligned data is copied too.
    """
    x3 = x.reshape(rows3_shape(x.shape, axis))
    if not (_strides_ok(x3) and x3.flags.aligned):
        x3 = kernel_array(x3)
    return x3


def writable_rows3(out, axis):
    """``(A, C, B)`` view of an output buffer, or ``(temp, out)`` when no view exists.

    Returns ``(view, target)``: the kernels write into ``view``; when ``target`` is not
    None the caller copies ``view`` into it afterwards.
    """
    shape3 = rows3_shape(out.shape, axis)
    view = out.reshape(shape3)  # a view when the strides allow one, else a copy
    if (out.size == 0 or not np.may_share_memory(view, out) or not _strides_ok(view)
            or not view.flags.aligned):
        return np.empty(shape3, dtype=out.dtype), out
    return view, None


# Outputs and overlap: one rule for every backend.  A backend (fastce.cuda's CuPy one, the
# test suite's emulator) is passed as ``backend`` and describes its arrays by
# ``array_name``, ``is_array(a)`` and ``address(a)``; ``backend=None`` is NumPy.  Only
# metadata is read (shape, dtype, strides, flags, address), never an array's memory.
cdef bint extent_core(Py_ssize_t addr, Py_ssize_t nd, const Py_ssize_t *dims,
                      const Py_ssize_t *strides, Py_ssize_t item, Py_ssize_t *lo,
                      Py_ssize_t *hi) noexcept nogil:
    """[lo, hi): the bytes an array's elements can touch; False when it has none."""
    cdef Py_ssize_t i
    lo[0] = hi[0] = addr
    for i in range(nd):
        if dims[i] == 0:
            return False
        if strides[i] < 0:
            lo[0] += strides[i] * (dims[i] - 1)
        else:
            hi[0] += strides[i] * (dims[i] - 1)
    hi[0] += item
    return True


def byte_extent(address, shape, strides, itemsize):
    """``[lo, hi)`` bytes an array at ``address`` (shape, byte strides) touches, or None
    when it has no element."""
    cdef Py_ssize_t nd = len(shape), i, lo, hi
    cdef Py_ssize_t *buf = <Py_ssize_t *> malloc(2 * (nd + 1) * sizeof(Py_ssize_t))
    if buf == NULL:
        raise MemoryError()
    try:
        for i in range(nd):
            buf[i], buf[nd + i] = shape[i], strides[i]
        if not extent_core(address, nd, buf, buf + nd, itemsize, &lo, &hi):
            return None
        return lo, hi
    finally:
        free(buf)


def extents_overlap(e1, e2):
    """Do two byte extents intersect (None: empty, never overlaps)?  Conservative:
    interleaved views such as ``a[:, ::2]`` / ``a[:, 1::2]`` count as overlapping."""
    if e1 is None or e2 is None:
        return False
    return e1[0] < e2[1] and e2[0] < e1[1]


cdef bint nd_extent(cnp.ndarray a, Py_ssize_t *lo, Py_ssize_t *hi) noexcept:
    return extent_core(<Py_ssize_t> cnp.PyArray_DATA(a), cnp.PyArray_NDIM(a),
                       <const Py_ssize_t *> cnp.PyArray_DIMS(a),
                       <const Py_ssize_t *> cnp.PyArray_STRIDES(a), cnp.PyArray_ITEMSIZE(a), lo, hi)


def overlaps(a, b, backend=None):
    """Whether two arrays may share memory.  NumPy arrays: their extents (in C), then the
    exact test where they meet; a backend's arrays: their byte extents (conservative: no
    exact test without reading the device's layout).  Anything else never overlaps."""
    cdef Py_ssize_t alo, ahi, blo, bhi
    if a is None or b is None:
        return False
    if backend is not None:
        if not (backend.is_array(a) and backend.is_array(b)):
            return False
        return extents_overlap(byte_extent(backend.address(a), a.shape, a.strides, a.itemsize),
                               byte_extent(backend.address(b), b.shape, b.strides, b.itemsize))
    if not isinstance(a, cnp.ndarray) or not isinstance(b, cnp.ndarray):
        return False
    if (not nd_extent(<cnp.ndarray> a, &alo, &ahi) or not nd_extent(<cnp.ndarray> b, &blo, &bhi)
            or ahi <= blo or bhi <= alo):
        return False
    try:
        return np.shares_memory(a, b, max_work=10_000)
    except np.exceptions.TooHardError:  # undecided: refuse rather than risk aliasing
        return True


def self_overlapping(shape, strides, itemsize):
    """Whether two elements of one array may share memory (conservative): with the axes
    sorted by stride, each stride must clear the extent of the axes below it.  A zero or
    overlapping stride (``as_strided`` views) fails."""
    extent = itemsize
    for st, n in sorted((abs(s), n) for n, s in zip(shape, strides) if n > 1):
        if st < extent:
            return True
        extent += st * (n - 1)
    return False


cdef inline str array_name(object backend):
    return "numpy.ndarray" if backend is None else backend.array_name


cdef inline bint is_array_of(object a, object backend) except -1:
    return isinstance(a, np.ndarray) if backend is None else backend.is_array(a)


cdef inline bint writeable(object a) except -1:
    """The writeable flag (CuPy arrays have none: always writeable)."""
    return getattr(a.flags, "writeable", True)


def check_out(out, shape, dtype, inputs, name="out", backend=None):
    """Check a caller's output buffer: an array of the call's kind (NumPy, or
    ``backend``'s), shape, dtype, writeable, elements distinct (the kernels write each once,
    from any thread), no overlap with any of ``inputs`` (name -> array)."""
    if not is_array_of(out, backend):
        raise TypeError(f"{name} must be a {array_name(backend)}, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {np.dtype(dtype)}")
    if not writeable(out):
        raise ValueError(f"{name} is read-only")
    if out.size > 1 and self_overlapping(out.shape, out.strides, out.itemsize):
        raise ValueError(f"{name} has elements that share memory (a view such as as_strided's); "
                         f"pass a buffer whose elements are distinct")
    for input_name, arr in inputs.items():
        if overlaps(out, arr, backend):
            raise ValueError(f"{name} overlaps the input {input_name!r}; pass a separate buffer "
                             f"(or inplace=True where the function offers it)")
    return out


def check_inplace(logits, out, backend=None):
    """``inplace=True`` needs the caller's own writeable, C-contiguous float array."""
    if out is not None:
        raise ValueError("inplace=True and out= are exclusive: in place, the gradient goes into logits")
    if not is_array_of(logits, backend):
        raise ValueError(f"inplace=True needs logits to be a {array_name(backend)}, "
                         f"got {type(logits).__name__}")
    check_float_dtype(logits.dtype, "logits", True)
    if not writeable(logits):
        raise ValueError("inplace=True needs writeable logits, but logits is read-only")
    if not logits.flags.c_contiguous:
        raise ValueError("inplace=True needs C-contiguous logits; pass out= for other layouts")


def check_inplace_inputs(logits, inputs, backend=None):
    """With ``inplace=True`` the gradient overwrites ``logits`` while the other inputs are
    still being read: none of them may share memory with it."""
    for input_name, arr in inputs.items():
        if overlaps(logits, arr, backend):
            raise ValueError(f"inplace=True would overwrite {input_name!r}, which shares memory "
                             f"with logits; pass a separate {input_name} (or use out=)")


def check_grad_buffer(logits, out, inplace, dtype, inputs, logits_name="logits", backend=None):
    """The buffer a gradient goes into, for every loss family and backend: with
    ``inplace`` the logits, which none of ``inputs`` (the call's other array arguments,
    name -> array) may share memory with; else ``out`` when given, which may overlap
    neither the logits nor any input."""
    if inplace:
        check_inplace_inputs(logits, inputs, backend)
    elif out is not None:
        check_out(out, logits.shape, dtype, {logits_name: logits, **inputs}, backend=backend)


cpdef dict ce_inputs(target, weight, lse, grad_output):
    """The array inputs of a cross-entropy or NLL call that its gradient may not overwrite."""
    return {"target": target, "weight": weight, "lse": lse, "grad_output": grad_output}


# Array checks on metadata (dtype, shape): the NumPy path runs them on its arrays, the GPU
# path on device arrays, whose memory they never read.
GRAD_OUTPUT_ROWS = "the shape of the per-row loss"   # what grad_output must have, by family
GRAD_OUTPUT_ELEMENTS = "the logits' shape"


def check_float_dtype(dtype, name, allow_half=False):
    """Raise unless ``dtype`` is float32/float64 (or, with ``allow_half``, a half type)."""
    if dtype not in (_f32, _f64) and not (allow_half and is_half(dtype)):
        kinds = "float32, float64, float16 or bfloat16" if allow_half else "float32 or float64"
        raise TypeError(f"{name} must have dtype {kinds}, got {dtype}")


def check_real_dtype(dtype, name):
    """Raise unless ``dtype`` holds real numbers (an integer or floating type, not bool)."""
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype}")


cpdef object check_ce_logits(tuple shape, object dtype, object grad_dtype, bint inplace,
                             str name="logits"):
    """The logits' shape of a cross-entropy/NLL call and the gradient's dtype (returned)."""
    cdef Py_ssize_t nd = len(shape)
    if nd == 0:
        raise ValueError(f"{name} must have shape (C,), (N, C) or (N, C, d1, ..., dk), "
                         f"got a 0-d array")
    gdtype = dtype if grad_dtype is None else check_grad_dtype(grad_dtype, dtype)
    if inplace and gdtype != dtype:
        raise ValueError(f"inplace=True writes the gradient into the logits: grad_dtype must be "
                         f"{dtype}, got {gdtype}")
    if shape[0 if nd == 1 else 1] == 0:
        raise ValueError(f"{name} must have at least one class, got shape {shape}")
    return gdtype


def check_class_target(dtype, shape, logits_shape, logits_name="logits"):
    """Class-index targets: an integer dtype and the logits' shape without the class axis."""
    expected = expected_target_shape(logits_shape)
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise ArgumentTypeError(
            f"target must hold class indices (an integer dtype) of shape {expected}, or class "
            f"probabilities (a float dtype) of the {logits_name}' shape {tuple(logits_shape)}; got "
            f"dtype {dtype} and shape {tuple(shape)}")
    if tuple(shape) != expected:
        raise ArgumentValueError(f"target has shape {tuple(shape)}, but {logits_name} of shape "
                                 f"{tuple(logits_shape)} need a target of shape {expected} (class "
                                 f"indices) or {tuple(logits_shape)} (class probabilities)")


def bad_target_error(shape, flat, value, n_classes, ignore_index):
    """The IndexError of the class index ``value`` at flat position ``flat`` of targets of
    ``shape``."""
    pos = [int(i) for i in np.unravel_index(flat, shape)] if len(shape) else []
    return IndexError(f"target{pos} = {value} is out of bounds for {n_classes} "
                      f"classes (valid: 0 <= target < {n_classes}, or ignore_index={ignore_index})")


def check_soft_target(logits_shape, ignore_index, sharded=False):
    """Probability targets: not over vocabulary shards, no ``ignore_index``."""
    if sharded:
        raise ValueError("probability targets cannot be split over vocabulary shards "
                         "(class_start/num_classes); pass class indices")
    if ignore_index != -100:
        raise ArgumentValueError(f"ignore_index={ignore_index} is not supported with probability "
                                 f"targets (a float target of the logits' shape {tuple(logits_shape)})")


def check_class_weight(dtype, shape, n_classes):
    """Class weights: real numbers, one per class of the whole vocabulary."""
    check_real_dtype(dtype, "weight")
    if tuple(shape) != (n_classes,):
        raise ArgumentValueError(f"weight must have shape ({n_classes},) (one per class), got {tuple(shape)}")


def check_lse(dtype, shape, target_shape):
    """The caller's log-sum-exp: real numbers, one per row."""
    check_real_dtype(dtype, "lse")
    if tuple(shape) != tuple(target_shape):
        raise ValueError(f"lse must have one value per row, shape {tuple(target_shape)}, got {tuple(shape)}")


cpdef check_shard_lse(bint sharded, bint has_lse):
    """A vocabulary shard cannot compute the log-sum-exp over all classes: it is given."""
    if sharded and not has_lse:
        raise ValueError("a vocabulary shard (class_start/num_classes) needs lse=: the "
                         "log-sum-exp over all classes, e.g. np.logaddexp.reduce of every "
                         "shard's fastce.logsumexp")


def check_grad_output_array(dtype, shape, reduction, expected, what):
    """An array ``grad_output``: real numbers; 0-d, or under 'none' broadcasting (NumPy's
    rules) to ``expected`` (the per-row loss's or the logits' shape: ``what``)."""
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"grad_output must be a real number or array, got dtype {dtype}")
    shape = tuple(shape)
    if not shape:
        return
    if reduction != "none":
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r}, got shape {shape}")
    try:
        ok = np.broadcast_shapes(shape, tuple(expected)) == tuple(expected)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"grad_output must have {what} {tuple(expected)} for reduction='none', "
                         f"got {shape}")


def checked_grad_output(grad_output, reduction, shape, what):
    """``(float, None)`` for a scalar (any reduction: under 'none' it scales every row),
    ``(None, ndarray broadcast to shape)`` for an array under 'none'."""
    if type(grad_output) is float or type(grad_output) is int:
        return float(grad_output), None
    if is_cupy(grad_output):
        raise mix_error("grad_output")
    g = np.asarray(grad_output)
    check_grad_output_array(g.dtype, g.shape, reduction, shape, what)
    if g.ndim == 0:
        return float(g), None
    return None, np.broadcast_to(g, tuple(shape))


def as_grad_output(grad_output, reduction, target_shape):
    """``(scalar, None)``, or ``(None, per-row float64 array)`` for an array under 'none'."""
    g0, g = checked_grad_output(grad_output, reduction, target_shape, GRAD_OUTPUT_ROWS)
    return g0, None if g is None else kernel_array(g, np.float64).reshape(-1)


def _hard_target_slow(target, logits_shape, int64_t n_classes, ignore_index, logits_name):
    """Class indices that the fast path cannot read: checked, as a flat int64 array."""
    if is_cupy(target):
        raise mix_error("target")
    t = np.asarray(target)
    check_class_target(t.dtype, t.shape, logits_shape, logits_name)
    if t.dtype.kind == "u" and t.size and t.max() > _INT64_MAX:
        # would wrap negative in int64 (and could pass for ignore_index): report it as is
        flat = int(np.argmax(t.reshape(-1)))
        pos = [int(i) for i in np.unravel_index(flat, t.shape)] if t.ndim else []
        raise IndexError(f"target{pos} = {t.reshape(-1)[flat]} is out of bounds for {n_classes} classes")
    return kernel_array(t, np.int64).reshape(-1)


def as_hard_target(target, logits_shape, n_classes, ignore_index, logits_name="logits"):
    """Checked class-index targets, flat int64 with -1 marking ignored rows (the form the
    fused linear cross-entropy slices into chunks)."""
    cdef Sweep s
    cdef double valid, wsum
    cdef cnp.ndarray t = _hard_target_slow(target, logits_shape, n_classes, ignore_index,
                                           logits_name)
    memset(&s, 0, sizeof(s))
    s.tgt, s.tstride, s.rows, s.Ctot = <const char *> cnp.PyArray_DATA(t), 8, t.shape[0], n_classes
    s.has_ignore = -_INT64_MAX - 1 <= ignore_index <= _INT64_MAX
    s.ignore_index = ignore_index if s.has_ignore else 0
    bad = scan_targets(&s, &valid, &wsum)
    if bad >= 0:
        raise bad_target_error(np.shape(target), bad, raw_target(&s, bad), n_classes, ignore_index)
    return np.where(t == ignore_index, np.int64(-1), t) if s.has_ignore else t


def as_soft_target(target, logits_shape, dtype, ignore_index, sharded=False):
    """Probability targets in the logits' dtype (copied only when the dtype differs); with
    float16/bfloat16 logits, targets of another dtype go to float32, the compute dtype, and
    are never rounded to half precision."""
    check_soft_target(logits_shape, ignore_index, sharded)
    if is_cupy(target):
        raise mix_error("target")
    t = np.asarray(target)
    if np.dtype(dtype).itemsize == 2 and t.dtype != dtype:
        dtype = _f32
    return t.astype(dtype, copy=False)


def is_probability_target(target, logits_shape, backend=None):
    """Class probabilities: a floating target with exactly the logits' shape (torch's rule);
    ``backend``'s arrays are judged by their metadata."""
    t = (target if isinstance(target, np.ndarray) or (backend is not None and backend.is_array(target))
         else np.asarray(target))
    return ((np.issubdtype(t.dtype, np.floating) or is_bf16(t.dtype))
            and tuple(t.shape) == tuple(logits_shape))


def as_weight(weight, n_classes, dtype):
    """Class weights as ``(weight in dtype, weight in float64)``, or ``(None, None)``."""
    if weight is None:
        return None, None
    if is_cupy(weight):
        raise mix_error("weight")
    w = np.asarray(weight)
    check_class_weight(w.dtype, w.shape, n_classes)
    return kernel_array(w, dtype), kernel_array(w, np.float64)


def as_lse(lse, target_shape):
    """Per-row log-sum-exp given by the caller, flat float64, or None."""
    if lse is None:
        return None
    if is_cupy(lse):
        raise mix_error("lse")
    arr = np.asarray(lse)
    check_lse(arr.dtype, arr.shape, target_shape)
    return kernel_array(arr, np.float64).reshape(-1)


cdef void geom_rows(RowGeom *g, cnp.ndarray a):
    """The (A, C, B) geometry of 1-D (C,) or 2-D (N, C) data, without a reshape."""
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    g.base = <char *> cnp.PyArray_DATA(a)
    g.B, g.sb = 1, 0
    if cnp.PyArray_NDIM(a) == 1:
        g.A, g.sa = 1, 0
        g.C, g.sc = cnp.PyArray_DIMS(a)[0], cnp.PyArray_STRIDES(a)[0] // item
    else:
        g.A, g.sa = cnp.PyArray_DIMS(a)[0], cnp.PyArray_STRIDES(a)[0]
        g.C, g.sc = cnp.PyArray_DIMS(a)[1], cnp.PyArray_STRIDES(a)[1] // item


cdef double pairwise_sum(const double *a, int64_t n) noexcept nogil:
    """Sum in a fixed order (pairwise above 64 terms, like NumPy's): the result depends
    on the data only, never on the thread count."""
    cdef int64_t i, h
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    if n <= 64:
        i = 0
        while i + 4 <= n:
            s0 += a[i]
            s1 += a[i + 1]
            s2 += a[i + 2]
            s3 += a[i + 3]
            i += 4
        while i < n:
            s0 += a[i]
            i += 1
        return (s0 + s1) + (s2 + s3)
    h = (n // 2) & ~(<int64_t> 7)
    return pairwise_sum(a, h) + pairwise_sum(a + h, n - h)


# ---------------------------------------------------------------------------------------
# 3-5. one call
# ---------------------------------------------------------------------------------------
def ce_call(int kind, logits, target, weight, ignore_index, reduction, label_smoothing,
            z_loss, softcap, logit_scale, num_items, lse, bint return_lse, class_start,
            num_classes, grad_output, out, bint inplace, grad_dtype, n_threads,
            str logits_name="logits"):
    """One cross-entropy (kind 0-2) or NLL (kind 3-4) call on NumPy arrays.

    Returns the loss (kind 0, 3), ``(loss, grad)`` (kind 1), the gradient (kind 2, 4);
    with ``return_lse`` the per-row lse is appended.  The arguments are those of the
    public functions (fastce/_api.py), checked here.
    """
    cdef Sweep s
    cdef int red = reduction_code(reduction)
    cdef int nt
    cdef bint want_loss = kind == KIND_LOSS or kind == KIND_LOSS_GRAD or kind == KIND_NLL
    cdef bint want_grad = kind == KIND_LOSS_GRAD or kind == KIND_GRAD or kind == KIND_NLL_GRAD
    cdef bint nll = kind >= KIND_NLL
    cdef bint sharded, soft = False
    cdef cnp.ndarray x, x3, t_arr, o3 = None, loss_arr = None, lse_arr = None, sr = None
    cdef cnp.ndarray wt_arr = None, wd_arr = None, soft3 = None
    cdef int ndim, axis
    cdef int64_t C, Ctot, cstart, rows, bad, yv
    cdef double eps, zc, cap, scale, items = 0.0, valid = 0.0, wsum = 0.0, norm, g0 = 0.0, total
    cdef double W = 0.0, Wtot = 0.0
    cdef float fv
    cdef double *rowbuf = NULL
    cdef Py_ssize_t i
    cdef object res, grad = None, copy_to = None, tshape
    memset(&s, 0, sizeof(s))
    if type(logits) is not np.ndarray and _gpu_route is not None and is_cupy(logits):
        return _gpu_route(kind, logits, target, weight, ignore_index, reduction, label_smoothing,
                          z_loss, softcap, logit_scale, num_items, lse, return_lse, class_start,
                          num_classes, grad_output, out, inplace, grad_dtype, n_threads,
                          logits_name)

    # 1. scalar options (the defaults and plain floats without a Python call)
    cap = 0.0 if softcap is None else check_softcap(softcap)
    if type(label_smoothing) is float and 0.0 <= <double> label_smoothing <= 1.0:
        eps = label_smoothing
    else:
        eps = check_label_smoothing(label_smoothing)
    if type(z_loss) is float and 0.0 <= <double> z_loss < INFINITY:
        zc = z_loss
    else:
        zc = check_z_loss(z_loss)
    scale = 1.0 if type(logit_scale) is float and logit_scale == 1.0 else check_logit_scale(logit_scale)
    items_obj = None if num_items is None else check_num_items(num_items, reduction)
    if type(ignore_index) is not int:
        ignore_index = check_ignore_index(ignore_index)
    nt = resolve_threads(n_threads)
    if inplace:
        check_inplace(logits, out)

    # 2. logits
    if isinstance(logits, cnp.ndarray) and is_float_logits(<cnp.ndarray> logits):
        x = <cnp.ndarray> logits
    else:
        x = as_float_array(logits, logits_name, allow_half=True)
    xshape = (<object> x).shape
    ndim = cnp.PyArray_NDIM(x)
    gdtype = check_ce_logits(xshape, x.dtype, grad_dtype, inplace, logits_name)
    cdtype = _f64 if cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE else _f32
    axis = 0 if ndim == 1 else 1
    C = cnp.PyArray_DIMS(x)[axis]
    x3 = x if ndim <= 2 and kernel_ready(x) else as_rows3(x, axis)
    s.x = geom_any(x3)
    rows = s.x.A * s.x.B
    if type(class_start) is int and class_start == 0 and num_classes is None:
        cstart, Ctot = 0, C
    else:
        cstart, Ctot = check_shard(class_start, num_classes, C)
    sharded = Ctot != C

    # target: probability targets (a float array of the logits' shape) or class indices
    if isinstance(target, cnp.ndarray):
        soft = (not nll and (cnp.PyArray_ISFLOAT(<cnp.ndarray> target)
                             or is_bf16((<object> target).dtype))
                and (<object> target).shape == xshape)
    else:
        soft = not nll and is_probability_target(target, xshape)
    if soft:
        soft3 = as_rows3(as_soft_target(target, xshape, x.dtype, ignore_index, sharded), axis)
    else:
        t_arr = None
        if (isinstance(target, cnp.ndarray) and cnp.PyArray_ISSIGNED(<cnp.ndarray> target)
                and cnp.PyArray_ITEMSIZE(<cnp.ndarray> target) in (4, 8)
                and kernel_ready(<cnp.ndarray> target)):
            t_arr = <cnp.ndarray> target
            if ndim == 1:
                if cnp.PyArray_NDIM(t_arr) != 0:
                    t_arr = None
            elif ndim == 2:
                if cnp.PyArray_NDIM(t_arr) != 1 or cnp.PyArray_DIMS(t_arr)[0] != rows:
                    t_arr = None
            elif not (cnp.PyArray_IS_C_CONTIGUOUS(t_arr)
                      and (<object> t_arr).shape == expected_target_shape(xshape)):
                t_arr = None
        if t_arr is None:
            t_arr = _hard_target_slow(target, xshape, Ctot, ignore_index, logits_name)
        s.tgt = <const char *> cnp.PyArray_DATA(t_arr)
        s.t32 = cnp.PyArray_ITEMSIZE(t_arr) == 4
        s.tstride = (cnp.PyArray_STRIDES(t_arr)[0] if cnp.PyArray_NDIM(t_arr) == 1
                     else cnp.PyArray_ITEMSIZE(t_arr))
        s.has_ignore = -_INT64_MAX - 1 <= ignore_index <= _INT64_MAX
        s.ignore_index = ignore_index if s.has_ignore else 0

    # weight: (Ctot,) over the whole vocabulary; the kernels read this array's slice
    if weight is not None:
        if (isinstance(weight, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray> weight) == 1
                and cnp.PyArray_DIMS(<cnp.ndarray> weight)[0] == Ctot
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> weight)
                and kernel_ready(<cnp.ndarray> weight)
                and (<cnp.ndarray> weight).dtype == cdtype):
            wt_arr = <cnp.ndarray> weight
            if cdtype is _f64:
                s.wd = <const double *> cnp.PyArray_DATA(wt_arr)
            else:
                s.wdf = <const float *> cnp.PyArray_DATA(wt_arr)
            s.wt = (<char *> cnp.PyArray_DATA(wt_arr)) + cstart * cnp.PyArray_ITEMSIZE(wt_arr)
        else:
            wt_arr, wd_arr = as_weight(weight, Ctot, cdtype)
            s.wd = <const double *> cnp.PyArray_DATA(wd_arr)
            s.wt = (<char *> cnp.PyArray_DATA(wt_arr)) + cstart * cnp.PyArray_ITEMSIZE(wt_arr)
        for i in range(Ctot):
            Wtot += weight_of(&s, i)
        for i in range(C):  # the weights the kernels read, in the data dtype
            W += (<const double *> s.wt)[i] if cdtype is _f64 else (<const float *> s.wt)[i]
    else:
        W, Wtot = <double> C, <double> Ctot

    # lse given (reused instead of recomputed; required by shards)
    if lse is not None:
        tshape = expected_target_shape(xshape)
        if (isinstance(lse, cnp.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray> lse) == cnp.NPY_DOUBLE
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> lse) and kernel_ready(<cnp.ndarray> lse)
                and (<object> lse).shape == tshape):
            lse_in = lse
        else:
            lse_in = as_lse(lse, tshape)
    else:
        lse_in = None
    check_shard_lse(sharded, lse_in is not None)

    # outputs: out= or in place, never overlapping an input
    if want_grad:
        if inplace or out is not None:
            check_grad_buffer(x, out, inplace, gdtype,
                              ce_inputs(target, weight, lse, grad_output), logits_name)
            grad = x if inplace else out
        elif ndim <= 2 and x3 is x:
            Py_INCREF(gdtype)  # PyArray_NewLikeArray steals a reference to the dtype
            grad = PyArray_NewLikeArray(x, cnp.NPY_KEEPORDER, gdtype, 1)  # the logits'
            # layout, so column sweeps write in place
        else:
            grad = np.empty_like(x, dtype=gdtype)
        if ndim <= 2 and kernel_ready(<cnp.ndarray> grad):
            o3 = <cnp.ndarray> grad
        elif rows:
            o3, copy_to = writable_rows3(grad, axis)
        if type(grad_output) is float or type(grad_output) is int:
            g_obj, g_rows = float(grad_output), None
        else:
            g_obj, g_rows = as_grad_output(grad_output, reduction, expected_target_shape(xshape))
        if g_rows is None:
            g0 = g_obj
        else:
            sr = g_rows
            s.scale = <const double *> cnp.PyArray_DATA(sr)

    # 3. the class-index check and the normalisers, before anything is written
    s.rows, s.Ctot = rows, Ctot
    if soft:
        valid = wsum = <double> rows
    else:
        bad = scan_targets(&s, &valid, &wsum)
        if bad >= 0:
            raise bad_target_error(np.shape(target), bad, raw_target(&s, bad), Ctot, ignore_index)
        if s.wd == NULL and s.wdf == NULL:
            wsum = valid
    if items_obj is not None:
        norm = items = <double> items_obj
        zfold = 1.0
    else:
        norm = wsum if not soft else valid
        zfold = norm / valid if (red == RED_MEAN and valid > 0.0) else 1.0
    if red != RED_MEAN:
        norm = 1.0

    # 4. the sweep
    if want_loss and (red == RED_NONE or rows):
        rowbuf = <double *> malloc(max(rows, 1) * sizeof(double))
        if rowbuf == NULL:
            raise MemoryError(f"cannot allocate {rows} per-row losses")
    try:
        if return_lse:
            lse_arr = np.empty(rows, dtype=np.float64)
        if nll:
            nll_rows(&s, x3, <cnp.ndarray> o3 if want_grad else None, rowbuf,
                     g0 / norm if want_grad else 0.0, C)
        elif rows:
            s.rp.W, s.rp.Wtot, s.cstart, s.rp.ctot = W, Wtot, cstart, <double> Ctot
            s.rp.eps, s.rp.z, s.rp.zfold = eps, zc, zfold
            s.softcap, s.logit_scale = cap, scale
            s.loss = rowbuf
            if lse_in is not None and not soft:
                s.lse = <double *> cnp.PyArray_DATA(<cnp.ndarray> lse_in)
                s.compute_lse = False
            elif lse_arr is not None:
                s.lse = <double *> cnp.PyArray_DATA(lse_arr)
                s.compute_lse = True
            else:
                s.compute_lse = True
            s.out_kind = OUT_EXP if want_grad else OUT_NONE
            s.scale0 = g0 / norm
            s.zscale0 = g0 / (items if items_obj is not None else (valid if red == RED_MEAN else 1.0))
            dispatch(&s, x3, o3, nt, soft3)
            if lse_arr is not None and lse_in is not None and not soft:
                lse_arr[:] = lse_in  # the given lse, returned as given
            elif lse_arr is not None and softcap is None:  # a softcap keeps +inf finite
                posinf_lse(x3, 1 if x3.ndim > 1 else 0, lse_arr, scale)
        if copy_to is not None:
            np.copyto(copy_to, o3.reshape(copy_to.shape))

        # 5. the reduction
        if want_loss:
            if red == RED_NONE:
                res = np.empty(expected_target_shape(xshape), dtype=cdtype)
                if cdtype is _f64:
                    memcpy(cnp.PyArray_DATA(<cnp.ndarray> res), rowbuf, rows * sizeof(double))
                else:
                    for i in range(rows):
                        (<float *> cnp.PyArray_DATA(<cnp.ndarray> res))[i] = <float> rowbuf[i]
            else:
                total = pairwise_sum(rowbuf, rows) if rows else 0.0
                if red == RED_MEAN:
                    # 0 / 0 = nan when no row counts, like torch; a zero weight total is
                    # nan too (torch's nll term is 0 / 0 whatever the smoothing term is)
                    total = total / norm if norm != 0.0 else NAN
                fv = <float> total  # a NumPy scalar of the compute dtype, made in C
                res = (PyArray_Scalar(&total, <cnp.dtype> _f64, NULL) if cdtype is _f64
                       else PyArray_Scalar(&fv, <cnp.dtype> _f32, NULL))
    finally:
        free(rowbuf)

    if kind == KIND_LOSS or kind == KIND_NLL:
        out_tuple = (res,)
    elif kind == KIND_LOSS_GRAD:
        out_tuple = (res, grad)
    else:
        out_tuple = (grad,)
    if return_lse:
        out_tuple = out_tuple + (lse_arr.reshape(expected_target_shape(xshape)),)
    return out_tuple[0] if len(out_tuple) == 1 else out_tuple


def posinf_lse(x, axis, lse, scale=1.0, xp=np):
    """Give +inf to the lse of every row of the logits ``x`` (times ``scale``, classes
    along ``axis``) that holds +inf and no nan, as NumPy's and torch's logsumexp do; the
    kernels' exp(x - max) is exp(inf - inf) = nan there. One implementation for both
    paths: ``xp`` is the arrays' namespace (NumPy, or CuPy for device arrays).

    ``lse`` holds the rows in x's order (any shape of that size whose reshape is a view).
    Only the rows whose lse is nan are read again: the common call pays one isnan over
    the lse. After an in-place gradient x holds the gradient: such a row's lse stays nan.
    """
    shape = tuple(x.shape[:axis]) + tuple(x.shape[axis + 1:])
    lv = lse.reshape(shape or (1,))  # a view: writes reach lse
    nan = xp.isnan(lv)
    if not bool(nan.any()):
        return
    bad = xp.nonzero(nan)
    rows = (xp.moveaxis(x, axis, -1) if shape else x[None])[bad]  # (rows, C), a copy of those
    if scale != 1.0:
        rows = rows.astype(xp.float64) * scale
    fix = (rows == xp.inf).any(axis=-1) & ~xp.isnan(rows).any(axis=-1)
    lv[tuple(i[fix] for i in bad)] = xp.inf


cdef void nll_rows(const Sweep *s, cnp.ndarray x3, cnp.ndarray o3, double *loss, double g,
                   int64_t C):
    """NLL: loss[r] = -w[y] x[r, y] (0 where ignored); the gradient, -g w[y] at each target
    and 0 elsewhere, when o3 is given (g already divided by the 'mean' normaliser)."""
    cdef RowGeom og
    cdef int64_t r, y, c
    cdef double wy
    cdef int xt = cnp.PyArray_TYPE(x3)
    cdef int ot = cnp.PyArray_TYPE(o3) if o3 is not None else 0
    cdef const char *p
    cdef char *q
    cdef double v
    if o3 is not None:
        og = geom_any(o3)
    for r in range(s.rows):
        y = target_of(s, r)
        if o3 is not None:
            q = row_addr(&og, r)
            for c in range(C):
                if ot == cnp.NPY_DOUBLE:
                    (<double *> q)[c * og.sc] = 0.0
                elif ot == cnp.NPY_FLOAT:
                    (<float *> q)[c * og.sc] = 0.0
                else:
                    (<uint16_t *> q)[c * og.sc] = 0
        if y == IGNORED:
            if loss != NULL:
                loss[r] = 0.0
            continue
        wy = weight_of(s, y)
        if loss != NULL:
            p = row_addr(&s.x, r)
            if xt == cnp.NPY_DOUBLE:
                v = (<const double *> p)[y * s.x.sc]
            elif xt == cnp.NPY_FLOAT:
                v = (<const float *> p)[y * s.x.sc]
            elif xt == NPY_HALF_T:
                v = fce_cvt_f16_f32((<const uint16_t *> p)[y * s.x.sc])
            else:
                v = fce_cvt_bf16_f32((<const uint16_t *> p)[y * s.x.sc])
            loss[r] = -wy * v
        if o3 is not None:
            v = -(s.scale[r] if s.scale != NULL else g) * wy
            if ot == cnp.NPY_DOUBLE:
                (<double *> q)[y * og.sc] = v
            elif ot == cnp.NPY_FLOAT:
                (<float *> q)[y * og.sc] = <float> v
            elif ot == NPY_HALF_T:
                (<uint16_t *> q)[y * og.sc] = fce_cvt_f32_f16(<float> v)
            else:
                (<uint16_t *> q)[y * og.sc] = fce_cvt_f32_bf16(<float> v)
