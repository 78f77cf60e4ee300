"""Fast checks of the benchmark tooling: ``python -m fastce.bench``, the pytest-benchmark
suite in ``bench/`` (importable) and ``tools/bench_report.py``.

Tiny shapes, one or two timed calls: these check the plumbing and the output format,
not speed.
"""
import importlib.util
import json
import math
import pathlib
import re

import numpy as np
import pytest

import fastce
from fastce import bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES = ["64x10", "4x1000"]
BASE = ["--quick", "--shapes", ",".join(SHAPES), "--threads", "1", "--repeat", "2", "--no-progress",
        "--no-minibatch"]

import torch  # noqa: F401  (the test suite requires torch: see conftest.py)

HAVE_TORCH = True


def _sections(text):
    """Split the text output into its tables: {title line: [rows as lists of cells]}."""
    tables, title, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("shape") and i + 1 < len(lines) and set(lines[i + 1].replace(" ", "")) == {"-"}:
            header = re.split(r"\s{2,}", line.strip())
            rows = []
            for row in lines[i + 2:]:
                if not row.strip():
                    break
                rows.append(re.split(r"\s{2,}", row.strip()))
            tables[title] = (header, rows)
        elif line.strip():
            title = line.strip()
    return tables


def _is_ms(cell):
    return math.isfinite(float(cell)) and float(cell) > 0


def _is_ratio(cell):
    return cell.endswith("x") and float(cell[:-1]) > 0


@pytest.fixture(scope="module")
def text_run():
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        report = bench.main(BASE)
    return report, buf.getvalue()


def test_text_tables_have_columns_and_numbers(text_run):
    report, out = text_run
    tables = _sections(out)
    by_header = {tuple(h): rows for h, rows in tables.values()}
    assert tuple(bench.FWD_COLUMNS) in by_header, out
    assert tuple(bench.FB_COLUMNS) in by_header, out
    assert tuple(bench.MEM_COLUMNS) in by_header, out
    for cols in (bench.FWD_COLUMNS, bench.FB_COLUMNS, bench.MEM_COLUMNS):
        rows = by_header[tuple(cols)]
        assert [r[0] for r in rows] == SHAPES, out
        for r in rows:
            assert len(r) == len(cols), (cols, r)
            assert r[1] == "float32" and r[2] == "1"

    fwd = {r[0]: dict(zip(bench.FWD_COLUMNS, r)) for r in by_header[tuple(bench.FWD_COLUMNS)]}
    fb = {r[0]: dict(zip(bench.FB_COLUMNS, r)) for r in by_header[tuple(bench.FB_COLUMNS)]}
    for shape in SHAPES:
        for col in ("fastce ms", "numpy ms", "floor ms"):
            assert _is_ms(fwd[shape][col]), (shape, col, fwd[shape])
        assert _is_ratio(fwd[shape]["fastce/floor"])
        for col in ("out= ms", "inplace ms", "numpy ms", "floor ms"):
            assert _is_ms(fb[shape][col]), (shape, col, fb[shape])
        assert _is_ratio(fb[shape]["out=/floor"]) and _is_ratio(fb[shape]["inplace/floor"])
        if HAVE_TORCH:
            assert _is_ms(fwd[shape]["torch ms"]) and _is_ratio(fwd[shape]["speed-up"])
            assert _is_ms(fb[shape]["torch ms"]) and _is_ratio(fb[shape]["speed-up out="])
            assert _is_ratio(fb[shape]["speed-up inplace"])
        else:
            assert fwd[shape]["torch ms"] == "-" and fwd[shape]["speed-up"] == "-"
    assert out.splitlines()[0] == "command: python -m fastce.bench " + " ".join(BASE), out
    machine = next(ln for ln in out.splitlines() if ln.startswith("machine: "))
    m = report["machine"]
    assert m["cpu"] in machine and f"fastce ISA {fastce.get_isa()}" in machine, machine
    assert ", ".join(fastce.supported_isas()) in machine and f"{m['cpus']} usable" in machine
    load = next(ln for ln in out.splitlines() if ln.startswith("load: "))
    assert re.search(r"before \d+\.\d\d \d+\.\d\d \d+\.\d\d, after \d+\.\d\d", load), load
    assert len(report["load"]["loadavg_before"]) == 3 and len(report["load"]["loadavg_after"]) == 3
    assert report["load"]["others_cores_during_run"] >= 0
    assert (report["load_warning"] is not None) == ("WARNING: the machine was busy" in out)

    # The report behind the table: two timed calls per cell, as asked.
    assert len(report["results"]) == len(SHAPES)
    for rec in report["results"]:
        for key in ("fastce_fwd", "fastce_fb_out", "fastce_fb_inplace", "numpy_fwd", "numpy_fb",
                    "floor_read_numpy", "floor_copy_numpy"):
            assert rec["times"][key]["repeats"] == 2, (key, rec["times"][key])
        assert rec["derived"]["floor_read_ms"] > 0 and rec["derived"]["floor_copy_ms"] > 0


def test_memory_column_is_small_for_fastce(text_run):
    """fastce's forward and fused calls allocate O(N), not an N x C temporary."""
    report, _ = text_run
    for rec in report["results"]:
        n, c = rec["shape"]
        mem = rec["memory_bytes"]
        for key in ("fastce_fwd", "fastce_fb_out", "fastce_fb_inplace"):
            assert mem[key]["tracemalloc"] < 64 * n + 8192, (rec["shape"], key, mem[key])
        assert mem["numpy_fb"]["tracemalloc"] >= n * c * 4  # the NumPy code does allocate N x C


def test_markdown_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    bench.main(BASE + ["--markdown", "--no-memory", "--json", str(path)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    for cols in (bench.FWD_COLUMNS, bench.FB_COLUMNS):
        head = "| " + " | ".join(cols) + " |"
        assert head in lines, out
        i = lines.index(head)
        assert lines[i + 1].startswith("|---|---|---:|")
        rows = lines[i + 2:i + 2 + len(SHAPES)]
        for shape, row in zip(SHAPES, rows):
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[0] == shape and len(cells) == len(cols), row
            assert _is_ms(cells[cols.index("floor ms")])
    assert "Command: `python -m fastce.bench" in out
    assert "| fastce fwd |" not in out  # --no-memory: no memory table

    data = json.loads(path.read_text())
    assert set(data) >= {"machine", "date", "command", "results"}
    assert data["machine"]["numpy"] == np.__version__
    assert [r["shape"] for r in data["results"]] == [[64, 10], [4, 1000]]
    for rec in data["results"]:
        assert rec["dtype"] == "float32" and rec["threads"] == 1
        t = rec["times"]["fastce_fwd"]
        assert t["repeats"] == 2 and len(t["samples_ms"]) == 2 and t["median_ms"] > 0
        assert rec["derived"]["fwd_over_floor"] > 0
        if HAVE_TORCH:
            assert rec["derived"]["fwd_speedup_vs_torch"] > 0
            assert rec["check"]["loss_rel_diff_vs_torch"] < 1e-4
            assert rec["check"]["grad_rel_diff_vs_torch"] < 1e-4


def test_without_torch_columns_are_dashes(capsys):
    report = bench.main(["--shapes", "8x10", "--threads", "1", "--repeat", "1", "--no-progress",
                         "--no-torch", "--no-memory", "--no-numpy", "--dtype", "float64"])
    out = capsys.readouterr().out
    assert "torch columns are shown as '-'" in out
    rec = report["results"][0]
    assert rec["dtype"] == "float64"
    assert "torch_fwd" not in rec["times"] and "numpy_fwd" not in rec["times"]
    fwd_rows, fb_rows, _ = bench.table_rows(report["results"])
    assert fwd_rows[0][bench.FWD_COLUMNS.index("torch ms")] == "-"
    assert fwd_rows[0][bench.FWD_COLUMNS.index("speed-up")] == "-"
    assert _is_ms(fwd_rows[0][bench.FWD_COLUMNS.index("fastce ms")])


@pytest.mark.parametrize("argv, msg", [
    (["--shapes", "64by10"], "--shapes"),
    (["--threads", "0"], "--threads"),
    (["--dtype", "float16"], "--dtype"),
    (["--repeat", "0"], "--repeat"),
])
def test_bad_arguments(argv, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err


def test_plot(tmp_path, capsys):
    path = tmp_path / "speedup.png"
    argv = BASE + ["--no-memory", "--plot", str(path)]
    if bench._import_pyplot() is None:
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert "matplotlib" in capsys.readouterr().err
    elif not HAVE_TORCH:
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert "torch" in capsys.readouterr().err
    else:
        report = bench.main(argv)
        assert path.stat().st_size > 1000
        _check_figure(report["results"])


def _check_figure(results):
    fig = bench.speedup_figure(results)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
            labels = [t for t in ax.get_xticklabels() if t.get_text()]
            # one tick per C; several N at one C share its label, one line each
            assert sorted(ln for t in labels for ln in t.get_text().split("\n")) == sorted(f"{n}x{c}" for n, c in {
                tuple(r["shape"]) for r in results})
            boxes = [t.get_window_extent(renderer) for t in labels]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b), [t.get_text() for t in labels]
    finally:
        bench._import_pyplot().close(fig)


def test_plot_labels_of_the_reference_shapes():
    """The reference shapes' C (128256 and 262144 are a factor 2 apart) keep apart."""
    if bench._import_pyplot() is None:
        pytest.skip("matplotlib is not installed (the bench extra installs it)")
    results = []
    for i, (n, c) in enumerate([*bench.REFERENCE_SHAPES, (4, 128256)]):
        d = {"fwd_speedup_vs_torch": 1.5 + i, "fb_out_speedup_vs_torch": 0.7 * (i + 1),
             "fb_inplace_speedup_vs_torch": 12.0 / (i + 1)}
        results.append({"shape": [n, c], "dtype": "float32", "threads": 2, "derived": d})
    _check_figure(results)


def test_numpy_user_code_matches_reference():
    x, y = bench.make_inputs((16, 7), "float64", seed=1)
    lse = np.log(np.exp(x).sum(1))
    logp = x - lse[:, None]
    np.testing.assert_allclose(bench.numpy_logsumexp(x), lse)
    np.testing.assert_allclose(bench.numpy_log_softmax(x), logp)
    np.testing.assert_allclose(bench.numpy_softmax(x), np.exp(logp))
    loss = -logp[np.arange(16), y].mean()
    np.testing.assert_allclose(bench.numpy_cross_entropy(x, y), loss)
    np.testing.assert_allclose(bench.numpy_nll_loss(logp, y), loss)
    loss2, grad = bench.numpy_cross_entropy_with_grad(x, y)
    onehot = np.eye(7)[y]
    np.testing.assert_allclose(loss2, loss)
    np.testing.assert_allclose(grad, (np.exp(logp) - onehot) / 16)


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_suite_is_importable():
    conftest = _load(ROOT / "bench" / "conftest.py", "_fastce_bench_conftest")
    assert hasattr(conftest, "pytest_addoption") and hasattr(conftest, "bench")
    files = sorted((ROOT / "bench").glob("test_bench_*.py"))
    assert len(files) >= 3
    tests = []
    for f in files:
        try:
            mod = _load(f, "_fastce_" + f.stem)
        except pytest.skip.Exception:  # a module-level importorskip (CuPy): that file only
            assert f.name == "test_bench_cuda.py", f
            continue
        tests += [n for n in dir(mod) if n.startswith("test_")]
    for name in ("test_logsumexp", "test_log_softmax", "test_softmax", "test_ce_fwd", "test_ce_fwdbwd",
                 "test_nll_loss", "test_floor_read", "test_floor_copy", "test_mb_fwd", "test_mb_fwdbwd",
                 "test_mb_options_fwdbwd"):
        assert name in tests


def test_bench_report_tool(tmp_path, capsys):
    report_tool = _load(ROOT / "tools" / "bench_report.py", "_fastce_bench_report")

    def entry(op, impl, median, shape=(64, 10), threads=1):
        return {"group": f"{op}-{shape[0]}x{shape[1]}-float32-t{threads}", "name": f"test[{impl}]",
                "extra_info": {"op": op, "impl": impl, "shape": list(shape), "dtype": "float32",
                               "threads": threads, "nbytes": 2560},
                "stats": {"median": median, "min": median / 2, "mean": median}}

    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "machine": "x86_64",
                         "system": "Linux", "release": "6", "python_version": "3.11"},
        "commit_info": {"id": "abcdef1234567890", "dirty": False},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": [
            entry("ce-fwd", "fastce", 0.001), entry("ce-fwd", "torch", 0.004), entry("ce-fwd", "numpy", 0.002),
            entry("floor-read", "numpy", 0.0005), entry("floor-read", "torch", 0.00025),
            entry("ce-fwdbwd", "fastce-out", 0.002), entry("ce-fwdbwd", "torch-autograd", 0.010),
            {"group": None, "name": "unrelated", "extra_info": {}, "stats": {"median": 1.0}},
        ],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    assert report_tool.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "Test CPU" in out and "abcdef1234" in out
    lines = out.splitlines()
    head = ("| shape | dtype | threads | fastce ms | torch ms | numpy ms | fastce vs torch | numpy vs torch "
            "| floor ms | fastce / floor |")
    assert head in lines, out
    row = lines[lines.index(head) + 2]
    assert row == "| 64x10 | float32 | 1 | 1.00 | 4.00 | 2.00 | 4.00x | 2.00x | 0.25 | 4.00x |", row
    assert "### `ce-fwdbwd`" in out and "### `floor-read`" in out
    assert "| fastce-out vs torch |" in out


# ----------------------------------------------------------------------------- machine and load
@pytest.mark.parametrize("load, cpus, busy", [
    ({"loadavg_before": (0.1, 0.2, 0.2), "others_cores_during_run": 0.02}, 2, None),
    ({"loadavg_before": (1.3, 0.9, 0.5), "others_cores_during_run": 0.02}, 2, "load average before"),
    ({"loadavg_before": (0.1, 0.1, 0.1), "others_cores_during_run": 1.2}, 2, "other processes used 1.20"),
    ({"loadavg_before": (1.9, 1.0, 1.0), "others_cores_during_run": 0.5}, 16, None),  # a big machine
    ({"loadavg_before": None, "others_cores_during_run": None}, 2, None),  # nothing known
])
def test_load_warning(load, cpus, busy):
    w = bench.load_warning(load, cpus, threads=cpus)
    if busy is None:
        assert w is None
    else:
        assert w.startswith("WARNING: the machine was busy") and busy in w and "unreliable" in w, w


def test_load_monitor_sees_other_processes():
    """A busy child process (another process, as far as the monitor knows) is counted."""
    import subprocess
    import sys
    import time

    mon = bench.LoadMonitor().start()
    if mon._busy0 is None:
        pytest.skip("no /proc/stat on this OS: only the load average is recorded")
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"])
    child.wait()
    time.sleep(0.05)
    mon.stop()
    # the child spun ~0.6 s of wall time (less CPU time if the machine is busy); the
    # whole machine cannot have given others more than all its CPUs for the interval
    cpu_s = mon.others_cores * mon.wall_s
    assert 0.2 < cpu_s <= bench._usable_cpus() * mon.wall_s + 0.05, mon.as_dict()


def test_command_label_of_the_console_script(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/some/venv/bin/fastce-bench", *BASE[:-1], "--no-minibatch",
                                     "--no-memory", "--shapes", "8x10"])
    report = bench.main()
    assert report["command"].startswith("fastce-bench --quick")
    assert capsys.readouterr().out.splitlines()[0] == "command: " + report["command"]
    assert bench.main(BASE + ["--no-memory", "--shapes", "8x10"], prog="fastce-bench")["command"].startswith(
        "fastce-bench ")


# ----------------------------------------------------------------------------- minibatch
def test_minibatch_table(capsys):
    argv = ["--quick", "--shapes", "8x10", "--threads", "1", "--repeat", "1", "--no-progress", "--no-memory",
            "--no-numpy"]
    report = bench.main(argv)
    out = capsys.readouterr().out
    header, rows = next(v for k, v in _sections(out).items() if k.startswith("Minibatch shapes"))
    assert header == bench.MINI_COLUMNS
    want = [f"{n}x{c}" for n, c in bench.MINIBATCH_SHAPES]
    assert [r[0] for r in rows] == want, out  # --threads 1: only the 1-thread rows
    for r in rows:
        cell = dict(zip(header, r))
        assert cell["dtype"] == "float32" and cell["threads"] == "1"
        for col in ("fastce fwd us", "torch fwd us", "fastce fwd+bwd us", "torch fwd+bwd us", "np.add us"):
            assert _is_ms(cell[col]), (col, r)
        for col in ("torch/fastce fwd", "torch/fastce fwd+bwd", "fwd/np.add", "fwd+bwd/np.add"):
            assert _is_ratio(cell[col]), (col, r)
    assert len(report["minibatch"]) == len(want)
    for rec in report["minibatch"]:
        t = rec["times_us"]
        assert set(t) == set(bench.MINI_CELLS)
        for v in t.values():
            # timeit-style: each sample is a loop of many calls, reported per call
            assert len(v["samples_us"]) == 5 and v["number"] >= 1 and v["median_us"] > 0
        assert t["fastce_fwd"]["number"] > 1  # microsecond calls are never timed one by one
        d = rec["derived"]
        assert d["fwd_speedup_vs_torch"] == pytest.approx(t["torch_fwd"]["median_us"] / t["fastce_fwd"]["median_us"])
        assert d["fb_over_ufunc"] == pytest.approx(t["fastce_fb"]["median_us"] / t["ufunc"]["median_us"])
        assert rec["check"]["loss_rel_diff_vs_torch"] < 1e-5


def test_minibatch_threads_are_one_and_all():
    recs = bench.bench_minibatch([(4, 3)], threads=[1, 2], samples=2, min_s=1e-4)
    assert [(r["shape"], r["threads"]) for r in recs] == [([4, 3], 1), ([4, 3], 2)]
    assert "torch_fwd" not in recs[0]["times_us"] and recs[0]["derived"]["fwd_speedup_vs_torch"] is None
    rows = bench.minibatch_rows(recs)
    assert rows[0][bench.MINI_COLUMNS.index("torch fwd us")] == "-"
