"""The training engine: one loop that reads top to bottom.

Everything model-specific lives in the model and its components; this loop only calls
``model(batch).loss``, steps one optimizer over the model's parameter groups, and takes care of
devices (accelerate), logging, sample grids, non-finite guards and atomic checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mmgen.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint, set_rng_state
from mmgen.config import component_config, to_yaml
from mmgen.data import EpochBatches, MultimodalDataset
from mmgen.errors import CheckpointError, DivergenceError, MMGenError
from mmgen.figures import save_grid
from mmgen.model import MultimodalModel, build_model
from mmgen.plugins import Plugins
from mmgen.run import component_plugins


@dataclass
class TrainState:
    """Where training stands: optimizer steps taken, the epoch, and batches done in it."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def load_datasets(cfg: dict[str, Any], plugins: Plugins) -> tuple[MultimodalDataset, MultimodalDataset]:
    """The train and test splits of the configured dataset."""
    component = plugins.registry.get("dataset", cfg["data"]["name"])
    data_cfg = component_config(plugins.registry, "dataset", cfg["data"])
    train_set, test_set = component.factory(data_cfg, "train"), component.factory(data_cfg, "test")
    if train_set.modalities != test_set.modalities:
        raise MMGenError(f"data: train and test splits have different modalities ({train_set.modalities} vs {test_set.modalities})")
    return train_set, test_set


def make_optimizer(model: MultimodalModel, tcfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam over the model's parameter groups; a group's own settings override the defaults."""
    return torch.optim.Adam(model.param_groups(), lr=tcfg["lr"], betas=tuple(tcfg["betas"]),
                            amsgrad=tcfg["amsgrad"], weight_decay=tcfg["weight_decay"])


def default_run_dir(cfg: dict[str, Any]) -> Path:
    return Path("runs") / f"{cfg['name']}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@torch.no_grad()
def save_samples(model: MultimodalModel, test_set: MultimodalDataset, path: Path, device: torch.device, n: int = 8) -> None:
    """A grid: test inputs, their reconstructions from all modalities, and joint samples."""
    was_training = model.training
    model.eval()
    batch = test_set.batch(torch.arange(min(n, len(test_set)))).to(device)
    recon = model.cross_generate(batch, batch.mask, refine=False)
    joint = model.generate(n, device)
    rows = [*batch.x, *recon, *joint]
    save_grid(rows, path)
    model.train(was_training)


def _accelerator(tcfg: dict[str, Any]):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    device = tcfg["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise MMGenError("train.device: 'cuda' requested but no CUDA device is available; use auto or cpu")
    # Components may leave parameters unused in a step (a prior with a fixed scale, ...).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=device == "cpu", mixed_precision=tcfg["mixed_precision"], kwargs_handlers=[ddp])


def train(cfg: dict[str, Any], plugins: Plugins, run_dir: Path | None = None, resume: bool = False,
          console: Console | None = None) -> Path:
    """Train the model ``cfg`` describes; write and return its run directory."""
    console = console or Console(stderr=True)
    tcfg = cfg["train"]
    accelerator = _accelerator(tcfg)
    is_main = accelerator.is_main_process
    device = accelerator.device
    torch.manual_seed(cfg["seed"])

    run_dir = Path(run_dir or cfg["out"] or default_run_dir(cfg))
    ckpt_dir = run_dir / "checkpoints"
    train_set, test_set = load_datasets(cfg, plugins)
    model = build_model(cfg, plugins.registry, train_set.modalities)
    optimizer = make_optimizer(model, tcfg)
    state = TrainState()

    if resume:
        ckpt = load_checkpoint(ckpt_dir / "latest.pt")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{ckpt_dir / 'latest.pt'} does not match the configured model: {str(exc).splitlines()[0]}") from None
        state = TrainState(**ckpt["progress"])
        set_rng_state(ckpt["rng"])
        if is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = dict(cfg, out=str(run_dir), plugin_versions=dict(plugins.versions))
        atomic_write_text(to_yaml(saved), run_dir / "config.yaml")

    model, optimizer = accelerator.prepare(model, optimizer)
    core: MultimodalModel = accelerator.unwrap_model(model)
    steps_per_epoch = len(EpochBatches(train_set, tcfg["batch_size"], cfg["seed"], 0,
                                       rank=accelerator.process_index, world=accelerator.num_processes))
    if steps_per_epoch == 0:
        raise MMGenError(f"train.batch_size: {tcfg['batch_size']} is larger than the training set ({len(train_set)} tuples)")
    total = tcfg["epochs"] * steps_per_epoch
    if tcfg["max_steps"]:
        total = min(total, tcfg["max_steps"])

    # Sanity forward pass before the first step: a shape or config problem surfaces in seconds.
    if state.step == 0:
        with torch.no_grad():
            probe = train_set.batch(torch.arange(min(4, len(train_set)))).to(device)
            if not torch.isfinite(core(probe).loss):
                raise DivergenceError("sanity check: the initial loss on 4 training tuples is not finite")

    def checkpoint(name: str) -> None:
        if is_main:
            save_checkpoint(ckpt_dir / name, config=cfg, plugins=dict(plugins.versions),
                            model=core.state_dict(), optimizer=optimizer.state_dict(),
                            progress=vars(state), extra={"components": component_plugins(cfg, plugins)})

    metrics = (run_dir / "metrics.jsonl").open("a") if is_main else None
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:.1f} it/s  loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   disable=not (is_main and tcfg["progress"]))
    clip = tcfg["grad_clip"] if tcfg["grad_clip"] > 0 else math.inf
    t0, step0 = time.perf_counter(), state.step
    pending: dict[str, torch.Tensor] = {}
    model.train()
    with bar:
        task = bar.add_task(f"training {cfg['name']}", total=total, completed=state.step, rate=0.0, loss="-")
        while state.step < total:
            batches = EpochBatches(train_set, tcfg["batch_size"], cfg["seed"], state.epoch,
                                   rank=accelerator.process_index, world=accelerator.num_processes)
            for host_batch in batches.iterate(state.batch):
                batch = host_batch.to(device)
                with accelerator.autocast():
                    out = model(batch)
                accelerator.backward(out.loss)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                # One host sync per step: a non-finite loss or gradient must not reach the weights.
                if not bool(torch.isfinite(out.loss.detach()) & torch.isfinite(grad_norm)):
                    bad = _nonfinite_report(out.stats, out.loss, grad_norm)
                    if tcfg["on_nonfinite"] == "stop":
                        raise DivergenceError(f"non-finite value at step {state.step + 1} (epoch {state.epoch}): {bad}; "
                                              "set train.on_nonfinite=skip to skip such batches")
                    optimizer.zero_grad(set_to_none=True)
                    console.print(f"[yellow]step {state.step + 1}: skipped batch with non-finite {bad}")
                    state.batch += 1
                    continue
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch += 1
                out.stats["grad_norm"] = grad_norm
                pending = out.stats

                if state.step % tcfg["log_every"] == 0 or state.step == total:
                    rate = (state.step - step0) / max(time.perf_counter() - t0, 1e-9)
                    record = {"step": state.step, "epoch": state.epoch, "time": round(time.perf_counter() - t0, 3),
                              "steps_per_s": round(rate, 3),
                              **{k: float(v) for k, v in pending.items()}}
                    if metrics:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    bar.update(task, rate=rate, loss=f"{record['loss']:.4g}")
                bar.update(task, completed=state.step)
                if tcfg["sample_every"] and state.step % tcfg["sample_every"] == 0 and is_main:
                    save_samples(core, test_set, run_dir / "samples" / f"step-{state.step:07d}.png", device)
                if state.step % tcfg["checkpoint_every"] == 0:
                    checkpoint("latest.pt")
                if state.step >= total:
                    break
            if state.batch >= len(batches):
                state.epoch, state.batch = state.epoch + 1, 0
                if is_main and not tcfg["sample_every"]:
                    save_samples(core, test_set, run_dir / "samples" / f"epoch-{state.epoch:04d}.png", device)
                checkpoint("latest.pt")
    checkpoint("latest.pt")
    checkpoint("final.pt")
    if is_main:
        save_samples(core, test_set, run_dir / "samples" / "final.png", device)
    if metrics:
        metrics.close()
    accelerator.wait_for_everyone()
    return run_dir


def _nonfinite_report(stats: dict[str, torch.Tensor], loss: torch.Tensor, grad_norm: torch.Tensor) -> str:
    """Name the statistics that are not finite (the loss, the gradient norm, a component's stat)."""
    bad = [k for k, v in stats.items() if not torch.isfinite(torch.as_tensor(v)).all()]
    if not torch.isfinite(grad_norm):
        bad.append(f"grad_norm={float(grad_norm)}")
    return ", ".join(bad) or f"loss={float(loss)}"


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (a kill may leave some)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut short by the kill
    atomic_write_text("".join(k + "\n" for k in keep), path)


def resume_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was started with (from its latest checkpoint)."""
    return load_checkpoint(Path(run_dir) / "checkpoints" / "latest.pt")["config"]


