"""Loading a trained run back: config and weights from a checkpoint, components through the registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmgen.checkpoint import load_checkpoint
from mmgen.config import COMPONENT_SECTIONS, _get_path
from mmgen.data import ModalitySpec, MultimodalDataset
from mmgen.errors import CheckpointError, DataNotFound, MMGenError
from mmgen.model import MultimodalModel, build_model
from mmgen.plugins import Plugins, create_plugin_manager


@dataclass
class LoadedRun:
    """A trained model with the config, plugins and datasets it was trained with."""

    run_dir: Path
    config: dict[str, Any]
    plugins: Plugins
    model: MultimodalModel
    train_set: MultimodalDataset
    test_set: MultimodalDataset
    step: int
    checkpoint: Path | None = None  # the file the weights came from

    @property
    def unfinished(self) -> bool:
        """Loaded from ``latest.pt`` of a run that has no ``final.pt`` (still training, or stopped)."""
        return self.checkpoint is not None and self.checkpoint.name == "latest.pt" \
            and not (self.checkpoint.parent / "final.pt").is_file()


def component_plugins(cfg: dict[str, Any], plugins: Plugins) -> dict[str, dict[str, str]]:
    """Which plugin provided each configured component (stored in checkpoints)."""
    out = {}
    for path, kind in COMPONENT_SECTIONS.items():
        name = _get_path(cfg, path)["name"]
        out[path] = {"kind": kind, "name": name, "plugin": plugins.registry.get(kind, name).plugin}
    return out


def find_checkpoint(run: str | Path) -> Path:
    """A run directory (its final, else latest checkpoint) or a checkpoint file."""
    run = Path(run)
    if run.is_file():
        return run
    for name in ("final.pt", "latest.pt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise CheckpointError(f"no checkpoint in {run} (expected {run}/checkpoints/final.pt or latest.pt)")


def moved_data_hint(exc: DataNotFound, data_name: str, how: str = "give its new folder") -> DataNotFound:
    """``exc`` with the way to point a run at its data's new folder (``--data NAME:NEW_FOLDER``)."""
    return DataNotFound(f"{exc}; if the run's data moved, {how}: --data {data_name}:NEW_FOLDER")


def load_run(run: str | Path, device: str | torch.device = "cpu", data_override: dict[str, Any] | None = None) -> LoadedRun:
    """Rebuild a run's model from its checkpoint through the registry and load its weights.

    A component whose plugin is not installed is an error naming that plugin.
    """
    from mmgen.train import check_components, load_datasets, modality_differences

    path = find_checkpoint(run)
    ckpt = load_checkpoint(path)
    bad = [k for k, v in ckpt["model"].items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                              "the run diverged before this checkpoint: use an earlier one, or retrain with "
                              "train.on_nonfinite=rollback")
    cfg = ckpt["config"]
    plugins = create_plugin_manager([str(m) for m in cfg.get("plugins", [])])
    check_components(ckpt, plugins, path)
    if data_override:
        cfg = dict(cfg, data=data_override)
    try:
        train_set, test_set = load_datasets(cfg, plugins)
    except DataNotFound as exc:
        if data_override:
            raise
        raise moved_data_hint(exc, cfg["data"]["name"]) from None
    trained_on = [ModalitySpec(name, tuple(shape)) for name, shape in ckpt.get("extra", {}).get("modalities", [])]
    if data_override and trained_on and trained_on != train_set.modalities:  # (older checkpoints do not say)
        raise MMGenError(f"data {data_override['name']}: not the modalities the run was trained on: "
                         + modality_differences(trained_on, train_set.modalities, "the run", "the data"))
    try:
        model = build_model(cfg, plugins.registry, train_set.modalities)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the configured model ({str(exc).splitlines()[0][:200]})") from None
    except MMGenError:
        raise
    model.to(device).eval()
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return LoadedRun(run_dir, cfg, plugins, model, train_set, test_set, ckpt["progress"]["step"], path)
