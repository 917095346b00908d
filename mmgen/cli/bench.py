"""``mmgen bench FILE``: run a benchmark (many runs, one protocol) and report the results."""

from __future__ import annotations

import contextlib
import shlex
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from mmgen.cli.common import err_console, out_console, user_errors


@user_errors
def bench(
    file: Annotated[Path, typer.Argument(help="A bench file (YAML): runs (an entry listing several components or "
                                              "grid values is one run per combination), seeds, data, budget, "
                                              "evaluation; see docs/bench.md.")],
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only these runs (NAME, NAME-sSEED or a glob; repeatable). The report still covers every run.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate every run's config and print the plan; start nothing.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once on this machine (one per GPU when several are visible).")] = 1,
    launcher: Annotated[str, typer.Option(help="local (processes here), slurm (submitit; the bench file's slurm: sets its parameters) or submitit-local.")] = "local",
    out: Annotated[Optional[Path], typer.Option(help="Benchmark folder (default: bench/<name>).")] = None,
) -> None:
    """Train and evaluate every run of a benchmark with the same data, budget and evaluation.

    Each (run, seed) is a normal run directory under OUT/runs/. Finished runs are skipped when the
    command runs again; a run whose config changed is redone; a failed run is reported and the
    others go on. Writes results.md, results.tex (LaTeX), results.csv, results.json and plots/ to OUT.
    """
    from mmgen.bench import commands, execute, load_spec, make_launcher, make_plan, write_report
    from mmgen.bench.plan import check_owner, claim_owner
    from mmgen.bench.report import rich_table
    from mmgen.errors import MMGenError

    if launcher not in ("local", "slurm", "submitit-local"):
        raise MMGenError(f"--launcher: invalid value '{launcher}'; valid: local, slurm, submitit-local")
    # The invocation, for the report's record (from the options: sys.argv is another program's under a test runner).
    command = shlex.join(["mmgen", "bench", str(file), *[a for o in only or [] for a in ("--only", o)],
                          *(["--jobs", str(jobs)] if jobs != 1 else []), *(["--launcher", launcher] if launcher != "local" else []),
                          *(["--out", str(out)] if out is not None else [])])
    spec = load_spec(file)
    bench_dir = out or Path("bench") / spec.name
    check_owner(spec, bench_dir, explicit_out=out is not None)
    plan = make_plan(spec, bench_dir, only or [])
    print_plan(plan, out_console if dry_run else err_console)
    if dry_run:
        for p in plan.todo:
            for step in commands(plan, p):
                out_console.print(shlex.join(step), soft_wrap=True, markup=False, highlight=False)
        out_console.print(f"dry run: {len(plan.runs)} run configs valid; {len(plan.todo)} would run; nothing started")
        path = plan.runs[0].config["data"].get("path") if plan.todo else None  # every run has the same data
        if isinstance(path, str) and path and not Path(path).expanduser().exists():
            err_console.print(f"[yellow]note:[/] data.path {escape(path)} does not exist here: the runs would stop "
                              "where the data are first read, unless the dataset creates it", soft_wrap=True)
        return
    t0 = time.perf_counter()
    claim_owner(spec, bench_dir)
    runner = make_launcher(launcher, plan, jobs) if plan.todo else None
    try:
        with _sigterm_as_interrupt():
            outcome = execute(plan, runner, err_console) if runner is not None else {}
    except KeyboardInterrupt:
        # The report still says what finished and what was stopped (a second Ctrl-C skips it).
        if plan.bench_dir.is_dir():
            try:
                write_report(plan, command)
            except Exception as exc:  # noqa: BLE001 - the interruption is what to report
                err_console.print(f"[yellow]note:[/] no report written: {escape(str(exc))}", soft_wrap=True)
            else:
                err_console.print(f"wrote {bench_dir}/results.md (the stopped runs are listed as interrupted; "
                                  "the same command continues them)", soft_wrap=True)
        raise
    result, files = write_report(plan, command)
    out_console.print(rich_table(result))
    for note in result.get("notes", []):
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    failed = [k for k, v in outcome.items() if v != "finished"]
    err_console.print(f"wrote {bench_dir}/results.md, results.tex, results.csv, results.json and {len(result.get('plots', []))} "
                      f"plots in {bench_dir}/plots ({time.perf_counter() - t0:.0f} s)")
    if failed:
        err_console.print(f"[red]{len(failed)} run(s) failed:[/] {', '.join(failed)} (reasons in results.md)")
        raise typer.Exit(1)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """``kill`` (SIGTERM) stops a benchmark like Ctrl-C: its running runs are stopped and recorded."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_plan(plan, console) -> None:
    """A table: every (run, seed), what it needs and why."""
    from rich.table import Table

    colours = {"train": "yellow", "resume": "cyan", "evaluate": "blue", "skip": "green"}
    table = Table(title=f"mmgen bench {plan.spec.name}: plan ({plan.bench_dir})")
    for name in ("run", "seed", "action", "why", "config"):
        table.add_column(name)
    for p in plan.runs:
        action = p.action if p.selected else f"{p.action} (not selected)"
        colour = colours.get(p.action, "white") if p.selected else "dim"
        table.add_row(p.run, str(p.seed), f"[{colour}]{action}[/]", p.reason, p.config_hash)
    console.print(table)
