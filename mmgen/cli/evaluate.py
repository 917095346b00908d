"""``mmgen evaluate``: the SPEC section 3 protocol on a trained run.

Loads the checkpoint through the registry, finds (or trains) the digit classifiers, runs the
metrics with a progress bar, prints a table, writes ``eval.json`` and the figure grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmgen.cli.common import data_override, err_console, note_unfinished, out_console, user_errors
from mmgen.errors import CheckpointError, MMGenError


@user_errors
def evaluate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `mmgen train` (or a checkpoint file).")],
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metrics (default: all registered; see `mmgen plugins`).")] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Unconditional samples for joint coherence and FD.")] = 10_000,
    data: Annotated[Optional[str], typer.Option(help="Evaluate on another dataset with the same modalities: NAME or NAME:PATH.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print eval.json to stdout instead of a table.")] = False,
    classifiers: Annotated[Optional[Path], typer.Option(help="Classifiers file (default: the cache, trained on first use).")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option("--inception-weights", envvar="MMGEN_INCEPTION_WEIGHTS",
                                                              help="Local Inception-v3 weights: enables true FID.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for eval.json and figures/ (default: RUN_DIR).")] = None,
    n_test: Annotated[int, typer.Option("--n-test", min=0, help="Use only the first N test tuples (0 = all).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Evaluation batch size.")] = 256,
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="Refine cross-generation latents with the inference method (posterior Langevin).")] = True,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Save the figure grids.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    options: Annotated[Optional[list[str]], typer.Argument(help="Metric options, e.g. nll.k=1000 probe.max_train=5000.")] = None,
) -> None:
    """Evaluate a trained run: coherence, FD (and FID), latent probe, NLL; eval.json and figures.

    Classifiers are found by the dataset's fingerprint (trained and cached on first use); ones
    trained on another dataset are refused. --data NAME:PATH evaluates the run on another dataset
    with the same modalities (results then go to RUN_DIR/eval-<fingerprint>/).
    """
    import torch

    from mmgen import __version__
    from mmgen.classifiers import dataset_fingerprint, ensure_classifiers
    from mmgen.cli.classifiers import resolve_device
    from mmgen.config import parse_overrides
    from mmgen.evaluation import build_metrics, evaluate as run_evaluation, metric_options_used, parse_metric_names, write_report
    from mmgen.generation import save_figures
    from mmgen.run import load_run

    dev = resolve_device(device)
    override = data_override(run_dir, data) if data else None
    try:
        loaded = load_run(run_dir, dev, override)
    except CheckpointError as exc:
        if override is None:
            raise
        raise MMGenError(f"--data {data}: the dataset does not fit the run's model (different modalities?): {exc}") from None
    note_unfinished(loaded)
    registry = loaded.plugins.registry
    names = parse_metric_names(metrics, registry)
    opts: dict[str, Any] = parse_overrides(list(options)) if options else {}
    if inception_weights is not None and "fid" in names:
        opts.setdefault("fid", {})["weights"] = str(inception_weights)
    built = build_metrics(registry, names, opts)

    train_set, test_set = loaded.train_set, loaded.test_set
    fingerprint = dataset_fingerprint(train_set)
    out_dir = out or (loaded.run_dir / f"eval-{fingerprint}" if data else loaded.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after the evaluation
    judges = None
    if any(m.requires_classifiers for m in built):
        if classifiers is not None and not classifiers.is_file():
            raise MMGenError(f"--classifiers {classifiers}: file not found; make it with `mmgen classifiers train "
                             f"--out {classifiers}`, or leave --classifiers out to use the cache")
        judges = ensure_classifiers(
            train_set, test_set, classifiers, dev, err_console, progress=progress,
            on_train=lambda p: err_console.print(f"training digit classifiers for dataset {fingerprint} "
                                                 f"(first use; saved to {p})"))
    result = run_evaluation(loaded.model, train_set, test_set, built, classifiers=judges, device=dev, n=n,
                            batch_size=batch_size, seed=seed, refine=refine, n_test=n_test,
                            console=err_console, progress=progress)
    paths: list[Path] = []
    if figures:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            paths = save_figures(loaded.model, test_set, out_dir / "figures", dev, chain=True)

    report = {
        "command": _command_line(ctx),
        "mmgen_version": __version__,
        "run_dir": str(loaded.run_dir),
        "step": loaded.step,
        "seed": seed,
        "device": dev,
        "n": n,
        "n_test": min(n_test or len(test_set), len(test_set)),
        "batch_size": batch_size,
        "refine": refine,
        "dataset": {
            "config": loaded.config["data"],
            "fingerprint": fingerprint,
            "test_fingerprint": dataset_fingerprint(test_set),
            "modalities": [{"name": m.name, "shape": list(m.shape)} for m in test_set.modalities],
            "train_size": len(train_set),
            "test_size": len(test_set),
        },
        "classifiers": judges.summary() if judges is not None else None,
        "metric_options": metric_options_used(built),
        "metrics": result.metrics,
        "timings_s": result.timings,
        "figures": [str(p) for p in paths],
    }
    path = write_report(report, out_dir / "eval.json")
    if json_output:
        typer.echo(path.read_text(), nl=False)
    else:
        print_report(report)
        err_console.print(f"wrote {path}" + (f" and {len(paths)} figures in {out_dir / 'figures'}" if paths else ""))


def _command_line(ctx: typer.Context) -> str:
    """The command as the user could retype it (the options that differ from their defaults)."""
    import shlex

    parts = ["mmgen", "evaluate"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            parts += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]
        elif value is not None and value != param.default and param.opts:
            if getattr(param, "is_flag", False):
                parts.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
            else:
                parts += [param.opts[0], str(value)]
    return shlex.join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return "  ".join(_fmt(v) for v in value) if len(value) <= 12 else f"({len(value)} values in eval.json)"
    return f"({len(value)} entries in eval.json)" if isinstance(value, (list, dict)) else str(value)


def print_report(report: dict[str, Any]) -> None:
    """Rich tables: every metric's values, the 1->1 coherence matrix, the classifiers' accuracy."""
    from rich.table import Table

    names = [m["name"] for m in report["dataset"]["modalities"]]
    table = Table(title=f"mmgen evaluate: {report['run_dir']} (step {report['step']}, seed {report['seed']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, values in report["metrics"].items():
        if "skipped" in values:
            table.add_row(metric, f"[yellow]skipped:[/] {values['skipped']}")
            continue
        for key, value in values.items():
            if key.startswith("matrix_"):
                continue
            table.add_row(f"{metric}/{key}", _fmt(value))
    out_console.print(table)
    cross = report["metrics"].get("cross_coherence", {})
    if "matrix_1to1" in cross:
        matrix = Table(title="cross coherence 1->1 (row: given, column: generated)")
        matrix.add_column("")
        for name in names:
            matrix.add_column(name, justify="right")
        for name, row in zip(names, cross["matrix_1to1"]):
            matrix.add_row(name, *("-" if v is None else _fmt(v) for v in row))
        out_console.print(matrix)
    if report.get("classifiers"):
        c = report["classifiers"]
        acc = "  ".join(f"{n} {a:.4f}" for n, a in zip(names, c.get("test_accuracy") or []))
        out_console.print(f"classifier test accuracy: {acc}  ({c.get('path')})")

