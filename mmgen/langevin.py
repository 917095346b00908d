"""Langevin dynamics: one kernel for prior and posterior sampling (SPEC section 1.1).

    z <- z + (s^2 / 2) * grad log pi(z) + s * eps,    eps ~ N(0, I)

``s`` is the noise scale; the drift uses s^2/2 (the convention of Pang et al. 2020 and the paper).
The kernel (``init``/``step`` over an immutable :class:`LangevinState`) is separate from the
driver (:func:`run_chain`) that runs K steps, as in BlackJAX/numpyro. Gradients are taken per
chain: the target returns one log-density per chain and its sum is differentiated, so chains do
not interact. The returned samples carry no autograd graph into any model parameter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmgen.errors import MMGenWarning

LogDensity = Callable[[Tensor], Tensor]  # (N, D) -> (N,)
ValueAndGrad = Callable[[Tensor], "tuple[Tensor, Tensor]"]  # (N, D) -> ((N,), (N, D))
Score = Callable[[Tensor], Tensor]  # (N, D) -> (N, D): grad log pi alone
# (z, noise, drift, noise_scale) -> z + drift * grad log pi(z) + noise_scale * noise, in one pass
Move = Callable[[Tensor, Tensor, float, float], Tensor]


_FLOAT32_MAX = torch.finfo(torch.float32).max


def as_float32(x: float) -> float:
    """A chain coefficient (``s^2 / 2``, ``s``) as float32 arithmetic holds it: beyond float32's
    range, +-inf. torch refuses a finite Python scalar that overflows the tensor's dtype (a
    RuntimeError, not a number), while a chain with a huge step size should simply give
    non-finite samples, which training's non-finite guard reports (``train.on_nonfinite``)."""
    return x if not abs(x) > _FLOAT32_MAX else math.copysign(math.inf, x)


@dataclass(frozen=True)
class LangevinState:
    """A chain's position with its log-density and gradient there.

    ``log_prob`` is None at the inner steps of a chain whose kernel has a gradient-only
    ``score_fn``: nobody reads it there, and skipping it saves the energy's last layer.
    """

    z: Tensor  # (N, D)
    log_prob: Tensor | None  # (N,)
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
    hand-derived gradient); it must agree with ``log_prob``. ``score_fn``, optional beside it,
    returns the gradient alone, for the steps whose log-density nobody reads. ``environment``,
    optional, gives the context these functions want around them (``environment(z)``, e.g. a
    choice of kernels for z's size); :func:`run_chain` enters it once for the whole chain.
    ``move_fn``, optional, makes a whole transition with the gradient folded into the update and
    never materialised (one kernel fewer a step for an energy whose gradient ends in a matmul);
    :func:`run_chain` then recovers the gradients for its diagnostics from the states, and reads
    the log-density at the first and last state from ``log_prob``. Not used with ``clip_grad``,
    which needs each gradient before the update.
    """

    log_prob: LogDensity
    step_size: float
    clip_grad: float = 0.0
    grad_fn: ValueAndGrad | None = None
    score_fn: Score | None = None
    environment: Callable[[Tensor], AbstractContextManager] | None = None
    move_fn: Move | None = None

    def context(self, z: Tensor) -> ExitStack:
        """Where the kernel's arithmetic runs for chains like ``z``: float32 without autocast,
        without autograd for a closed-form gradient or move, inside the target's ``environment``.
        :func:`run_chain` enters it once per chain, not per step."""
        stack = ExitStack()
        stack.enter_context(torch.autocast(device_type=z.device.type, enabled=False))
        if self.grad_fn is not None or self.move_fn is not None:
            stack.enter_context(torch.no_grad())
        if self.environment is not None:
            stack.enter_context(self.environment(z))
        return stack

    def value_and_grad(self, z: Tensor, with_value: bool = True) -> tuple[Tensor | None, Tensor]:
        with self.context(z):
            return self._value_and_grad(z, with_value)

    def init(self, z: Tensor) -> LangevinState:
        with self.context(z):
            return self._init(z)

    def _init(self, z: Tensor) -> LangevinState:
        lp, grad = self._value_and_grad(z, True)
        return LangevinState(z.detach().float(), lp, grad)

    def step(self, state: LangevinState, noise: Tensor, noise_scale: float = 1.0,
             with_log_prob: bool = True) -> LangevinState:
        with self.context(state.z):
            return self._step(state, noise, noise_scale, with_log_prob)

    def _value_and_grad(self, z: Tensor, with_value: bool) -> tuple[Tensor | None, Tensor]:
        if self.grad_fn is None:
            return value_and_grad(self.log_prob, z)
        if not with_value and self.score_fn is not None:
            return None, self.score_fn(z.float())
        return self.grad_fn(z.float())

    def _step(self, state: LangevinState, noise: Tensor, noise_scale: float, with_log_prob: bool) -> LangevinState:
        grad = state.grad
        if self.clip_grad > 0:
            norm = grad.norm(dim=-1, keepdim=True)
            grad = grad * (self.clip_grad / norm.clamp_min(self.clip_grad))
        s = self.step_size
        drift, scale = as_float32(0.5 * s * s), as_float32(s * noise_scale)
        z = torch.add(state.z, grad, alpha=drift).add_(noise, alpha=scale)  # float32, as state.z
        if with_log_prob or self.score_fn is None:
            return LangevinState(z, *self._value_and_grad(z, with_log_prob))
        return LangevinState(z, None, self.score_fn(z))  # an inner step of a fast chain: the gradient alone


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
    norm of the K gradients the chain moved along, and the fraction of non-finite entries.
    """
    with kernel.context(z0):
        z = z0.detach().float()
        if noise is None:  # one draw for the whole chain: a kernel launch, not K
            noise = torch.randn(steps, *z.shape, device=z.device, dtype=z.dtype)
        elif noise.size(0) < steps:
            raise ValueError(f"noise has {noise.size(0)} steps; the chain runs {steps}")
        scales = [1.0 - t / steps if anneal_noise else 1.0 for t in range(steps)]
        if kernel.move_fn is not None and kernel.clip_grad == 0:
            return _run_moves(kernel, z, z0, noise[:steps], scales, keep_chain)
        state = kernel._init(z)  # already inside the kernel's context
        start_lp = state.log_prob
        states = [state.z] if keep_chain else None
        grads = []
        step, last = kernel._step, steps - 1
        for t, eps in enumerate(noise.unbind(0)[:steps]):
            grads.append(state.grad)
            state = step(state, eps, scales[t], t == last)
            if states is not None:
                states.append(state.z)
        return _result(z0, state.z, start_lp, state.log_prob, grads, states)


def _run_moves(kernel: LangevinKernel, z: Tensor, z0: Tensor, noise: Tensor, scales: list[float],
               keep_chain: bool) -> ChainResult:
    """:func:`run_chain` through ``kernel.move_fn``: the states are kept (they give back the
    gradients, (z_{t+1} - z_t - s_t eps_t) / drift) and the log-density is read only at both ends."""
    s = kernel.step_size
    drift, move = as_float32(0.5 * s * s), kernel.move_fn
    start_lp = kernel.log_prob(z)
    states = [z]
    for eps, scale in zip(noise.unbind(0), scales):
        z = move(z, eps, drift, as_float32(s * scale))
        states.append(z)
    chain = torch.stack(states)  # (K + 1, N, D)
    step_noise = noise * s
    if any(scale != 1.0 for scale in scales):
        # annealed: the same 1 - t/K, made on the device (a copy from the host would break a
        # CUDA graph capture of the chain)
        steps = len(scales)
        step_noise *= torch.arange(steps, 0, -1, device=z.device, dtype=z.dtype).div_(steps).view(-1, 1, 1)
    grads = (chain[1:] - chain[:-1] - step_noise).div_(drift)
    return _result(z0, z, start_lp, kernel.log_prob(z), grads, chain if keep_chain else None)


def _result(z0: Tensor, z: Tensor, start_lp: Tensor, end_lp: Tensor, grads: list[Tensor] | Tensor,
            states: list[Tensor] | Tensor | None) -> ChainResult:
    if isinstance(grads, list):
        grads = torch.stack(grads) if grads else z.new_zeros(0, *z.shape)
    stats = {
        "start_log_prob": start_lp.mean(),
        "end_log_prob": end_lp.mean(),
        "displacement": (z - z0.float()).norm(dim=-1).mean(),
        "grad_norm": grads.norm(dim=-1).mean() if grads.numel() else z.new_zeros(()),
        "nonfinite": (~torch.isfinite(z)).float().mean(),
    }
    if isinstance(states, list):
        states = torch.stack(states)
    return ChainResult(z.to(z0.dtype), stats, states)


class GraphedChain:
    """Replays a whole Langevin chain as one captured CUDA graph (Nvidia's "CUDA graphs").

    A chain of a small energy is hundreds of tiny kernels whose launch cost dwarfs their
    arithmetic; captured once per (shape, steps, step size), the chain replays with one launch.
    The graph reads the target's parameters by address, so in-place optimizer updates are seen
    by later replays. Noise is drawn into a static buffer before each replay (outside the
    graph), so a fixed ``noise`` gives exactly the eager chain's samples.

    A target that reads data changing from call to call (the posterior chain's batch) names
    those tensors as ``inputs`` and gives ``rebind``, which builds the same kernel over other
    tensors of the same shapes: the graph is captured over static copies of the inputs, filled
    before each replay.

    Only chains with a ``grad_fn`` (no autograd graph of their own between steps) on a CUDA
    device are captured, and at most ``max_graphs`` shapes (an evaluation that conditions on
    every subset runs the rest eagerly rather than capturing dozens). Anything else, and any
    failure to capture, falls back to :func:`run_chain` transparently: a failure's reason is
    kept in ``fallback_reason`` and warned about once.
    """

    def __init__(self, max_graphs: int = 8) -> None:
        self._graphs: dict[tuple, tuple] = {}
        self.max_graphs = max_graphs
        self.fallback_reason: str | None = None

    def why_not(self, kernel: LangevinKernel, z0: Tensor, keep_chain: bool) -> str | None:
        """Why this chain cannot be captured, or None when it can."""
        if z0.device.type != "cuda":
            return "not on a CUDA device"
        if kernel.grad_fn is None:
            return "the target has no closed-form gradient (autograd chains run eagerly)"
        if keep_chain:
            return "every state was requested"
        if torch.cuda.is_current_stream_capturing():
            return "already inside a capture"
        return None

    def __call__(self, kernel: LangevinKernel, z0: Tensor, steps: int, anneal_noise: bool = False,
                 keep_chain: bool = False, noise: Tensor | None = None, tensors: tuple[Tensor, ...] = (),
                 inputs: tuple[Tensor, ...] = (), rebind: Callable[[tuple[Tensor, ...]], LangevinKernel] | None = None,
                 key: tuple = ()) -> ChainResult:
        """:func:`run_chain`'s arguments; ``tensors`` are those the target reads in place (its
        parameters): a graph is reused only while they stay where they were when it was captured.
        ``inputs`` and ``rebind``: the data the target reads and the kernel over copies of it (see
        the class); ``key``: anything else the kernel was built from (which modalities it reads)."""
        if inputs and rebind is None:
            raise ValueError("a chain with inputs needs rebind to build its kernel over their static copies")
        reason = self.why_not(kernel, z0, keep_chain)
        if reason is None and self.fallback_reason is None:
            full_key = (tuple(z0.shape), z0.dtype, z0.device, steps, anneal_noise, kernel.step_size, kernel.clip_grad,
                        tuple(t.data_ptr() for t in tensors), tuple((t.shape, t.dtype) for t in inputs), key)
            if full_key in self._graphs or len(self._graphs) < self.max_graphs:
                try:
                    return self._replay(full_key, kernel, z0, steps, anneal_noise, noise, inputs, rebind)
                except RuntimeError as err:  # capture unsupported here: remember, warn once, go eager
                    self.fallback_reason = f"CUDA graph capture failed ({err}); running the chain eagerly"
                    self._graphs.clear()
                    warnings.warn(self.fallback_reason, MMGenWarning, stacklevel=2)
        return run_chain(kernel, z0, steps, anneal_noise, keep_chain=keep_chain, noise=noise)

    def _replay(self, key: tuple, kernel: LangevinKernel, z0: Tensor, steps: int, anneal_noise: bool,
                noise: Tensor | None, inputs: tuple[Tensor, ...], rebind) -> ChainResult:
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(kernel, z0, steps, anneal_noise, inputs, rebind)
        graph, static_z0, static_noise, static_inputs, out = entry
        static_z0.copy_(z0)
        for static, given in zip(static_inputs, inputs):
            static.copy_(given)
        if noise is not None:
            static_noise.copy_(noise)
        else:
            static_noise.normal_()
        graph.replay()
        return ChainResult(out.z.clone().to(z0.dtype), {k: v.clone() for k, v in out.stats.items()})

    @staticmethod
    def _capture(kernel: LangevinKernel, z0: Tensor, steps: int, anneal_noise: bool,
                 inputs: tuple[Tensor, ...], rebind) -> tuple:
        static_z0 = z0.detach().float().clone()
        # zeros, not a draw: a capture takes nothing from the random stream, so a chain's samples
        # for a given seed are the same whether it was captured, replayed or run eagerly
        static_noise = torch.zeros(steps, *z0.shape, device=z0.device)
        static_inputs = tuple(t.detach().clone() for t in inputs)
        if rebind is not None:
            kernel = rebind(static_inputs)
        # Warm up on a side stream first (lazy initialisation must not happen during capture).
        side = torch.cuda.Stream(device=z0.device)
        side.wait_stream(torch.cuda.current_stream(z0.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run_chain(kernel, static_z0, steps, anneal_noise, noise=static_noise)
        torch.cuda.current_stream(z0.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run_chain(kernel, static_z0, steps, anneal_noise, noise=static_noise)
        return graph, static_z0, static_noise, static_inputs, out
