"""mmgen's MMVAE+ against MultiVae's MMVAE+, side by side in one process on the same hardware.

Both models are the same MMVAE+ configuration: shared z and private w of ``--latent-dim`` each,
Laplace posteriors with the softmax scale map, Laplace likelihood of scale 0.75, the looser IWAE
bound with K = 1 and beta = 2.5, per-modality learnable r(w), Adam (amsgrad) at lr 1e-3, and the
*same* networks: mmgen's conv encoder/decoder modules, wrapped in MultiVae's ``BaseEncoder`` /
``BaseDecoder`` interface, so only the libraries differ. (MultiVae's packaged ``*MMNIST`` networks
differ slightly from both papers' and from mmgen's; wrapping one set of modules sidesteps that.)
Both see the same tuples: mmgen as uint8 normalised per batch, MultiVae as the float32 tensors its
datasets hold.

Two measurements, each ``--steps`` optimizer steps of batch ``--batch-size``:

- **model step**: one identical loop (forward, backward, optimizer step) drives both models, the
  two alternating step by step so that load from other processes hits both alike; median ms/step.
- **trainer**: each library's own training entry point on the same ``steps x batch`` tuples:
  ``mmgen.train.train`` (accelerate loop, progress, metrics log, atomic checkpoints at start and
  end) and MultiVae's ``BaseTrainer.train`` (one epoch: its DataLoader, per-step ``loss.item()``,
  model deep copy, final save). Wall time of the whole call, so both libraries' fixed costs count.

    pip install multivae          # into any environment that has mmgen; not a dependency of mmgen
    python benchmarks/peer_multivae.py --data polymnist:data/polymnist-shared --steps 30

Prints a table and writes JSON (``--json``, default benchmarks/results/peer-multivae-<host>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mmgen.cli.options import shortcuts
from mmgen.config import compose, resolve
from mmgen.model import build_model
from mmgen.plugins import create_plugin_manager
from mmgen.train import load_datasets, make_optimizer
from mmgen.train import train as mmgen_train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import cpu_name  # noqa: E402


def mmgen_config(args, plugins, out: str = "", max_steps: int = 0) -> dict:
    overrides = [f"train.batch_size={args.batch_size}", f"train.device={args.device}", f"model.latent_dim={args.latent_dim}",
                 f"model.private_dim={args.latent_dim}", "model.objective.name=iwae", "model.objective.k=1",
                 "model.objective.looser=true", "model.objective.beta=2.5"]
    if max_steps:
        overrides += [f"train.max_steps={max_steps}", "train.epochs=1000", "train.log_every=10",
                      f"train.checkpoint_every={10 * max_steps}", "train.sample_every=0", f"out={out}"]
    raw = compose("mmvaeplus", shortcuts=shortcuts(data=args.data), overrides=overrides)
    return resolve(raw, plugins.registry)


def multivae_model(mmgen_model, names: list[str], shapes: list[tuple], latent_dim: int):
    """MultiVae's MMVAE+ around the networks of ``mmgen_model`` (deep-copied, same init)."""
    import copy

    from multivae.models import MMVAEPlus, MMVAEPlusConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    d = latent_dim

    class Encoder(BaseEncoder):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            loc, raw = self.net(x)
            return ModelOutput(embedding=loc[:, :d], log_covariance=raw[:, :d],
                               style_embedding=loc[:, d:], style_log_covariance=raw[:, d:])

    class Decoder(BaseDecoder):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    cfg = MMVAEPlusConfig(
        n_modalities=len(names), latent_dim=d, modalities_specific_dim=d,
        input_dims={n: s for n, s in zip(names, shapes)},
        decoders_dist={n: "laplace" for n in names}, decoder_dist_params={n: {"scale": 0.75} for n in names},
        K=1, beta=2.5, loss="iwae_looser", prior_and_posterior_dist="laplace_with_softmax",
        learn_modality_prior=True, reconstruction_option="joint_prior",
    )
    encoders = {n: Encoder(copy.deepcopy(e)) for n, e in zip(names, mmgen_model.encoders)}
    decoders = {n: Decoder(copy.deepcopy(dd)) for n, dd in zip(names, mmgen_model.decoders)}
    return MMVAEPlus(cfg, encoders=encoders, decoders=decoders)


def float_dataset(train_set, names: list[str], n: int):
    """The first ``n`` tuples as MultiVae's dataset of float32 tensors in [0, 1]."""
    from multivae.data.datasets.base import MultimodalBaseDataset

    data = {name: x[:n].float() / 255.0 for name, x in zip(names, train_set.images)}
    return MultimodalBaseDataset(data=data, labels=train_set.labels[:n])


def model_steps(args, cfg, plugins, train_set, names) -> dict:
    """The alternating model-step loop; returns per-library ms/step lists."""
    from multivae.data.datasets.base import DatasetOutput

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(cfg["seed"])
    ours = build_model(cfg, plugins.registry, train_set.modalities)
    peer = multivae_model(ours, names, [s.shape for s in train_set.modalities], args.latent_dim).to(device)
    ours.to(device)
    opt_ours = make_optimizer(ours, cfg["train"])
    opt_peer = torch.optim.Adam(peer.parameters(), lr=cfg["train"]["lr"], amsgrad=True)
    ours.train(), peer.train()
    n = args.batch_size * (args.steps + args.warmup)
    peer_data = {name: x[:n].float() / 255.0 for name, x in zip(names, train_set.images)}
    times = {"mmgen": [], "multivae": []}
    for i in range(args.steps + args.warmup):
        idx = torch.arange(i * args.batch_size, (i + 1) * args.batch_size)
        # mmgen: uint8 batch, moved and normalised on the device as the training loop does.
        sync()
        t0 = time.perf_counter()
        out = ours(train_set.batch(idx).to(device))
        out.loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        sync()
        t1 = time.perf_counter()
        # MultiVae: a float32 batch as its DataLoader hands it over, moved as its trainer does.
        inputs = DatasetOutput(data={name: peer_data[name][idx].to(device) for name in names})
        loss = peer(inputs).loss
        loss.backward()
        opt_peer.step()
        opt_peer.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if i >= args.warmup:
            times["mmgen"].append(t1 - t0)
            times["multivae"].append(t2 - t1)
    return times


def trainer_runs(args, plugins, train_set, names) -> dict:
    """Each library's own trainer on the same ``steps x batch`` tuples; wall seconds per call."""
    from multivae.trainers import BaseTrainer, BaseTrainerConfig

    n = args.batch_size * args.steps
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = mmgen_config(args, plugins, out=f"{tmp}/mmgen-run", max_steps=args.steps)
        t0 = time.perf_counter()
        mmgen_train(cfg, plugins, run_dir=Path(f"{tmp}/mmgen-run"))
        out["mmgen"] = time.perf_counter() - t0

        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"])  # MultiVae's MMVAE+ draws with numpy's global RNG
        ours = build_model(cfg, plugins.registry, train_set.modalities)
        peer = multivae_model(ours, names, [s.shape for s in train_set.modalities], args.latent_dim)
        tcfg = BaseTrainerConfig(output_dir=f"{tmp}/multivae-run", per_device_train_batch_size=args.batch_size,
                                 num_epochs=1, learning_rate=cfg["train"]["lr"], optimizer_cls="Adam",
                                 optimizer_params={"amsgrad": True}, no_cuda=args.device == "cpu", seed=cfg["seed"])
        t0 = time.perf_counter()
        trainer = BaseTrainer(peer, train_dataset=float_dataset(train_set, names, n), training_config=tcfg)
        trainer.train()
        out["multivae"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default", help="dataset, NAME or NAME:PATH (default: the offline default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=32, help="size of z and of each w_m")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per library")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both libraries train")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-trainers", action="store_true", help="only the model-step comparison")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        import multivae  # noqa: F401
    except ImportError:
        sys.exit("error: this benchmark needs MultiVae: pip install multivae")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)

    plugins = create_plugin_manager()
    cfg = mmgen_config(args, plugins)
    train_set, _ = load_datasets(cfg, plugins)
    names = [s.name for s in train_set.modalities]
    load_before = os.getloadavg()

    steps = model_steps(args, cfg, plugins, train_set, names)
    med = {k: statistics.median(v) for k, v in steps.items()}
    rows = [{"measure": "model step", "library": k, "ms_per_step": round(1000 * med[k], 1),
             "tuples_per_s": round(args.batch_size / med[k], 1)} for k in med]
    print(f"{'measure':<12}{'library':<10}{'ms/step':>10}{'tuples/s':>10}")
    for r in rows:
        print(f"{r['measure']:<12}{r['library']:<10}{r['ms_per_step']:>10.1f}{r['tuples_per_s']:>10.1f}", flush=True)
    ratios = {"model_step_speedup": round(med["multivae"] / med["mmgen"], 2)}
    print(f"model step: mmgen is {ratios['model_step_speedup']:.2f}x MultiVae's throughput", flush=True)

    if not args.skip_trainers:
        walls = trainer_runs(args, plugins, train_set, names)
        for k, wall in walls.items():
            row = {"measure": "trainer", "library": k, "wall_s": round(wall, 1),
                   "ms_per_step": round(1000 * wall / args.steps, 1),
                   "tuples_per_s": round(args.batch_size * args.steps / wall, 1)}
            rows.append(row)
            print(f"{row['measure']:<12}{k:<10}{row['ms_per_step']:>10.1f}{row['tuples_per_s']:>10.1f}", flush=True)
        ratios["trainer_speedup"] = round(walls["multivae"] / walls["mmgen"], 2)
        print(f"trainer: mmgen is {ratios['trainer_speedup']:.2f}x MultiVae's throughput")

    import multivae as mv

    report = {
        "command": " ".join(["peer_multivae.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "multivae": getattr(mv, "__version__", "1.0.3"),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "data": args.data,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": rows,
        "ratios": ratios,
    }
    path = Path(args.json) if args.json else HERE / "results" / f"peer-multivae-{platform.node() or 'host'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
