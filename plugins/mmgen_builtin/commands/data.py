"""``mmgen data``: build, download and inspect datasets.

- ``mmgen data make polymnist --mnist DIR --backgrounds DIR --out DIR``: rebuild PolyMNIST;
- ``mmgen data download polymnist [--dest DIR]``: fetch and unpack the official archive;
- ``mmgen data inspect DIR``: counts per split, modality and label, and a grid of examples.

Heavy imports (torch, numpy) wait inside the commands so that ``mmgen --help`` stays fast.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmgen.cli.common import err_console, out_console, user_errors
from mmgen.errors import DataError

data_app = typer.Typer(help="Build, download and inspect datasets.", no_args_is_help=True)
make_app = typer.Typer(help="Build a dataset from its raw sources.", no_args_is_help=True)
download_app = typer.Typer(help="Download a published dataset.", no_args_is_help=True)
data_app.add_typer(make_app, name="make")
data_app.add_typer(download_app, name="download")


def _progress(*extra_columns):
    """A transient rich progress display on stderr that starts drawing at its first task.

    An error then prints its one line and nothing else: the bar starts only once there is work,
    vanishes when done (the command prints its own summary) and skips the blank line rich adds
    on non-terminals.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    class LazyProgress(Progress):
        def add_task(self, *args, **kwargs):
            if not self.live.is_started:
                self.start()
            return super().add_task(*args, **kwargs)

        def __enter__(self):
            return self

        def stop(self):
            if self.live.is_started:
                self.live.stop()

    return LazyProgress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), *extra_columns,
                        TimeRemainingColumn(), console=err_console, transient=True)


@make_app.command("polymnist")
@user_errors
def make_polymnist(
    mnist: Annotated[Path, typer.Option(help="Folder with MNIST IDX files (train*- and t10k*/test*- images and labels, gzip or raw).")],
    backgrounds: Annotated[Path, typer.Option(help="Folder of background images (PNG/JPG), one per modality in file-name order.")],
    out: Annotated[Path, typer.Option(help="Output dataset folder (must not exist unless --force).")],
    modalities: Annotated[Optional[int], typer.Option(min=1, help="Number of modalities (default: one per background).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of permutations and crops; same seed, same bytes.")] = 0,
    train_size: Annotated[Optional[int], typer.Option(min=1, help="Training tuples (default: one per MNIST training digit).")] = None,
    test_size: Annotated[Optional[int], typer.Option(min=1, help="Test tuples (default: one per MNIST test digit).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png: {split}/m{k}/{i}.{digit}.png; pt: {split}/m{k}.pt + labels.pt.")] = "png",
    force: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
) -> None:
    """Build PolyMNIST from MNIST digits and background images (Sutter et al. 2021 recipe)."""
    from mmgen_builtin.datasets.make import make_polymnist as build

    started = time.perf_counter()
    with _progress() as progress:
        manifest = build(mnist, backgrounds, out, modalities=modalities or 0, seed=seed,
                         train_size=train_size or 0, test_size=test_size or 0, fmt=fmt, force=force,
                         progress=progress)
    splits = manifest["splits"]
    out_console.print(f"wrote {out}: {splits['train']['tuples']} train / {splits['test']['tuples']} test tuples, "
                      f"{manifest['modalities']} modalities, {len(manifest['files'])} files "
                      f"({time.perf_counter() - started:.1f} s); train with --data polymnist:{out}",
                      markup=False, soft_wrap=True)


@download_app.command("polymnist")
@user_errors
def download_polymnist(
    dest: Annotated[Optional[Path], typer.Option(help="Folder to download into (default: <cache>/data).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Archive URL (default: the MoPoE authors' Zenodo record).")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="Expected sha256 of the archive (checked when given).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even if the dataset is already there.")] = False,
) -> None:
    """Download the official PolyMNIST archive, verify it and unpack it (resumes partial downloads)."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from mmgen_builtin.datasets import download as dl
    from mmgen_builtin.datasets.default import cache_dir

    dest = dest or cache_dir() / "data"
    with _progress(DownloadColumn(), TransferSpeedColumn()) as progress:
        path, digest = dl.download_polymnist(dest, url or dl.DEFAULT_URL, sha256 or dl.DEFAULT_SHA256,
                                             force=force, progress=progress)
    if digest is None:
        out_console.print(f"already present: {path} (--force downloads again)", markup=False, soft_wrap=True)
    else:
        checked = "verified" if sha256 or dl.DEFAULT_SHA256 else "not checked, none given"
        out_console.print(f"sha256 {digest} ({checked})", markup=False, soft_wrap=True)
    out_console.print(f"PolyMNIST in {path}; train with --data polymnist:{path}", markup=False, soft_wrap=True)


@data_app.command("inspect")
@user_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="Dataset folder holding train/ and/or test/ (either layout).")],
    out: Annotated[Optional[Path], typer.Option(help="Where to save the example grid (default: PATH/inspect.png).")] = None,
    examples: Annotated[int, typer.Option(min=1, max=64, help="Tuples in the grid (one per label first).")] = 10,
) -> None:
    """Print counts per split, modality and label, and save a grid of example tuples."""
    import torch
    from rich.table import Table

    from mmgen.figures import save_grid
    from mmgen_builtin.datasets.polymnist import detect_layout, read_polymnist

    if not path.is_dir():
        raise DataError(f"dataset folder not found: {path}")
    splits = {s: read_polymnist(path, s) for s in ("train", "test") if (path / s).is_dir()}
    if not splits:
        raise DataError(f"{path}: no train/ or test/ folder")
    layout = detect_layout(path, next(iter(splits)))
    # Every modality shares the tuple labels (the PNG reader checks each file name agrees), so the
    # modalities get one table and the labels another: one wide table of both was unreadable at 80
    # columns (every cell cut to "1…").
    table = Table(title=f"{path} ({layout} layout)")
    for col in ("split", "modality", "shape", "tuples"):
        table.add_column(col, justify="right" if col == "tuples" else "left")
    for split, ds in splits.items():
        for spec in ds.modalities:
            table.add_row(split, spec.name, "x".join(map(str, spec.shape)), str(len(ds)))
    out_console.print(table)
    counts = {split: Counter(ds.labels.tolist()) for split, ds in splits.items()}
    labels = sorted({y for c in counts.values() for y in c})
    by_label = Table(title="tuples per label")
    for col in ("label", *splits):
        by_label.add_column(col, justify="right")
    for y in labels:
        by_label.add_row(str(y), *(f"{c[y]} ({c[y] / max(len(splits[s]), 1):.1%})" for s, c in counts.items()))
    out_console.print(by_label)

    ds = splits.get("train") or next(iter(splits.values()))
    # One tuple per label first, so the grid shows every digit when it can.
    first = [int((ds.labels == y).nonzero()[0]) for y in ds.labels.unique().tolist()][:examples]
    taken = set(first)
    rest = [i for i in range(min(len(ds), examples + len(first))) if i not in taken]
    index = torch.tensor((first + rest)[:examples])
    batch = ds.batch(index)
    grid_path = save_grid([x.float() / 255 for x in batch.x], out or path / "inspect.png")
    out_console.print(f"saved {len(index)} example tuples (rows m0..m{ds.num_modalities - 1}) to {grid_path}",
                      markup=False, soft_wrap=True)
