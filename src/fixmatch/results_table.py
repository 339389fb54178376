"""The results table as text: markdown, csv or latex, from the rows `fixmatch.results_rows`
builds (one per dataset, model, algorithm and label count)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, List, Optional, Sequence

if TYPE_CHECKING:  # results.py imports this module for its command line, after the rows
    from fixmatch.results_rows import Row

CELL_KEYS = ["dataset", "model", "algorithm", "labels"]
FORMATS = ["markdown", "csv", "latex"]
# Appended to the paper cells of a row whose runs do not follow the paper's protocol
# (`Row.off_protocol`), with OFF_PROTOCOL_NOTE under the table; csv has a paper_protocol column.
OFF_PROTOCOL_MARK = "*"
OFF_PROTOCOL_NOTE = ("Paper figures marked * are the paper's runs, for reference: that row's "
                     "runs do not follow the paper's protocol (see the warnings)")
LATEX_ESCAPES = {"&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
                 "}": "\\}", "\\": "\\textbackslash{}", "~": "\\textasciitilde{}",
                 "^": "\\textasciicircum{}", "±": "$\\pm$", "–": "--"}


def format_table(rows: Sequence[Row], by: Sequence[str] = (), style: str = "markdown") -> str:
    """The table as text.

    Args:
        rows: from `build_rows`.
        by: the --by keys the rows were split by (their column names).
        style: markdown, csv (means and stds in separate numeric columns, empty where
            undefined) or latex (a booktabs tabular). The paper cells of a row off the
            paper's protocol end in OFF_PROTOCOL_MARK, with OFF_PROTOCOL_NOTE under the table
            (csv: a paper_protocol column).

    Returns:
        The table, ending with a newline.
    """
    if style == "csv":
        return _csv(rows, by)
    header = [*CELL_KEYS, *by, "runs", "accuracy (%)", "paper accuracy (%)",
              "final accuracy (%)", "error rate (%)", "paper error rate (%)"]
    body = [_display_cells(row) for row in rows]
    note = OFF_PROTOCOL_NOTE if any(row.off_protocol for row in rows) else None
    if style == "latex":
        return _latex(header, body, note)
    # A `|` in a cell (a folder's name) would end it.
    lines = [header, ["---"] * len(header), *([cell.replace("|", "\\|") for cell in line]
                                              for line in body)]
    table = "".join("| " + " | ".join(line) + " |\n" for line in lines)
    # After a blank line, or markdown would read it as one more row.
    return table if note is None else f"{table}\n{note}\n"


def _display_cells(row: Row) -> List[str]:
    paper_accuracy = paper_error = "–"
    if row.paper is not None:
        mark = OFF_PROTOCOL_MARK if row.off_protocol else ""
        paper_accuracy = _pm(row.paper.accuracy_mean, row.paper.accuracy_std) + mark
        paper_error = _pm(row.paper.error_mean, row.paper.error_std) + mark
    error = row.accuracy.error_rate()
    return [*("–" if part is None else str(part) for part in row.key), row.status_text(),
            _pm(row.accuracy.mean, row.accuracy.std), paper_accuracy,
            _pm(row.final.mean, row.final.std), _pm(error.mean, error.std), paper_error]


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    """Mean ± std at 2 decimals; "–" for what does not exist (no completed run; std of one)."""
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {'–' if std is None else f'{std:.2f}'}"


def _csv(rows: Sequence[Row], by: Sequence[str]) -> str:
    header = ["dataset", "model", "algorithm", "num_labeled", *by, "runs", "done", "status"]
    for name in ["accuracy", "final_accuracy", "error_rate", "paper_accuracy", "paper_error_rate"]:
        header += [f"{name}_mean", f"{name}_std"]
    header.append("paper_protocol")  # True/False beside a paper figure, empty without one
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        paper = row.paper
        error = row.accuracy.error_rate()
        numbers = [row.accuracy.mean, row.accuracy.std, row.final.mean, row.final.std,
                   error.mean, error.std,
                   *((paper.accuracy_mean, paper.accuracy_std, paper.error_mean, paper.error_std)
                     if paper else (None,) * 4)]
        writer.writerow([*row.key, len(row.runs), row.done, row.status_text(),
                         *("" if number is None else round(number, 4) for number in numbers),
                         "" if row.paper_protocol is None else row.paper_protocol])
    return buffer.getvalue()


def _latex(header: List[str], body: List[List[str]], note: Optional[str] = None) -> str:
    def cell(text: str) -> str:
        return "".join(LATEX_ESCAPES.get(char, char) for char in text)

    lines = ["\\begin{tabular}{" + "l" * (len(header) - 5) + "r" * 5 + "}", "\\toprule",
             " & ".join(map(cell, header)) + " \\\\", "\\midrule",
             *(" & ".join(map(cell, line)) + " \\\\" for line in body),
             "\\bottomrule",
             *([f"\\multicolumn{{{len(header)}}}{{l}}{{\\footnotesize {cell(note)}}} \\\\"]
               if note else []),
             "\\end{tabular}"]
    return "\n".join(lines) + "\n"
