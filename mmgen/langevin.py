"""Langevin dynamics: one kernel for prior and posterior sampling (SPEC section 1.1).

    z <- z + (s^2 / 2) * grad log pi(z) + s * eps,    eps ~ N(0, I)

``s`` is the noise scale; the drift uses s^2/2 (the convention of Pang et al. 2020 and the paper).
The kernel (``init``/``step`` over an immutable :class:`LangevinState`) is separate from the
driver (:func:`run_chain`) that runs K steps, as in BlackJAX/numpyro. Gradients are taken per
chain: the target returns one log-density per chain and its sum is differentiated, so chains do
not interact. The returned samples carry no autograd graph into any model parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

LogDensity = Callable[[Tensor], Tensor]  # (N, D) -> (N,)
ValueAndGrad = Callable[[Tensor], "tuple[Tensor, Tensor]"]  # (N, D) -> ((N,), (N, D))


@dataclass(frozen=True)
class LangevinState:
    """A chain's position with its log-density and gradient there."""

    z: Tensor  # (N, D)
    log_prob: Tensor  # (N,)
    grad: Tensor  # (N, D)


def value_and_grad(log_prob: LogDensity, z: Tensor) -> tuple[Tensor, Tensor]:
    """log pi(z) per chain and its gradient w.r.t. z, computed in float32 without autocast."""
    with torch.enable_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        z = z.detach().float().requires_grad_(True)
        lp = log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad.detach()


@dataclass(frozen=True)
class LangevinKernel:
    """One Langevin transition for the target ``log_prob`` with noise scale ``step_size``.

    ``clip_grad`` > 0 caps each chain's gradient norm (a guard against the large likelihood
    gradients of image decoders); ``noise_scale`` multiplies the injected noise (annealing).
    ``grad_fn``, when given, returns (log pi, grad log pi) without autograd (a fused or
    hand-derived gradient); it must agree with ``log_prob``.
    """

    log_prob: LogDensity
    step_size: float
    clip_grad: float = 0.0
    grad_fn: ValueAndGrad | None = None

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.grad_fn is not None:
            with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
                return self.grad_fn(z.float())
        return value_and_grad(self.log_prob, z)

    def init(self, z: Tensor) -> LangevinState:
        lp, grad = self.value_and_grad(z)
        return LangevinState(z.detach().float(), lp, grad)

    def step(self, state: LangevinState, noise: Tensor, noise_scale: float = 1.0) -> LangevinState:
        grad = state.grad
        if self.clip_grad > 0:
            norm = grad.norm(dim=-1, keepdim=True)
            grad = grad * (self.clip_grad / norm.clamp_min(self.clip_grad))
        s = self.step_size
        z = state.z + 0.5 * s * s * grad + (s * noise_scale) * noise
        lp, new_grad = self.value_and_grad(z)
        return LangevinState(z, lp, new_grad)


@dataclass
class ChainResult:
    """The final samples, diagnostics and (optionally) every state of the chain."""

    z: Tensor  # (N, D)
    stats: dict[str, Tensor] = field(default_factory=dict)
    chain: Tensor | None = None  # (K + 1, N, D) when requested


def run_chain(kernel: LangevinKernel, z0: Tensor, steps: int, anneal_noise: bool = False,
              keep_chain: bool = False, noise: Tensor | None = None) -> ChainResult:
    """Run ``steps`` transitions from ``z0``.

    ``anneal_noise`` decays the noise linearly to zero over the chain. ``noise`` ``(K, N, D)``
    fixes the noise stream (tests compare implementations on it); by default it is drawn from
    torch's global generator. Diagnostics: log pi at start and end, mean |z_K - z_0|, the mean
    gradient norm, and the fraction of non-finite entries.
    """
    state = kernel.init(z0)
    start_lp = state.log_prob
    states = [state.z] if keep_chain else None
    grad_norm = state.grad.norm(dim=-1).mean()
    for t in range(steps):
        eps = noise[t] if noise is not None else torch.randn_like(state.z)
        scale = 1.0 - t / steps if anneal_noise else 1.0
        state = kernel.step(state, eps, scale)
        grad_norm = grad_norm + state.grad.norm(dim=-1).mean()
        if states is not None:
            states.append(state.z)
    stats = {
        "start_log_prob": start_lp.mean(),
        "end_log_prob": state.log_prob.mean(),
        "displacement": (state.z - z0.float()).norm(dim=-1).mean(),
        "grad_norm": grad_norm / (steps + 1),
        "nonfinite": (~torch.isfinite(state.z)).float().mean(),
    }
    return ChainResult(state.z.to(z0.dtype), stats, torch.stack(states) if states is not None else None)
