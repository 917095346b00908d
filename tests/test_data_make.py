"""``mmgen data make polymnist``: the recipe on a tiny MNIST-like IDX input, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen_builtin.datasets.idx import read_idx_images, read_idx_labels, write_idx
from mmgen_builtin.datasets.polymnist import read_polymnist

from .conftest import SHARED_DATA
from .test_data_readers import assert_one_line_error, invoke

N = 30  # digits per split: 3 classes x 10


def tiny_digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 digits, each a unique random stroke mask, with 128 and 129 on the threshold."""
    rng = np.random.default_rng(seed)
    on = rng.random((N, 28, 28)) < 0.3
    digits = np.where(on, 129 + rng.integers(0, 127, (N, 28, 28)), rng.integers(0, 129, (N, 28, 28)))
    digits[:, 0, 0], digits[:, 0, 1] = 128, 129  # exactly at the threshold: off, then on
    return digits.astype(np.uint8), np.arange(N) % 3


def write_inputs(tmp_path, backgrounds: int = 2, gzip_train: bool = True):
    """A tiny MNIST folder (train gzip, test raw) and ``backgrounds`` random RGB images."""
    mnist, bgs = tmp_path / "mnist", tmp_path / "bg"
    mnist.mkdir()
    bgs.mkdir()
    for split, seed, compress in (("train", 1, gzip_train), ("t10k", 2, False)):
        digits, labels = tiny_digits(seed)
        suffix = ".gz" if compress else ""
        write_idx(mnist / f"{split}-images-idx3-ubyte{suffix}", digits, compress)
        write_idx(mnist / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    rng = np.random.default_rng(3)
    for k in range(backgrounds):  # names sort as b, c, a..: modality order comes from sorted names
        Image.fromarray(rng.integers(0, 256, (36 + k, 40, 3), dtype=np.uint8)).save(bgs / f"{'bca'[k % 3]}{k}.png")
    return mnist, bgs


def make(mnist, bgs, out, *extra):
    return invoke("data", "make", "polymnist", "--mnist", mnist, "--backgrounds", bgs, "--out", out, *extra)


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_recipe_inverts_digit_pixels_on_a_background_crop_and_aligns_labels(tmp_path):
    mnist, bgs = write_inputs(tmp_path)
    result = make(mnist, bgs, tmp_path / "out", "--format", "pt", "--train-size", "45")
    assert result.exit_code == 0, result.output
    digits = read_idx_images(mnist / "train-images-idx3-ubyte.gz")
    labels = read_idx_labels(mnist / "train-labels-idx1-ubyte.gz")
    ds = read_polymnist(tmp_path / "out", "train")
    assert len(ds) == 45 and ds.num_modalities == 2
    sources = []
    for k, bg_path in enumerate(sorted((tmp_path / "bg").iterdir(), key=lambda p: p.name)):
        bg = np.asarray(Image.open(bg_path).convert("RGB"))
        windows = np.lib.stride_tricks.sliding_window_view(bg, (28, 28), axis=(0, 1))  # (Y, X, 3, 28, 28)
        windows = windows.reshape(-1, 3, 28, 28).astype(np.int16)
        found = []
        for i in range(len(ds)):
            img = ds.images[k][i].numpy().astype(np.int16)
            # The right crop explains every pixel as either the background or its inverse ...
            fits = ((img == windows) | (img == 255 - windows)).all(axis=(1, 2, 3))
            assert fits.sum() == 1, f"modality {k}, tuple {i}: {fits.sum()} crops fit"
            crop = windows[fits.argmax()]
            on = (img == 255 - crop).all(axis=0)
            assert ((img == crop).all(axis=0) | on).all()
            # ... and the inverted pixels are exactly one digit of the tuple's class, binarised at > 128.
            match = [j for j in range(N) if np.array_equal(digits[j] > 128, on)]
            assert len(match) == 1 and labels[match[0]] == ds.labels[i], f"modality {k}, tuple {i}"
            found.append(match[0])
        sources.append(found)
    assert sources[0] != sources[1]  # each modality draws its own permutation within the class
    assert ds.labels.tolist() == [int(labels[i % N]) for i in range(45)]


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    mnist, bgs = write_inputs(tmp_path)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert make(mnist, bgs, tmp_path / name, "--seed", seed).exit_code == 0
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()  # tuple labels (and so file names) do not depend on the seed ...
    assert sum(a[k] != c[k] for k in a) > len(a) // 2  # ... but permutations and crops do
    manifest = json.loads(a["manifest.json"])
    assert manifest["seed"] == 0 and manifest["modalities"] == 2 and manifest["recipe"]["threshold"] == 128
    assert set(manifest["files"]) == a.keys() - {"manifest.json"}
    assert len(manifest["files"]) == 2 * N * 2  # PNG layout: one file per tuple and modality
    assert all(hashlib.sha256(a[k]).hexdigest() == v for k, v in manifest["files"].items())
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder was renamed, not left behind


def test_png_and_pt_formats_hold_the_same_tuples(tmp_path):
    mnist, bgs = write_inputs(tmp_path)
    assert make(mnist, bgs, tmp_path / "png", "--test-size", "7").exit_code == 0
    assert make(mnist, bgs, tmp_path / "pt", "--test-size", "7", "--format", "pt").exit_code == 0
    for split in ("train", "test"):
        a, b = read_polymnist(tmp_path / "png", split), read_polymnist(tmp_path / "pt", split)
        assert a.fingerprint == b.fingerprint and len(a) == (N if split == "train" else 7)


def test_modalities_default_to_backgrounds_and_too_few_is_an_error(tmp_path):
    mnist, bgs = write_inputs(tmp_path, backgrounds=3)
    assert make(mnist, bgs, tmp_path / "two", "--modalities", "2", "--format", "pt").exit_code == 0
    assert read_polymnist(tmp_path / "two", "test").num_modalities == 2
    assert make(mnist, bgs, tmp_path / "all", "--format", "pt").exit_code == 0
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert [b["file"] for b in manifest["backgrounds"]] == ["a2.png", "b0.png", "c1.png"]
    assert_one_line_error(make(mnist, bgs, tmp_path / "four", "--modalities", "4"), "only 3 background images", bgs)
    assert not (tmp_path / "four").exists()


def test_existing_output_needs_force(tmp_path):
    mnist, bgs = write_inputs(tmp_path)
    out = tmp_path / "out"
    assert make(mnist, bgs, out, "--format", "pt").exit_code == 0
    assert_one_line_error(make(mnist, bgs, out, "--format", "pt"), "already exists")
    assert make(mnist, bgs, out, "--force").exit_code == 0
    assert (out / "train" / "m0").is_dir() and not (out / "train" / "m0.pt").exists()


def test_the_dataset_folder_gets_the_usual_permissions(tmp_path):
    mnist, bgs = write_inputs(tmp_path)
    old = os.umask(0o022)
    try:
        assert make(mnist, bgs, tmp_path / "out", "--format", "pt").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # was 0700 (mkdtemp's), renamed into place


def test_a_killed_builds_left_overs_are_removed_by_the_next_build(tmp_path):
    import socket
    import subprocess
    import sys

    mnist, bgs = write_inputs(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".out.tmp-{host}-{int(gone.stdout)}-abcd1234"  # a build killed by SIGKILL
    running = tmp_path / f".out.tmp-{host}-{os.getpid()}-abcd1234"  # a build still running
    elsewhere = tmp_path / f".out.tmp-otherhost-{int(gone.stdout)}-abcd1234"  # another node's
    for folder in (stale, running, elsewhere):
        (folder / "train").mkdir(parents=True)
    assert make(mnist, bgs, tmp_path / "out", "--format", "pt").exit_code == 0
    assert not stale.exists() and running.exists() and elsewhere.exists()  # stale was left forever


def test_wrong_idx_magic_names_the_file(tmp_path):
    mnist, bgs = write_inputs(tmp_path, gzip_train=False)
    bad = mnist / "t10k-images-idx3-ubyte"
    data = bytearray(bad.read_bytes())
    data[:4] = struct.pack(">I", 2049)  # a labels magic on an images file
    bad.write_bytes(bytes(data))
    assert_one_line_error(make(mnist, bgs, tmp_path / "out"), bad, "2049", "expected 2051")
    assert not (tmp_path / "out").exists()


def test_truncated_idx_and_missing_split(tmp_path):
    mnist, bgs = write_inputs(tmp_path, gzip_train=False)
    for p in mnist.glob("t10k-*"):
        p.unlink()
    assert_one_line_error(make(mnist, bgs, tmp_path / "out"), "no MNIST test IDX pair", mnist)
    bad = mnist / "train-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    assert_one_line_error(make(mnist, bgs, tmp_path / "out"), bad, "bytes")


def test_a_label_outside_0_9_names_the_file_and_index(tmp_path):
    mnist, bgs = write_inputs(tmp_path, gzip_train=False)
    labels = read_idx_labels(mnist / "train-labels-idx1-ubyte")
    labels[3] = 42
    write_idx(mnist / "train-labels-idx1-ubyte", labels)
    assert_one_line_error(make(mnist, bgs, tmp_path / "out"), "label 42 at index 3; MNIST labels are digits 0-9")
    assert not (tmp_path / "out").exists()


def test_corrupt_background(tmp_path):
    mnist, bgs = write_inputs(tmp_path)
    bad = bgs / "b0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert_one_line_error(make(mnist, bgs, tmp_path / "out"), "corrupt image file", bad)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "backgrounds").is_dir(),
                    reason="needs ../shared/data (real MNIST and backgrounds)")
def test_make_from_shared_data(tmp_path):
    out = tmp_path / "polymnist"
    result = make(SHARED_DATA / "mnist", SHARED_DATA / "backgrounds", out, "--train-size", "50", "--test-size", "20")
    assert result.exit_code == 0, result.output
    train, test = read_polymnist(out, "train"), read_polymnist(out, "test")
    assert (len(train), len(test), train.num_modalities) == (50, 20, 5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["mnist"]["images"] == "train10k-images-idx3-ubyte.gz"
    assert manifest["splits"]["test"]["mnist"]["digits"] == 5000
    assert len(manifest["files"]) == 70 * 5
    assert train.images[0].dtype == torch.uint8
