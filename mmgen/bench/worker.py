"""What runs in the worker processes: one run's training and evaluation, and the shared classifiers."""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmgen.bench.plan import check_column_indices, check_cross_given, read_state, write_state
from mmgen.bench.spec import CROSS_FILE, LOG_FILE, PARENT_ENV
from mmgen.errors import MMGenError


# ----------------------------------------------------------------------------------------------
# What runs in the worker processes
# ----------------------------------------------------------------------------------------------
def _enter(cwd: str | None, env: dict[str, str] | None, threads: int, log: Path) -> None:
    """Make a fresh worker process look like the bench process: environment, folder, output."""
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    if os.environ.get(PARENT_ENV, "").isdigit():
        _watch_parent(int(os.environ[PARENT_ENV]))
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _watch_parent(pid: int, every: float = 2.0) -> None:
    """End this worker (SIGTERM) when the benchmark process ``pid`` is gone, so that a killed
    benchmark leaves no run training on its own (its checkpoints are atomic: nothing is lost)."""
    import signal
    import threading

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except OSError:  # exists but is not ours to signal: still alive
                continue

    threading.Thread(target=watch, name="mmgen-bench-watch-parent", daemon=True).start()


def _mmgen(args: Sequence[str]) -> int:
    """Run one mmgen CLI command in this process; its exit code."""
    import shlex

    from typer.main import get_command

    from mmgen.cli.main import create_app

    print(f"\n$ mmgen {shlex.join(args)}", flush=True)
    command = get_command(create_app(with_plugin_commands=False))
    try:
        code = command.main(args=list(args), prog_name="mmgen", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    except Exception:  # click usage errors and bugs alike: the run fails, the benchmark goes on
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code if isinstance(code, int) else (0 if code is None else 1)


def _last_error(log: Path) -> str:
    """The last ``error: ...`` line of a log (else its last line), for the report."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^\w+(Error|Exception):", line):
            return line.removeprefix("error:").strip()[:300]
    return (lines[-1] if lines else "no output")[:300]


def save_cross(run_dir: Path, given: list[int], n: int, seed: int, refine: bool, device: str) -> Path | None:
    """``bench-cross.png``: the first ``n`` test tuples' given modalities, then every modality
    generated from them — the same tuples and random stream for every model of the benchmark."""
    import torch

    from mmgen.figures import save_grid
    from mmgen.generation import cross_rows
    from mmgen.run import load_run

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_run(run_dir, device)
    M = len(loaded.test_set.modalities)
    bad = [g for g in given if g >= M]
    if bad:
        raise MMGenError(f"report.cross_given: modality {bad[0]} does not exist (the data has {M} modalities)")
    batch = loaded.test_set.batch(torch.arange(min(n, len(loaded.test_set)))).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rows = cross_rows(loaded.model, batch, list(given), refine=refine)
    return save_grid(rows, run_dir / CROSS_FILE)


def execute_run(run_dir: str, cwd: str | None = None, env: dict[str, str] | None = None, threads: int = 0) -> int:
    """A worker process's whole job for one run: train (or resume), evaluate, draw the cross grid.

    Reads the job from ``RUN_DIR/bench.json`` (written by :func:`stage`), appends everything it
    prints to ``RUN_DIR/bench.log``, and records progress and the outcome in ``bench.json``.
    Returns 0 on success, 1 on failure (never raises).
    """
    path = Path(run_dir)
    log = path / LOG_FILE
    _enter(cwd, env, threads, log)
    state = read_state(path) or {}
    job = state.get("job", {})
    times = state.setdefault("times", {})
    state["attempts"] = state.get("attempts", 0) + 1
    print(f"\n=== mmgen bench: {job.get('action')} {path.name} (attempt {state['attempts']}, "
          f"pid {os.getpid()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}) ===", flush=True)

    def fail(message: str) -> int:
        state.update(status="failed", error=message)
        write_state(path, state)
        print(f"=== failed: {message} ===", flush=True)
        return 1

    try:
        if job.get("action") in ("train", "resume"):
            state.update(status="training", error=None)
            write_state(path, state)
            t0 = time.perf_counter()
            code = _mmgen(job["train"])
            times["train_s"] = round(times.get("train_s", 0.0) + time.perf_counter() - t0, 3)
            if code != 0:
                return fail(f"training failed (exit code {code}): {_last_error(log)}")
        state.update(status="evaluating", error=None, eval_hash=None)
        write_state(path, state)
        t0 = time.perf_counter()
        code = _mmgen(job["evaluate"])
        if code != 0:
            return fail(f"evaluation failed (exit code {code}): {_last_error(log)}")
        cross = job["cross"]
        save_cross(path, cross["given"], cross["n"], cross["seed"], cross["refine"], cross["device"])
        times["eval_s"] = round(time.perf_counter() - t0, 3)
        state.update(status="finished", eval_hash=job["eval_hash"], last_eval_hash=job["eval_hash"])
        write_state(path, state)
        print("=== finished ===", flush=True)
        return 0
    except MMGenError as exc:
        return fail(str(exc))
    except BaseException as exc:  # noqa: BLE001 - a worker must record every way it can end
        traceback.print_exc()
        return fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def prepare_classifiers(path: str | None, cfg: dict[str, Any], settings: dict[str, Any] | None, log: str,
                        cross_given: Sequence[int] = (), columns: Sequence[str] = (), cwd: str | None = None,
                        env: dict[str, str] | None = None, threads: int = 0,
                        metrics: Sequence[str] | None = None) -> int:
    """Build the dataset and the digit classifiers once, before the runs (so parallel evaluations
    do not each train them). ``path`` None: the shared cache with the default settings. The
    loaded data also checks ``report.cross_given`` and the indices of the table's ``columns``
    (their keys, in the bench file's order) where the config alone could not tell. When none of
    ``metrics`` (None: assume some) needs the classifiers (e.g. only ``nll``), none are trained."""
    _enter(cwd, env, threads, Path(log))
    try:
        from mmgen.classifiers import ClassifierConfig, default_path, ensure_classifiers, load_classifiers
        from mmgen.plugins import create_plugin_manager
        from mmgen.train import load_datasets

        plugins = create_plugin_manager([str(m) for m in cfg.get("plugins") or []])
        train_set, test_set = load_datasets(cfg, plugins)
        count = len(train_set.modalities)
        if errors := [*check_cross_given(cross_given, cfg["data"], count),
                      *check_column_indices(columns, plugins.registry, cfg["data"], count)]:
            raise MMGenError(errors[0])
        if metrics is not None and not any(getattr(plugins.registry.get("metric", m).factory, "requires_classifiers", True)
                                           for m in metrics):
            print(f"data ready; no classifiers needed by {', '.join(metrics) or 'the metrics'}", flush=True)
            return 0
        target = Path(path) if path else default_path(train_set)
        if target.is_file():
            try:
                load_classifiers(target, train_set)
                print(f"classifiers ready: {target}", flush=True)
                return 0
            except MMGenError as exc:
                print(f"retraining the classifiers: {exc}", flush=True)
                target.unlink()
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ccfg = ClassifierConfig(**(settings or {}))
        print(f"training digit classifiers into {target} ({ccfg})", flush=True)
        classifiers = ensure_classifiers(train_set, test_set, target, device, cfg=ccfg, progress=False)
        print(f"classifier test accuracy: {classifiers.meta.get('test_accuracy')}", flush=True)
        return 0
    except MMGenError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1


def _exit_with(fn: Callable[..., int], *args: Any) -> None:
    """Process target: run ``fn`` and exit with its return code."""
    code = fn(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip atexit handlers inherited from the fork server
