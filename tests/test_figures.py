"""mmgen.figures: the labelled grid is the bare grid pixel for pixel, plus label margins that hold
text exactly where there are labels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mmgen.figures import GAP, labelled_grid, save_grid, save_labelled_grid

SCALE = 2


def rows(k: int, n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, 28, 28, generator=g) for _ in range(k)]


def bare(rows_: list[torch.Tensor], tmp_path, name: str) -> np.ndarray:
    with Image.open(save_grid(rows_, tmp_path / name)) as img:
        return np.asarray(img.convert("RGB"))


def dark(pixels: np.ndarray) -> np.ndarray:
    return pixels.min(axis=-1) < 128


def test_each_block_is_the_bare_grid_after_a_label_margin_and_blocks_are_a_gap_apart(tmp_path):
    a, b = rows(2), rows(3, seed=1)
    path = save_labelled_grid([[("given m0", a[0]), ("m1 from m0", a[1])], [("x", r) for r in b]], tmp_path / "f.png")
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    grid_a, grid_b = bare(a, tmp_path, "a.png"), bare(b, tmp_path, "b.png")
    left = pixels.shape[1] - grid_a.shape[1]
    assert left > 0  # the label margin, and nothing to the right of the grid
    assert pixels.shape[0] == grid_a.shape[0] + GAP * SCALE + grid_b.shape[0]  # no header without column labels
    assert np.array_equal(pixels[:grid_a.shape[0], left:], grid_a)
    assert np.array_equal(pixels[-grid_b.shape[0]:, left:], grid_b)
    assert (pixels[grid_a.shape[0]:-grid_b.shape[0]] == 255).all()  # the gap: white across


def test_text_in_the_margin_only_beside_labelled_rows(tmp_path):
    r = rows(4)
    img = labelled_grid([[("m0", r[0]), ("", r[1]), ("a longer label", r[2]), ("", r[3])]])
    width = bare(r, tmp_path, "g.png").shape[1]
    margin = dark(np.asarray(img)[:, :img.width - width])
    pitch = 30 * SCALE  # a 28 px image and the 2 px pad
    bands = [margin[i * pitch:(i + 1) * pitch + 2 * SCALE] for i in range(4)]
    assert [band.any() for band in bands] == [True, False, True, False]
    # The longest label sets the margin, and the text stays inside it.
    assert margin[:, -4:].sum() == 0 and bands[2][:, margin.shape[1] // 2:].any()


def test_column_labels_sit_above_their_columns_and_the_corner_above_the_row_labels(tmp_path):
    r = rows(2, n=4)
    img = labelled_grid([[("m0", r[0]), ("m1", r[1])]], columns=["0", "", "10", "15"], corner="step")
    grid = bare(r, tmp_path, "g.png")
    top, left = img.height - grid.shape[0], img.width - grid.shape[1]
    assert top > 0 and left > 0
    assert np.array_equal(np.asarray(img)[top:, left:], grid)  # the header only adds rows on top
    header = dark(np.asarray(img)[:top])
    pitch = 30 * SCALE
    above = [header[:, left + j * pitch:left + (j + 1) * pitch + 2 * SCALE].any() for j in range(4)]
    assert above == [True, False, True, True]
    assert header[:, :left].any()  # "step"


def test_the_text_scales_with_the_images():
    r = rows(1)
    margins, heights = [], []
    for s in (1, 3):
        pixels = np.asarray(labelled_grid([[("m0 from m1", r[0])]], scale=s))
        margin = dark(pixels[:, :pixels.shape[1] - 3 * (28 + 2) * s - 2 * s])
        margins.append(margin.shape[1])
        heights.append(np.ptp(np.flatnonzero(margin.any(axis=1))))
    assert margins[1] > 2 * margins[0] and heights[1] > 2 * heights[0]  # legible at any scale


def test_an_empty_block_is_left_out(tmp_path):
    # One modality given and none left to refine: refinement.png's amortized and refined blocks are
    # empty (mmgen sample/evaluate raised "max() arg is an empty sequence").
    r = rows(1)
    alone = np.asarray(labelled_grid([[("given m0", r[0])]]))
    assert np.array_equal(np.asarray(labelled_grid([[("given m0", r[0])], [], []])), alone)
    assert np.array_equal(np.asarray(labelled_grid([[], [("given m0", r[0])]])), alone)


def test_figures_of_a_one_modality_model_with_langevin_inference(plugins, tiny_overrides, tmp_path):
    from tests.helpers import tiny_config

    from mmgen.data import ModalitySpec, MultimodalDataset
    from mmgen.generation import save_figures
    from mmgen.model import build_model

    cfg = tiny_config(plugins, tiny_overrides, ["model.inference.name=langevin", "model.inference.steps=2"])
    specs = [ModalitySpec("m0", (3, 28, 28))]  # a dataset plugin may hand out a single modality
    data = MultimodalDataset(specs, [torch.rand(4, 3, 28, 28)], torch.zeros(4))
    torch.manual_seed(0)
    model = build_model(cfg, plugins.registry, specs)
    paths = save_figures(model, data, tmp_path, "cpu", n=2)
    assert [p.name for p in paths] == ["joint.png", "cross.png", "refinement.png"]


def test_figures_show_the_image_modalities_and_leave_the_others_out(tmp_path, plugins, tiny_overrides):
    """A vector modality (any shape goes through the MLP networks) crashed the sample grid at the
    end of every training epoch, and `mmgen sample`; images of two sizes did too."""
    import torch

    from mmgen.data import ModalitySpec, MultimodalDataset
    from mmgen.figures import grid, save_grid
    from mmgen.generation import save_figures
    from mmgen.model import build_model
    from mmgen.train import save_samples

    from .helpers import tiny_config

    specs = [ModalitySpec("img", (1, 28, 28)), ModalitySpec("small", (3, 14, 14)), ModalitySpec("vec", (5,))]
    data = MultimodalDataset(specs, [torch.rand(6, 1, 28, 28), torch.rand(6, 3, 14, 14), torch.rand(6, 5)],
                             torch.arange(6) % 3)
    torch.manual_seed(0)
    model = build_model(tiny_config(plugins, tiny_overrides), plugins.registry, specs)
    save_samples(model, data, tmp_path / "samples.png", torch.device("cpu"), n=4)
    img = Image.open(tmp_path / "samples.png")
    # the two image modalities' inputs, reconstructions and joint samples: 6 rows of 28 px cells
    assert img.size == (2 * (4 * 30 + 2), 2 * (6 * 30 + 2))
    small = torch.rand(2, 3, 14, 14)
    cells = grid([small, torch.zeros(2, 1, 28, 28)])
    assert cells.shape == (2 * 30 + 2, 2 * 30 + 2, 3)  # cells of the largest image
    assert np.array_equal(cells[2:16, 2:16], (small[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    paths = save_figures(model, data, tmp_path / "figures", "cpu", n=3)
    assert sorted(p.name for p in paths) == ["cross.png", "joint.png"]
    assert save_grid([torch.rand(3, 5)], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
