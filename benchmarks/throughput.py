"""Training throughput of every recipe: tuples per second and milliseconds per optimizer step.

Each recipe runs with its own networks and objective on its own dataset (the offline default
unless the recipe names another) at one batch size, on the CPU and, when one is available, on
CUDA. A step is what ``mmgen train`` does per batch: host-to-device copy, forward, backward,
optimizer step. The first ``--warmup`` steps are not timed; ms/step is the median timed step
(tuples/s = batch size / median), with the mean and the fastest step in the JSON. Each recipe runs
in a fresh process, so its peak memory (resident set on the CPU, tensor memory on CUDA) is its own.

    python benchmarks/throughput.py                      # every recipe in configs/, CPU (+ CUDA)
    python benchmarks/throughput.py --recipes mmvae mvae --steps 20 --json out.json
    python benchmarks/throughput.py --recipes mmvaeplus --threads 1 --profile 2   # where a step's time goes

Results print as a table and are written as JSON (``--json``, default
benchmarks/results/throughput-<host>.json) with the command, date, torch version and hardware.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from mmgen.config import compose, list_recipes, resolve
from mmgen.data import EpochBatches
from mmgen.model import build_model
from mmgen.plugins import create_plugin_manager
from mmgen.train import load_datasets, make_optimizer

HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    """The CPU model as lscpu reports it (falls back to platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def where_time_goes(step, steps: int = 2, top: int = 8) -> list[dict]:
    """Profile ``steps`` calls of ``step()``: the ``top`` operators by self CPU time, with their share."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in events[:top]]


def bench_recipe(recipe: str, device: str, batch_size: int, steps: int, warmup: int, plugins, overrides: list[str],
                 profile_steps: int = 0) -> dict:
    """Time ``steps`` training steps of ``recipe`` on ``device``; returns one result row."""
    raw = compose(recipe, overrides=[f"train.batch_size={batch_size}", f"train.device={device}", *overrides])
    cfg = resolve(raw, plugins.registry)
    torch.manual_seed(cfg["seed"])
    train_set, _ = load_datasets(cfg, plugins)
    model = build_model(cfg, plugins.registry, train_set.modalities).to(device)
    optimizer = make_optimizer(model, cfg["train"])
    model.train()

    def batches():
        epoch = 0
        while True:
            yield from EpochBatches(train_set, batch_size, cfg["seed"], epoch)
            epoch += 1

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    it = batches()

    def step():
        out = model(next(it).to(device))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    times, cpu_times, host_times = [], [], []
    for i in range(warmup + steps):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = step()
        t1 = time.perf_counter()  # on CUDA: every kernel of the step enqueued, not necessarily run
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            host_times.append(t1 - t0)
    # The median step: robust to the odd step slowed by another process on a shared machine.
    median = statistics.median(times)
    ops = where_time_goes(step, profile_steps) if profile_steps else None
    m = cfg["model"]
    return {
        "recipe": recipe,
        "device": device,
        "batch_size": batch_size,
        "steps": steps,
        "ms_per_step": round(1000 * median, 2),
        "tuples_per_s": round(batch_size / median, 2),
        "ms_per_step_mean": round(1000 * statistics.fmean(times), 2),
        "ms_per_step_min": round(1000 * min(times), 2),
        # CPU time of this process (all its threads): what a step costs when other processes
        # share the cores; with --threads 1 it approximates an idle machine's wall time.
        "cpu_ms_per_step": round(1000 * statistics.median(cpu_times), 2),
        # Until step() returns, without waiting for the device: the host's share of a step. A
        # step has no host-device sync, so on CUDA host ms close to ms/step means the GPU waits
        # for the host (launch- and Python-bound); much lower means the GPU is the limit.
        "host_ms_per_step": round(1000 * statistics.median(host_times), 2),
        "modalities": train_set.num_modalities,
        "networks": f"{m['encoder']['name']}/{m['decoder']['name']}",
        "objective": f"{m['objective']['name']} (k={m['objective'].get('k', 1)})",
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(float(out.loss.detach()), 2),
        # Peak resident memory of this process (one recipe per process, so it is this recipe's),
        # and on CUDA the peak memory held by tensors.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "top_ops": ops,
    }


def bench_in_child(recipe: str, device: str, batch_size: int, steps: int, warmup: int, threads: int,
                   overrides: list[str], profile_steps: int = 0) -> dict:
    """:func:`bench_recipe` in a fresh process, so that peak memory is this recipe's alone."""
    if threads:
        torch.set_num_threads(threads)
    return bench_recipe(recipe, device, batch_size, steps, warmup, create_plugin_manager(), overrides, profile_steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=None, help="recipe names (default: every recipe in configs/)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per recipe and device")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--devices", nargs="*", default=None, help="cpu and/or cuda (default: cpu, plus cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="where to write the results as JSON")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile this many steps and print the operators that take the time")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides applied to every recipe")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    recipes = args.recipes or list_recipes()
    load_before = os.getloadavg()  # other processes on the machine skew CPU timings: record them
    rows = []
    header = (f"{'recipe':<22}{'device':<7}{'networks':<14}{'objective':<16}{'ms/step':>10}{'tuples/s':>10}"
              f"{'host ms':>10}{'cpu ms':>10}{'peak MiB':>10}")
    print(header)
    print("-" * len(header))
    for device in devices:
        for recipe in recipes:
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row = pool.submit(bench_in_child, recipe, device, args.batch_size, args.steps, args.warmup,
                                  args.threads, args.overrides, args.profile).result()
            rows.append(row)
            peak = row["peak_cuda_mib"] if device == "cuda" else row["peak_rss_mib"]
            print(f"{recipe:<22}{device:<7}{row['networks']:<14}{row['objective']:<16}"
                  f"{row['ms_per_step']:>10.1f}{row['tuples_per_s']:>10.1f}{row['host_ms_per_step']:>10.1f}"
                  f"{row['cpu_ms_per_step']:>10.1f}"
                  f"{peak:>10.0f}", flush=True)
            if row["top_ops"]:
                print("    " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in row["top_ops"]), flush=True)

    report = {
        "command": " ".join([Path(sys.argv[0]).name if argv is None else "throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": rows,
    }
    path = Path(args.json) if args.json else HERE / "results" / f"throughput-{platform.node() or 'host'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nload average (1/5/15 min) before {report['load_average_before']}, after {report['load_average_after']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
