#!/usr/bin/env python
"""Turn a pytest-benchmark JSON of ``bench/`` into Markdown tables for BENCHMARKS.md.

Usage::

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python tools/bench_report.py bench.json > report.md

One table per operation (``lse``, ``log_softmax``, ``softmax``, ``ce-fwd``,
``ce-fwdbwd``, ``nll``, ``floor-read``, ``floor-copy``), one row per
(shape, dtype, threads): the median time of every implementation in ms, each
non-torch implementation's speed-up over torch (``torch time / its time``, > 1 means
faster than torch), and for the operations bounded by memory bandwidth the floor (the
fastest implementation of ``floor-read`` or ``floor-copy`` on the same shape, dtype and
thread count) with fastce's time over it.

The benchmarks are recognised by the ``extra_info`` that ``bench/conftest.py`` records
(``op``, ``impl``, ``shape``, ``dtype``, ``threads``); others in the file are ignored.
"""
import argparse
import json
import math
import sys

from fastce.bench import format_ms as fmt_ms, format_ratio as fmt_ratio  # one formatting for both tools

TITLES = {
    "ce-fwd": "cross_entropy forward (reduction='mean')",
    "ce-fwdbwd": "cross_entropy forward + backward (loss and gradient of the logits)",
    "lse": "logsumexp over the classes",
    "log_softmax": "log_softmax over the classes",
    "softmax": "softmax over the classes",
    "nll": "nll_loss on given log-probabilities",
    "floor-read": "floor: one streaming read of the logits",
    "floor-copy": "floor: read + write of the logits into a reused buffer",
}
OP_ORDER = ["ce-fwd", "ce-fwdbwd", "lse", "log_softmax", "softmax", "nll", "floor-read", "floor-copy"]
# Which floor bounds which operation: reads only (a reduction) or reads + writes N x C.
FLOOR_FOR = {
    "ce-fwd": "floor-read",
    "lse": "floor-read",
    "log_softmax": "floor-copy",
    "softmax": "floor-copy",
    "ce-fwdbwd": "floor-copy",
}


IMPL_ORDER = ["fastce", "fastce-out", "fastce-inplace", "fastce-alloc", "torch", "torch-autograd",
              "numpy", "numpy-threads"]


def _impl_rank(impl):
    if impl in IMPL_ORDER:
        return (IMPL_ORDER.index(impl), impl)
    family = next((k for k, f in enumerate(("fastce", "torch", "numpy")) if impl.startswith(f)), 3)
    return (len(IMPL_ORDER) + family, impl)


def load(path, stat="median"):
    """Read the JSON and index the times.

    Parameters
    ----------
    path : str
        A ``--benchmark-json`` file (``-`` for standard input).
    stat : {"median", "min", "mean"}
        The statistic to report, in seconds in the file.

    Returns
    -------
    data : dict
        The whole JSON.
    times : dict
        ``times[op][(dtype, (N, C), threads)][impl]`` -> milliseconds.
    """
    if path == "-":
        data = json.load(sys.stdin)
    else:
        with open(path) as f:
            data = json.load(f)
    times = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if not {"op", "impl", "shape", "dtype", "threads"} <= info.keys():
            continue
        key = (info["dtype"], tuple(info["shape"]), int(info["threads"]))
        value = b["stats"].get(stat)
        if value is None:
            continue
        times.setdefault(info["op"], {}).setdefault(key, {})[info["impl"]] = value * 1e3
    return data, times


def _row_order(key):
    dtype, (n, c), threads = key
    return (dtype, c, n, threads)


def op_table(op, rows, floors=None):
    """Markdown table of one operation.

    Parameters
    ----------
    op : str
    rows : dict
        ``{(dtype, (N, C), threads): {impl: ms}}``.
    floors : dict, optional
        The floor operation's rows; adds "floor" and "fastce / floor" columns.

    Returns
    -------
    str
    """
    impls = sorted({i for r in rows.values() for i in r}, key=_impl_rank)
    base = next((i for i in impls if i.startswith("torch")), None)
    fastce_impls = [i for i in impls if i.startswith("fastce")]
    header = ["shape", "dtype", "threads"] + [f"{i} ms" for i in impls]
    if base is not None:
        header += [f"{i} vs torch" for i in impls if i != base]
    if floors is not None:
        header += ["floor ms"] + [f"{i} / floor" for i in fastce_impls]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if k < 2 else "---:" for k in range(len(header))) + "|"]
    for key in sorted(rows, key=_row_order):
        dtype, (n, c), threads = key
        r = rows[key]
        cells = [f"{n}x{c}", dtype, str(threads)] + [fmt_ms(r.get(i)) for i in impls]
        if base is not None:
            tb = r.get(base)
            cells += [fmt_ratio(tb / r[i] if tb is not None and r.get(i) else None) for i in impls if i != base]
        if floors is not None:
            fl = floors.get(key) or {}
            floor = min(fl.values()) if fl else None
            cells += [fmt_ms(floor)]
            cells += [fmt_ratio(r[i] / floor if floor and r.get(i) is not None else None) for i in fastce_impls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header_lines(data, path, stat):
    """A few lines naming the machine, the date, the commit and the commands."""
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}) or {}
    ci = data.get("commit_info", {}) or {}
    fc = mi.get("fastce", {}) or {}
    parts = [f"Machine: {cpu.get('brand_raw', mi.get('processor', '?'))} ({cpu.get('count', '?')} CPUs, "
             f"{mi.get('machine', '?')}, {mi.get('system', '?')} {mi.get('release', '')})".rstrip()]
    if fc:
        parts.append(f"fastce {fc.get('version', '?')} (ISA {fc.get('isa', '?')}), numpy {fc.get('numpy', '?')}, "
                     f"torch {fc.get('torch') or 'not installed'}")
    parts.append(f"Python {mi.get('python_version', '?')}")
    lines = ["; ".join(parts) + ".  "]
    commit = ci.get("id")
    lines.append(f"Date: {data.get('datetime', '?')}"
                 + (f"; commit {commit[:10]}{' (dirty)' if ci.get('dirty') else ''}" if commit else "") + ".  ")
    lines.append(f"Commands: `pytest bench/ --benchmark-only --benchmark-json={path}` then "
                 f"`python tools/bench_report.py {path}`; times are {stat}s in ms; "
                 "\"vs torch\" = torch time / that time (> 1: faster than torch).")
    return lines


def report(data, times, path="bench.json", stat="median", ops=None):
    """The whole Markdown report (a string)."""
    out = header_lines(data, path, stat)
    wanted = [op for op in OP_ORDER if op in times] + sorted(op for op in times if op not in OP_ORDER)
    if ops:
        wanted = [op for op in wanted if op in ops]
    if not wanted:
        out += ["", "No fastce benchmarks found in this file."]
    for op in wanted:
        floor_op = FLOOR_FOR.get(op)
        floors = times.get(floor_op) if floor_op else None
        title = TITLES.get(op, op)
        if floors is not None:
            title += f"; floor = fastest `{floor_op}`"
        out += ["", f"### `{op}`: {title}", "", op_table(op, times[op], floors)]
    return "\n".join(out) + "\n"


def main(argv=None):
    """Entry point: ``python tools/bench_report.py FILE.json [--stat median] [--ops ce-fwd,...]``."""
    p = argparse.ArgumentParser(description="Markdown tables (medians, ratios vs torch, floors) from a "
                                            "pytest-benchmark JSON of fastce's bench/ suite.")
    p.add_argument("json", help="the --benchmark-json file ('-' for standard input)")
    p.add_argument("--stat", choices=["median", "min", "mean"], default="median",
                   help="statistic to report (default median)")
    p.add_argument("--ops", default=None, help="comma-separated operations to include (default all)")
    args = p.parse_args(argv)
    data, times = load(args.json, args.stat)
    ops = [o.strip() for o in args.ops.split(",")] if args.ops else None
    sys.stdout.write(report(data, times, path=args.json, stat=args.stat, ops=ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
