"""Benchmark plots, drawn with Pillow only: line curves of training statistics (and of periodic
evaluations), one bar chart per table column (mean with a ±std error bar) and the paper's
cross-generation figure, one panel per model side by side."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mmgen.bench.report import Cell, fmt, read_jsonl, report_columns, summary_cell
from mmgen.errors import did_you_mean
from mmgen.figures import font as _font, text_size as _text_size

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
#: After every colour has been used once, a line chart's next series get dashes and another marker
#: (a grid of runs easily has more series than colours): (dash, gap) in pixels (0: solid), marker.
LINE_STYLES = [(0, 0, "circle"), (9, 5, "square"), (3, 4, "diamond")]


# ----------------------------------------------------------------------------------------------
# Plots (Pillow only)
# ----------------------------------------------------------------------------------------------
def _plain(text: str) -> str:
    """Pillow's built-in font has no arrows: spell them in ASCII."""
    return text.replace("→", "->").replace("↑", "(higher is better)").replace("↓", "(lower is better)")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.6g}"


class _Axes:
    """A plotting area with ticks, grid lines, labels and a title on a white canvas."""

    def __init__(self, width: int, height: int, title: str, xlabel: str, ylabel: str,
                 ylim: tuple[float, float], xlim: tuple[float, float] | None, left: int = 90, right: int = 30,
                 bottom: int = 70):
        title, xlabel, ylabel = _plain(title), _plain(xlabel), _plain(ylabel)
        self.img = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.img)
        self.font, self.small, self.big = _font(14), _font(12), _font(17)
        self.x0, self.x1, self.y0, self.y1 = left, width - right, 50, height - bottom
        self.yticks = nice_ticks(*ylim)
        self.ylim = (min(self.yticks[0], ylim[0]), max(self.yticks[-1], ylim[1]))
        self.xlim = xlim
        d = self.draw
        tw, _ = _text_size(d, title, self.big)
        d.text(((width - tw) / 2, 14), title, fill="black", font=self.big)
        for t in self.yticks:
            y = self.py(t)
            d.line([(self.x0, y), (self.x1, y)], fill=(225, 225, 225))
            label = _tick_label(t)
            w, h = _text_size(d, label, self.small)
            d.text((self.x0 - 8 - w, y - h / 2 - 2), label, fill="black", font=self.small)
        if xlim is not None:
            for t in nice_ticks(*xlim, n=6):
                if xlim[0] <= t <= xlim[1]:
                    x = self.px(t)
                    d.line([(x, self.y1), (x, self.y1 + 5)], fill="black")
                    label = _tick_label(t)
                    w, _ = _text_size(d, label, self.small)
                    d.text((x - w / 2, self.y1 + 8), label, fill="black", font=self.small)
        d.line([(self.x0, self.y0), (self.x0, self.y1), (self.x1, self.y1)], fill="black", width=1)
        w, _ = _text_size(d, xlabel, self.font)
        d.text(((self.x0 + self.x1 - w) / 2, height - 28), xlabel, fill="black", font=self.font)
        # A vertical y label: draw horizontally on its own image and rotate it.
        w, h = _text_size(d, ylabel, self.font)
        label = Image.new("RGB", (w + 4, h + 8), "white")
        ImageDraw.Draw(label).text((2, 0), ylabel, fill="black", font=self.font)
        label = label.rotate(90, expand=True)
        self.img.paste(label, (8, int((self.y0 + self.y1 - label.height) / 2)))

    def px(self, x: float) -> float:
        lo, hi = self.xlim or (0.0, 1.0)
        return self.x0 + (x - lo) / ((hi - lo) or 1.0) * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        lo, hi = self.ylim
        return self.y1 - (y - lo) / ((hi - lo) or 1.0) * (self.y1 - self.y0)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]], styles: Sequence[int] = ()) -> None:
        """A box of ``(name, colour)`` entries; ``styles[i]`` indexes :data:`LINE_STYLES` (default solid)."""
        if not entries:
            return
        d = self.draw
        entries = [(_plain(name), colour) for name, colour in entries]
        width = max(_text_size(d, name, self.small)[0] for name, _ in entries) + 34
        x, y = self.x1 - width - 8, self.y0 + 8
        d.rectangle([x, y, x + width, y + 8 + 18 * len(entries)], fill="white", outline=(160, 160, 160))
        for i, (name, colour) in enumerate(entries):
            yy = y + 6 + 18 * i
            style = styles[i] if i < len(styles) else 0
            _polyline(d, [(x + 4, yy + 7), (x + 26, yy + 7)], colour, 3, style)
            _marker(d, x + 15, yy + 7, colour, style)
            d.text((x + 30, yy), name, fill="black", font=self.small)


def _polyline(d: ImageDraw.ImageDraw, xy: Sequence[tuple[float, float]], colour: tuple[int, int, int], width: int,
              style: int) -> None:
    """A line through ``xy``, solid or dashed as :data:`LINE_STYLES` ``[style]`` says (the dashes run on
    across the vertices)."""
    dash, gap, _ = LINE_STYLES[style]
    if not dash:
        d.line(list(xy), fill=colour, width=width)
        return
    phase = 0.0  # how far into the current dash + gap period the pen is
    for (xa, ya), (xb, yb) in zip(xy, xy[1:]):
        length, t = math.hypot(xb - xa, yb - ya), 0.0
        while t < length:
            step = min(length - t, (dash - phase) if phase < dash else (dash + gap - phase))
            if phase < dash:
                a, b = t / length, (t + step) / length
                d.line([(xa + a * (xb - xa), ya + a * (yb - ya)), (xa + b * (xb - xa), ya + b * (yb - ya))],
                       fill=colour, width=width)
            t, phase = t + step, (phase + step) % (dash + gap)


def _marker(d: ImageDraw.ImageDraw, x: float, y: float, colour: tuple[int, int, int], style: int) -> None:
    shape = LINE_STYLES[style][2]
    if shape == "square":
        d.rectangle([x - 3, y - 3, x + 3, y + 3], fill=colour)
    elif shape == "diamond":
        d.polygon([(x, y - 4), (x + 4, y), (x, y + 4), (x - 4, y)], fill=colour)
    else:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def line_chart(series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str,
               ylabel: str) -> Path:
    """One line per entry of ``series`` (name -> [(x, y)]), with axes, ticks and a legend."""
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] or [0.0, 1.0]
    pad = (max(ys) - min(ys)) * 0.05 or abs(max(ys)) * 0.05 or 1.0
    axes = _Axes(900, 520, title, xlabel, ylabel, (min(ys) - pad, max(ys) + pad), (min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1))
    legend, styles = [], []
    for i, (name, pts) in enumerate(series.items()):
        colour, style = PALETTE[i % len(PALETTE)], (i // len(PALETTE)) % len(LINE_STYLES)
        xy = [(axes.px(x), axes.py(y)) for x, y in pts if math.isfinite(y)]
        if len(xy) > 1:
            _polyline(axes.draw, xy, colour, 2, style)
        for x, y in xy if len(xy) <= 30 else xy[-1:]:
            _marker(axes.draw, x, y, colour, style)
        legend.append((name, colour))
        styles.append(style)
    axes.legend(legend, styles)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes.img.save(path)
    return path


def bar_chart(names: Sequence[str], cells: Sequence[Cell], path: Path, title: str, ylabel: str,
              best: Sequence[str] = ()) -> Path:
    """A bar per run (the mean) with a ±std error bar and its value; the best bars outlined in black."""
    means = [c.mean for c in cells]
    tops = [m + (c.std or 0) for m, c in zip(means, cells) if m is not None] or [1.0]
    bottoms = [m - (c.std or 0) for m, c in zip(means, cells) if m is not None] or [0.0]
    lo, hi = min(0.0, min(bottoms)), max(0.0, max(tops))
    hi += (hi - lo) * 0.12 or 1.0
    width = max(640, 150 + 110 * len(names))
    axes = _Axes(width, 520, title, "run (mean ± std over seeds; outlined: best)", ylabel, (lo, hi), None, bottom=90)
    d = axes.draw
    slot = (axes.x1 - axes.x0) / max(len(names), 1)
    zero = axes.py(0.0)
    for i, (name, cell) in enumerate(zip(names, cells)):
        colour = PALETTE[i % len(PALETTE)]
        cx = axes.x0 + slot * (i + 0.5)
        half = min(slot * 0.32, 45)
        label = name if len(name) <= 18 else name[:16] + ".."
        w, _ = _text_size(d, label, axes.small)
        d.text((cx - w / 2, axes.y1 + 8), label, fill="black", font=axes.small)
        if cell.mean is None:
            w, _ = _text_size(d, "no result", axes.small)
            d.text((cx - w / 2, zero - 18), "no result", fill=(150, 150, 150), font=axes.small)
            continue
        top = axes.py(cell.mean)
        d.rectangle([cx - half, min(top, zero), cx + half, max(top, zero)], fill=colour,
                    outline="black" if name in best else colour, width=3 if name in best else 1)
        value_y = top
        if cell.std:
            y_hi, y_lo = axes.py(cell.mean + cell.std), axes.py(cell.mean - cell.std)
            d.line([(cx, y_hi), (cx, y_lo)], fill="black", width=2)
            d.line([(cx - 8, y_hi), (cx + 8, y_hi)], fill="black", width=2)
            d.line([(cx - 8, y_lo), (cx + 8, y_lo)], fill="black", width=2)
            value_y = min(value_y, y_hi)
        text = fmt(cell.mean) + (f" (n={cell.n})" if cell.n > 1 else "")
        w, h = _text_size(d, text, axes.small)
        d.text((cx - w / 2, value_y - h - 8), text, fill="black", font=axes.small)
    d.line([(axes.x0, zero), (axes.x1, zero)], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    axes.img.save(path)
    return path


def cross_figure(panels: Sequence[tuple[str, Path]], row_labels: Sequence[str], path: Path,
                 title: str = "cross generation") -> Path | None:
    """The runs' cross-generation grids side by side under their names, rows labelled on the left.

    Each panel is a grid written by the benchmark worker (``bench-cross.png``): the given
    modality's test inputs in the first row(s), then every modality generated from them.
    """
    images = [(_plain(name), Image.open(p).convert("RGB")) for name, p in panels if Path(p).is_file()]
    row_labels = [_plain(t) for t in row_labels]
    title = _plain(title)
    if not images:
        return None
    font, big = _font(14), _font(17)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((_text_size(probe, t, font)[0] for t in row_labels), default=0) + 20
    gap, head = 24, 64
    width = label_w + sum(img.width for _, img in images) + gap * (len(images) - 1) + 20
    height = head + max(img.height for _, img in images) + 16
    canvas = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(canvas)
    tw, _ = _text_size(d, title, big)
    d.text(((width - tw) / 2, 10), title, fill="black", font=big)
    x = label_w
    for name, img in images:
        label = name if _text_size(d, name, font)[0] <= img.width else name[: max(4, img.width // 8)] + ".."
        w, _ = _text_size(d, label, font)
        d.text((x + (img.width - w) / 2, head - 24), label, fill="black", font=font)
        canvas.paste(img, (x, head))
        x += img.width + gap
    rows = len(row_labels)
    if rows:
        pitch = images[0][1].height / rows
        for i, text in enumerate(row_labels):
            _, h = _text_size(d, text, font)
            d.text((8, head + pitch * (i + 0.5) - h / 2 - 2), text, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")


def curve_series(runs: Sequence[dict[str, Any]], key: str, file: str = "metrics.jsonl") -> dict[str, list[tuple[float, float]]]:
    """Per run, the mean over its finished seeds of ``key`` at the steps every seed logged."""
    per_run: dict[str, list[dict[int, float]]] = {}
    for r in runs:
        if r["status"] != "finished":
            continue
        logged = {int(rec["step"]): float(rec[key]) for rec in read_jsonl(Path(r["run_dir"]) / file)
                  if key in rec and "step" in rec and isinstance(rec[key], (int, float)) and rec[key] is not None}
        if logged:
            per_run.setdefault(r["run"], []).append(logged)
    series = {}
    for run, logs in per_run.items():
        steps = sorted(set.intersection(*(set(log) for log in logs)))
        series[run] = [(float(s), sum(log[s] for log in logs) / len(logs)) for s in steps]
    return series


def logged_stats(runs: Sequence[dict[str, Any]]) -> set[str]:
    """Every numeric statistic a finished run logged, in training (metrics.jsonl) or in periodic
    evaluations (eval.jsonl)."""
    keys: set[str] = set()
    for r in runs:
        if r["status"] == "finished":
            for file in ("metrics.jsonl", "eval.jsonl"):
                for rec in read_jsonl(Path(r["run_dir"]) / file):
                    keys.update(k for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    return keys - {"step"}


def write_plots(report: dict[str, Any], out: Path, curves: Sequence[str] = ("loss",),
                cross_rows: Sequence[str] = ()) -> list[Path]:
    """Every PNG: curves-<key>.png (training statistics), bar-<column>.png, cross-generation.png."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("curves-*.png"), *out.glob("bar-*.png"), out / "cross-generation.png"]:
        old.unlink(missing_ok=True)  # plots of columns or runs the benchmark no longer has
    paths: list[Path] = []
    for key in curves:
        series = curve_series(report["runs"], key)
        if not series:
            # Periodic evaluations during training, when a run logged them.
            series = curve_series(report["runs"], key, "eval.jsonl")
        if series:
            n = len({r["seed"] for r in report["runs"]})
            paths.append(line_chart(series, out / f"curves-{_safe(key)}.png",
                                    f"{key} during training (mean over {n} seed{'s' if n > 1 else ''})", "step", key))
        elif any(r["status"] == "finished" for r in report["runs"]):
            # Validation knows the statistic's family (prior/..., metric/...), not what the runs'
            # components log: say so rather than leave the plot out without a word.
            logged = logged_stats(report["runs"])
            report.setdefault("notes", []).append(
                f"report.curves: no finished run logged '{key}'{did_you_mean(key, logged)}, so it has no plot; "
                f"logged: {', '.join(sorted(logged)) or 'nothing'}")
    for col in report_columns(report):
        # The table's metrics over training, when the runs evaluated periodically (eval.jsonl).
        series = curve_series(report["runs"], col.key, "eval.jsonl")
        if series and col.key not in curves:
            paths.append(line_chart(series, out / f"curves-{_safe(col.key)}.png",
                                    f"{_plain(col.label)} during training ({col.better} is better)", "step", col.label))
    names = [e["run"] for e in report["summary"]]
    for col in report_columns(report):
        cells = [summary_cell(e, col.key) for e in report["summary"]]
        best = [e["run"] for e in report["summary"] if col.key in e["best"]]
        paths.append(bar_chart(names, cells, out / f"bar-{_safe(col.key)}.png",
                               f"{col.label} ({col.better} is better)", col.label, best))
    panels = []
    for name in names:
        first = next((r for r in report["runs"] if r["run"] == name and r["status"] == "finished"), None)
        if first is not None:
            panels.append((f"{name} (seed {first['seed']})", Path(first["run_dir"]) / "bench-cross.png"))
    figure = cross_figure(panels, cross_rows, out / "cross-generation.png",
                          "cross generation: given modality (top), every modality generated from it")
    if figure is not None:
        paths.append(figure)
    return paths
