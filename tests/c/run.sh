#!/usr/bin/env bash
# Build and run the C-level kernel tests (tests/c/test_kernels.c) on every ISA we can reach:
#
#   native   this machine's compiler, all src/isa_*.c units; the program tests every table
#            the CPU supports (x86-64: scalar, avx2, avx512 where present).
#   aarch64  cross-compiled with Debian's gcc-aarch64-linux-gnu (static) and run under
#            qemu-user: the NEON table (and scalar built for AArch64). On an AArch64 host
#            the native run covers NEON and this step is skipped.
#
# Build outputs go to tests/c/build/ (gitignored). Exit status: 0 when every run passed.
# Environment:
#   CC                        native compiler (default: cc)
#   FASTCE_REQUIRE_NEON=1     missing cross tools are a failure instead of a notice
#   FASTCE_CTEST_SCALE        sweep density of the native run (default 1)
#   FASTCE_CTEST_QEMU_SCALE   sweep density under qemu, which is ~20x slower (default 0.25);
#                             below 1 it also shortens the longest test row (32000 -> 8000)
#   AARCH64_CC, QEMU_AARCH64  the cross compiler and emulator to use
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$here/build"
mkdir -p "$build"
cd "$root"

# the extension's own flags (setup.py): no -march, no -ffast-math; ISAs come from pragmas
CFLAGS_COMMON=(-O3 -fno-math-errno -fno-trapping-math -Wall -Wextra -Iinclude)
SOURCES=(tests/c/test_kernels.c src/dispatch.c src/isa_*.c)

failed=()
passed=()

run_native() {
    local cc=${CC:-cc}
    cc=${cc%% *}
    if ! command -v "$cc" >/dev/null 2>&1; then
        echo "run.sh: no C compiler ($cc) on PATH" >&2
        failed+=("native build (no compiler)")
        return
    fi
    local exe="$build/test_kernels-native"
    echo "== native ($(uname -m)): $cc ${CFLAGS_COMMON[*]} ${SOURCES[*]}"
    if ! $cc "${CFLAGS_COMMON[@]}" "${SOURCES[@]}" -o "$exe" -lm; then
        failed+=("native build")
        return
    fi
    if FASTCE_CTEST_SCALE=${FASTCE_CTEST_SCALE:-1} "$exe"; then
        passed+=("native $(uname -m)")
    else
        echo "run.sh: native run failed (exit $?)"
        failed+=("native $(uname -m) run")
    fi
}

run_aarch64_qemu() {
    local xcc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
    local qemu=${QEMU_AARCH64:-}
    if [ -z "$qemu" ]; then
        for q in qemu-aarch64 qemu-aarch64-static; do
            if command -v "$q" >/dev/null 2>&1; then qemu=$q; break; fi
        done
    fi
    local missing=()
    command -v "$xcc" >/dev/null 2>&1 || missing+=("$xcc")
    [ -n "$qemu" ] && command -v "$qemu" >/dev/null 2>&1 || missing+=("qemu-aarch64")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "NEON not tested: ${missing[*]} not found" \
            "(Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)"
        if [ "${FASTCE_REQUIRE_NEON:-0}" = 1 ]; then
            failed+=("aarch64/NEON (cross tools missing and FASTCE_REQUIRE_NEON=1)")
        fi
        return
    fi
    local exe="$build/test_kernels-aarch64"
    local runner=("$qemu")
    echo "== aarch64 under $qemu: $xcc -static ${CFLAGS_COMMON[*]} ${SOURCES[*]}"
    if ! "$xcc" -static "${CFLAGS_COMMON[@]}" "${SOURCES[@]}" -o "$exe" -lm; then
        # no static libc for the target: link dynamically and give qemu the sysroot
        echo "run.sh: static link failed, trying a dynamic one with qemu -L /usr/aarch64-linux-gnu"
        if ! "$xcc" "${CFLAGS_COMMON[@]}" "${SOURCES[@]}" -o "$exe" -lm; then
            failed+=("aarch64 build")
            return
        fi
        runner=("$qemu" -L "${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}")
    fi
    if FASTCE_CTEST_SCALE=${FASTCE_CTEST_QEMU_SCALE:-0.25} "${runner[@]}" "$exe"; then
        passed+=("aarch64 (qemu)")
    else
        echo "run.sh: aarch64 run under qemu failed (exit $?)"
        failed+=("aarch64 (qemu) run")
    fi
}

start=$SECONDS
run_native
case "$(uname -m)" in
    aarch64 | arm64) echo "== native run is AArch64: NEON covered there, no cross run" ;;
    *) run_aarch64_qemu ;;
esac

echo
echo "run.sh: $((SECONDS - start)) s; passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
