"""results.tex: a bench report's table as a LaTeX (booktabs) table, to ``\\input`` in a paper."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from mmgen.bench.report import Cell, _decimals, _provenance_line, _settings_line, report_columns, summary_cell


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  # not specials, but the default (OT1) font encoding sets them as ¡, ¿ and an em dash
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


#: Characters LaTeX's text fonts lack, as math: arrows and relations a column label may use.
_LATEX_MATH = {"→": r"\to", "←": r"\leftarrow", "↔": r"\leftrightarrow", "⇒": r"\Rightarrow", "↑": r"\uparrow",
               "↓": r"\downarrow", "≤": r"\leq", "≥": r"\geq", "≈": r"\approx", "≠": r"\neq", "∞": r"\infty",
               "∼": r"\sim", "∈": r"\in", "∂": r"\partial", "∇": r"\nabla", "√": r"\surd", "∑": r"\sum",
               "∏": r"\prod", "−": "-", "ϵ": r"\epsilon", "ϑ": r"\vartheta", "ϕ": r"\phi", "ϱ": r"\varrho",
               "ϖ": r"\varpi"}
#: Greek capitals that look like Latin ones have no macro of their own.
_GREEK_LATIN = {"alpha": "A", "beta": "B", "epsilon": "E", "zeta": "Z", "eta": "H", "iota": "I", "kappa": "K",
                "mu": "M", "nu": "N", "omicron": "O", "rho": "P", "tau": "T", "chi": "X"}
#: The letters of the Greek alphabet, which TeX has macros for (archaic ones, digamma, koppa, sampi,
#: heta, san, ..., have none in plain LaTeX: they pass as other characters do).
_GREEK_LETTERS = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
                  "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"}


def _latex_math(ch: str) -> str | None:
    """The math-mode TeX for a Greek letter or a symbol of :data:`_LATEX_MATH` (None for other characters)."""
    if ch in _LATEX_MATH:
        return _LATEX_MATH[ch]
    match = re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER (FINAL )?([A-Z]+)", unicodedata.name(ch, ""))
    if not match:
        return None
    letter = {"lamda": "lambda"}.get(match[3].lower(), match[3].lower())
    if letter not in _GREEK_LETTERS:
        return None
    if match[1] == "CAPITAL":
        return _GREEK_LATIN.get(letter, "\\" + letter.capitalize())
    return "o" if letter == "omicron" else "\\varsigma" if match[2] else "\\" + letter


def latex_escape(text: str) -> str:
    """``text`` as LaTeX text: its special characters escaped; Greek letters, arrows and relations
    (→, ≤, ...), which the text fonts lack, as math. Other characters pass as they are (LaTeX
    reads UTF-8 and sets Latin-1's own, ±, ² and é included)."""
    out, maths = [], []  # maths: the current run of math characters, set as one $...$
    for ch in [*text, ""]:
        tex = _latex_math(ch) if ch else None
        if tex:
            maths.append(tex if not (maths and maths[-1][-1].isalpha() and tex[0].isalpha()) else " " + tex)
            continue
        if maths:
            out.append("$" + "".join(maths) + "$")
            maths = []
        out.append(_LATEX_SPECIAL.get(ch, ch))
    return "".join(out)


def _latex_cell(cell: Cell, bold: bool) -> str:
    if cell.mean is None:
        return "--"
    d = _decimals(cell.mean)
    wrap = (lambda t: rf"\mathbf{{{t}}}") if bold else (lambda t: t)
    if cell.std is None:
        return f"${wrap(f'{cell.mean:.{d}f}')}$"
    return f"${wrap(f'{cell.mean:.{d}f}')} \\pm {wrap(f'{cell.std:.{d}f}')}$"


def latex(report: dict[str, Any]) -> str:
    """results.tex: the table of results.md as a LaTeX table (booktabs), to ``\\input`` in a paper."""
    columns = report_columns(report)
    name = latex_escape(report["name"])
    lines = [f"% mmgen bench {report['name']}: mean $\\pm$ sample std over the finished seeds; needs \\usepackage{{booktabs}}"]
    if made := _provenance_line(report):
        lines.append("% " + made.replace("`", ""))
    lines += [r"\begin{table}[t]", r"\centering", r"\small",
              rf"\begin{{tabular}}{{lr{'r' * len(columns)}}}", r"\toprule",
              " & ".join(["Model", "Seeds", *(f"{latex_escape(c.label)} {latex_escape(c.arrow)}" for c in columns)])
              + r" \\", r"\midrule"]
    for entry in report["summary"]:
        cells = [_latex_cell(summary_cell(entry, c.key), c.key in entry["best"]) for c in columns]
        lines.append(" & ".join([latex_escape(entry["run"]), f"{entry['finished']}/{len(entry['seeds'])}", *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{Benchmark \texttt{{{name}}}: mean $\pm$ sample standard deviation over the finished "
              r"seeds; bold: the best mean per column ($\uparrow$ higher, $\downarrow$ lower is better). "
              + latex_escape(_settings_line(report["bench"]).replace("`", "")) + "}",
              rf"\label{{tab:mmgen-{re_label(report['name'])}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def re_label(text: str) -> str:
    """``text`` usable in a LaTeX \\label (letters, digits, - and : only)."""
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in text)
