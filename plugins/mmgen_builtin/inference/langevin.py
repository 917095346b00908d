"""Short-run Langevin posterior inference (Yuan, Lipizzi & Han 2024, SPEC section 1.1):

    log pi(z) = log p_alpha(z) + sum_{m in S} log p(x_m | z[, w_m])

initialised from the aggregator's amortized sample, moved by K1 Langevin steps over the observed
subset S. In training the refined samples are the EBM's positive samples (and, optionally, the
targets of a generator MLE step); at test time they refine cross-modal generation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmgen.config import check_nonnegative, check_positive
from mmgen.langevin import LangevinKernel, run_chain
from mmgen.latent import Inference, InferenceResult


@dataclass
class LangevinInferenceConfig:
    """K1 steps with noise scale s1; gradient clipping; whether to take the generator MLE step."""

    steps: int = 20  # K1
    step_size: float = 0.1  # s1
    clip_grad: float = 0.0
    anneal_noise: bool = False
    generator_step: bool = True

    def __post_init__(self):
        check_positive(self, "step_size")
        check_nonnegative(self, "steps", "clip_grad")


class LangevinInference(Inference):
    """Posterior Langevin dynamics from the encoder's sample."""

    def __init__(self, cfg: LangevinInferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.generator_step = cfg.generator_step

    def stabilize(self, factor: float) -> list[str]:
        old = self.cfg.step_size
        self.cfg.step_size = old * factor
        return [f"posterior Langevin step size {old:.4g} -> {self.cfg.step_size:.4g}"]

    def target(self, model, batch, mask: Tensor, w: Tensor | None):
        """The unnormalised log posterior over the observed modalities, per chain."""

        def log_prob(z: Tensor) -> Tensor:
            ll = (model.log_likelihood(batch.x, z, w) * mask).sum(-1)
            return model.prior.log_prob(z, frozen=True) + ll

        return log_prob

    def refine(self, model, z: Tensor, batch, mask: Tensor, w: Tensor | None = None,
               keep_chain: bool = False) -> InferenceResult:
        kernel = LangevinKernel(self.target(model, batch, mask, w), self.cfg.step_size, self.cfg.clip_grad)
        result = run_chain(kernel, z, self.cfg.steps, self.cfg.anneal_noise, keep_chain=keep_chain)
        stats = {f"chain/{k}": v for k, v in result.stats.items()}
        return InferenceResult(result.z, stats, result.chain)
