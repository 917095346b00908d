"""``mmgen sample``: the paper's generation figures from a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from mmgen.cli.common import data_override, err_console, note_unfinished, user_errors
from mmgen.errors import MMGenError


MAX_COLUMNS = 256


@user_errors
def sample(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `mmgen train` (or a checkpoint file).")],
    n: Annotated[int, typer.Option("--n", "-n", help="Samples (columns) per grid, 1 to 256.")] = 8,
    given: Annotated[Optional[str], typer.Option(help="Condition cross generation on these modalities, by name or index, e.g. m0,m2 or 0,2 (default: each one in turn).")] = None,
    chain: Annotated[bool, typer.Option("--chain", help="Also decode the states along a prior Langevin chain (EBM prior) and a posterior one (Langevin inference).")] = False,
    every: Annotated[int, typer.Option(help="Decode every k-th state of a chain.")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN_DIR/figures).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    data: Annotated[Optional[str], typer.Option(help="Draw the test inputs from this dataset instead (NAME or NAME:PATH; "
                                                     "e.g. the run's data after it moved).")] = None,
) -> None:
    """Write joint.png, cross.png, refinement.png and, with --chain, chain-prior.png / chain-posterior.png.

    Rows of cross.png: a block per conditioning set, its inputs ("given m0") then every modality
    generated from them ("m1 from m0"). refinement.png (Langevin inference): inputs, targets from the
    amortized latent, then refined. chain-prior.png needs an EBM prior, chain-posterior.png Langevin
    inference.

    Rows are labelled on the left, a chain's columns with their Langevin step.
    """
    from mmgen.cli.classifiers import resolve_device
    from mmgen.data import format_shape
    from mmgen.generation import save_figures
    from mmgen.run import load_run

    device = resolve_device(device)
    torch.manual_seed(seed)
    loaded = load_run(run_dir, device, data_override(run_dir, data) if data else None)
    note_unfinished(loaded)
    names = [m.name for m in loaded.model.modalities]
    given_idx = None
    if given is not None:
        # A name, or an index as bench files' report.cross_given takes them (0 for m0).
        wanted = [g.strip() for g in given.split(",") if g.strip()]
        wanted = list(dict.fromkeys(names[int(g)] if g not in names and g.isascii() and g.isdigit() and int(g) < len(names) else g
                                    for g in wanted))  # repeats once
        unknown = [g for g in wanted if g not in names]
        if unknown or not wanted or len(wanted) >= len(names):
            what = f"unknown {', '.join(unknown)}" if unknown else "no modality" if not wanted else "every modality"
            raise MMGenError(f"--given '{given}': {what}; choose a proper subset of {', '.join(names)}")
        given_idx = [names.index(g) for g in wanted]
    for option, value in (("--n", n), ("--every", every)):
        if value < 1:
            raise MMGenError(f"{option}: must be >= 1, got {value}")
    if n > MAX_COLUMNS:
        raise MMGenError(f"--n: at most {MAX_COLUMNS} columns a grid (a wider figure is unreadable), got {n}")
    paths = save_figures(loaded.model, loaded.test_set, out or loaded.run_dir / "figures", device, n, given_idx, chain, every)
    for p in paths:
        err_console.print(f"wrote {p}")
    if not paths:
        err_console.print("[yellow]note:[/] no figure drawn: none of this run's modalities is an image "
                          f"({', '.join(f'{m.name} {format_shape(m.shape)}' for m in loaded.model.modalities)})",
                          soft_wrap=True)
        return
    if chain and not any(p.name.startswith("chain-") for p in paths):
        err_console.print("[yellow]note:[/] --chain drew nothing: this run has neither an EBM prior (a prior chain) "
                          "nor Langevin inference (a posterior chain)", soft_wrap=True)
