"""``mmgen train``: train a model and write a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmgen.cli import options as o
from mmgen.cli.common import err_console, load_plugins, resolved_config, user_errors
from mmgen.config import merge_sources, parse_overrides, resolve
from mmgen.errors import DataNotFound, MMGenError


@user_errors
def train(
    recipe: o.Recipe = None, prior: o.Prior = None, agg: o.Agg = None, inference: o.Inference = None,
    encoder: o.Encoder = None, decoder: o.Decoder = None, data: o.Data = None, config: o.ConfigFile = None,
    out: o.Out = None, epochs: o.Epochs = None,
    max_steps: o.MaxSteps = None, batch_size: o.BatchSize = None, seed: o.Seed = None, device: o.Device = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its latest checkpoint (train.* and data.path may change).")] = None,
    overrides: o.Overrides = None,
) -> None:
    """Train a model: a recipe, component choices and overrides in, a run directory out.

    The run directory holds config.yaml (fully resolved), checkpoints/ (latest.pt, final.pt),
    metrics.jsonl and samples/ (PNG grids).
    """
    from mmgen.run import moved_data_hint
    from mmgen.train import resume_config, train as run_training

    short = o.shortcuts(prior, agg, inference, data, out, epochs, max_steps, batch_size, seed, device, encoder, decoder)
    if resume is not None:
        if recipe or config or prior or agg or inference or encoder or decoder:
            raise MMGenError("--resume continues a run with its own config; only --epochs, --max-steps, "
                             "train.* overrides and the data's folder (--data NAME:PATH or data.path) may change")
        stored = resume_config(resume)
        if data:  # the run's own dataset in a new folder: the same as data.path=PATH
            name, _, path = data.partition(":")
            if name != stored["data"]["name"] or not path:
                raise MMGenError(f"--resume: the run trained on dataset '{stored['data']['name']}'; --data may only "
                                 f"give its new folder: --data {stored['data']['name']}:NEW_FOLDER")
            short = {k: v for k, v in short.items() if k != "data.name"}
        extra = [str(p) for p in stored.get("plugins", [])]
        plugins = load_plugins(extra)
        changes = parse_overrides([f"{k}={v}" for k, v in short.items()] + list(overrides or []))
        # train.* may change, and data.path (the same data, moved: its fingerprint is checked).
        bad = [k for k in changes if k not in ("train", "data")]
        data_changes = changes.get("data", {})
        bad += [f"data.{k}" for k in data_changes if k != "path"] if isinstance(data_changes, dict) else ["data"]
        if bad:
            raise MMGenError(f"--resume: only train.* settings and data.path may change, not {', '.join(bad)}")
        cfg = resolve(merge_sources([stored, changes]), plugins.registry)
        was = stored.get("train", {}).get("amsgrad")
        if was is not None and cfg["train"]["amsgrad"] != was:  # the checkpoint's Adam state has its layout
            raise MMGenError(f"--resume: train.amsgrad cannot change (the run trains with amsgrad={str(was).lower()} "
                             "and its optimizer state is kept); start a new run to change it")
        try:
            run_dir = run_training(cfg, plugins, run_dir=resume, resume=True, console=err_console)
        except DataNotFound as exc:
            raise moved_data_hint(exc, cfg["data"]["name"], "resume with its new folder") from None
    else:
        cfg, plugins = resolved_config(recipe, config, short, overrides)
        run_dir = run_training(cfg, plugins, console=err_console)
    from accelerate import PartialState

    if PartialState().is_main_process:
        err_console.print(f"[green]done:[/] run directory {run_dir}")
