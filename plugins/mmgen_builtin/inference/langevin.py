"""Short-run Langevin posterior inference (Yuan, Lipizzi & Han 2024, SPEC section 1.1):

    log pi(z) = log p_alpha(z) + sum_{m in S} log p(x_m | z[, w_m])

initialised from the aggregator's amortized sample, moved by K1 Langevin steps over the observed
subset S. In training the refined samples are the EBM's positive samples (and, optionally, the
targets of a generator MLE step); at test time they refine cross-modal generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmgen.config import check_nonnegative, check_positive
from mmgen.langevin import GraphedChain, LangevinKernel, run_chain
from mmgen.latent import Inference, InferenceResult


@dataclass
class LangevinInferenceConfig:
    """K1 steps with noise scale s1; gradient clipping; whether to take the generator MLE step."""

    steps: int = 20  # K1
    step_size: float = 0.1  # s1
    clip_grad: float = 0.0
    anneal_noise: bool = False
    generator_step: bool = True
    cuda_graph: bool = True  # on CUDA, replay the chain (decoders' forward and backward) as one captured graph

    def __post_init__(self):
        check_positive(self, "step_size")
        check_nonnegative(self, "steps", "clip_grad")


class LangevinInference(Inference):
    """Posterior Langevin dynamics from the encoder's sample."""

    def __init__(self, cfg: LangevinInferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.generator_step = cfg.generator_step
        self.graphed = GraphedChain() if cfg.cuda_graph else None

    def stabilize(self, factor: float) -> list[str]:
        old = self.cfg.step_size
        self.cfg.step_size = old * factor
        return [f"posterior Langevin step size {old:.4g} -> {self.cfg.step_size:.4g}"]

    def target(self, model, batch, mask: Tensor, w: Tensor | None):
        """The unnormalised log posterior over the observed modalities, per chain, and a fused
        value-and-gradient when the prior has a closed-form gradient (only the decoders then go
        through autograd)."""
        return self._target(model, batch.x, mask, w, batch.observed(mask))

    @staticmethod
    def _target(model, x: list[Tensor], mask: Tensor, w: Tensor | None, observed: list[int]):
        def log_likelihood(z: Tensor) -> Tensor:
            return (model.log_likelihood(x, z, w, observed) * mask).sum(-1)

        def log_prob(z: Tensor) -> Tensor:
            return model.prior.log_prob(z, frozen=True) + log_likelihood(z)

        def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
            prior_lp, prior_grad = model.prior.log_prob_and_grad(z)
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                ll = log_likelihood(z)
                (grad,) = torch.autograd.grad(ll.sum(), z)
            return prior_lp + ll.detach(), prior_grad + grad

        probe = model.prior.log_prob_and_grad(x[0].new_zeros(1, model.latent_dim))
        return log_prob, (value_and_grad if probe is not None else None)

    def refine(self, model, z: Tensor, batch, mask: Tensor, w: Tensor | None = None,
               keep_chain: bool = False) -> InferenceResult:
        observed = batch.observed(mask)

        def kernel_over(x: list[Tensor], mask: Tensor, w: Tensor | None) -> LangevinKernel:
            log_prob, grad_fn = self._target(model, x, mask, w, observed)
            return LangevinKernel(log_prob, self.cfg.step_size, self.cfg.clip_grad, grad_fn)

        kernel = kernel_over(batch.x, mask, w)
        if self.graphed is not None and self.graphed.why_not(kernel, z, keep_chain) is None:
            # The graph reads the batch from static copies and the weights by address.
            m = len(batch.x)
            inputs = (*batch.x, mask) if w is None else (*batch.x, mask, w)
            result = self.graphed(kernel, z, self.cfg.steps, self.cfg.anneal_noise, keep_chain=keep_chain,
                                  tensors=(*model.parameters(), *model.buffers()), inputs=inputs,
                                  rebind=lambda s: kernel_over(list(s[:m]), s[m], None if w is None else s[m + 1]),
                                  key=(tuple(observed), w is None))
        else:
            result = run_chain(kernel, z, self.cfg.steps, self.cfg.anneal_noise, keep_chain=keep_chain)
        stats = {f"chain/{k}": v for k, v in result.stats.items()}
        return InferenceResult(result.z, stats, result.chain)
