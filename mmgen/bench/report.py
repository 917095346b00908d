"""Benchmark results: aggregation over seeds, results.md/tex/csv/json, a terminal table and PNG plots.

Everything here reads what the runs left on disk (``eval.json``, ``metrics.jsonl``,
``bench-cross.png`` and ``bench.json`` in each run directory), so a report can be rebuilt at any
time without training or evaluating anything. The PNG plots are :mod:`mmgen.bench.plots`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmgen.errors import did_you_mean

#: What every logged training step records besides the model's statistics (mmgen.train).
LOOP_STATS = ("loss", "grad_norm", "steps_per_s", "time")
#: The model's statistics are namespaced by component kind (mmgen.model.MultimodalModel.forward);
#: which ones a component logs is known only once it runs.
STAT_GROUPS = ("objective", "prior", "inference")



# ----------------------------------------------------------------------------------------------
# Columns and aggregation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One number of the results table: ``metric/key`` (or ``metric/key/index`` into a list)."""

    key: str
    label: str
    better: str = "higher"  # higher | lower

    @property
    def metric(self) -> str:
        return self.key.split("/")[0]

    @property
    def arrow(self) -> str:
        return "↑" if self.better == "higher" else "↓"


#: How a metric is shown: its headline ``(key, label)`` pairs and which way is better
#: (:attr:`mmgen.evaluation.Metric.headlines` and ``better``, read by ``metric_presentation``).
Presentation = tuple[Sequence[tuple[str, str]], str]


def default_columns(metrics: Sequence[str], presentation: dict[str, Presentation] | None = None) -> list[Column]:
    """The headline numbers of ``metrics`` (a metric without headlines: ``metric/*``, every number it reports)."""
    columns = []
    for metric in metrics:
        headlines, better = (presentation or {}).get(metric, ((), "higher"))
        for key, label in headlines or [("*", metric)]:
            columns.append(Column(f"{metric}/{key}", label, better))
    return columns


def parse_columns(items: Any, metrics: Sequence[str], where: str = "evaluate.columns",
                  outputs: dict[str, Sequence[str]] | None = None,
                  presentation: dict[str, Presentation] | None = None) -> tuple[list[Column], list[str]]:
    """Columns from a bench file: ``metric/key`` strings or ``{key, label, better}`` mappings.

    ``outputs`` maps a metric to the keys it declares (:attr:`mmgen.evaluation.Metric.outputs`):
    a column naming another key of that metric is an error, since it could only ever be empty.
    ``presentation`` maps a metric to its headlines and direction (``metric_presentation``): the
    default columns, and a column's direction when the file does not say ``better:``.
    Returns the columns and one error line per bad entry (each naming its position).
    """
    if items is None:
        return default_columns(metrics, presentation), []
    if not isinstance(items, list) or not items:
        return [], [f"{where}: expected a non-empty list of metric/key names, got {items!r}"]
    columns, errors = [], []
    for i, item in enumerate(items):
        spec = {"key": item} if isinstance(item, str) else item
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
            errors.append(f"{where}[{i}]: expected 'metric/key' or {{key: metric/key, label: ..., better: higher|lower}}, got {item!r}")
            continue
        unknown = set(spec) - {"key", "label", "better"}
        if unknown:
            errors.append(f"{where}[{i}]: unknown key '{sorted(unknown)[0]}'; valid keys: key, label, better")
            continue
        key = spec["key"]
        metric = key.split("/")[0]
        if "/" not in key or metric not in metrics:
            errors.append(f"{where}[{i}]: '{key}' must be metric/key with a metric from evaluate.metrics ({', '.join(metrics)})")
            continue
        if error := _unreported(key, (outputs or {}).get(metric, ())):
            errors.append(f"{where}[{i}]: {error}")
            continue
        better = spec.get("better", (presentation or {}).get(metric, ((), "higher"))[1])
        if better not in ("higher", "lower"):
            errors.append(f"{where}[{i}].better: invalid value {better!r}; valid: higher, lower")
            continue
        if any(c.key == key for c in columns):
            errors.append(f"{where}[{i}]: '{key}' is already a column; each column once")
            continue
        columns.append(Column(key, str(spec.get("label", key)), better))
    return columns, errors


def _unreported(key: str, declared: Sequence[str]) -> str | None:
    """Why ``metric/key[/...]`` names nothing its metric reports (None when it may, or when the
    metric declares no outputs). ``metric/*`` stands for every number the metric reports."""
    metric, _, rest = key.partition("/")
    sub = rest.split("/")[0]
    if not declared or sub == "*" or sub in declared:
        return None
    return (f"'{key}': metric '{metric}' reports no '{sub}'{did_you_mean(sub, declared)}; "
            f"it reports: {', '.join(declared)}")


def check_indices(keys: Sequence[str], shapes: dict[str, dict[str, tuple[int, ...]]], modalities: int,
                  where: str = "evaluate.columns") -> list[str]:
    """One error line per column ``metric/key/i[/j]`` whose index lies outside the list ``key``
    holds with ``modalities`` modalities, or that names such a list without an index (a column
    that could only ever be empty). ``shapes`` maps a metric to :meth:`Metric.output_shapes`;
    a key it does not list is not checked. ``keys`` are in the bench file's order."""
    errors = []
    for i, key in enumerate(keys):
        metric, _, rest = key.partition("/")
        sub, *indices = rest.split("/")
        shape = shapes.get(metric, {}).get(sub)
        if not shape:
            continue
        holds = (f"{sub} has {shape[0]} entr{'y' if shape[0] == 1 else 'ies'}" if len(shape) == 1
                 else f"{sub} is {' x '.join(map(str, shape))}") + f" with {modalities} modalities"
        for part, n in zip(indices, shape):
            if not (part.isdigit() and int(part) < n):
                errors.append(f"{where}[{i}]: '{key}': index {part} is out of range; {holds} "
                              f"(valid: {f'0..{n - 1}' if n else 'none'})")
                break
        else:
            if len(indices) < len(shape):
                more = "".join(f"/<0..{n - 1}>" for n in shape[len(indices):])
                errors.append(f"{where}[{i}]: '{key}' is a list, not a number ({holds}); "
                              f"pick an entry: {key}{more}")
    return errors


def check_curves(curves: Sequence[str], periodic: dict[str, Sequence[str]], where: str = "report.curves") -> list[str]:
    """One error line per ``report.curves`` entry that no run can log: a curve is a training
    statistic (:data:`LOOP_STATS`, or ``objective/...``, ``prior/...``, ``inference/...``) or
    ``metric/key`` of a metric the runs evaluate during training. ``periodic`` maps each such
    metric to the keys it declares (empty: not declared)."""
    errors = []
    for i, key in enumerate(curves):
        group, _, rest = key.partition("/")
        if key in LOOP_STATS or (group in STAT_GROUPS and rest):
            continue
        if group in periodic and rest:
            if error := _unreported(key, periodic[group]):
                errors.append(f"{where}[{i}]: {error}")
            continue
        valid = [*LOOP_STATS, *(f"{g}/<statistic>" for g in STAT_GROUPS)]
        evaluated = (f"metric/key of a metric evaluated during training ({', '.join(periodic)})" if periodic
                     else "metric/key once the runs evaluate during training (train.eval_every)")
        errors.append(f"{where}[{i}]: '{key}' is not a logged statistic"
                      f"{did_you_mean(key, [*LOOP_STATS, *(f'{g}/' for g in STAT_GROUPS)])}; "
                      f"valid: {', '.join(valid)}, or {evaluated}")
    return errors


def expand_columns(columns: Sequence[Column], reports: Sequence[dict[str, Any]]) -> list[Column]:
    """Replace ``metric/*`` (a metric without a headline) by each single number it reported."""
    out: list[Column] = []
    for col in columns:
        if not col.key.endswith("/*"):
            out.append(col)
            continue
        keys: list[str] = []
        for report in reports:
            for key, value in (report.get(col.metric) or {}).items():
                if isinstance(value, float) and key not in keys:
                    keys.append(key)
        out += [Column(f"{col.metric}/{k}", f"{col.metric}/{k}", col.better) for k in keys]
    return out


def lookup(metrics: dict[str, Any], key: str) -> float | None:
    """The number at ``metric/key[/index]`` of an ``eval.json`` ``metrics`` mapping (None if absent)."""
    value: Any = metrics
    for part in key.split("/"):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class Cell:
    """One run's column over its seeds: mean, sample standard deviation (n - 1), count, values."""

    mean: float | None
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)


def summarize(values: Sequence[float | None]) -> Cell:
    """Mean and sample standard deviation of the finite values (std needs two or more)."""
    good = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not good:
        return Cell(None, None, 0, [])
    mean = sum(good) / len(good)
    std = math.sqrt(sum((v - mean) ** 2 for v in good) / (len(good) - 1)) if len(good) > 1 else None
    return Cell(mean, std, len(good), good)


def aggregate(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> dict[str, dict[str, Cell]]:
    """Per run and column, :func:`summarize` over the finished seeds.

    ``rows`` are per-seed records ``{"run", "seed", "status", "values": {column key: number}}``;
    only rows with status ``finished`` count. Runs keep their first-seen order.
    """
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    out = {}
    for run, run_rows in by_run.items():
        done = [r for r in run_rows if r.get("status") == "finished"]
        out[run] = {c.key: summarize([r["values"].get(c.key) for r in done]) for c in columns}
    return out


def best_runs(table: dict[str, dict[str, Cell]], columns: Sequence[Column]) -> dict[str, list[str]]:
    """Per column, the run(s) with the best mean (ties share it)."""
    best = {}
    for col in columns:
        means = {run: cells[col.key].mean for run, cells in table.items() if cells[col.key].mean is not None}
        if not means:
            best[col.key] = []
            continue
        target = max(means.values()) if col.better == "higher" else min(means.values())
        best[col.key] = [run for run, m in means.items() if math.isclose(m, target, rel_tol=1e-12, abs_tol=1e-15)]
    return best


def _decimals(value: float) -> int:
    return 3 if abs(value) < 100 else 1


def fmt(value: float | None) -> str:
    """A table number: 3 decimals below 100, 1 decimal above."""
    if value is None:
        return "–"
    return f"{value:.{_decimals(value)}f}"


def fmt_cell(cell: Cell) -> str:
    """``mean ± std`` (``mean`` alone for one seed, ``–`` for none); the std with the mean's
    decimals (``620.3 ± 4.2``, not ``620.3 ± 4.245``)."""
    if cell.mean is None:
        return "–"
    if cell.std is None:
        return fmt(cell.mean)
    d = _decimals(cell.mean)
    return f"{cell.mean:.{d}f} ± {cell.std:.{d}f}"


# ----------------------------------------------------------------------------------------------
# Collecting what the runs wrote
# ----------------------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The readable lines of a JSON-lines file."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def build_report(bench: dict[str, Any], runs: Sequence[dict[str, Any]], columns: Sequence[Column]) -> dict[str, Any]:
    """The benchmark's results as plain data (what results.json holds).

    ``bench`` describes the benchmark (name, data, budget, seeds, evaluation); ``runs`` are the
    planned (run, seed) records ``{"run", "seed", "run_dir", "config_hash", "eval_hash"}``.
    A seed counts as finished when its ``bench.json`` matches both hashes and ``eval.json`` exists.
    """
    seeds = []
    reports = []
    for planned in runs:
        run_dir = Path(planned["run_dir"])
        state = read_json(run_dir / "bench.json") or {}
        evaluation = read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else None
        current = state.get("config_hash") == planned["config_hash"]
        if current and state.get("eval_hash") == planned["eval_hash"] and evaluation is not None:
            status = "finished"
        elif current and state.get("status") in ("failed", "interrupted"):
            status = state["status"]  # interrupted: stopped with the benchmark, resumed by its next run
        elif state and not current:
            status = "stale"  # a changed config not re-run yet (e.g. excluded by --only)
        else:
            status = "not run" if not state else "incomplete"
        metrics = (evaluation or {}).get("metrics", {}) if status == "finished" else {}
        reports.append(metrics)
        error = state.get("error") if status in ("failed", "interrupted") else None
        seeds.append({"run": planned["run"], "seed": planned["seed"], "run_dir": str(run_dir), "status": status,
                      "config_hash": planned["config_hash"], "error": error,
                      "train_s": state.get("times", {}).get("train_s"), "eval_s": state.get("times", {}).get("eval_s"),
                      "step": (evaluation or {}).get("step") if status == "finished" else None,
                      "metrics": metrics})
    columns = expand_columns(columns, reports)
    for row in seeds:
        row["values"] = {c.key: lookup(row["metrics"], c.key) for c in columns}
    table = aggregate(seeds, columns)
    best = best_runs(table, columns)
    summary = []
    for run, cells in table.items():
        rows = [r for r in seeds if r["run"] == run]
        summary.append({
            "run": run,
            "seeds": [r["seed"] for r in rows],
            "finished": sum(r["status"] == "finished" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows),
            "columns": {k: asdict(c) for k, c in cells.items()},
            "best": [c.key for c in columns if run in best[c.key]],
        })
    report = {
        "name": bench["name"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bench": bench,
        "columns": [asdict(c) for c in columns],
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in seeds],
    }
    if empty := empty_columns(seeds, columns):
        report["notes"] = [f"evaluate.columns: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty in every "
                           "finished run: the metric reported no number there (e.g. the diagonal of "
                           "cross_coherence/matrix_1to1, a modality given itself)"]
    return report


def empty_columns(seeds: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[str]:
    """The columns with no finite value in any finished seed (none when no seed finished): a
    column the validation accepts (its index is in range) that its metric leaves null."""
    finished = [r for r in seeds if r["status"] == "finished"]
    return [c.key for c in columns if finished and not any(
        isinstance(v, (int, float)) and math.isfinite(v) for v in (r["values"][c.key] for r in finished))]


def report_columns(report: dict[str, Any]) -> list[Column]:
    """The table's columns as stored in a report."""
    return [Column(**c) for c in report["columns"]]


def summary_cell(entry: dict[str, Any], key: str) -> Cell:
    """One run's aggregated cell for column ``key`` as stored in a report."""
    return Cell(**entry["columns"][key])


# ----------------------------------------------------------------------------------------------
# results.md, results.csv, results.json, the terminal table
# ----------------------------------------------------------------------------------------------
def _settings_line(bench: dict[str, Any]) -> str:
    data = ", ".join(f"{k}={v}" for k, v in bench["data"].items() if k != "name")
    budget = ", ".join(f"{k}={v}" for k, v in bench["budget"].items())
    ev = bench["evaluate"]
    return (f"data `{bench['data']['name']}`" + (f" ({data})" if data else "") + f" · budget {budget} · seeds "
            f"{', '.join(map(str, bench['seeds']))} · evaluation {', '.join(ev['metrics'])} (n={ev['n']}"
            + (f", n_test={ev['n_test']}" if ev.get("n_test") else "")
            + ("" if ev.get("refine", True) else ", cross generation without refinement") + f", seed {ev['seed']})")


def _md_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: a ``|`` would end the cell (and shift every column)."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """results.md: one row per run, ``mean ± std`` over seeds, the best mean per column in bold."""
    columns = report_columns(report)
    lines = [f"# Benchmark `{report['name']}`", ""]
    if report["bench"].get("description"):
        lines += [report["bench"]["description"].strip(), ""]
    lines += [_settings_line(report["bench"]), ""]
    lines.append("| run | seeds | " + " | ".join(f"{_md_cell(c.label)} {c.arrow}" for c in columns) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for entry in report["summary"]:
        cells = []
        for col in columns:
            text = fmt_cell(summary_cell(entry, col.key))
            cells.append(f"**{text}**" if col.key in entry["best"] else text)
        lines.append(f"| {entry['run']} | {entry['finished']}/{len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation (n − 1) over the finished seeds; **bold**: the best mean "
              "in its column (↑ higher is better, ↓ lower is better)."]
    problems = [r for r in report["runs"] if r["status"] != "finished"]
    if problems:
        lines += ["", "Not in the table:", ""]
        for r in problems:
            why = f": {r['error']}" if r.get("error") else ""
            lines.append(f"- `{r['run']}` seed {r['seed']} — {r['status']}{why} (`{r['run_dir']}`)")
    plots = report.get("plots") or []
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{Path(p).name}]({p})" for p in plots)]
    if report.get("notes"):
        lines += ["", "Notes:", "", *(f"- {note}" for note in report["notes"])]
    if made := _provenance_line(report):
        lines += ["", made]
    return "\n".join(lines) + "\n"


def csv_text(report: dict[str, Any]) -> str:
    """results.csv: a row per run with each column's mean, std and seed count."""
    columns = report_columns(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["run", "seeds", "finished", "failed"]
    for col in columns:
        header += [f"{col.key} mean", f"{col.key} std", f"{col.key} n"]
    writer.writerow(header + ["best"])
    for entry in report["summary"]:
        row: list[Any] = [entry["run"], len(entry["seeds"]), entry["finished"], entry["failed"]]
        for col in columns:
            cell = summary_cell(entry, col.key)
            row += ["" if cell.mean is None else repr(cell.mean), "" if cell.std is None else repr(cell.std), cell.n]
        writer.writerow(row + [";".join(entry["best"])])
    return buf.getvalue()


def seeds_csv_text(report: dict[str, Any]) -> str:
    """results-seeds.csv: a row per (run, seed) with its status and every column's value."""
    columns = report_columns(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "seed", "status", "step", "train_s", "eval_s", *(c.key for c in columns), "run_dir"])
    for r in report["runs"]:
        values = ["" if r["values"].get(c.key) is None else repr(r["values"][c.key]) for c in columns]
        writer.writerow([r["run"], r["seed"], r["status"], r.get("step") or "", r.get("train_s") or "",
                         r.get("eval_s") or "", *values, r["run_dir"]])
    return buf.getvalue()


def rich_table(report: dict[str, Any]):
    """The results as a rich Table (best per column in bold green)."""
    from rich.table import Table

    columns = report_columns(report)
    table = Table(title=f"mmgen bench {report['name']}: mean ± std over seeds")
    table.add_column("run")
    table.add_column("seeds", justify="right")
    for col in columns:
        table.add_column(f"{col.label} {col.arrow}", justify="right")
    for entry in report["summary"]:
        cells = []
        for col in columns:
            text = fmt_cell(summary_cell(entry, col.key))
            cells.append(f"[bold green]{text}[/]" if col.key in entry["best"] else text)
        seeds = f"{entry['finished']}/{len(entry['seeds'])}"
        if entry["failed"]:
            seeds += f" [red]({entry['failed']} failed)[/]"
        table.add_row(entry["run"], seeds, *cells)
    return table


def provenance(bench_file: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """What made a report, for a reader to trust or redo a table: mmgen's version and git commit
    (when it runs from a checkout; ``+dirty`` with uncommitted changes), torch's and Python's
    versions, the bench file's SHA-256 and the ``command`` that wrote it."""
    import torch

    from mmgen import __version__

    commit = git_commit(Path(__file__).resolve().parents[2])  # the checkout (or site-packages) holding mmgen/
    digest = None
    if bench_file is not None and Path(bench_file).is_file():
        digest = hashlib.sha256(Path(bench_file).read_bytes()).hexdigest()
    return {"mmgen": __version__, "git": commit, "torch": torch.__version__, "python": platform.python_version(),
            "bench_file": str(bench_file) if bench_file is not None else None, "bench_file_sha256": digest,
            "command": command}


def git_commit(source: Path) -> str | None:
    """The commit of the git checkout ``source`` whose ``mmgen/`` this is (``+dirty`` with
    uncommitted changes); None when git is missing or ``mmgen/`` is not tracked there: a
    site-packages inside some checkout (a project's .venv) is not that checkout's code."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0 or git("ls-files", "--error-unmatch", "mmgen/bench/report.py").returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _provenance_line(report: dict[str, Any]) -> str | None:
    made = report.get("provenance")
    if not made:
        return None
    git = f" (git {made['git']})" if made.get("git") else ""
    file = f" from `{made['bench_file']}` (sha256 {made['bench_file_sha256'][:12]})" if made.get("bench_file_sha256") else ""
    command = f": `{made['command']}`" if made.get("command") else ""
    return f"Made by mmgen {made['mmgen']}{git}, torch {made['torch']}, Python {made['python']}{file} on {report['created']}{command}"


def write_results(report: dict[str, Any], out: Path) -> list[Path]:
    """results.md, results.tex, results.csv, results-seeds.csv and results.json in ``out``."""
    from mmgen.bench.latex import latex
    from mmgen.checkpoint import atomic_write_text
    from mmgen.evaluation import jsonable

    files = {
        "results.md": markdown(report),
        "results.tex": latex(report),
        "results.csv": csv_text(report),
        "results-seeds.csv": seeds_csv_text(report),
        "results.json": json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n",
    }
    paths = []
    for name, text in files.items():
        atomic_write_text(text, out / name)
        paths.append(out / name)
    return paths
