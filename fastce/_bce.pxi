# Binary cross-entropy with logits: the elementwise sweep (included from _kernels.pyx).
#
# Design, in layers (see include/fastce/bce_impl.h for the math, fastce/_bce.py for the plan):
#
# 1. Kernel.  ``bce_block`` (one per ISA and dtype, in the kernel table) computes the loss
#    and/or gradient of n contiguous elements; weights and positive weights come either as
#    n contiguous values or as one scalar.
# 2. Grid.  fastce/_bce.py presents every operand as a grid of ``R`` rows of ``L``
#    elements (the last row holds ``n_last``), each operand described by a BceOp: base
#    address, byte stride between rows (0: every row the same, e.g. a pos_weight of shape
#    (C,)), element stride within a row (1: contiguous; 0: one value per row, e.g. a
#    weight of shape (N, 1); anything else: gathered).
# 3. Work items.  Each row is cut into chunks of at most ``blk`` elements; an item is one
#    chunk.  ``blk`` and the grid depend on shapes and strides only, never on n_threads.
#    ``prange`` over the items, static schedule, GIL released; strided operands are
#    gathered into (and strided outputs scattered from) per-thread scratch of ``7 * blk``
#    elements.
# 4. Determinism.  Item ``k``'s loss sum lands in ``partial[k]`` (float64, O(R * chunks));
#    the caller reduces that buffer in a fixed order, so the result is bitwise identical
#    for any n_threads.

cdef enum:
    # operand slots, in the order bce_sweep receives them
    BCE_X = 0
    BCE_Y = 1
    BCE_W = 2
    BCE_PW = 3
    BCE_GE = 4
    BCE_GRAD = 5
    BCE_LE = 6
    BCE_NOPS = 7


cdef struct BceOp:
    char *base      # element [0, 0]; NULL when the operand is absent
    int64_t rs      # byte stride between rows
    int64_t es      # element stride within a row (0: one value per row)


cdef struct BceGrid:
    const fce_kernels *kt   # the kernel table of this call: one snapshot (set_isa may run)
    int64_t R, L, n_last    # rows, row length, length of the last row
    int64_t blk, nchunks    # chunk length, chunks per row
    double pw0              # pos_weight when absent (1.0)
    double gscale           # gradient scale (grad_output, / numel for 'mean')
    double *partial         # (R * nchunks,) loss sum per item, or NULL


cdef inline void k_bce(const fce_kernels *kt, const floating *x, const floating *y,
                       const floating *w, const floating *pw, double pw0, floating *grad,
                       int64_t n, double gscale, const floating *ge, double lscale,
                       double *loss_sum, floating *le) noexcept nogil:
    if floating is float:
        kt.f32.bce_block(x, y, w, pw, pw0, grad, n, gscale, ge, lscale, loss_sum, le)
    else:
        kt.f64.bce_block(x, y, w, pw, pw0, grad, n, gscale, ge, lscale, loss_sum, le)


cdef inline floating *bce_addr(const BceOp *o, int64_t r, int64_t c0, floating *dummy) noexcept nogil:
    # `dummy` only carries the fused type
    return <floating *> (o.base + r * o.rs + c0 * o.es * <int64_t> sizeof(floating))


cdef inline const floating *bce_in(const BceOp *o, int64_t r, int64_t c0, int64_t n,
                                   floating *scratch) noexcept nogil:
    """Chunk [c0, c0 + n) of row r: in place when contiguous, else gathered into scratch."""
    cdef floating *p = bce_addr(o, r, c0, scratch)
    cdef int64_t j, es = o.es
    if es == 1:
        return p
    for j in range(n):
        scratch[j] = p[j * es]
    return scratch


cdef inline void bce_item(const BceOp *ops, const BceGrid *g, int64_t item,
                          floating *scratch) noexcept nogil:
    """Loss and/or gradient of work item `item` (one chunk of one row).  The helper's
    locals are private to the calling thread (a prange body would share `s`)."""
    cdef int64_t r = item // g.nchunks
    cdef int64_t c0 = (item - r * g.nchunks) * g.blk
    cdef int64_t n = (g.n_last if r == g.R - 1 else g.L) - c0
    cdef int64_t j, es
    cdef double s = 0.0, lscale = 1.0, gscale = g.gscale, pw0 = g.pw0, wv
    cdef const floating *x
    cdef const floating *y
    cdef const floating *w = NULL
    cdef const floating *pw = NULL
    cdef const floating *ge = NULL
    cdef floating *grad = NULL
    cdef floating *le = NULL
    cdef floating *dst
    if n > g.blk:
        n = g.blk
    if n <= 0:
        if g.partial != NULL:
            g.partial[item] = 0.0
        return
    x = bce_in(&ops[BCE_X], r, c0, n, scratch)
    y = bce_in(&ops[BCE_Y], r, c0, n, scratch + g.blk)
    if ops[BCE_W].base != NULL:
        if ops[BCE_W].es == 0:  # one weight for the row: a scale of its loss and gradient
            wv = bce_addr(&ops[BCE_W], r, 0, scratch)[0]
            lscale = wv
            gscale = gscale * wv
        else:
            w = bce_in(&ops[BCE_W], r, c0, n, scratch + 2 * g.blk)
    if ops[BCE_PW].base != NULL:
        if ops[BCE_PW].es == 0:
            pw0 = bce_addr(&ops[BCE_PW], r, 0, scratch)[0]
        else:
            pw = bce_in(&ops[BCE_PW], r, c0, n, scratch + 3 * g.blk)
    if ops[BCE_GE].base != NULL:
        ge = bce_in(&ops[BCE_GE], r, c0, n, scratch + 4 * g.blk)
    if ops[BCE_GRAD].base != NULL:
        grad = bce_addr(&ops[BCE_GRAD], r, c0, scratch) if ops[BCE_GRAD].es == 1 else scratch + 5 * g.blk
    if ops[BCE_LE].base != NULL:
        le = bce_addr(&ops[BCE_LE], r, c0, scratch) if ops[BCE_LE].es == 1 else scratch + 6 * g.blk
    k_bce(g.kt, x, y, w, pw, pw0, grad, n, gscale, ge, lscale, &s if g.partial != NULL else NULL, le)
    if g.partial != NULL:
        g.partial[item] = s
    if grad != NULL and ops[BCE_GRAD].es != 1:
        dst = bce_addr(&ops[BCE_GRAD], r, c0, scratch)
        es = ops[BCE_GRAD].es
        for j in range(n):
            dst[j * es] = grad[j]
    if le != NULL and ops[BCE_LE].es != 1:
        dst = bce_addr(&ops[BCE_LE], r, c0, scratch)
        es = ops[BCE_LE].es
        for j in range(n):
            dst[j * es] = le[j]


cdef BceOp bce_op(object spec):
    cdef BceOp o
    o.base = NULL
    o.rs = 0
    o.es = 0
    if spec is not None:
        arr, rs, es = spec
        o.base = <char *> cnp.PyArray_DATA(<cnp.ndarray> arr)
        o.rs = rs
        o.es = es
    return o


def bce_sweep(x, y, w, pw, ge, grad, loss_elem, int64_t R, int64_t L, int64_t n_last,
              int64_t blk, double pw0, double gscale, object partial, int n_threads):
    """Run the BCE-with-logits sweep over an ``R x L`` grid (see the top of _bce.pxi).

    x, y: ``(array, row_stride_bytes, elem_stride)`` of the logits and targets (the
    array gives the base address and keeps the memory alive). w, pw: the same or None
    (element stride 0: one value per row). ge: per-element gradient scale ('none') or
    None. grad, loss_elem: outputs or None. All in the logits' dtype. partial: float64
    (R * ceil(L / blk),) buffer for the per-item loss sums, or None.
    """
    cdef BceOp ops[BCE_NOPS]
    cdef BceGrid g
    cdef int k
    specs = (x, y, w, pw, ge, grad, loss_elem)
    for k in range(BCE_NOPS):
        ops[k] = bce_op(specs[k])
    g.R = R
    g.L = L
    g.n_last = n_last
    g.blk = blk
    g.nchunks = (L + blk - 1) // blk
    g.pw0 = pw0
    g.kt = call_table()
    g.gscale = gscale
    g.partial = <double *> cnp.PyArray_DATA(<cnp.ndarray> partial) if partial is not None else NULL
    cdef bint need_scratch = False
    for k in range(BCE_NOPS):
        if ops[k].base != NULL and ops[k].es != 1 and not (ops[k].es == 0 and (k == BCE_W or k == BCE_PW)):
            need_scratch = True
    cdef int64_t nitems = g.R * g.nchunks
    n_threads = clamp_threads(n_threads, g.R * L)  # the cross-entropy sweeps' rule
    if nitems < n_threads:
        n_threads = <int> max(nitems, 1)
    # every thread's scratch, allocated before anything is written
    cdef size_t per = BCE_NOPS * g.blk * (4 if x[0].dtype == np.float32 else 8) if need_scratch else 0
    cdef char *scratch = <char *> malloc(per * n_threads) if per else NULL
    if per and scratch == NULL:
        raise MemoryError(f"fastce: cannot allocate {per * n_threads} bytes of scratch for a "
                          f"BCE sweep on {n_threads} thread(s)")
    try:
        if x[0].dtype == np.float32:
            _bce_sweep[float](ops, &g, scratch, per, n_threads)
        else:
            _bce_sweep[double](ops, &g, scratch, per, n_threads)
    finally:
        free(scratch)


cdef void _bce_sweep(const BceOp *ops, const BceGrid *g, char *scratch, size_t per, int n_threads,
                     floating *dummy=NULL):
    cdef int64_t item, nitems = g.R * g.nchunks
    cdef floating *mine
    if n_threads == 1:  # no parallel region for work too small to split
        with nogil:
            for item in range(nitems):
                bce_item(ops, g, item, <floating *> scratch)
        return
    with nogil, parallel(num_threads=n_threads):
        mine = <floating *> (scratch + threadid() * per) if per else NULL
        for item in prange(nitems, schedule='static'):
            bce_item(ops, g, item, mine)
