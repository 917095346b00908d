"""Cost of one Langevin step: the plain autograd loop against mmgen's fast paths.

Prior chain: the latent EBM's MLP energy f (D -> 200 -> 200 -> 1, GELU), the paper's K0 = 60
steps; "naive" differentiates f with autograd each step (with the parameters detached through
torch.func.functional_call, as mmgen's autograd fallback does: SPEC 1.1 forbids a graph into the
parameters), "plain" is the plainest autograd loop (f(z) with the parameters as they are), "fast"
uses the hand-derived gradient.
Posterior chain: K1 = 20 steps through the decoders of a recipe's model; "naive" differentiates
the whole log posterior with autograd, "fast" adds the prior's closed-form gradient to an
autograd pass through the observed decoders only.

    python benchmarks/langevin.py                          # CPU (and CUDA when available)
    python benchmarks/langevin.py --batch 64 --repeats 5 --json out.json
    python benchmarks/langevin.py --no-posterior --prior-batches 16 64 256 --activations gelu leaky_relu

Prints a table; writes JSON (default benchmarks/results/langevin-<host>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mmgen.config import compose, resolve
from mmgen.langevin import GraphedChain, LangevinKernel, run_chain
from mmgen.model import build_model
from mmgen.plugins import create_plugin_manager
from mmgen.train import load_datasets

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = sorted(_once(fn, device) for _ in range(repeats))
    return times[len(times) // 2]


def timed_together(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median wall seconds of each ``fn()``, the runs interleaved so that a slow spell of a
    shared machine hits every variant alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_once(fn, device))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _once(fn, device: torch.device) -> float:
    """Wall seconds of one ``fn()`` (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def prior_chain(plugins, dim: int, batch: int, steps: int, repeats: int, device: torch.device,
                activation: str = "gelu", compile_: bool = False) -> dict:
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(steps=steps, activation=activation), dim).to(device)
    z0 = torch.randn(batch, dim, device=device)
    naive_kernel = LangevinKernel(prior.unnormalized, 0.4)
    # The plainest loop: f(z) with the parameters as they are. Its graph reaches the parameters
    # (nothing flows into them, but SPEC 1.1 rules such a graph out for the library's own kernel).
    s2 = prior.cfg.sigma0**2
    plain_kernel = LangevinKernel(lambda z: prior.energy(z) - 0.5 * z.square().sum(-1) / s2, 0.4)
    fast_kernel = prior.kernel()  # closed-form gradient, and no log-density at the inner steps

    def grad_alone():  # the fast gradient called K times, without the chain around it
        with fast_kernel.context(z0):
            for _ in range(steps):
                fast_kernel.score_fn(z0)

    fns = {"naive": lambda: run_chain(naive_kernel, z0, steps), "plain": lambda: run_chain(plain_kernel, z0, steps),
           "fast": lambda: run_chain(fast_kernel, z0, steps), "grad": grad_alone}
    if compile_:  # the same chain with torch.compile's (inductor) version of the fast gradient
        compiled_kernel = dataclasses.replace(fast_kernel, score_fn=torch.compile(fast_kernel.score_fn, dynamic=False))
        t = time.perf_counter()
        run_chain(compiled_kernel, z0, steps)
        compile_s = time.perf_counter() - t
        fns["compiled"] = lambda: run_chain(compiled_kernel, z0, steps)
    if device.type == "cuda":  # the fast chain replayed as one captured CUDA graph
        graphed_chain = GraphedChain()
        fns["graphed"] = lambda: graphed_chain(fast_kernel, z0, steps)
    t = timed_together(fns, repeats, device)
    row = {"chain": "prior", "activation": activation, "dim": dim, "batch": batch, "steps": steps,
           "naive_us_per_step": t["naive"] / steps * 1e6, "fast_us_per_step": t["fast"] / steps * 1e6,
           "fast_over_naive": t["fast"] / t["naive"], "grad_alone_us_per_step": t["grad"] / steps * 1e6,
           "plain_us_per_step": t["plain"] / steps * 1e6, "fast_over_plain": t["fast"] / t["plain"]}
    if "compiled" in t:
        row.update(compiled_us_per_step=t["compiled"] / steps * 1e6, compiled_over_naive=t["compiled"] / t["naive"],
                   compile_s=compile_s)
    if "graphed" in t:
        row.update(graphed_us_per_step=t["graphed"] / steps * 1e6, graphed_over_naive=t["graphed"] / t["naive"],
                   graph_fallback=graphed_chain.fallback_reason)
    return row


def posterior_chain(plugins, recipe: str, batch: int, steps: int, repeats: int, device: torch.device) -> dict:
    cfg = resolve(compose(recipe, overrides=["model.prior.name=ebm", "model.inference.name=langevin",
                                             f"model.inference.steps={steps}"]), plugins.registry)
    train_set, _ = load_datasets(cfg, plugins)
    model = build_model(cfg, plugins.registry, train_set.modalities).to(device).eval()
    data = train_set.batch(torch.arange(batch)).to(device)
    rows = {}
    for name, given in (("all", data.mask), ("one", data.mask & (torch.arange(data.mask.size(1), device=device) == 0))):
        posterior, private = model.encode(data.x, given)
        z0 = posterior.sample(1)[0].detach()
        w = None if private is None else private.loc.detach()

        def log_prob(z, given=given, w=w):  # every decoder, masked afterwards: the plain loop
            return model.prior.log_prob(z, frozen=True) + (model.log_likelihood(data.x, z, w) * given).sum(-1)

        naive_kernel = LangevinKernel(log_prob, model.inference.cfg.step_size)
        graphed = model.inference.graphed
        model.inference.graphed = None  # the fused gradient, run eagerly
        naive = timed(lambda: run_chain(naive_kernel, z0, steps), repeats, device)
        fast = timed(lambda: model.inference.refine(model, z0, data, given, w), repeats, device)
        rows[name] = {"naive_us_per_step": naive / steps * 1e6, "fast_us_per_step": fast / steps * 1e6,
                      "fast_over_naive": fast / naive}
        model.inference.graphed = graphed
        if device.type == "cuda" and graphed is not None:  # the same chain replayed as one CUDA graph
            model.inference.refine(model, z0, data, given, w)  # the capture, untimed
            t = timed(lambda: model.inference.refine(model, z0, data, given, w), repeats, device)
            rows[name].update(graphed_us_per_step=t / steps * 1e6, graphed_over_naive=t / naive,
                              graph_fallback=graphed.fallback_reason)
    return {"chain": "posterior", "recipe": recipe, "batch": batch, "steps": steps, "given": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="chains (the training batch)")
    parser.add_argument("--prior-batches", type=int, nargs="+", help="prior-chain batch sizes (default: --batch)")
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32], help="prior latent sizes")
    parser.add_argument("--activations", nargs="+", default=["gelu"], help="energy activations for the prior chain")
    parser.add_argument("--no-posterior", action="store_true", help="time the prior chain only")
    parser.add_argument("--compile", action="store_true", help="also time the prior chain with a torch.compile'd gradient")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="moe-ebm-mmvaeplus")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when available")
    parser.add_argument("--json", type=Path, default=HERE / "results" / f"langevin-{platform.node() or 'host'}.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = create_plugin_manager()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.devices:
        devices = [torch.device(d) for d in args.devices]
    results = []
    for device in devices:
        for activation in args.activations:
            for dim in args.dims:
                for batch in args.prior_batches or [args.batch]:
                    r = prior_chain(plugins, dim, batch, 60, args.repeats, device, activation, args.compile)
                    results.append({"device": str(device), **r})
                    print(f"{device} prior {activation:<10} D={dim:<3} B={batch:<4} naive {r['naive_us_per_step']:8.1f} us/step"
                          f"  fast {r['fast_us_per_step']:8.1f} us/step  fast/naive {r['fast_over_naive']:.2f}"
                          f"  (gradient alone {r['grad_alone_us_per_step']:.1f}; plain autograd {r['plain_us_per_step']:.1f},"
                          f" fast/plain {r['fast_over_plain']:.2f})"
                          + (f"  compiled {r['compiled_us_per_step']:8.1f} us/step ({r['compile_s']:.1f} s to compile)"
                             if "compiled_us_per_step" in r else "")
                          + (f"  graphed {r['graphed_us_per_step']:8.1f} us/step  graphed/naive {r['graphed_over_naive']:.3f}"
                             if "graphed_us_per_step" in r else ""))
        if args.no_posterior:
            continue
        r = posterior_chain(plugins, args.recipe, args.batch, 20, max(2, args.repeats // 2), device)
        results.append({"device": str(device), **r})
        for given, g in r["given"].items():
            print(f"{device} posterior ({args.recipe}, given {given}) naive {g['naive_us_per_step']:8.1f} us/step"
                  f"  fast {g['fast_us_per_step']:8.1f} us/step  fast/naive {g['fast_over_naive']:.2f}"
                  + (f"  graphed {g['graphed_us_per_step']:8.1f} us/step  graphed/naive {g['graphed_over_naive']:.3f}"
                     if "graphed_us_per_step" in g else ""))
    record = {"command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
