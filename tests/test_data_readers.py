"""PolyMNIST readers on tiny datasets in both official layouts, the PNG cache, and bad input via the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mmgen.cli.main import create_app
from mmgen.errors import DataError
from mmgen_builtin.datasets import polymnist
from mmgen_builtin.datasets.polymnist import PolyMNISTConfig, polymnist_dataset, read_polymnist

# Deliberately not 0..N-1 and not in lexicographic order ("10" < "2"): alignment must come from
# the explicit index, never from how the folder happens to list.
INDICES = [10, 2, 7, 0, 31]
DIGITS = {10: 4, 2: 1, 7: 9, 0: 0, 31: 7}


def tuple_image(i: int, m: int, size: int = 28) -> np.ndarray:
    """An (H, W, 3) image that encodes its tuple index and modality, so alignment can be checked."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = i
    img[..., 1] = m
    img[..., 2] = (i * 7 + m * 13) % 256
    return img


def write_png_dataset(root, m: int, split: str = "train", indices=INDICES, digits=DIGITS):
    """PNG layout ``root/split/m{k}/{i}.{digit}.png``, each folder written in a different order."""
    for k in range(m):
        folder = root / split / f"m{k}"
        folder.mkdir(parents=True)
        order = indices[k % len(indices):] + indices[:k % len(indices)]
        for i in order:
            Image.fromarray(tuple_image(i, k)).save(folder / f"{i}.{digits[i]}.png")
    return root


def write_pt_dataset(root, m: int, split: str = "train", n: int = 5, size: int = 28):
    """Tensor layout ``root/split/m{k}.pt`` + ``labels.pt``."""
    (root / split).mkdir(parents=True)
    for k in range(m):
        x = torch.from_numpy(np.stack([tuple_image(i, k, size) for i in range(n)])).permute(0, 3, 1, 2).contiguous()
        torch.save(x, root / split / f"m{k}.pt")
    torch.save(torch.arange(n) % 10, root / split / "labels.pt")
    return root


def invoke(*args):
    return CliRunner().invoke(create_app(), [str(a) for a in args])


def assert_one_line_error(result, *needles):
    """Exit code 2, no traceback, and exactly one non-empty stderr line holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, lines
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


@pytest.mark.parametrize("m", [2, 3, 7])
def test_png_layout_aligns_by_index_and_reads_m_from_disk(tmp_path, m):
    write_png_dataset(tmp_path, m)
    ds = read_polymnist(tmp_path, "train")
    assert ds.num_modalities == m and len(ds) == len(INDICES)
    order = sorted(INDICES)
    assert ds.labels.tolist() == [DIGITS[i] for i in order]
    for k in range(m):
        for j, i in enumerate(order):
            assert torch.equal(ds.images[k][j], torch.from_numpy(tuple_image(i, k)).permute(2, 0, 1))
    assert [s.name for s in ds.modalities] == [f"m{k}" for k in range(m)]
    assert ds.images[0].dtype == torch.uint8 and ds.images[0].shape[1:] == (3, 28, 28)


@pytest.mark.parametrize("m", [2, 3, 7])
def test_tensor_layout(tmp_path, m):
    write_pt_dataset(tmp_path, m)
    ds = read_polymnist(tmp_path, "train")
    assert ds.num_modalities == m and len(ds) == 5
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]
    assert int(ds.images[m - 1][3, 0, 0, 0]) == 3 and int(ds.images[m - 1][3, 1, 0, 0]) == m - 1


def test_same_content_gives_same_fingerprint_in_both_layouts(tmp_path):
    write_png_dataset(tmp_path / "png", 2, indices=[0, 1, 2, 3, 4], digits={i: i for i in range(5)})
    write_pt_dataset(tmp_path / "pt", 2)
    assert read_polymnist(tmp_path / "png", "train").fingerprint == read_polymnist(tmp_path / "pt", "train").fingerprint


def test_modalities_option_takes_the_first_n_and_rejects_too_many(tmp_path):
    write_png_dataset(tmp_path, 3)
    assert polymnist_dataset(PolyMNISTConfig(str(tmp_path), 2), "train").num_modalities == 2
    with pytest.raises(DataError, match="has 3 modalities"):
        polymnist_dataset(PolyMNISTConfig(str(tmp_path), 4), "train")


def test_png_cache_is_used_and_invalidated_by_mtime(tmp_path, monkeypatch):
    write_png_dataset(tmp_path, 2)
    first = read_polymnist(tmp_path, "train")
    calls = []
    real = polymnist._read_png
    monkeypatch.setattr(polymnist, "_read_png", lambda p: calls.append(p) or real(p))
    again = read_polymnist(tmp_path, "train")
    assert calls == [] and again.fingerprint == first.fingerprint
    touched = tmp_path / "train" / "m1" / "7.9.png"
    Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(touched)
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse clocks: force a new mtime
    changed = read_polymnist(tmp_path, "train")
    assert len(calls) == len(INDICES)  # m1 decoded again, m0 still cached
    assert int(changed.images[1][sorted(INDICES).index(7)].max()) == 200


def test_float_tensor_layout_is_converted_and_out_of_range_floats_rejected(tmp_path):
    write_pt_dataset(tmp_path, 2)
    torch.save(torch.full((5, 3, 28, 28), 0.5), tmp_path / "train" / "m1.pt")
    assert int(read_polymnist(tmp_path, "train").images[1][0, 0, 0, 0]) == 128
    torch.save(torch.full((5, 3, 28, 28), 7.0), tmp_path / "train" / "m1.pt")
    with pytest.raises(DataError, match="m1.pt"):
        read_polymnist(tmp_path, "train")


# -- bad input through the CLI: exit 2, one line naming the file, never a shorter dataset ------
def test_missing_modality_folder(tmp_path):
    write_png_dataset(tmp_path, 3)
    for p in (tmp_path / "train" / "m1").iterdir():
        p.unlink()
    (tmp_path / "train" / "m1").rmdir()
    assert_one_line_error(invoke("data", "inspect", tmp_path), "missing modality m1", tmp_path / "train")


def test_file_count_mismatch_across_modalities(tmp_path):
    write_png_dataset(tmp_path, 2)
    (tmp_path / "train" / "m1" / "7.9.png").unlink()
    assert_one_line_error(invoke("data", "inspect", tmp_path), tmp_path / "train" / "m1" / "7.9.png", "4 images")


def test_tensor_count_mismatch(tmp_path):
    write_pt_dataset(tmp_path, 2)
    torch.save(torch.zeros(4, 3, 28, 28, dtype=torch.uint8), tmp_path / "train" / "m1.pt")
    assert_one_line_error(invoke("data", "inspect", tmp_path), tmp_path / "train" / "m1.pt", "4 images")


def test_digit_disagreement_and_duplicate_index(tmp_path):
    write_png_dataset(tmp_path, 2)
    (tmp_path / "train" / "m1" / "7.9.png").rename(tmp_path / "train" / "m1" / "7.8.png")
    assert_one_line_error(invoke("data", "inspect", tmp_path), "7.8.png", "digit 8")
    (tmp_path / "train" / "m0" / "07.9.png").write_bytes((tmp_path / "train" / "m0" / "7.9.png").read_bytes())
    assert_one_line_error(invoke("data", "inspect", tmp_path), "appears twice")


def test_corrupt_png(tmp_path):
    write_png_dataset(tmp_path, 2)
    bad = tmp_path / "train" / "m1" / "2.1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated file, as an interrupted copy leaves it
    assert_one_line_error(invoke("data", "inspect", tmp_path), "corrupt image file", bad)


@pytest.mark.slow
def test_corrupt_png_in_train(tmp_path):
    write_png_dataset(tmp_path, 2)
    write_png_dataset(tmp_path, 2, split="test")
    bad = tmp_path / "train" / "m0" / "31.7.png"
    bad.write_bytes(b"not a png at all")
    result = invoke("train", "--data", f"polymnist:{tmp_path}", "--max-steps", "1", "--batch-size", "2",
                    "--out", tmp_path / "run", "train.progress=false", "train.device=cpu")
    assert_one_line_error(result, "corrupt image file", bad)


def test_the_cli_says_a_cache_rebuild_in_one_line(tmp_path, tiny_overrides, monkeypatch):
    import subprocess
    import sys

    from mmgen_builtin.datasets.default import DefaultDataConfig, default_dataset, location

    monkeypatch.setenv("MMGEN_CACHE", str(tmp_path / "cache"))
    cfg = DefaultDataConfig(modalities=2, train_size=64, test_size=16)  # the tiny overrides' data
    default_dataset(cfg, "train")
    m1 = location(cfg) / "train" / "m1.pt"
    m1.write_bytes(m1.read_bytes()[:50])
    result = subprocess.run([sys.executable, "-m", "mmgen.cli.main", "train", "--max-steps", "1", "--out",
                             str(tmp_path / "run"), *tiny_overrides], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(said) == 1 and said[0].startswith("warning: the cached default dataset is damaged (")  # was Python's
    assert "RuntimeWarning" not in result.stderr and "default.py" not in result.stderr  # file:line + source line


def test_a_damaged_default_dataset_cache_is_rebuilt(tmp_path, monkeypatch):
    from mmgen_builtin.datasets.default import DefaultDataConfig, default_dataset, location

    monkeypatch.setenv("MMGEN_CACHE", str(tmp_path))
    cfg = DefaultDataConfig(modalities=2, train_size=32, test_size=8)
    first = default_dataset(cfg, "train")
    m1 = location(cfg) / "train" / "m1.pt"
    m1.write_bytes(m1.read_bytes()[:50])  # truncated, as by a full disk or a killed copy
    with pytest.warns(RuntimeWarning, match="cached default dataset is damaged .*m1.pt.*rebuilding it"):
        again = default_dataset(cfg, "train")
    assert all(torch.equal(a, b) for a, b in zip(first.images, again.images))  # the same bytes, rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [location(cfg).name]  # the damaged copy is gone


def test_a_default_dataset_file_changed_in_place_is_caught_by_its_content_hash(tmp_path, monkeypatch):
    """A file that still loads but holds other pixels (a flipped byte, a file copied from another
    cache) is found by the content hash the manifest recorded at build time, and rebuilt."""
    import json

    from mmgen_builtin.datasets.default import DefaultDataConfig, default_dataset, location

    monkeypatch.setenv("MMGEN_CACHE", str(tmp_path))
    cfg = DefaultDataConfig(modalities=2, train_size=32, test_size=8)
    first = default_dataset(cfg, "test")
    manifest = json.loads((location(cfg) / "manifest.json").read_text())
    assert manifest["fingerprints"]["test"] == first.fingerprint
    m0 = location(cfg) / "test" / "m0.pt"
    changed = torch.load(m0)
    changed[0, 0, 0, 0] ^= 1  # one bit of one pixel
    torch.save(changed, m0)
    with pytest.warns(RuntimeWarning, match=r"damaged .*test: content hash \w+ is not the \w+ it was built with"):
        again = default_dataset(cfg, "test")
    assert again.fingerprint == first.fingerprint
    assert torch.equal(again.images[0], first.images[0])
    # a cache built before fingerprints were recorded is read as it is
    del manifest["fingerprints"]
    (location(cfg) / "manifest.json").write_text(json.dumps(manifest))
    assert default_dataset(cfg, "test").fingerprint == first.fingerprint


@pytest.mark.parametrize("size", [14, 32])
def test_conv_networks_train_on_images_of_another_size(tmp_path, size):
    for split in ("train", "test"):
        write_pt_dataset(tmp_path / "data", 2, split, n=8, size=size)
    result = invoke("train", "--data", f"polymnist:{tmp_path / 'data'}", "--max-steps", "1", "--out", tmp_path / "run",
                    "model.encoder.name=conv", "model.encoder.hidden=4", "model.decoder.name=conv",
                    "model.decoder.hidden=4", "train.batch_size=4", "train.progress=false", "train.device=cpu")
    assert result.exit_code == 0, result.output  # 32: was a tensor-size error in the loss (the decoder made 28 x 28)


def test_a_network_that_cannot_take_the_datas_shape_is_named_when_the_model_is_built():
    from torch import nn

    from mmgen.data import ModalitySpec
    from mmgen.errors import MMGenError
    from mmgen.model import check_network_shapes

    class FixedDecoder(nn.Module):  # a decoder for 28 x 28 images only
        registry_name = "fixed"

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3 * 28 * 28)

        def forward(self, z):
            return self.fc(z).view(-1, 3, 28, 28)

    class FlatEncoder(nn.Module):  # reads 3 x 28 x 28 only
        registry_name = "flat"

        def __init__(self, outputs=2):
            super().__init__()
            self.fc, self.outputs = nn.Linear(3 * 28 * 28, 8), outputs

        def forward(self, x):
            return self.fc(x.flatten(1)).chunk(self.outputs, dim=-1)

    spec = ModalitySpec("m1", (3, 32, 32))
    check_network_shapes(ModalitySpec("m1", (3, 28, 28)), FlatEncoder(), FixedDecoder(), 4)  # fits: no error
    with pytest.raises(MMGenError, match=r"^model.encoder: encoder 'flat' cannot read modality m1's 3 x 32 x 32 "
                                         r"samples: mat1 and mat2 shapes cannot be multiplied"):
        check_network_shapes(spec, FlatEncoder(), FixedDecoder(), 4)
    with pytest.raises(MMGenError, match=r"^model.encoder: encoder 'flat' must return \(loc, raw_scale\), 4 numbers "
                                         r"each per sample, for modality m1's 3 x 28 x 28 samples; got tuple"):
        check_network_shapes(ModalitySpec("m1", (3, 28, 28)), FlatEncoder(outputs=4), FixedDecoder(), 4)
    encoder = FlatEncoder()
    encoder.fc = nn.Linear(3 * 32 * 32, 8)
    with pytest.raises(MMGenError, match=r"^model.decoder: decoder 'fixed' makes 3 x 28 x 28 samples for modality m1, "
                                         r"whose data is 3 x 32 x 32$"):
        check_network_shapes(spec, encoder, FixedDecoder(), 4)


@pytest.mark.parametrize("train_m, test_m, test_size, said", [
    (3, 2, 28, "m2 is in train only"),
    (2, 2, 32, "m0 is 3 x 28 x 28 in train, 3 x 32 x 32 in test; m1 is 3 x 28 x 28 in train, 3 x 32 x 32 in test"),
])
def test_splits_with_other_modalities_are_told_apart_modality_by_modality(tmp_path, train_m, test_m, test_size, said):
    write_pt_dataset(tmp_path, train_m, "train")
    write_pt_dataset(tmp_path, test_m, "test", size=test_size)
    result = invoke("train", "--data", f"polymnist:{tmp_path}", "--max-steps", "1", "--out", tmp_path / "run")
    assert_one_line_error(result, f"data: the train and test splits differ: {said}")  # was two ModalitySpec reprs


def test_polymnist_without_a_folder_is_refused_when_the_config_is_checked(plugins):
    from mmgen.config import compose, resolve
    from mmgen.errors import ConfigError

    with pytest.raises(ConfigError) as info:  # was accepted by validate / config show / bench --dry-run
        resolve(compose(overrides=["data.name=polymnist"]), plugins.registry)
    assert info.value.errors == ["data.path: PolyMNIST needs the dataset folder (--data polymnist:/path/to/PolyMNIST "
                                 "or data.path=/path/to/PolyMNIST)"]
