"""The benchmark scripts run end to end at toy sizes and write what docs/benchmarks.md quotes.

They are timing scripts, not tests: nothing here checks a speed. It checks that each script still
runs against the current engine and writes well-formed results, so that the commands recorded in
docs/benchmarks.md keep working.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO, TINY


def run_script(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_throughput_script_times_and_profiles_a_recipe(tmp_path):
    out = tmp_path / "throughput.json"
    overrides = [o for o in TINY if not o.startswith(("name=", "train.batch_size="))]
    stdout = run_script("throughput.py", "--recipes", "mvae", "--batch-size", "8", "--steps", "2", "--warmup", "1",
                        "--devices", "cpu", "--threads", "1", "--profile", "1", "--json", str(out), *overrides)
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["recipe"] == "mvae" and row["batch_size"] == 8 and row["steps"] == 2
    assert row["networks"] == "mlp/mlp" and row["modalities"] == 2  # the overrides reached the recipe
    assert row["ms_per_step"] > 0 and abs(row["tuples_per_s"] * row["ms_per_step"] / 1000 - 8) < 0.01
    # on the CPU the host's share is the whole step (nothing runs asynchronously)
    assert 0.5 * row["ms_per_step"] <= row["host_ms_per_step"] <= row["ms_per_step"]
    ops = row["top_ops"]
    assert len(ops) == 8 and all(o["op"] and o["self_cpu_ms_per_step"] >= 0 for o in ops)
    assert 0 < sum(o["share"] for o in ops) <= 1.0 + 1e-6
    assert ops == sorted(ops, key=lambda o: o["self_cpu_ms_per_step"], reverse=True)
    assert "mvae" in stdout and "%" in stdout  # the table row and the profile line


def test_langevin_script_prior_rows(tmp_path):
    out = tmp_path / "langevin.json"
    run_script("langevin.py", "--devices", "cpu", "--threads", "1", "--repeats", "1", "--no-posterior", "--dims", "4",
               "--prior-batches", "8", "--activations", "gelu", "leaky_relu", "--json", str(out))
    report = json.loads(out.read_text())
    assert "--no-posterior" in report["command"]
    rows = report["results"]
    assert [(r["activation"], r["dim"], r["batch"]) for r in rows] == [("gelu", 4, 8), ("leaky_relu", 4, 8)]
    for r in rows:
        assert r["naive_us_per_step"] > 0 and r["fast_us_per_step"] > 0 and r["grad_alone_us_per_step"] > 0
        assert abs(r["fast_over_naive"] - r["fast_us_per_step"] / r["naive_us_per_step"]) < 1e-9
        assert abs(r["fast_over_plain"] - r["fast_us_per_step"] / r["plain_us_per_step"]) < 1e-9


def test_langevin_floor_script_sums_its_kernels():
    stdout = run_script("langevin_floor.py", "--threads", "1", "--batch", "8", "--dim", "4")
    kernels = [line.split() for line in stdout.splitlines() if line.startswith("  ") and line.rstrip().endswith(" us")]
    named = {" ".join(parts[:-2]): float(parts[-2]) for parts in kernels}
    floor = named.pop("sum (the floor)")
    assert {"linear 1", "gelu 1", "linear 2", "gelu backward 2", "matmul 2", "gelu backward 1", "matmul 1"} <= set(named)
    assert abs(floor - sum(named.values())) <= 0.05 * (len(named) + 1) + 1e-9  # each printed to 0.1 us
    assert all(f"{a} / {b}" in stdout for a in ("floor", "fast") for b in ("naive", "plain"))
