"""No host-device synchronisation inside a training step, for every recipe.

A CUDA step that reads a device value on the host (``.item()``, ``float(t)``, ``if t:``,
``.tolist()``, ``.cpu()``) or whose output size depends on device data (``nonzero``, boolean-mask
indexing) waits for the GPU to drain. The training loop reads values only where it logs,
checkpoints or ends an epoch; components decide what to compute from the batch's host copy of the
mask (``Batch.host_mask``). The same calls go through ``__torch_function__`` on the CPU, so they
are counted here without a GPU, telling host tensors from device ones by where they came from:
two runs that differ only in their number of steps between two such points must make the same
number of device reads.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from mmgen.config import compose, resolve
from mmgen.data import Batch
from mmgen.train import load_datasets, train
from tests.test_baselines_recipes import RECIPES, recipe_overrides

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero",
         "masked_select", "unique", "argwhere"}


class DeviceReads(TorchFunctionMode):
    """Counts the operations that make the host wait for the device.

    A tensor is on the "host" when it is a batch's ``host_mask`` (registered by :meth:`host`), made
    by a factory without a ``device`` argument, or computed from host tensors alone; anything else
    stands for device memory. (A host tensor moved with ``.to(device)`` keeps counting as host: on
    the CPU the move returns the tensor itself.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self._host: set[int] = set()

    def host(self, t: torch.Tensor) -> None:
        if id(t) not in self._host:
            self._host.add(id(t))
            weakref.finalize(t, self._host.discard, id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_host = all(id(t) in self._host for t in tensors) if tensors else "device" not in kwargs
        name = getattr(func, "__name__", "")
        if name == "__getitem__" and _has_bool_index(args[1] if len(args) > 1 else None):
            name = "boolean-mask indexing"
        if not on_host and (name in READS or name == "boolean-mask indexing"):
            self.calls[name] = self.calls.get(name, 0) + 1
        out = func(*args, **kwargs)
        if on_host:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.host(t)
        return out


def _has_bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def device_reads(recipe: str, steps: int, tmp_path, plugins, monkeypatch) -> dict[str, int]:
    overrides = [*recipe_overrides(recipe), "train.log_every=1000", "train.checkpoint_every=1000",
                 "train.eval_every=0", f"train.max_steps={steps}"]
    cfg = resolve(compose(recipe, overrides=overrides), plugins.registry)
    load_datasets(cfg, plugins)  # build the dataset into the cache first: that is host work anyway
    reads = DeviceReads()
    to = Batch.to

    def to_device(batch: Batch, device, dtype=torch.float32) -> Batch:
        # On the CPU .to() hands back the same mask tensor as the host copy; keep them apart.
        moved = to(batch, device, dtype)
        moved.mask = moved.mask.clone()
        if moved.host_mask is not None:
            reads.host(moved.host_mask)
        return moved

    monkeypatch.setattr(Batch, "to", to_device)
    with reads:
        train(cfg, plugins, run_dir=tmp_path / f"{recipe}-{steps}")
    monkeypatch.setattr(Batch, "to", to)
    return reads.calls


@pytest.mark.parametrize("recipe", RECIPES)
def test_training_steps_do_not_read_device_values(recipe, tmp_path, plugins, monkeypatch):
    few = device_reads(recipe, 2, tmp_path, plugins, monkeypatch)
    more = device_reads(recipe, 6, tmp_path, plugins, monkeypatch)
    per_step = {name: (more.get(name, 0) - few.get(name, 0)) / 4 for name in set(few) | set(more)}
    assert {name: n for name, n in per_step.items() if n} == {}, f"device reads per step: {per_step}"
    assert few, "the end of training reads values (loss, checkpoint): the counter must see them"


def test_the_counter_tells_device_reads_from_host_reads():
    with DeviceReads() as reads:
        x = torch.randn(4, device="cpu")  # made with a device: stands for device memory
        host = torch.tensor([True, False])  # made without one: host memory
        x.sum().item()
        bool(x.sum() > 0)
        x[x > 0]
        x.tolist()
        bool(host.any())  # host values: no sync
        host.tolist()
        [m for m, seen in enumerate(torch.zeros(3).tolist()) if seen]  # a factory on the host
    assert reads.calls == {"item": 1, "__bool__": 1, "boolean-mask indexing": 1, "tolist": 1}
