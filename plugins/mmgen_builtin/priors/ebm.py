"""Latent energy-based prior (Pang et al. 2020; Yuan, Lipizzi & Han 2024):

    p_alpha(z) = exp(f_alpha(z)) p0(z) / Z(alpha),    p0 = N(0, sigma0^2 I)

f_alpha is a small MLP. Z(alpha) is never computed: the ELBO needs log p_alpha only up to a
constant, sampling uses short-run Langevin dynamics from p0, and f_alpha learns by maximum
likelihood, whose gradient is E_posterior[grad f] - E_prior[grad f], i.e. the loss
mean f(z-) - mean f(z+) on prior (negative) and posterior (positive) samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.func import functional_call

from mmgen.config import check_betas, check_finite, check_nonnegative, check_positive
from mmgen.errors import MMGenError
from mmgen.langevin import ChainResult, GraphedChain, LangevinKernel, as_float32, run_chain
from mmgen.latent import Prior

_LEAKY_SLOPE = 0.2
# activation -> (act(a), g * act'(a)): the kernels autograd itself runs for these layers
_KERNELS = {
    "gelu": (F.gelu, torch.ops.aten.gelu_backward.default),
    "leaky_relu": (partial(F.leaky_relu, negative_slope=_LEAKY_SLOPE),
                   partial(torch.ops.aten.leaky_relu_backward.default, negative_slope=_LEAKY_SLOPE, self_is_result=False)),
    "silu": (F.silu, torch.ops.aten.silu_backward.default),
}
# activation -> (act(a) into out, g * act'(a) into out): the same kernels writing into given tensors
_OUT_KERNELS = {
    "gelu": (lambda a, out: torch._C._nn.gelu(a, out=out),
             lambda g, a, out: torch.ops.aten.gelu_backward.grad_input(g, a, grad_input=out)),
    "leaky_relu": (lambda a, out: torch._C._nn.leaky_relu(a, _LEAKY_SLOPE, out=out),
                   lambda g, a, out: torch.ops.aten.leaky_relu_backward.grad_input(
                       g, a, _LEAKY_SLOPE, False, grad_input=out)),
    "silu": (lambda a, out: torch._C._nn.silu(a, out=out),
             lambda g, a, out: torch.ops.aten.silu_backward.grad_input(g, a, grad_input=out)),
}
_ATEN_ELTWISE_BELOW = 32768  # activation elements per call under which ATen's kernels beat oneDNN's
SIGMA0_RANGE = (1e-19, 1e19)  # sigma0^2 and 1/sigma0^2 stay below float32's largest value, 3.4e38
ACTIVATIONS = {"gelu": nn.GELU, "leaky_relu": lambda: nn.LeakyReLU(_LEAKY_SLOPE), "silu": nn.SiLU}


@dataclass
class EBMConfig:
    """Energy network, prior Langevin (K0 steps, noise scale s0) and the EBM's own optimizer."""

    hidden: int = 200
    depth: int = 2
    activation: str = "gelu"  # gelu | leaky_relu | silu
    spectral_norm: bool = False
    sigma0: float = 1.0
    steps: int = 60  # K0
    step_size: float = 0.4  # s0
    clip_grad: float = 0.0
    anneal_noise: bool = False
    energy_weight: float = 1.0  # weight of f(z) in the ELBO's prior term (the "energy term") only
    energy_l2: float = 0.0  # optional penalty on f(z+)^2 + f(z-)^2 against drifting energies
    fast_grad: bool = True  # hand-derived gradient of the MLP energy in Langevin (no autograd)
    cuda_graph: bool = True  # on CUDA, replay the fast prior chain as one captured graph
    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    amsgrad: bool = False  # the EBM's own Adam is plain Adam (SPEC 1.2), whatever train.amsgrad says

    def __post_init__(self):
        check_positive(self, "hidden", "sigma0", "step_size", "lr")
        check_nonnegative(self, "depth", "steps", "clip_grad", "energy_l2", "weight_decay")
        check_finite(self, "energy_weight")
        if not SIGMA0_RANGE[0] <= self.sigma0 <= SIGMA0_RANGE[1]:  # (NaN: rejected just above)
            raise ValueError(f"sigma0: must be in [{SIGMA0_RANGE[0]:g}, {SIGMA0_RANGE[1]:g}] (sigma0^2 and "
                             f"1/sigma0^2 enter float32 arithmetic), got {self.sigma0}")
        check_betas(self)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: unknown '{self.activation}'; valid: {', '.join(ACTIVATIONS)}")


class EnergyMLP(nn.Module):
    """f_alpha: z (..., D) -> (...), an MLP D -> hidden x depth -> 1."""

    def __init__(self, dim: int, cfg: EBMConfig):
        super().__init__()
        if cfg.activation not in ACTIVATIONS:
            raise MMGenError(f"model.prior.activation: unknown '{cfg.activation}'; valid: {', '.join(ACTIVATIONS)}")
        self.activation = cfg.activation
        self.width = cfg.hidden
        layers: list[nn.Module] = []
        width = dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), ACTIVATIONS[cfg.activation]()]
            width = cfg.hidden
        layers.append(nn.Linear(width, 1))
        if cfg.spectral_norm:
            layers = [nn.utils.parametrizations.spectral_norm(m) if isinstance(m, nn.Linear) else m for m in layers]
        self.net = nn.Sequential(*layers)
        # The layers themselves (not their weights: spectral norm recomputes those on access).
        self._linears = tuple(m for m in self.net if isinstance(m, nn.Linear))
        self._parametrized = cfg.spectral_norm

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)

    def value_and_grad(self, z: Tensor, z_coeff: float = 0.0) -> tuple[Tensor, Tensor]:
        """f(z) and grad_z f(z) + ``z_coeff`` z, in one forward pass and a hand-derived backward pass.

        For h_0 = z, a_l = h_{l-1} W_l^T + b_l, h_l = act(a_l), f = h_L w^T + c:
        grad = ((w * act'(a_L)) W_L * act'(a_{L-1}) ... ) W_1. Each layer costs two kernels each
        way (linear and the activation; its backward kernel and a matmul) and no autograd graph is
        built, which is what makes a 60-step prior chain cheap (docs/benchmarks.md). ``z_coeff``
        (a Gaussian term's -1/sigma^2) rides in the last matmul. Weights are read once, so with
        spectral norm the power iteration runs once per call.
        """
        return self._value_and_grad(z, True, z_coeff)

    def grad(self, z: Tensor, z_coeff: float = 0.0) -> Tensor:
        """grad_z f(z) + ``z_coeff`` z alone: the last hidden activation and the output layer are skipped."""
        return self._value_and_grad(z, False, z_coeff)[1]

    def _value_and_grad(self, z: Tensor, with_value: bool, z_coeff: float) -> tuple[Tensor | None, Tensor]:
        with self.kernels_for(z):
            return self._pass(z, with_value, z_coeff)

    @contextmanager
    def kernels_for(self, z: Tensor) -> Iterator[None]:
        """Inside: the fastest activation kernels for a pass over ``z``. On the CPU oneDNN's GELU
        kernels cost 10-25 us a call whatever the size: ATen's own are faster below ~30k elements,
        slower above (docs/benchmarks.md), so oneDNN is switched off for small passes. Matmuls use
        BLAS either way. A Langevin chain enters this once (``LangevinKernel.environment``)."""
        onednn = torch.backends.mkldnn.enabled
        small = z.device.type == "cpu" and z.size(0) * self.width < _ATEN_ELTWISE_BELOW
        torch.backends.mkldnn.enabled = onednn and not small
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = onednn

    def _pass(self, z: Tensor, with_value: bool, z_coeff: float) -> tuple[Tensor | None, Tensor]:
        return self._bound_pass(with_value, z_coeff)(z)

    def _bound_pass(self, with_value: bool, z_coeff: float) -> Callable[[Tensor], tuple[Tensor | None, Tensor]]:
        """z -> (f(z) if ``with_value`` else None, grad f(z) + ``z_coeff`` z), the weights, kernels
        and layer structure looked up now, once, instead of at every call."""
        weights = self.layer_weights()  # once: with spectral norm each read runs a power iteration
        *hidden, (w_out, b_out) = weights
        if not hidden:  # a linear energy: its gradient is its own row
            return lambda z: (F.linear(z, w_out, b_out).squeeze(-1) if with_value else None,
                              torch.add(w_out.expand_as(z), z, alpha=z_coeff))
        body, w_in = self._bound_body(weights, with_value), hidden[0][0]

        def pass_(z: Tensor) -> tuple[Tensor | None, Tensor]:
            f, delta = body(z)
            return f, torch.addmm(z, delta, w_in, beta=z_coeff)

        return pass_

    def _bound_body(self, weights: list[tuple[Tensor, Tensor]],
                    with_value: bool) -> Callable[[Tensor], tuple[Tensor | None, Tensor]]:
        """z -> (f(z) or None, df/da_1) with these ``weights`` (:meth:`layer_weights`, at least one
        hidden layer): everything of the pass but the last matmul, the gradient with respect to the
        first layer's pre-activation (N, H)."""
        act, act_backward = _KERNELS[self.activation]
        *hidden, (w_out, b_out) = weights
        (w_in, b_in), inner = hidden[0], hidden[1:]
        backward = [weight for weight, _ in inner[::-1]]

        def body(z: Tensor) -> tuple[Tensor | None, Tensor]:
            pre = [F.linear(z, w_in, b_in)]  # (N, H) pre-activations, layer by layer
            for weight, bias in inner:
                pre.append(F.linear(act(pre[-1]), weight, bias))
            f = F.linear(act(pre[-1]), w_out, b_out).squeeze(-1) if with_value else None  # (N,)
            g = w_out.expand(z.size(0), -1)  # (N, H): df/dh_L
            for weight, a in zip(backward, pre[:0:-1]):
                g = torch.mm(act_backward(g, a), weight)  # (N, H_in)
            return f, act_backward(g, pre[0])

        return body

    def _buffered_body(self, weights: list[tuple[Tensor, Tensor]]) -> Callable[[Tensor], Tensor]:
        """:meth:`_bound_body` without the value, each intermediate written into a tensor allocated
        at the first call for that batch shape and reused by every later call: a chain's steps
        then touch the same memory, which stays in cache (a few percent of a CPU step at batch
        64, docs/benchmarks.md). The result is one of those tensors, overwritten by the next call:
        for a caller that uses it at once (a Langevin transition). ``out=`` kernels do not
        differentiate, so it runs without autograd, as a chain does (``LangevinKernel.context``)."""
        act, act_backward = _OUT_KERNELS[self.activation]
        *hidden, (w_out, _) = weights
        forward = [(bias, weight.t()) for weight, bias in hidden]  # addmm(b, h, W^T) = linear(h, W, b)
        backward = [weight for weight, _ in hidden[:0:-1]]  # W_L, ..., W_2
        buffers: dict[tuple, tuple[list[Tensor], ...]] = {}

        def allocate(z: Tensor) -> tuple[list[Tensor], ...]:
            new = [z.new_empty(z.size(0), weight.size(0)) for weight, _ in hidden]
            pre, h, d = new, [z.new_empty(t.shape) for t in new[:-1]], [z.new_empty(t.shape) for t in new]
            g = [z.new_empty(z.size(0), weight.size(1)) for weight in backward]
            return pre, h, d, g, [w_out.expand(z.size(0), -1)]

        def body(z: Tensor) -> Tensor:
            key = (z.shape, z.dtype, z.device)
            pre, h, d, g, (top,) = buffers.get(key) or buffers.setdefault(key, allocate(z))
            x = z
            for i, (bias, weight_t) in enumerate(forward):
                torch.addmm(bias, x, weight_t, out=pre[i])
                if i < len(h):
                    x = act(pre[i], h[i])
            act_backward(top, pre[-1], d[-1])
            for j, weight in enumerate(backward):  # layer L - j back to layer L - j - 1
                i = len(pre) - 1 - j
                torch.mm(d[i], weight, out=g[j])
                act_backward(g[j], pre[i - 1], d[i - 1])
            return d[0]

        return body

    def score(self, z_coeff: float = 0.0) -> Callable[[Tensor], Tensor]:
        """:meth:`grad` as a function bound to the weights as they are now: what a chain calls.

        Nothing is looked up per call (the weights, the kernels, the layers' structure); the
        Parameters themselves are bound, so in-place optimizer updates are seen. With spectral
        norm the weights are computed per call, so the plain :meth:`grad` is returned instead.
        """
        if self._parametrized:
            return partial(self.grad, z_coeff=z_coeff)
        pass_ = self._bound_pass(False, z_coeff)
        return lambda z: pass_(z)[1]

    def value(self) -> Callable[[Tensor], Tensor]:
        """f as a function bound to the weights as they are now, detached: z -> f(z) differentiates
        with respect to z only, and in-place optimizer updates are seen (the detached weights share
        the Parameters' memory). Spectral norm computes its weights per call: there the frozen
        module is called instead."""
        if self._parametrized:
            return lambda z: functional_call(self, {k: v.detach() for k, v in self.named_parameters()}, (z,))
        act = _KERNELS[self.activation][0]
        *hidden, (w_out, b_out) = [(w.detach(), b.detach()) for w, b in self.layer_weights()]

        def f(z: Tensor) -> Tensor:
            h = z
            for weight, bias in hidden:
                h = act(F.linear(h, weight, bias))
            return F.linear(h, w_out, b_out).squeeze(-1)

        return f

    def move(self, z_coeff: float = 0.0) -> Callable[[Tensor, Tensor, float, float], Tensor] | None:
        """A Langevin transition z + a (grad f(z) + ``z_coeff`` z) + b eps with the gradient folded
        into its last matmul: z' = addmm(k z + b eps, df/da_1, W_1, alpha=a) with k = 1 + a z_coeff,
        one kernel fewer than computing the gradient and adding it. Bound like :meth:`score`;
        None where there is no matmul to fold into (a linear energy) or the weights are computed
        per call (spectral norm). Call it without autograd (the kernel's ``context``): its
        intermediates live in reused buffers (:meth:`_buffered_body`)."""
        if self._parametrized or len(self._linears) < 2:
            return None
        weights = self.layer_weights()
        body, w_in = self._buffered_body(weights), weights[0][0]

        def move(z: Tensor, eps: Tensor, a: float, b: float) -> Tensor:
            delta = body(z)
            k = as_float32(1.0 + a * z_coeff)
            if k == 0.0:  # the Gaussian term cancels z exactly
                return torch.addmm(eps, delta, w_in, beta=b, alpha=a)
            return torch.addmm(torch.add(z, eps, alpha=b / k), delta, w_in, beta=k, alpha=a)

        return move

    def layer_weights(self) -> list[tuple[Tensor, Tensor]]:
        """(weight, bias) of each linear layer, read straight from the parameter dicts unless
        spectral norm computes the weights (Module.__getattr__ costs ~2 us a read, 5 reads a step)."""
        if self._parametrized:
            return [(lin.weight, lin.bias) for lin in self._linears]
        return [(lin._parameters["weight"], lin._parameters["bias"]) for lin in self._linears]

    def act(self, a: Tensor) -> Tensor:
        """The activation (the same kernel the module's own layers run)."""
        return _KERNELS[self.activation][0](a)

    def act_backward(self, g: Tensor, a: Tensor) -> Tensor:
        """``g * act'(a)`` in one kernel (the one autograd itself calls). On this CPU the fused
        kernels beat an act' that shares erf/exp with act (docs/benchmarks.md)."""
        return _KERNELS[self.activation][1](g, a)


class EBMPrior(Prior):
    """Exponentially tilted Gaussian prior on the shared latent, sampled by Langevin dynamics."""

    learns_from_samples = True

    def __init__(self, cfg: EBMConfig, dim: int):
        super().__init__(dim)
        self.cfg = cfg
        self.energy = EnergyMLP(dim, cfg)
        self._diagnostics: dict[str, Tensor] = {}
        # Spectral norm recomputes the weights into new tensors each call: nothing to capture.
        self.graphed = GraphedChain() if cfg.cuda_graph and not cfg.spectral_norm else None

    @property
    def fast(self) -> bool:
        """Whether Langevin may use the hand-derived gradient (an MLP energy and fast_grad on)."""
        return self.cfg.fast_grad and isinstance(self.energy, EnergyMLP)

    def f(self, z: Tensor, frozen: bool = False) -> Tensor:
        """f_alpha(z); ``frozen`` evaluates it with detached parameters (gradient flows to z only)."""
        if not frozen:
            return self.energy(z)
        params = {k: v.detach() for k, v in self.energy.named_parameters()}
        buffers = dict(self.energy.named_buffers())
        return functional_call(self.energy, {**params, **buffers}, (z,))

    def base_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, sigma0^2 I)."""
        s2 = self.cfg.sigma0**2
        return -0.5 * z.pow(2).sum(-1) / s2 - 0.5 * z.size(-1) * math.log(2 * math.pi * s2)

    def log_prob(self, z: Tensor, frozen: bool = False) -> Tensor:
        """log p_alpha(z) + log Z(alpha): the energy plus the Gaussian reference."""
        return self.f(z, frozen) + self.base_log_prob(z)

    def elbo_log_prob(self, z: Tensor) -> Tensor:
        """The ELBO's prior term, its energy term weighted by ``energy_weight`` (frozen energy)."""
        return self.cfg.energy_weight * self.f(z, frozen=True) + self.base_log_prob(z)

    def unnormalized(self, z: Tensor) -> Tensor:
        """The Langevin target f(z) - |z|^2 / (2 sigma0^2), with frozen parameters."""
        return self.f(z, frozen=True) - 0.5 * z.pow(2).sum(-1) / self.cfg.sigma0**2

    def unnormalized_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`unnormalized` and its gradient, without autograd."""
        s2 = self.cfg.sigma0**2
        f, g = self.energy.value_and_grad(z, -1.0 / s2)
        return f.sub_(z.square().sum(-1), alpha=0.5 / s2), g

    def unnormalized_grad(self, z: Tensor) -> Tensor:
        """The gradient of :meth:`unnormalized` alone (the inner steps of a prior chain)."""
        return self.energy.grad(z, -1.0 / self.cfg.sigma0**2)

    def log_prob_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """log p_alpha(z) (up to log Z) and its gradient in closed form (posterior Langevin uses it)."""
        if not self.fast:
            return None
        f, g = self.energy.value_and_grad(z)
        return f + self.base_log_prob(z), g - z / self.cfg.sigma0**2

    def chain(self, n: int, device: torch.device | str = "cpu", keep_chain: bool = False,
              noise: Tensor | None = None) -> ChainResult:
        """K0 steps of prior Langevin from z0 ~ N(0, sigma0^2 I) (``noise`` ``(K0, n, D)`` fixes the stream)."""
        z0 = self.cfg.sigma0 * torch.randn(n, self.dim, device=device)
        kernel = self.kernel()
        if self.graphed is not None:
            result = self.graphed(kernel, z0, self.cfg.steps, self.cfg.anneal_noise, keep_chain=keep_chain,
                                  noise=noise, tensors=tuple(self.energy.parameters()))
        else:
            result = run_chain(kernel, z0, self.cfg.steps, self.cfg.anneal_noise, keep_chain=keep_chain, noise=noise)
        self._diagnostics = {f"chain/{k}": v for k, v in result.stats.items()}
        return result

    def kernel(self) -> LangevinKernel:
        """The prior Langevin kernel: closed-form gradients when :attr:`fast`, autograd otherwise."""
        if not self.fast:
            return LangevinKernel(self.unnormalized, self.cfg.step_size, self.cfg.clip_grad)
        # the target, its gradient and the fused transition bound to the weights once per chain,
        # the kernel choice made once per chain
        z_coeff = -1.0 / self.cfg.sigma0**2
        f = self.energy.value()

        def unnormalized(z: Tensor) -> Tensor:  # as self.unnormalized, without functional_call's ~0.3 ms
            return f(z).sub_(z.square().sum(-1), alpha=-0.5 * z_coeff)

        return LangevinKernel(unnormalized, self.cfg.step_size, self.cfg.clip_grad, self.unnormalized_and_grad,
                              self.energy.score(z_coeff), self.energy.kernels_for, self.energy.move(z_coeff))

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """``n`` samples by prior Langevin."""
        return self.chain(n, device).z

    def sample_chain(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """Every state of the prior chain, ``(K0 + 1, n, D)``."""
        return self.chain(n, device, keep_chain=True).chain

    def loss(self, z_pos: Tensor, z_neg: Tensor) -> Tensor:
        """mean f(z-) - mean f(z+): raises the energy term on posterior samples, lowers it on prior ones."""
        f_pos, f_neg = self.energy(z_pos), self.energy(z_neg)
        loss = f_neg.mean() - f_pos.mean()
        if self.cfg.energy_l2:
            loss = loss + self.cfg.energy_l2 * (f_pos.pow(2).mean() + f_neg.pow(2).mean())
        self._diagnostics.update({"f_pos": f_pos.mean().detach(), "f_neg": f_neg.mean().detach()})
        return loss

    def param_groups(self) -> list[dict]:
        """The energy network trains with its own Adam settings (default lr 2e-5, betas 0.5/0.999,
        no AMSGrad: train.amsgrad, on in the MMVAE-based recipes, is the encoders' and decoders')."""
        return [{"params": list(self.energy.parameters()), "lr": self.cfg.lr, "betas": tuple(self.cfg.betas),
                 "weight_decay": self.cfg.weight_decay, "amsgrad": self.cfg.amsgrad}]

    def stabilize(self, factor: float) -> list[str]:
        old = self.cfg.step_size
        self.cfg.step_size = old * factor
        return [f"prior Langevin step size {old:.4g} -> {self.cfg.step_size:.4g}"]

    def diagnostics(self) -> dict[str, Tensor]:
        return dict(self._diagnostics)
