"""``mmgen classifiers train``: the per-modality digit classifiers evaluation uses (SPEC section 3).

``mmgen evaluate`` finds them by the dataset's fingerprint and trains them on first use; this
command trains them ahead of time (or again, with ``--force``) and reports their test accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmgen.cli import options as o
from mmgen.cli.common import err_console, out_console, resolved_config, user_errors
from mmgen.errors import MMGenError

classifiers_app = typer.Typer(help="Train the digit classifiers that judge coherence and give FD its features.",
                              no_args_is_help=True)


@classifiers_app.command("train")
@user_errors
def train(
    data: o.Data = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to save them (default: the cache, keyed by the dataset's fingerprint).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs over the training split (at least --min-steps updates).")] = 4,
    min_steps: Annotated[int, typer.Option("--min-steps", min=0, help="Minimum updates per classifier (small datasets).")] = 600,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Retrain even if classifiers for this dataset exist.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="data.key=value options of the dataset (e.g. data.modalities=2).")] = None,
) -> None:
    """Train one classifier per modality on the training split, save it, report test accuracy."""
    from mmgen.classifiers import ClassifierConfig, default_path, ensure_classifiers, train_classifiers, save_classifiers
    from mmgen.train import load_datasets

    bad = [x for x in overrides or [] if not x.startswith("data.")]
    if bad:
        raise MMGenError(f"only data.* options apply to classifiers, got '{bad[0]}'")
    if not (math.isfinite(lr) and lr > 0):  # before any data loads; Adam's own check is a traceback
        raise MMGenError(f"--lr: must be a finite number > 0, got {lr}")
    cfg, plugins = resolved_config(None, None, o.shortcuts(data=data or "default"), overrides)
    train_set, test_set = load_datasets(cfg, plugins)
    path = out or default_path(train_set)
    dev = resolve_device(device)
    ccfg = ClassifierConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, min_steps=min_steps)
    if path.is_file() and not force:
        classifiers = ensure_classifiers(train_set, test_set, path, dev)
        err_console.print(f"classifiers for this dataset already exist: {path} (use --force to retrain)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after training
        classifiers = train_classifiers(train_set, test_set, ccfg, dev, err_console, progress)
        save_classifiers(classifiers, path)
        err_console.print(f"[green]saved:[/] {path}")
    print_accuracies(classifiers.meta, [m.name for m in train_set.modalities])


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise MMGenError(f"--device: invalid value '{device}'; valid: auto, cpu, cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MMGenError("--device: 'cuda' requested but no CUDA device is available; use auto or cpu")
    return device


def print_accuracies(meta: dict, names: list[str]) -> None:
    """A table of each modality's classifier test accuracy (plain and class-balanced)."""
    from rich.table import Table

    table = Table(title=f"digit classifiers (dataset {meta.get('fingerprint')})")
    table.add_column("modality")
    table.add_column("test accuracy", justify="right")
    table.add_column("balanced", justify="right")
    for name, acc, bal in zip(names, meta.get("test_accuracy") or [], meta.get("test_balanced_accuracy") or []):
        table.add_row(name, f"{acc:.4f}", f"{bal:.4f}")
    out_console.print(table)
