"""`mmgen bench`'s report: aggregation over seeds, results.md/tex/csv, provenance and notes, built
from run directories made by hand (no training)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from mmgen.bench.report import Column, aggregate, best_runs, build_report, csv_text, markdown


def fake_run(root: Path, run: str, seed: int, metrics: dict, status: str = "finished") -> dict:
    run_dir = root / f"{run}-s{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "bench.json").write_text(json.dumps({"config_hash": "c", "eval_hash": "e" if status == "finished" else None,
                                                    "status": status, "error": "boom" if status == "failed" else None}))
    if status == "finished":
        (run_dir / "eval.json").write_text(json.dumps({"step": 5, "metrics": metrics}))
    return {"run": run, "seed": seed, "run_dir": str(run_dir), "config_hash": "c", "eval_hash": "e"}


def test_aggregation_against_hand_computed_means_and_stds(tmp_path):
    columns = [Column("cross_coherence/mean_1to1", "cross", "higher"), Column("fd/unconditional_mean", "FD", "lower")]
    runs = [
        fake_run(tmp_path, "a", 0, {"cross_coherence": {"mean_1to1": 0.5}, "fd": {"unconditional_mean": 10.0}}),
        fake_run(tmp_path, "a", 1, {"cross_coherence": {"mean_1to1": 0.7}, "fd": {"unconditional_mean": 14.0}}),
        fake_run(tmp_path, "a", 2, {"cross_coherence": {"mean_1to1": 0.6}, "fd": {"unconditional_mean": 12.0}}),
        fake_run(tmp_path, "b", 0, {"cross_coherence": {"mean_1to1": 0.9}, "fd": {"unconditional_mean": None}}),
        fake_run(tmp_path, "b", 1, {}, status="failed"),
    ]
    bench = {"name": "t", "data": {"name": "default"}, "budget": {"epochs": 1}, "seeds": [0, 1, 2],
             "evaluate": {"metrics": ["cross_coherence", "fd"], "n": 10, "seed": 0}}
    report = build_report(bench, runs, columns)
    a, b = report["summary"]
    # a: cross 0.5, 0.7, 0.6 -> mean 0.6, sample std sqrt((0.01 + 0.01 + 0) / 2) = 0.1
    assert math.isclose(a["columns"]["cross_coherence/mean_1to1"]["mean"], 0.6)
    assert math.isclose(a["columns"]["cross_coherence/mean_1to1"]["std"], 0.1)
    # a: FD 10, 14, 12 -> mean 12, sample std sqrt((4 + 4 + 0) / 2) = 2
    assert math.isclose(a["columns"]["fd/unconditional_mean"]["mean"], 12.0)
    assert math.isclose(a["columns"]["fd/unconditional_mean"]["std"], 2.0)
    # b: one finished seed (std undefined), one failed, a missing FD
    assert b["columns"]["cross_coherence/mean_1to1"] == {"mean": 0.9, "std": None, "n": 1, "values": [0.9]}
    assert b["columns"]["fd/unconditional_mean"]["n"] == 0
    assert (a["finished"], b["finished"], b["failed"]) == (3, 1, 1)
    assert a["best"] == ["fd/unconditional_mean"] and b["best"] == ["cross_coherence/mean_1to1"]  # FD: lower wins

    md = markdown(report)
    assert "| a | 3/3 | 0.600 ± 0.100 | **12.000 ± 2.000** |" in md
    assert "| b | 1/2 | **0.900** | – |" in md
    assert "`b` seed 1 — failed: boom" in md
    rows = csv_text(report).splitlines()
    assert rows[1].startswith("a,3,3,0,0.6") and rows[1].endswith(",fd/unconditional_mean")

    table = aggregate([{"run": "x", "seed": 0, "status": "finished", "values": {"k": 1.0}},
                       {"run": "x", "seed": 1, "status": "finished", "values": {"k": 2.0}},
                       {"run": "y", "seed": 0, "status": "finished", "values": {"k": 2.0}}], [Column("k", "k")])
    assert math.isclose(table["x"]["k"].std, math.sqrt(0.5)) and best_runs(table, [Column("k", "k")]) == {"k": ["y"]}


def test_results_tex_is_the_table_as_latex_with_its_provenance(tmp_path):
    """results.tex: the results.md table as a booktabs LaTeX table, special characters escaped, the
    best mean in bold; results.md and results.tex end with what made them."""
    from mmgen import __version__
    from mmgen.bench.latex import latex
    from mmgen.bench.report import provenance

    columns = [Column("cross_coherence/mean_1to1", "cross 1→1", "higher"), Column("fd/unconditional_mean", "FD_joint", "lower")]
    runs = [fake_run(tmp_path, "ebm_a", 0, {"cross_coherence": {"mean_1to1": 0.5}, "fd": {"unconditional_mean": 110.0}}),
            fake_run(tmp_path, "ebm_a", 1, {"cross_coherence": {"mean_1to1": 0.7}, "fd": {"unconditional_mean": 130.0}}),
            fake_run(tmp_path, "b&c", 0, {"cross_coherence": {"mean_1to1": 0.9}})]
    bench = {"name": "t_1", "data": {"name": "default"}, "budget": {"epochs": 1}, "seeds": [0, 1],
             "evaluate": {"metrics": ["cross_coherence", "fd"], "n": 10, "n_test": 5, "seed": 0}}
    report = build_report(bench, runs, columns)
    (tmp_path / "b.yaml").write_text("runs: []\n")
    report["provenance"] = provenance(tmp_path / "b.yaml", "mmgen bench b.yaml")
    tex = latex(report)
    lines = tex.splitlines()
    assert r"\begin{tabular}{lrrr}" in lines and r"\toprule" in lines and r"\bottomrule" in lines
    assert r"Model & Seeds & cross 1$\to$1 $\uparrow$ & FD\_joint $\downarrow$ \\" in lines
    # 0.5, 0.7: mean 0.6, std 0.141; 110, 130: mean 120.0, std 14.1 (the mean's decimals); no FD for b&c
    assert r"ebm\_a & 2/2 & $0.600 \pm 0.141$ & $\mathbf{120.0} \pm \mathbf{14.1}$ \\" in lines
    assert r"b\&c & 1/1 & $\mathbf{0.900}$ & -- \\" in lines
    assert r"\label{tab:mmgen-t-1}" in lines and r"n\_test=5" in tex
    made = report["provenance"]
    assert made["mmgen"] == __version__ and made["command"] == "mmgen bench b.yaml"
    assert made["bench_file_sha256"] == hashlib.sha256(b"runs: []\n").hexdigest()
    assert markdown(report).rstrip().splitlines()[-1].startswith(f"Made by mmgen {__version__}")
    assert lines[1].startswith(f"% Made by mmgen {__version__}") and lines[1].endswith("mmgen bench b.yaml")


def test_provenance_names_no_commit_for_an_install_inside_another_checkout(tmp_path):
    """``pip install .`` into a project's .venv: site-packages lies inside a git checkout, whose HEAD
    was recorded as mmgen's commit (another repository's, or a later commit than the installed one)."""
    import subprocess

    from mmgen.bench.report import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    site = tmp_path / ".venv" / "site-packages"
    (site / "mmgen" / "bench").mkdir(parents=True)
    (site / "mmgen" / "bench" / "report.py").write_text("")
    git("add", ".gitignore")
    git("commit", "-q", "-m", "a paper")
    assert git_commit(site) is None
    (tmp_path / "mmgen" / "bench").mkdir(parents=True)  # a checkout of mmgen itself
    (tmp_path / "mmgen" / "bench" / "report.py").write_text("")
    git("add", "mmgen")
    git("commit", "-q", "-m", "mmgen")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "mmgen" / "bench" / "report.py").write_text("# edited")
    assert git_commit(tmp_path) == head + "+dirty"


def test_results_tex_escapes_what_the_default_font_encoding_sets_as_other_characters():
    """A column label "FD <joint> | x" came out of pdflatex as "FD ¡joint¿ — x" (OT1 encoding)."""
    from mmgen.bench.latex import latex_escape

    assert latex_escape("FD <joint> | x") == r"FD \textless{}joint\textgreater{} \textbar{} x"
    assert latex_escape("a_b & {c}") == r"a\_b \& \{c\}"


def test_results_tex_sets_greek_letters_and_relations_as_math():
    """pdflatex stopped at a label with a Greek letter ("Unicode character α not set up for use with LaTeX")."""
    from mmgen.bench.latex import latex_escape

    assert latex_escape("β-ELBO, σ ≤ 1") == r"$\beta$-ELBO, $\sigma$ $\leq$ 1"
    assert latex_escape("αβ ΛΑΣ ς") == r"$\alpha\beta$ $\Lambda A\Sigma$ $\varsigma$"  # a run of letters: one $...$
    assert latex_escape("$ α") == r"\$ $\alpha$"  # an escaped $ stays out of the math
    assert latex_escape("µ ± 2² é") == "µ ± 2² é"  # Latin-1: LaTeX's UTF-8 input has these


def test_results_tex_sets_only_greek_letters_latex_has_macros_for():
    """Every character Unicode names "GREEK SMALL/CAPITAL LETTER X" became \\x: the archaic
    digamma, koppa, sampi, heta, san, ... gave \\digamma, \\koppa, ..., undefined control sequences
    that stop pdflatex. They pass as other characters do."""
    import re
    import unicodedata

    from mmgen.bench.latex import latex_escape

    letters = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau "
               "upsilon phi chi psi omega").split()
    defined = {*letters, *(w.capitalize() for w in letters), "varsigma", "vartheta", "varpi", "varrho"}
    for cp in range(0x370, 0x400):
        for macro in re.findall(r"\\([A-Za-z]+)", latex_escape(chr(cp))):
            assert macro in defined, (hex(cp), unicodedata.name(chr(cp), "?"), macro)
    assert latex_escape("ϝ ϟ ͱ") == "ϝ ϟ ͱ"
    assert latex_escape("Ω ω Υ") == r"$\Omega$ $\omega$ $\Upsilon$"


def test_a_cells_std_has_the_decimals_of_its_mean():
    """A table cell is pasted into papers: "620.3 ± 4.245" mixed 1 and 3 decimals."""
    from mmgen.bench.report import Cell, fmt_cell

    assert fmt_cell(Cell(620.2926, 4.2447, 2)) == "620.3 ± 4.2"
    assert fmt_cell(Cell(617.8, 13.18, 3)) == "617.8 ± 13.2"
    assert fmt_cell(Cell(0.6, 0.1, 3)) == "0.600 ± 0.100"
    assert fmt_cell(Cell(12.0, 250.0, 3)) == "12.000 ± 250.000"  # the mean decides, not the std
    assert fmt_cell(Cell(620.29, None, 1)) == "620.3" and fmt_cell(Cell(None, None, 0)) == "–"


def test_results_md_says_when_cross_generation_was_not_refined(tmp_path):
    """refine: false changes every cross-generation number (the paper reports both), but the
    settings line of results.md read the same with and without it."""
    columns = [Column("cross_coherence/mean_1to1", "cross", "higher")]
    runs = [fake_run(tmp_path, "a", 0, {"cross_coherence": {"mean_1to1": 0.5}})]
    bench = {"name": "t", "data": {"name": "default"}, "budget": {"epochs": 1}, "seeds": [0],
             "evaluate": {"metrics": ["cross_coherence"], "n": 10, "seed": 0, "refine": True}}
    assert "(n=10, seed 0)" in markdown(build_report(bench, runs, columns))
    bench["evaluate"]["refine"] = False
    assert "(n=10, cross generation without refinement, seed 0)" in markdown(build_report(bench, runs, columns))


def test_a_column_label_with_a_pipe_keeps_the_markdown_table_aligned(tmp_path):
    """A label like "coherence | 1 given" split its header cell in two: every column shifted."""
    columns = [Column("cross_coherence/mean_1to1", "coherence | 1 given", "higher")]
    runs = [fake_run(tmp_path, "a", 0, {"cross_coherence": {"mean_1to1": 0.5}})]
    bench = {"name": "t", "data": {"name": "default"}, "budget": {"epochs": 1}, "seeds": [0],
             "evaluate": {"metrics": ["cross_coherence"], "n": 10, "seed": 0}}
    md = markdown(build_report(bench, runs, columns))
    assert "| run | seeds | coherence \\| 1 given ↑ |" in md
    header, rule, row = [line for line in md.splitlines() if line.startswith("| ")][:3]
    assert [len(line.replace("\\|", "").split("|")) for line in (header, rule, row)] == [5, 5, 5]


def test_a_column_null_in_every_finished_run_gets_a_note(tmp_path):
    """matrix_1to1/i/i passes the index check (i < M) but the metric leaves the diagonal null: the
    report says so instead of showing an empty column without a word."""
    from mmgen.bench.report import Column, build_report

    planned = []
    for seed, diag in ((0, None), (1, None)):
        run_dir = tmp_path / f"a-s{seed}"
        run_dir.mkdir()
        (run_dir / "bench.json").write_text(json.dumps({"config_hash": "c", "eval_hash": "e", "status": "finished"}))
        matrix = [[diag, 0.5], [0.25, None]]
        (run_dir / "eval.json").write_text(json.dumps({"step": 4, "metrics": {"cross_coherence": {
            "mean_1to1": 0.375, "matrix_1to1": matrix}}}))
        planned.append({"run": "a", "seed": seed, "run_dir": str(run_dir), "config_hash": "c", "eval_hash": "e"})
    columns = [Column("cross_coherence/mean_1to1", "cross"), Column("cross_coherence/matrix_1to1/0/1", "0→1"),
               Column("cross_coherence/matrix_1to1/0/0", "0→0")]
    report = build_report({"name": "b"}, planned, columns)
    assert report["summary"][0]["columns"]["cross_coherence/matrix_1to1/0/1"]["mean"] == 0.5
    (note,) = report["notes"]
    assert note.startswith("evaluate.columns: cross_coherence/matrix_1to1/0/0 is empty in every finished run")
    # no finished seed: nothing to say yet
    for p in planned:
        p["eval_hash"] = "other"
    assert "notes" not in build_report({"name": "b"}, planned, columns)


def test_a_line_chart_with_more_series_than_colours_dashes_the_later_ones(tmp_path):
    """Series 0 and 10 of a 12-run grid were drawn in the same colour, style and marker."""
    from PIL import Image

    from mmgen.bench.plots import PALETTE, line_chart

    # Twelve flat series; series 0 and 10 share a colour. 10 rows apart on a scale of 0..11.
    series = {f"run-{i}": [(0.0, float(i)), (100.0, float(i))] for i in range(12)}
    img = Image.open(line_chart(series, tmp_path / "lines.png", "t", "step", "loss")).convert("RGB")
    colour, half = PALETTE[0], img.width // 2

    def runs(y: int) -> list[int]:
        """The lengths of the stretches of the series' colour along row y, left of the legend."""
        out, n = [], 0
        for x in range(img.width // 8, half):
            if img.getpixel((x, y)) == colour:
                n += 1
            elif n:
                out, n = out + [n], 0
        return out + ([n] if n else [])

    lines = [r for r in map(runs, range(img.height)) if sum(r) > half // 3]  # the rows the two series lie on
    assert any(len(r) == 1 for r in lines), lines  # series 0: one unbroken line
    assert any(len(r) > 10 and max(r) <= 10 for r in lines), lines  # series 10: 9-pixel dashes
