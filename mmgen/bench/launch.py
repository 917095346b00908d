"""Launchers (who starts the worker processes: local fork server or submitit) and executing a plan."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from mmgen.bench.plan import Plan, PlannedRun, _digest, evaluate_args, read_json_file, read_state, train_args, write_state
from mmgen.bench.spec import CONFIG_FILE, LOG_FILE, PARENT_ENV, PRELOAD
from mmgen.bench.worker import _exit_with, _last_error, execute_run, prepare_classifiers
from mmgen.checkpoint import atomic_write_text
from mmgen.config import to_yaml
from mmgen.errors import MMGenError


# ----------------------------------------------------------------------------------------------
# Launchers: who starts the worker processes
# ----------------------------------------------------------------------------------------------
@dataclass
class Task:
    """One worker process: ``fn(*args, cwd, env, threads)``; 0 means success."""

    label: str
    fn: Callable[..., int]
    args: tuple
    log: Path


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - a broken driver means no GPU here
        return []


class LocalLauncher:
    """Up to ``jobs`` worker processes at once on this machine, each forked from a fork server.

    With several visible GPUs, each process gets one (``CUDA_VISIBLE_DEVICES``), round robin over
    the job slots; without a GPU and with several jobs, each gets ``cpu_count // jobs`` threads.
    """

    name = "local"

    def __init__(self, jobs: int = 1, gpus: Sequence[str] | None = None):
        self.jobs = max(1, jobs)
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            self.ctx.set_forkserver_preload(PRELOAD)

    def slots(self) -> list[str | None]:
        if len(self.gpus) > 1:
            return [self.gpus[i % len(self.gpus)] for i in range(self.jobs)]
        return [None] * self.jobs

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task, str], None],
            on_done: Callable[..., None]) -> dict[str, int]:
        """Run ``tasks``, at most ``jobs`` at once; ``on_done(task, exit code)`` as each ends. An
        interruption (Ctrl-C, or SIGTERM through ``mmgen bench``) terminates the running ones,
        calls ``on_done(task, code, True)`` for each, and propagates."""
        threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 and not self.gpus else 0
        pending, free = list(tasks), self.slots()
        running: dict[Any, tuple[Task, Any, str | None]] = {}
        codes: dict[str, int] = {}
        try:
            while pending or running:
                while pending and free:
                    task, slot = pending.pop(0), free.pop(0)
                    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
                    if slot is not None:
                        env["CUDA_VISIBLE_DEVICES"] = slot
                    proc = self.ctx.Process(target=_exit_with, name=f"mmgen-bench {task.label}",
                                            args=(task.fn, *task.args, os.getcwd(), env, threads))
                    with _interrupts_deferred():  # a started worker is always in `running`
                        proc.start()
                        running[proc.sentinel] = (task, proc, slot)
                    on_start(task, f"pid {proc.pid}" + (f", GPU {slot}" if slot is not None else ""))
                for sentinel in wait_for(list(running)):
                    task, proc, slot = running.pop(sentinel)
                    proc.join()
                    free.append(slot)
                    codes[task.label] = proc.exitcode if proc.exitcode is not None else 1
                    on_done(task, codes[task.label])
        except BaseException:
            for _, proc, _ in running.values():  # an interrupted benchmark leaves no orphans
                proc.terminate()
            for task, proc, _ in running.values():
                proc.join(10)
                on_done(task, proc.exitcode if proc.exitcode is not None else -15, True)  # interrupted
            raise
        return codes


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Inside: Ctrl-C (SIGINT) and SIGTERM are held and delivered on leaving.

    Starting a worker can take seconds (the first start launches the fork server, which imports
    torch and mmgen); an interruption in that window used to leave a worker that had been forked
    but not yet recorded: not terminated, never reported as interrupted, training on until its
    parent-watch noticed the benchmark was gone (or the benchmark waiting for it at exit). The
    same holds for a Slurm job submitted but not yet recorded: it would never be cancelled.
    """
    import signal

    held: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signals}
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
        if held:
            signal.raise_signal(held[0])  # now the previous handler acts (KeyboardInterrupt for Ctrl-C)


class SubmititLauncher:
    """Every task as a job of an existing scheduler through submitit (Slurm, or its local executor).

    ``params`` are submitit's (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``,
    ``slurm_partition``, ``slurm_account``, ...): the bench file's ``slurm:`` mapping.
    """

    def __init__(self, cluster: str, folder: Path, params: dict[str, Any] | None = None):
        try:
            import submitit
        except ImportError:
            raise MMGenError("--launcher slurm needs submitit, which is not installed: pip install 'mmgen[slurm]' "
                             "(or pip install submitit)") from None
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            params = dict(params or {})
            params.setdefault("timeout_min", 24 * 60)
            self.executor.update_parameters(**params)
        except Exception as exc:  # noqa: BLE001 - no sbatch here, a bad parameter, ...
            raise MMGenError(f"--launcher {self.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task, str], None],
            on_done: Callable[..., None]) -> dict[str, int]:
        """Submit every task, then ``on_done(task, exit code)`` as each job ends. An interruption
        (Ctrl-C, or SIGTERM through ``mmgen bench``) cancels the jobs not done, calls
        ``on_done(task, -15, True)`` for each, and propagates, as the local launcher does."""
        jobs = []
        codes: dict[str, int] = {}
        try:
            for task in tasks:
                self.executor.update_parameters(name=f"mmgen-{task.label}")
                with _interrupts_deferred():  # a submitted job is always in `jobs`, to be cancelled
                    job = self.executor.submit(task.fn, *task.args, os.getcwd(), None, 0)
                    jobs.append((task, job))
                on_start(task, f"job {job.job_id}")
            while len(codes) < len(jobs):
                for task, job in jobs:
                    if task.label in codes or not job.done():
                        continue
                    try:
                        code = job.result()
                    except Exception as exc:  # noqa: BLE001 - killed, timed out, node failure
                        _append(task.log, f"\n=== {self.name} job {job.job_id} failed: {str(exc)[-2000:]} ===\n")
                        code = 1
                    codes[task.label] = int(code or 0)
                    on_done(task, codes[task.label])
                time.sleep(1.0)
        except BaseException:
            for task, job in jobs:
                if task.label not in codes:
                    job.cancel(check=False)
                    on_done(task, -15, True)  # interrupted: "interrupted" in the report, not "incomplete"
            raise
        return codes


@contextlib.contextmanager
def _locked(bench_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the benchmark folder: two benchmarks writing the same run
    directories at once would corrupt each other's runs."""
    with (bench_dir / ".lock").open("a+") as handle:
        try:
            import fcntl
        except ImportError:  # no fcntl on this platform: no lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise MMGenError(f"{bench_dir} is in use by another mmgen bench ({owner}); wait for it or use --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield  # closing the file releases the lock


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(text)


def make_launcher(name: str, plan: Plan, jobs: int) -> LocalLauncher | SubmititLauncher:
    """``local`` (processes on this machine), ``slurm`` or ``submitit-local`` (submitit executors)."""
    if name == "local":
        return LocalLauncher(jobs)
    if name in ("slurm", "submitit-local"):
        return SubmititLauncher("slurm" if name == "slurm" else "local", plan.bench_dir / "submitit",
                                plan.spec.slurm)
    raise MMGenError(f"--launcher: invalid value '{name}'; valid: local, slurm, submitit-local")


# ----------------------------------------------------------------------------------------------
# Executing a plan
# ----------------------------------------------------------------------------------------------
def stage(plan: Plan, p: PlannedRun) -> None:
    """Prepare a run directory for its worker: a changed or foreign one is replaced; the job goes
    into ``bench.json`` and, for a fresh run, the resolved config into ``bench-config.yaml``."""
    if p.action == "train" and p.run_dir.exists():
        shutil.rmtree(p.run_dir)
    p.run_dir.mkdir(parents=True, exist_ok=True)
    if p.action == "train":
        atomic_write_text(to_yaml(p.config), p.run_dir / CONFIG_FILE)
    state = read_state(p.run_dir) or {}
    ev = plan.spec.evaluate
    state.update({
        "run": p.run, "seed": p.seed, "config_hash": p.config_hash, "status": "queued", "error": None,
        "job": {"action": p.action, "train": train_args(p), "evaluate": evaluate_args(plan, p), "eval_hash": p.eval_hash,
                "cross": {"given": plan.spec.report["cross_given"], "n": plan.spec.report["cross_n"],
                          "seed": ev["seed"], "refine": ev["refine"], "device": p.config["train"]["device"]}},
    })
    state["eval_hash"] = None  # until this job's evaluation has finished
    write_state(p.run_dir, state)


def execute(plan: Plan, launcher: LocalLauncher | SubmititLauncher, console: Any) -> dict[str, str]:
    """Prepare the classifiers, then run every selected run that needs it; never stops at a
    failed run. Returns ``{run id: "finished" | "failed: reason"}`` for the runs it started
    (``"interrupted: ..."`` for those an interruption stopped, before it propagates)."""
    todo = plan.todo
    outcome: dict[str, str] = {}
    if not todo:
        return outcome
    plan.bench_dir.mkdir(parents=True, exist_ok=True)
    with _locked(plan.bench_dir):
        _execute(plan, todo, launcher, console, outcome)
    return outcome


def _execute(plan: Plan, todo: list[PlannedRun], launcher: LocalLauncher | SubmititLauncher, console: Any,
             outcome: dict[str, str]) -> None:
    def started(task: Task, where: str) -> None:
        console.print(f"[cyan]started[/] {task.label} ({where}; log {task.log})")

    if plan.metrics:
        # Once per dataset, classifier settings and what the loaded data checks (cross_given, the
        # columns' indices): a re-run (or a Slurm re-submission) skips it.
        log, marker = plan.bench_dir / "prepare.log", plan.bench_dir / "prepare.json"
        settings, given = plan.spec.evaluate["classifiers"], plan.spec.report["cross_given"]
        columns = [c.key for c in plan.columns]
        # What the classifiers judge: the bench's evaluation and the runs' evaluations during training.
        metrics = sorted({*plan.metrics, *(m for p in todo if p.config["train"]["eval_every"]
                                           for m in p.config["train"]["eval_metrics"])})
        key = _digest({"data": todo[0].config["data"], "plugins": todo[0].config.get("plugins"), "classifiers": settings,
                       "cross_given": given, "columns": columns, "metrics": metrics})
        path = str(plan.classifiers_path.resolve()) if plan.classifiers_path else None
        done_before = (read_json_file(marker) or {}).get("key") == key and (path is None or Path(path).is_file())
        if not done_before:
            prep = Task("prepare", partial(prepare_classifiers, metrics=metrics),
                        (path, todo[0].config, settings, str(log.resolve()), given, columns), log)
            codes = launcher.run([prep], started, lambda *_: None)
            if codes.get("prepare") != 0:
                raise MMGenError(f"preparing the data and classifiers failed: {_last_error(log)} (see {log})")
            atomic_write_text(json.dumps({"key": key}) + "\n", marker)

    for p in todo:
        stage(plan, p)
    by_label = {p.id: p for p in todo}

    start = time.monotonic()

    def count() -> str:
        """How far the benchmark is: runs ended of those to run, and the time since the first started."""
        return f" [{len(outcome)}/{len(todo)} in {(time.monotonic() - start) / 60:.0f} min]"

    def done(task: Task, code: int, interrupted: bool = False) -> None:
        p = by_label[task.label]
        state = read_state(p.run_dir) or {}
        if code == 0 and state.get("status") == "finished":
            t = state.get("times", {})
            outcome[p.id] = "finished"
            console.print(f"[green]finished[/] {p.id} (train {t.get('train_s', 0):.0f} s, eval {t.get('eval_s', 0):.0f} s)"
                          + count())
        elif interrupted:  # Ctrl-C or kill stopped the benchmark, and the launcher this run: not its failure
            was = state.get("status")  # "failed" when the worker saw the Ctrl-C itself first
            reason = f"stopped while {was if was in ('queued', 'training', 'evaluating') else 'running'}; " \
                     "the same command continues it"
            state.update(status="interrupted", error=reason)
            write_state(p.run_dir, state)
            outcome[p.id] = f"interrupted: {reason}"
            console.print(f"[yellow]interrupted[/] {p.id}: {reason} (log {p.run_dir / LOG_FILE})" + count())
        else:
            reason = state.get("error") if state.get("status") == "failed" else None
            if reason is None and code < 0:
                reason = f"stopped by signal {-code} while {state.get('status', 'starting')}"
            reason = reason or f"worker exited with code {code}: {_last_error(p.run_dir / LOG_FILE)}"
            if state.get("status") != "failed":
                state.update(status="failed", error=reason)
                write_state(p.run_dir, state)
            outcome[p.id] = f"failed: {reason}"
            console.print(f"[red]failed[/] {p.id}: {reason} (log {p.run_dir / LOG_FILE})" + count())

    tasks = [Task(p.id, execute_run, (str(p.run_dir.resolve()),), p.run_dir / LOG_FILE) for p in todo]
    launcher.run(tasks, started, done)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
def write_report(plan: Plan, command: str | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Collect every planned run's results and write results.md/tex/csv/json and the plots
    (``command``: the one that wrote them, for the record)."""
    from mmgen.bench import report as br
    from mmgen.bench.plots import write_plots

    result = br.build_report(plan.spec.summary(plan.metrics), [p.record() for p in plan.runs], plan.columns)
    result["provenance"] = br.provenance(plan.spec.path, command)
    names: list[str] = []
    for r in result["runs"]:
        if r["status"] == "finished":
            ev = br.read_json(Path(r["run_dir"]) / "eval.json") or {}
            names = [m["name"] for m in ev.get("dataset", {}).get("modalities", [])]
            break
    given = plan.spec.report["cross_given"]
    rows = [f"{names[g]} (given)" for g in given if g < len(names)] + [f"→ {n}" for n in names]
    plots = write_plots(result, plan.bench_dir / "plots", plan.spec.report["curves"], rows)
    result["plots"] = [str(p.relative_to(plan.bench_dir)) for p in plots]
    files = br.write_results(result, plan.bench_dir)
    return result, files + plots
