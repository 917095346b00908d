"""The arithmetic floor of one prior Langevin step: each kernel of the EBM energy's gradient timed alone.

The fast prior chain (benchmarks/langevin.py) runs, per step, the kernels of the MLP energy's
hand-derived gradient (linear and activation per hidden layer, the last one's activation
skipped; then per layer the activation's backward kernel and a matmul) plus the Langevin update.
This script times each of those kernels on its own, back to back on the same tensors, and sets
their sum beside the whole fast step and the plain autograd step: no implementation of the same
arithmetic can go below the sum, so it bounds the fast/naive ratio from below. "naive" is mmgen's
autograd fallback (parameters detached by functional_call, as SPEC 1.1 asks); "plain" the
plainest autograd loop, f(z) with the parameters as they are.

    python benchmarks/langevin_floor.py --threads 1
    python benchmarks/langevin_floor.py --threads 2 --batch 16 --activation leaky_relu
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from mmgen.langevin import LangevinKernel, run_chain
from mmgen.plugins import create_plugin_manager


def per_call_us(fn, calls: int = 2000, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``fn()``."""
    for _ in range(50):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls // rounds):
            fn()
        times.append((time.perf_counter() - t) / (calls // rounds) * 1e6)
    return sorted(times)[rounds // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--activation", default="gelu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = create_plugin_manager()
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(activation=args.activation), args.dim)
    energy = prior.energy
    act, act_backward = energy.act, energy.act_backward
    z = torch.randn(args.batch, args.dim)
    eps = torch.randn_like(z)
    kernels: dict[str, object] = {}
    with torch.no_grad(), energy.kernels_for(z):  # the kernels the energy itself picks for this size
        *hidden, (w_out, _) = [(w.detach(), b.detach()) for w, b in energy.layer_weights()]
        h, pre = z, []
        for i, (weight, bias) in enumerate(hidden):  # forward: linear, activation (not the last one's)
            x = h
            kernels[f"linear {i + 1}"] = lambda x=x, weight=weight, bias=bias: F.linear(x, weight, bias)
            pre.append(F.linear(x, weight, bias))
            if i < len(hidden) - 1:
                a = pre[-1]
                kernels[f"{args.activation} {i + 1}"] = lambda a=a: act(a)
                h = act(a)
        g = w_out.expand(args.batch, -1)
        for i in range(len(hidden) - 1, -1, -1):  # backward: activation backward, matmul
            weight, a = hidden[i][0], pre[i]
            kernels[f"{args.activation} backward {i + 1}"] = lambda g=g, a=a: act_backward(g, a)
            d = act_backward(g, a)
            kernels[f"matmul {i + 1}"] = lambda d=d, weight=weight: torch.mm(d, weight)
            g = torch.mm(d, weight)
        kernels["Langevin update (2 ops)"] = lambda: torch.add(z, g, alpha=0.08).add_(eps, alpha=0.4)
        rows = {name: per_call_us(fn) for name, fn in kernels.items()}
    steps = 60
    naive_kernel = LangevinKernel(prior.unnormalized, 0.4)  # mmgen's autograd fallback
    plain_kernel = LangevinKernel(lambda x: prior.energy(x) - 0.5 * x.square().sum(-1), 0.4)  # graph into the parameters
    kernels_ = {"naive": naive_kernel, "plain": plain_kernel, "fast": prior.kernel()}
    runs: dict[str, list[float]] = {name: [] for name in kernels_}
    for name, k in kernels_.items():
        run_chain(k, z, steps)
    for _ in range(15):  # interleaved, so that a slow spell of the machine hits every variant alike
        for name, k in kernels_.items():
            t = time.perf_counter()
            run_chain(k, z, steps)
            runs[name].append((time.perf_counter() - t) / steps * 1e6)
    chains = {name: sorted(v)[len(v) // 2] for name, v in runs.items()}
    floor = sum(rows.values())
    print(f"prior step kernels: {args.activation}, D={args.dim}, batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    for name, us in rows.items():
        print(f"  {name:<28} {us:8.1f} us")
    print(f"  {'sum (the floor)':<28} {floor:8.1f} us")
    print(f"fast step {chains['fast']:.1f} us = floor + {chains['fast'] - floor:.1f} us of everything else")
    for name in ("naive", "plain"):
        print(f"{name} step {chains[name]:.1f} us; floor / {name} {floor / chains[name]:.2f}, "
              f"fast / {name} {chains['fast'] / chains[name]:.2f}")


if __name__ == "__main__":
    main()
