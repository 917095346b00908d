"""The paper's figures as image grids: joint generation, cross generation, generation before vs
after Langevin refinement, and decoded states along a Langevin chain (SPEC section 3). Each row is
labelled with its modality and role, and a chain's columns with their step, so that a figure
reads without this code at hand."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mmgen.data import Batch, MultimodalDataset
from mmgen.figures import save_labelled_grid
from mmgen.model import MultimodalModel


def given_mask(num_modalities: int, given: list[int], n: int, device: torch.device | str) -> Tensor:
    """``(n, M)`` mask observing only ``given``."""
    mask = torch.zeros(n, num_modalities, dtype=torch.bool, device=device)
    mask[:, given] = True
    return mask


@torch.no_grad()
def joint_rows(model: MultimodalModel, n: int, device: torch.device | str) -> list[Tensor]:
    """One row per modality of n unconditional samples (prior Langevin for an EBM prior)."""
    return model.generate(n, device)


@torch.no_grad()
def cross_rows(model: MultimodalModel, batch: Batch, given: list[int], refine: bool = True) -> list[Tensor]:
    """The given modalities' inputs, then every modality generated from them."""
    mask = given_mask(model.num_modalities, given, len(batch), batch.mask.device)
    return [*(batch.x[m] for m in given), *model.cross_generate(batch, mask, refine=refine)]


@torch.no_grad()
def refinement_rows(model: MultimodalModel, batch: Batch, given: list[int]) -> list[Tensor] | None:
    """Inputs, then targets decoded from the amortized latent, then from the refined one (the same
    amortized sample before and after refinement). ``None`` when the inference method returns the
    amortized sample unchanged (amortized inference): there is nothing to compare."""
    mask = given_mask(model.num_modalities, given, len(batch), batch.mask.device)
    posterior, private = model.encode(batch.x, mask)
    z0 = posterior.sample(1)[0]
    w = None
    if private is not None:
        w = torch.where(mask.unsqueeze(-1), private.loc, torch.zeros_like(private.loc))
    z1 = model.inference.refine(model, z0, batch, mask, w).z
    if z1 is z0:
        return None
    targets = [m for m in range(model.num_modalities) if m not in given]
    before, after = model.decode_all(z0, w), model.decode_all(z1, w)
    return [*(batch.x[m] for m in given), *(before[m] for m in targets), *(after[m] for m in targets)]


def chain_steps(states: int, every: int) -> list[int]:
    """The steps of a chain of ``states`` states (z0 is step 0) that :func:`chain_rows` decodes:
    every ``every``-th, and always the last."""
    idx = list(range(0, states, every))
    if idx[-1] != states - 1:
        idx.append(states - 1)
    return idx


def chain_rows(model: MultimodalModel, chain: Tensor, every: int, w: Tensor | None = None) -> list[Tensor]:
    """Decode one chain's states every ``every`` steps: a row per modality, a column per state."""
    idx = chain_steps(chain.size(0), every)
    z = chain[idx]  # (T, D)
    ww = None if w is None else w.expand(len(idx), -1, -1)
    with torch.no_grad():
        return model.decode_all(z, ww)


def cross_labels(names: list[str], given: list[int]) -> list[str]:
    """The row labels of :func:`cross_rows`: "given m0" on an input, "m1 from m0" on a generated row."""
    source = ",".join(names[m] for m in given)
    return [*(f"given {names[m]}" for m in given), *(f"{name} from {source}" for name in names)]


def save_figures(model: MultimodalModel, test_set: MultimodalDataset, out: Path, device: torch.device | str,
                 n: int = 8, given: list[int] | None = None, chain: bool = False, every: int = 5) -> list[Path]:
    """Write joint.png, cross.png, refinement.png (when the inference method refines) and, with
    ``chain``, chain-prior.png (a prior with a sampling chain) and chain-posterior.png (an
    inference method with a chain) to ``out``; return the paths. Rows are labelled on the left,
    a chain's columns with their step; cross.png and refinement.png are in blocks (one per
    conditioning set; inputs, amortized, refined) set apart by a gap."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    M = model.num_modalities
    names = [m.name for m in model.modalities]
    batch = test_set.batch(torch.arange(min(n, len(test_set)))).to(device)
    sources = [given] if given else [[m] for m in range(M)]
    paths = [save_labelled_grid([list(zip(names, joint_rows(model, n, device)))], out / "joint.png")]
    blocks = [list(zip(cross_labels(names, src), cross_rows(model, batch, src))) for src in sources]
    paths.append(save_labelled_grid(blocks, out / "cross.png"))
    refinement = refinement_rows(model, batch, sources[0])
    if refinement is not None:
        k = len(sources[0])
        targets = [names[m] for m in range(M) if m not in sources[0]]
        labels = [f"given {names[m]}" for m in sources[0]]
        stages = [list(zip(labels, refinement[:k])),
                  list(zip([f"{t} amortized" for t in targets], refinement[k:k + len(targets)])),
                  list(zip([f"{t} refined" for t in targets], refinement[k + len(targets):]))]
        paths.append(save_labelled_grid(stages, out / "refinement.png"))
    if chain:
        prior_chain = model.prior.sample_chain(1, device)
        if prior_chain is not None:
            paths.append(_save_chain(model, prior_chain[:, 0], every, _prior_w(model, device), names,
                                     out / "chain-prior.png"))
        one = batch.select(slice(0, 1))
        mask = given_mask(M, sources[0], 1, device)
        posterior, private = model.encode(one.x, mask)
        w = None if private is None else torch.where(mask.unsqueeze(-1), private.loc, torch.zeros_like(private.loc))
        result = model.inference.refine(model, posterior.sample(1)[0], one, mask, w, keep_chain=True)
        if result.chain is not None:
            labels = [f"{name} (given)" if m in sources[0] else name for m, name in enumerate(names)]
            paths.append(_save_chain(model, result.chain[:, 0], max(1, every // 3), w, labels,
                                     out / "chain-posterior.png"))
    return [p for p in paths if p is not None]  # a figure of modalities that are not images is not drawn


def _save_chain(model: MultimodalModel, chain: Tensor, every: int, w: Tensor | None, labels: list[str],
                path: Path) -> Path | None:
    """A chain's decoded states: a row per modality, a column per state labelled with its step."""
    steps = chain_steps(chain.size(0), every)
    rows = chain_rows(model, chain, every, w)
    return save_labelled_grid([list(zip(labels, rows))], path, columns=[str(s) for s in steps], corner="step")


def _prior_w(model: MultimodalModel, device) -> Tensor | None:
    if not model.private_dim:
        return None
    return torch.zeros(1, model.num_modalities, model.private_dim, device=device)
