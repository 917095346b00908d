"""Non-finite training steps kept away from the weights without a host-device sync per step
(:class:`FiniteGuard`), and the one-line report that names what went non-finite."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.model import MultimodalModel


@dataclass
class _Pending:
    """One step not yet checked on the host: its flag and what a report would need, on device."""

    step: int
    epoch: int
    finite: torch.Tensor  # () bool
    stats: dict[str, torch.Tensor]
    loss: torch.Tensor
    grad_norm: torch.Tensor
    grad_finite: torch.Tensor  # (P,) bool, one per parameter with a gradient
    grad_owners: list[str]


class FiniteGuard:
    """Keeps non-finite steps away from the weights without a host-device sync per step.

    Each step hands the optimizer a device-side ``found_inf`` flag (fused Adam then leaves the
    weights, moments and step count untouched, as under a gradient scaler), and keeps the step's
    flag and statistics on the device. :meth:`settle` looks at them all with one sync, at the
    points where the loop syncs anyway (logging, checkpoints, epoch ends), and returns the steps
    that were skipped so the policy (stop, skip, rollback) can act on them there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, processes: int = 1):
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.processes = processes
        self.pending: list[_Pending] = []

    def guard(self, model: MultimodalModel, step: int, epoch: int, out, grad_norm: torch.Tensor) -> None:
        """Record the step and arm the optimizer to skip it if anything is non-finite."""
        loss = out.loss.detach()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.processes > 1:
            # Every process must skip (and stop, roll back) together: a loss that is non-finite on
            # one process only, with finite gradients, would otherwise leave the replicas a step
            # apart, waiting on each other forever. A collective on the device, not a host sync.
            agreed = finite.to(torch.float32)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            finite = agreed > 0
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        norms = torch._foreach_norm([g for _, g in named]) if named else []
        grad_finite = torch.isfinite(torch.stack(norms)) if named else finite.new_ones(0)
        self.pending.append(_Pending(step, epoch, finite, out.stats, loss, grad_norm, grad_finite,
                                     [n.split(".")[0] for n, _ in named]))
        self.optimizer.found_inf = (~finite).float()

    def settle(self, model: MultimodalModel) -> tuple[list[tuple[str, str]], bool]:
        """Every pending step that was skipped as ``(where, report)``, and whether the latest
        pending step was one of them; clears the pending list.

        Steps are numbered as if skipped batches took no step (the numbering a loop that syncs
        every step would print): a skipped step shares its number with the batch after it.
        """
        if not self.pending:
            return [], False
        flags = torch.stack([p.finite for p in self.pending]).cpu().tolist()  # the one sync
        skipped = []
        for p, ok in zip(self.pending, flags):
            if not ok:
                where = f"step {p.step - len(skipped)} (epoch {p.epoch})"
                skipped.append((where, nonfinite_report(model, p)))
        latest_bad = not flags[-1]
        self.pending.clear()
        return skipped, latest_bad

    def clear(self) -> None:
        self.pending.clear()
        self.optimizer.found_inf = None


def nonfinite_report(model: MultimodalModel, step: _Pending) -> str:
    """Name the component and the statistic that went non-finite (``prior 'ebm': prior/f_neg=nan``)."""
    bad = []
    for key, value in step.stats.items():
        value = torch.as_tensor(value)
        if not torch.isfinite(value).all():
            kind = key.split("/")[0]
            who = model.component_label(kind) if "/" in key else "model"
            bad.append(f"{who}: {key}={float(value.float().mean())}")
    if not bad and not torch.isfinite(step.grad_norm):
        owners = sorted({o for o, ok in zip(step.grad_owners, step.grad_finite.tolist()) if not ok})
        bad.append(f"gradient norm={float(step.grad_norm)} in {', '.join(owners) or 'unknown parameters'}")
    if not bad and torch.isfinite(step.loss) and torch.isfinite(step.grad_norm):
        return "values on another process"  # this process's step was finite; another's was not
    return "; ".join(bad) or f"loss={float(step.loss)}"
