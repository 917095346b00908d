"""``mmgen data inspect``: counts per split, modality and label, and a PNG grid of example tuples."""

from __future__ import annotations

from PIL import Image

from .test_data_readers import DIGITS, assert_one_line_error, invoke, write_png_dataset, write_pt_dataset


def test_inspect_prints_counts_and_saves_a_grid(tmp_path):
    write_png_dataset(tmp_path, 3, "train")
    write_png_dataset(tmp_path, 3, "test", indices=[0, 1], digits={0: 4, 1: 4})
    result = invoke("data", "inspect", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "│ train" in line or "│ test" in line]
    assert rows == [[split, f"m{k}", "3x28x28", str(n)] for split, n in (("train", len(DIGITS)), ("test", 2))
                    for k in range(3)]  # one row per split and modality
    labels = sorted(set(DIGITS.values()))
    start = next(i for i, line in enumerate(lines) if "label" in line and "train" in line)
    assert [c.strip() for c in lines[start].split("┃")[1:-1]] == ["label", "train", "test"]
    by_label = [[c.strip() for c in line.split("│")[1:-1]] for line in lines[start + 2:start + 2 + len(labels)]]
    train = list(DIGITS.values())
    assert by_label == [[str(y), f"{train.count(y)} ({train.count(y) / len(train):.1%})",
                         "2 (100.0%)" if y == 4 else "0 (0.0%)"] for y in labels]
    # Was one row per modality with every label's count: at 80 columns each cell was cut to "1…".
    assert max(len(line) for line in lines if "│" in line or "┃" in line) <= 80 and "…" not in result.stdout
    grid = Image.open(tmp_path / "inspect.png")
    # save_grid: 2 px padding, 2x upscale; 3 modality rows, 5 tuples (one per label) across
    assert grid.size == (2 * (5 * 30 + 2), 2 * (3 * 30 + 2))


def test_inspect_tensor_layout_with_out_option(tmp_path):
    write_pt_dataset(tmp_path / "ds", 2, "test", n=12)
    out = tmp_path / "figs" / "grid.png"
    result = invoke("data", "inspect", tmp_path / "ds", "--out", out, "--examples", "4")
    assert result.exit_code == 0, result.output
    assert "pt layout" in " ".join(result.stdout.split())  # rich may wrap a long path's line
    assert Image.open(out).size == (2 * (4 * 30 + 2), 2 * (2 * 30 + 2))
    assert not (tmp_path / "ds" / "inspect.png").exists()


def test_inspect_missing_folder(tmp_path):
    assert_one_line_error(invoke("data", "inspect", tmp_path / "nope"), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("data", "inspect", tmp_path / "empty"), "no train/ or test/")
