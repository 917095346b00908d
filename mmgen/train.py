"""The training engine: one loop that reads top to bottom.

Everything model-specific lives in the model and its components; this loop only calls
``model(batch).loss``, steps one optimizer over the model's parameter groups, and takes care of
devices (accelerate), logging, sample grids, non-finite guards and atomic checkpoints.
"""

from __future__ import annotations

import atexit
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn

from mmgen.checkpoint import (atomic_write_text, load_checkpoint, process_seed, rng_state, save_checkpoint,
                              set_rng_state)
from mmgen.config import component_config, to_yaml
from mmgen.data import EpochBatches, ModalitySpec, MultimodalDataset, format_shape
from mmgen.errors import CheckpointError, ConfigError, DivergenceError, Interrupted, MMGenError, RunExists
from mmgen.figures import save_grid
from mmgen.finite import FiniteGuard, _Pending, nonfinite_report
from mmgen.model import MultimodalModel, build_model, check_component_outputs
from mmgen.plugins import Plugins
from mmgen.run import component_plugins


@dataclass
class TrainState:
    """Where training stands: optimizer steps taken, the epoch and batches done in it, and the
    divergence history (rollbacks taken, the step-size and learning-rate factors they applied).

    ``batch`` counts one process's batches, and ``processes`` says how many processes ran: a run
    resumed with another number of processes continues the epoch at the same place
    (:func:`reshard`); ``offset`` is how far such a change moved the step that ends the epochs."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    rollbacks: int = 0
    damping: float = 1.0
    lr_scale: float = 1.0
    processes: int = 1
    offset: int = 0


def reshard(state: TrainState, full: int, processes: int) -> tuple[TrainState, str]:
    """``state`` for ``processes`` processes instead of ``state.processes``, and a note saying so
    (empty when they are the same); ``full`` is the number of whole batches in an epoch.

    The epoch goes on after the batches all processes took together; when their number does not
    divide among the new processes, the few left over in this epoch (fewer than ``processes``)
    are skipped rather than seen twice. The end of ``train.epochs`` stays where it was."""
    if state.processes == processes:
        return state, ""
    per_old, per_new = full // state.processes, full // processes
    taken = state.batch * state.processes
    batch = min(-(-taken // processes), per_new)
    offset = state.offset + (state.epoch * per_old + state.batch) - (state.epoch * per_new + batch)
    note = (f"resuming a run of {state.processes} process{'es' if state.processes > 1 else ''} with {processes}: "
            f"epoch {state.epoch} goes on after batch {taken} of {full}"
            + (f" ({batch * processes - taken} skipped)" if batch * processes > taken else ""))
    return TrainState(**dict(vars(state), batch=batch, processes=processes, offset=offset)), note


class _Rollback(Exception):
    """Raised inside the epoch loop to restart from the last checkpoint."""


def load_datasets(cfg: dict[str, Any], plugins: Plugins) -> tuple[MultimodalDataset, MultimodalDataset]:
    """The train and test splits of the configured dataset."""
    component = plugins.registry.get("dataset", cfg["data"]["name"])
    data_cfg = component_config(plugins.registry, "dataset", cfg["data"])
    train_set, test_set = component.factory(data_cfg, "train"), component.factory(data_cfg, "test")
    if train_set.modalities != test_set.modalities:
        raise MMGenError("data: the train and test splits differ: "
                         + modality_differences(train_set.modalities, test_set.modalities, "train", "test"))
    return train_set, test_set


def modality_differences(a: list[ModalitySpec], b: list[ModalitySpec], in_a: str, in_b: str) -> str:
    """How two lists of modalities differ, modality by modality, e.g. ``m2 is 1 x 28 x 28 in train,
    3 x 28 x 28 in test; m3 is in train only`` (``in_a``/``in_b``: what to call the two)."""
    shapes = [{spec.name: format_shape(spec.shape) for spec in specs} for specs in (a, b)]
    said = []
    for name in dict.fromkeys([*shapes[0], *shapes[1]]):
        x, y = shapes[0].get(name), shapes[1].get(name)
        if x is None or y is None:
            said.append(f"{name} is in {in_a if y is None else in_b} only")
        elif x != y:
            said.append(f"{name} is {x} in {in_a}, {y} in {in_b}")
    return "; ".join(said) or f"the same modalities in another order ({', '.join(shapes[0])} in {in_a})"


def make_optimizer(model: MultimodalModel, tcfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam over the model's parameter groups; a group's own settings override the defaults.

    The fused implementation: one kernel per step, and it honours a device-side ``found_inf``
    flag, which is how :class:`FiniteGuard` skips a non-finite step without a host sync.
    """
    return torch.optim.Adam(model.param_groups(), lr=tcfg["lr"], betas=tuple(tcfg["betas"]),
                            amsgrad=tcfg["amsgrad"], weight_decay=tcfg["weight_decay"], fused=True)


def default_run_dir(cfg: dict[str, Any]) -> Path:
    """``runs/NAME-DATE-TIME``, with ``-2``, ``-3``, ... when runs start in the same second."""
    base = Path("runs") / f"{cfg['name']}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_fresh_run_dir(run_dir: Path) -> None:
    """A new run must not write over an existing one (its checkpoints, its metrics)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MMGenError(f"--out {run_dir} is a file; choose a folder for the run")
    for name in ("checkpoints/latest.pt", "checkpoints/final.pt", "metrics.jsonl"):
        if (run_dir / name).exists():
            raise RunExists(f"--out {run_dir} already holds a run ({name}); continue it with "
                             f"`mmgen train --resume {run_dir}`, or choose another --out")


@torch.no_grad()
def save_samples(model: MultimodalModel, test_set: MultimodalDataset, path: Path, device: torch.device, n: int = 8) -> None:
    """A grid: test inputs, their reconstructions from all modalities, and joint samples.

    Runs on a forked RNG so that drawing pictures never changes the training's random stream.
    """
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        batch = test_set.batch(torch.arange(min(n, len(test_set)))).to(device)
        recon = model.cross_generate(batch, batch.mask, refine=False)
        joint = model.generate(n, device)
    save_grid([*batch.x, *recon, *joint], path)
    model.train(was_training)


class _StopRequest:
    """Inside: Ctrl-C (SIGINT) or ``kill`` (SIGTERM) asks the training loop to stop after the
    step it is in and save a checkpoint there (``requested``); the same signal again stops at once,
    as before. Only a single process in its main thread installs the handlers: the processes of a
    multi-process run would stop at different steps and wait on each other forever."""

    def __init__(self, console: Console, active: bool):
        self.console, self.signum = console, 0
        self.active = active and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            # The same signal twice means "stop now"; another one (Ctrl-C in a terminal, then the
            # SIGTERM that `mmgen bench` sends its runs as it stops) repeats the request.
            if signum == self.signum:
                raise KeyboardInterrupt
            return
        self.signum = signum
        self.console.print(f"[yellow]{signal.Signals(signum).name}: stopping after this step and saving a "
                           f"checkpoint ({signal.Signals(signum).name} again to stop at once)")

    def __enter__(self) -> _StopRequest:
        if self.active:
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _accelerator(tcfg: dict[str, Any]):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    device = tcfg["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise MMGenError("train.device: 'cuda' requested but no CUDA device is available; use auto or cpu")
    # Components may leave parameters unused in a step (a prior with a fixed scale, ...).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    make = lambda: Accelerator(cpu=device == "cpu", mixed_precision=tcfg["mixed_precision"], kwargs_handlers=[ddp])  # noqa: E731
    try:
        accelerator = make()
    except ValueError as err:
        # accelerate keeps one precision per process; a later train() in the same (single)
        # process may ask for another, so start its state afresh.
        from accelerate.state import AcceleratorState, PartialState

        if "already been initialized" not in str(err) or PartialState().num_processes != 1:
            raise
        AcceleratorState._reset_state()
        accelerator = make()
    if tcfg["mixed_precision"] == "fp16" and accelerator.device.type == "cpu":
        raise MMGenError("train.mixed_precision: fp16 needs a CUDA device (it would silently train in float32 here); "
                         "use bf16 or no on the CPU")
    return accelerator


def train(cfg: dict[str, Any], plugins: Plugins, run_dir: Path | None = None, resume: bool = False,
          console: Console | None = None) -> Path:
    """Train the model ``cfg`` describes; write and return its run directory."""
    console = console or Console(stderr=True)
    tcfg = cfg["train"]
    accelerator = _accelerator(tcfg)
    if accelerator.num_processes > 1:
        # Tear the process group down before the interpreter does: left to its destructors at exit,
        # a finished 2-process run's rank 0 sometimes aborted ("terminate called without an active
        # exception", exit -6) after it had written everything (seen in CI on CPU/gloo).
        atexit.register(accelerator.state.destroy_process_group)
    is_main = accelerator.is_main_process
    device = accelerator.device
    torch.manual_seed(cfg["seed"])

    run_dir = Path(run_dir or cfg["out"] or default_run_dir(cfg))
    if accelerator.num_processes > 1:  # one folder for all processes: the main one's choice
        from accelerate.utils import broadcast_object_list

        run_dir = Path(broadcast_object_list([str(run_dir)])[0])
    if not resume:
        check_fresh_run_dir(run_dir)
    wait_for_everyone(accelerator)  # every process has checked the folder before anything is written
    ckpt_dir = run_dir / "checkpoints"
    train_set, test_set = load_datasets(cfg, plugins)
    model = build_model(cfg, plugins.registry, train_set.modalities)
    optimizer = make_optimizer(model, tcfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    configured = [{k: g[k] for k in ("betas", "weight_decay")} for g in optimizer.param_groups]
    state = TrainState(processes=accelerator.num_processes)

    def set_lr_scale(scale: float) -> None:
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * scale

    def restore(ckpt: dict[str, Any]) -> TrainState:
        try:
            # (a rollback comes here after accelerator.prepare: load into the unwrapped model, not DDP)
            accelerator.unwrap_model(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{ckpt_dir / 'latest.pt'} does not match the configured model: "
                                  f"{str(exc).splitlines()[0]}") from None
        # (a checkpoint from before `processes` was recorded: as many processes as now, as then assumed)
        restored = TrainState(**{"processes": accelerator.num_processes, **ckpt["progress"]})
        rank, streams = accelerator.process_index, ckpt.get("rng_per_process")
        if streams is not None and len(streams) == accelerator.num_processes:
            set_rng_state(streams[rank])  # every process goes on with its own stream
        else:  # one process before, or another number: rank 0 goes on, the others start anew
            set_rng_state(ckpt["rng"])
            if rank > 0:
                torch.manual_seed(process_seed(cfg["seed"], rank, restored.step))
        # The optimizer's settings are the config's (a resume may change train.lr and the like),
        # its learning rates scaled by the rollbacks taken; its moments are the checkpoint's.
        for group, settings in zip(optimizer.param_groups, configured):
            group.update(settings)
        set_lr_scale(restored.lr_scale)
        return restored

    from mmgen.classifiers import dataset_fingerprint

    data_fingerprint = dataset_fingerprint(train_set)
    if resume:
        check_components(ckpt := load_checkpoint(ckpt_dir / "latest.pt"), plugins, ckpt_dir / "latest.pt")
        trained_on = ckpt.get("extra", {}).get("data_fingerprint")
        if trained_on is not None and trained_on != data_fingerprint:
            raise MMGenError(f"--resume: the training data ({cfg['data']}) is not what the run trained on "
                             f"(fingerprint {data_fingerprint}, the run's {trained_on})")
        state = restore(ckpt)
        if state.damping != 1.0:
            model.stabilize(state.damping)  # step sizes lowered by earlier rollbacks stay lowered
        if is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", state.step)
            _truncate_metrics(run_dir / "eval.jsonl", state.step)
            _remove_stale_temporaries(ckpt_dir)
    else:
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.process_index > 0:  # the same initial weights (seeded above), then each its own noise
            torch.manual_seed(process_seed(cfg["seed"], accelerator.process_index))
    if is_main:  # on resume too: config.yaml records the train.* settings that now run
        saved = dict(cfg, out=str(run_dir), plugin_versions=dict(plugins.versions))
        atomic_write_text(to_yaml(saved), run_dir / "config.yaml")

    model, optimizer = accelerator.prepare(model, optimizer)
    core: MultimodalModel = accelerator.unwrap_model(model)
    steps_per_epoch = len(EpochBatches(train_set, tcfg["batch_size"], cfg["seed"], 0,
                                       rank=accelerator.process_index, world=accelerator.num_processes))
    if steps_per_epoch == 0:  # a config error: every process meets it alike (said once)
        if accelerator.num_processes > 1 and tcfg["batch_size"] <= len(train_set):  # batches, but not one each
            raise ConfigError([f"train.batch_size: {tcfg['batch_size']} x {accelerator.num_processes} processes is more "
                               f"than the training set ({len(train_set)} tuples) holds: every process needs a batch; "
                               "use a smaller train.batch_size or fewer processes"])
        raise ConfigError([f"train.batch_size: {tcfg['batch_size']} is larger than the training set ({len(train_set)} tuples)"])
    full_batches = len(EpochBatches(train_set, tcfg["batch_size"], cfg["seed"], 0))
    state, note = reshard(state, full_batches, accelerator.num_processes)
    if note and is_main:
        console.print(f"[yellow]note:[/] {note}")
    total = tcfg["epochs"] * steps_per_epoch + state.offset
    if tcfg["max_steps"]:
        total = min(total, tcfg["max_steps"])

    def checkpoint(name: str) -> None:
        # Every process calls this at the same points: with several, their random states are gathered.
        streams = None
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            streams = gather_object([rng_state()])
        if is_main:
            save_checkpoint(ckpt_dir / name, config=cfg, plugins=dict(plugins.versions),
                            model=core.state_dict(), optimizer=optimizer.state_dict(),
                            progress=vars(state), extra={"components": component_plugins(cfg, plugins),
                                                         "data_fingerprint": data_fingerprint,
                                                         "modalities": [[m.name, list(m.shape)] for m in train_set.modalities]},
                            rng_per_process=streams)

    if state.step == 0 and not resume:  # (a resumed run restored the random state after it)
        # Sanity forward pass before the first step: a shape or config problem surfaces in seconds.
        with torch.no_grad():
            probe = train_set.batch(torch.arange(min(4, len(train_set)))).to(device)
            cuda = [probe.mask.device.index or 0] if probe.mask.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # the run's random stream stays as it was
                check_component_outputs(core, probe)  # a wrong type or shape: one line naming the component
            out = core(probe)
            if not torch.isfinite(out.loss):  # name the component and statistic, as the loop's guard does
                report = nonfinite_report(core, _Pending(0, 0, torch.isfinite(out.loss), out.stats, out.loss,
                                                         torch.zeros(()), torch.ones(0, dtype=torch.bool), []))
                raise DivergenceError(f"sanity check: the initial loss on 4 training tuples is not finite: {report}")
        checkpoint("latest.pt")  # a rollback target, and a resumable run from the first second
    wait_for_everyone(accelerator)

    metrics = (run_dir / "metrics.jsonl").open("a") if is_main else None
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:.1f} it/s  loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   disable=not (is_main and tcfg["progress"]))
    clip = tcfg["grad_clip"] if tcfg["grad_clip"] > 0 else math.inf
    t0, step0 = time.perf_counter(), state.step
    guard = FiniteGuard(optimizer, accelerator.num_processes)

    def say(message: str) -> None:  # what every process does alike is said once, by the main one
        if is_main:
            console.print(message)

    def settle() -> bool:
        """Apply the non-finite policy to the steps since the last sync; True if the latest was skipped."""
        skipped, latest_bad = guard.settle(core)
        if not skipped:
            return False
        where, report = skipped[0]
        policy = tcfg["on_nonfinite"]
        if policy == "rollback" and state.rollbacks < tcfg["max_rollbacks"]:
            say(f"[yellow]{where}: non-finite {report}; rolling back to the last checkpoint")
            raise _Rollback
        if policy != "skip":
            hint = ("rollbacks exhausted" if policy == "rollback"
                    else "set train.on_nonfinite=skip or rollback to continue past it")
            raise DivergenceError(f"non-finite value at {where}: {report} ({hint})")
        for where, report in skipped:
            say(f"[yellow]{where}: skipped a batch with non-finite {report}")
        state.step -= len(skipped)  # skipped batches are consumed, not steps
        return latest_bad

    model.train()
    with bar, _StopRequest(console, active=accelerator.num_processes == 1) as stop:
        task = bar.add_task(f"training {cfg['name']}", total=total, completed=state.step, rate=0.0, loss="-")
        while state.step < total:
            batches = EpochBatches(train_set, tcfg["batch_size"], cfg["seed"], state.epoch,
                                   rank=accelerator.process_index, world=accelerator.num_processes)
            whole_epoch, steps_before = state.batch == 0, state.step
            try:
                for host_batch in batches.iterate(state.batch):
                    if stop.requested:
                        break
                    batch = host_batch.to(device)
                    with accelerator.autocast():
                        out = model(batch)
                    accelerator.backward(out.loss)
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                    # No host sync here: a non-finite step is skipped on the device and reported
                    # at the next point that syncs anyway (FiniteGuard).
                    guard.guard(core, state.step + 1, state.epoch, out, grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    state.batch += 1
                    # Settle wherever the loop reads values or saves anything.
                    if (state.step % tcfg["log_every"] == 0 or state.step % tcfg["checkpoint_every"] == 0
                            or state.step >= total or state.batch >= len(batches)
                            or (tcfg["sample_every"] and state.step % tcfg["sample_every"] == 0)):
                        if settle():  # this very batch was skipped: nothing to log or save
                            bar.update(task, completed=state.step)
                            continue

                    if state.step % tcfg["log_every"] == 0 or state.step == total:
                        rate = (state.step - step0) / max(time.perf_counter() - t0, 1e-9)
                        record = {"step": state.step, "epoch": state.epoch, "time": round(time.perf_counter() - t0, 3),
                                  "steps_per_s": round(rate, 3), "grad_norm": float(grad_norm),
                                  **{k: float(v) for k, v in out.stats.items()}}
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
                if stop.requested and state.step < total:  # between two steps: the state is whole; save it
                    settle()
                    checkpoint("latest.pt")
                    raise Interrupted(f"interrupted by {signal.Signals(stop.signum).name} at step {state.step} of "
                                      f"{total}; the run is saved there: mmgen train --resume {run_dir}", stop.signum)
            except _Rollback:
                guard.clear()
                rollbacks = state.rollbacks + 1
                # (latest.pt may still be the one resumed from, of another number of processes)
                state, _ = reshard(restore(load_checkpoint(ckpt_dir / "latest.pt")), full_batches,
                                   accelerator.num_processes)
                factor = tcfg["rollback_factor"]
                state.rollbacks, state.damping = rollbacks, state.damping * factor
                state.lr_scale *= factor
                set_lr_scale(state.lr_scale)
                changes = core.stabilize(factor) + [f"learning rates x{state.lr_scale:.4g}"]
                say(f"[yellow]rollback {rollbacks}/{tcfg['max_rollbacks']} to step {state.step}: {'; '.join(changes)}")
                if metrics:  # the steps after the checkpoint are done again: their lines go, as on resume
                    metrics.close()
                    _truncate_metrics(run_dir / "metrics.jsonl", state.step)
                    _truncate_metrics(run_dir / "eval.jsonl", state.step)
                    metrics = (run_dir / "metrics.jsonl").open("a")
                continue
            if state.batch >= len(batches):
                if whole_epoch and state.step == steps_before:  # on_nonfinite=skip would go on forever
                    raise DivergenceError(f"every batch of epoch {state.epoch} was non-finite and skipped; "
                                          "lower train.lr or the Langevin step sizes, or check the data")
                state.epoch, state.batch = state.epoch + 1, 0
                if is_main and not tcfg["sample_every"]:
                    save_samples(core, test_set, run_dir / "samples" / f"epoch-{state.epoch:04d}.png", device)
                if is_main and tcfg["eval_every"] and state.epoch % tcfg["eval_every"] == 0:
                    from mmgen.evaluation import evaluate_during_training

                    scores = evaluate_during_training(core, train_set, test_set, plugins.registry, run_dir,
                                                      state.step, state.epoch, metrics=tcfg["eval_metrics"],
                                                      n=tcfg["eval_n"], n_test=tcfg["eval_n_test"],
                                                      device=device, console=console)
                    console.print(f"epoch {state.epoch}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items() if "/" in k))
                checkpoint("latest.pt")
    _check_in_sync(accelerator, core)
    checkpoint("latest.pt")
    checkpoint("final.pt")
    if is_main:
        save_samples(core, test_set, run_dir / "samples" / "final.png", device)
    if metrics:
        metrics.close()
    wait_for_everyone(accelerator)
    return run_dir


def check_components(ckpt: dict[str, Any], plugins: Plugins, path: Path) -> None:
    """Every component a checkpoint was built from must be registered; name the missing plugin."""
    for section, info in ckpt.get("extra", {}).get("components", {}).items():
        if info["name"] not in plugins.registry.names(info["kind"]):
            raise CheckpointError(
                f"{path}: {section} is {info['kind']} '{info['name']}' from plugin '{info['plugin']}', which is "
                f"not installed; installed {info['kind']}s: {', '.join(plugins.registry.names(info['kind']))}"
            )


def _check_in_sync(accelerator, model: MultimodalModel) -> None:
    """With several processes, every replica must hold the same parameters at the end."""
    if accelerator.num_processes == 1:
        return
    sums = accelerator.gather(parameter_signature(model).to(accelerator.device))  # (processes, 2P)
    if not torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-6, atol=1e-6):
        worst = int((sums - sums[0]).abs().amax(0).argmax()) // 2
        name = [n for n, _ in model.named_parameters()][worst]
        raise MMGenError(f"processes ended with different parameters (first at {name})")


def wait_for_everyone(accelerator) -> None:
    """A barrier across the processes, as an all-reduce on their own device. accelerate's
    ``wait_for_everyone`` is torch.distributed's ``barrier``, which (torch 2.11) picked CUDA device
    ``rank`` in a CPU (gloo) run on a machine with one GPU: "invalid device ordinal" on rank 1."""
    if accelerator.num_processes > 1:
        accelerator.reduce(torch.zeros(1, device=accelerator.device))


@torch.no_grad()
def parameter_signature(model: nn.Module) -> Tensor:
    """``(1, 2P)``: per parameter, its sum and its sum of squares weighted by position, so that
    differences that cancel in a total, or weights that moved between places, still show."""
    sig = [torch.stack([p.double().sum(), (p.double().flatten() ** 2 * torch.linspace(
        1, 2, p.numel(), dtype=torch.float64, device=p.device)).sum()]) for p in model.parameters()]
    return torch.cat(sig).unsqueeze(0)


def _remove_stale_temporaries(ckpt_dir: Path) -> None:
    """A kill during a checkpoint write leaves a temp file; the previous checkpoint is intact."""
    for tmp in ckpt_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


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


