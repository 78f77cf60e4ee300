/* A CPU emulation of the CUDA execution model, for running fastce's .cu kernels in CPU
 * tests (no GPU, no CUDA toolkit).  Test infrastructure only.
 *
 * Each CUDA thread of a block is a ucontext fiber on one OS thread.  A fiber runs until
 * it reaches __syncthreads() or a warp-level shuffle, then yields; the scheduler
 * releases a block barrier once every thread of the block waits at it, and a warp
 * barrier once all 32 lanes of the warp wait at it.  Blocks run one after the other.
 * Strict checks turn CUDA undefined behaviour into errors: a __syncthreads() or a
 * full-mask shuffle that some threads of the block (or lanes of the warp) never reach
 * is reported as a deadlock instead of hanging.  The thread order of every sweep is
 * forward or reversed (emu_order), so a missing barrier shows up as a difference
 * between the two orders.
 *
 * What it checks: the kernels' arithmetic, indexing, reductions and barrier structure.
 * What it cannot: GPU memory-model races between blocks, timing, register pressure.
 */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <vector>
#include <string>
#include <stdexcept>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {
enum State { RUNNABLE = 0, AT_BLOCK = 1, AT_WARP = 2, DONE = 3 };
struct Fiber {
    ucontext_t ctx;
    State state;
    char *stack;
};
struct Ctx {
    dim3 grid, block, blockIdx, threadIdx;
    std::vector<Fiber> fibers;
    ucontext_t sched;
    int current = 0;
    int nthreads = 0;
    unsigned char xchg[32][32][8];  /* [warp][lane][bytes] */
    void (*body)(void *) = nullptr;
    void *body_arg = nullptr;
    std::string error;
};
static Ctx g;
static const size_t STACK = 256 * 1024;

inline void yield_with(State s) {
    Fiber &f = g.fibers[g.current];
    f.state = s;
    swapcontext(&f.ctx, &g.sched);
}
static void fiber_entry() {
    g.body(g.body_arg);
    g.fibers[g.current].state = DONE;
    swapcontext(&g.fibers[g.current].ctx, &g.sched);
}
}  // namespace emu

#define threadIdx (emu::g.threadIdx)
#define blockIdx (emu::g.blockIdx)
#define blockDim (emu::g.block)
#define gridDim (emu::g.grid)

inline void __syncthreads() { emu::yield_with(emu::AT_BLOCK); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield_with(emu::AT_WARP); }

template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
    static_assert(sizeof(V) <= 8, "shuffle of more than 8 bytes");
    (void)mask; (void)width;
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31;
    memcpy(emu::g.xchg[warp][lane], &v, sizeof(V));
    emu::yield_with(emu::AT_WARP);
    V out;
    memcpy(&out, emu::g.xchg[warp][lane ^ lane_mask], sizeof(V));
    emu::yield_with(emu::AT_WARP);
    return out;
}

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
inline float __uint_as_float(unsigned int i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int i; memcpy(&i, &f, 4); return i; }

namespace emu {
/* Run one block: every thread as a fiber; returns false (g.error set) on a deadlock. */
inline bool run_block(int order) {
    const int n = g.nthreads;
    for (int i = 0; i < n; ++i) {
        Fiber &f = g.fibers[i];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, (void (*)())fiber_entry, 0);
        f.state = RUNNABLE;
    }
    for (;;) {
        for (int k = 0; k < n; ++k) {
            const int i = order ? n - 1 - k : k;
            if (g.fibers[i].state != RUNNABLE) continue;
            g.current = i;
            threadIdx = dim3(i % g.block.x, (i / g.block.x) % g.block.y, i / (g.block.x * g.block.y));
            swapcontext(&g.sched, &g.fibers[i].ctx);
        }
        int done = 0, at_block = 0;
        for (int i = 0; i < n; ++i) {
            done += g.fibers[i].state == DONE;
            at_block += g.fibers[i].state == AT_BLOCK;
        }
        if (done == n) return true;
        bool released = false;
        if (at_block == n) {
            for (int i = 0; i < n; ++i) g.fibers[i].state = RUNNABLE;
            released = true;
        } else {
            for (int w = 0; w * 32 < n; ++w) {
                int lanes = 0, waiting = 0;
                for (int i = w * 32; i < n && i < w * 32 + 32; ++i, ++lanes)
                    waiting += g.fibers[i].state == AT_WARP;
                if (waiting == lanes) {
                    for (int i = w * 32; i < w * 32 + lanes; ++i) g.fibers[i].state = RUNNABLE;
                    released = true;
                }
            }
        }
        if (!released) {
            char buf[256];
            snprintf(buf, sizeof buf,
                     "deadlock in block (%u,%u,%u): %d threads done, %d at __syncthreads, "
                     "%d at a warp shuffle", blockIdx.x, blockIdx.y, blockIdx.z, done, at_block,
                     n - done - at_block);
            g.error = buf;
            return false;
        }
    }
}

inline bool launch(dim3 grid, dim3 block, int order, void (*body)(void *), void *arg) {
    const int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024 || n % 32 != 0) {
        g.error = "block size must be a positive multiple of 32, at most 1024";
        return false;
    }
    if ((size_t)g.fibers.size() < (size_t)n) {
        size_t old = g.fibers.size();
        g.fibers.resize(n);
        for (size_t i = old; i < (size_t)n; ++i) g.fibers[i].stack = (char *)malloc(STACK);
    }
    g.grid = grid;
    g.block = block;
    g.nthreads = n;
    g.body = body;
    g.body_arg = arg;
    g.error.clear();
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = dim3(x, y, z);
                if (!run_block(order)) return false;
            }
    return true;
}

/* Call a kernel with its parameters given as cuLaunchKernel does: args[i] points to
 * the value of parameter i. */
template <typename... A, size_t... I>
inline void call_packed(void (*k)(A...), void **args, std::index_sequence<I...>) {
    k(*static_cast<typename std::remove_reference<A>::type *>(args[I])...);
}
template <typename... A> struct Packed {
    void (*k)(A...);
    void **args;
};
template <typename... A> inline void run_packed(void *p) {
    Packed<A...> *pk = static_cast<Packed<A...> *>(p);
    call_packed(pk->k, pk->args, std::index_sequence_for<A...>{});
}
template <typename... A>
inline bool launch_kernel(void (*k)(A...), dim3 grid, dim3 block, int order, void **args, int nargs) {
    if (nargs != (int)sizeof...(A)) {  /* the host's signature and the kernel's disagree */
        g.error = "the kernel takes " + std::to_string(sizeof...(A)) + " parameters, the launch passed "
                  + std::to_string(nargs);
        return false;
    }
    Packed<A...> pk{k, args};
    return launch(grid, block, order, &run_packed<A...>, &pk);
}

/* A kernel's parameter kinds in the host's words (fastce/cuda/_api.py pack_args): ptr,
 * i32 (int), i64 (long long), f64 (double), or "?" for any other type. */
template <typename V> inline const char *kind_of() {
    if (std::is_pointer<V>::value) return "ptr";
    if (std::is_same<V, int>::value) return "i32";
    if (std::is_same<V, long long>::value) return "i64";
    if (std::is_same<V, double>::value) return "f64";
    return "?";
}
template <typename... A> inline void signature(void (*)(A...), char *out, int len) {
    std::string s;
    const char *kinds[] = {kind_of<A>()..., ""};
    for (size_t i = 0; i < sizeof...(A); ++i) s += std::string(i ? " " : "") + kinds[i];
    snprintf(out, len, "%s", s.c_str());
}
}  // namespace emu
