"""The results command: sweep folders -> the paper's table, one row per (dataset, model,
algorithm, labels) cell, with warnings on stderr. Runs are read by `results_runs`, grouped
by `results_rows`, checked by `results_warnings` and printed by `results_table`; any folder
layout and several sweeps at once work:

    python -m fixmatch.results multirun/2026-11-25_10-00-00 [more folders]
        [--format markdown|csv|latex] [--by ssl.threshold] [--plot curves.png]
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from fixmatch.curves import PLOT_COMMAND, plot_curves
from fixmatch.errors import CommandLineParser, UserError
from fixmatch.output_marks import refuse_to_replace
from fixmatch.results_rows import build_rows, row_label
from fixmatch.results_runs import UNREADABLE, ResultsError, find_runs
from fixmatch.results_table import FORMATS, format_table
from fixmatch.results_warnings import cell_warnings, protocol_warnings
from fixmatch.sweep_plan import unstarted_jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: prints the table on stdout, warnings and errors on stderr.

    Args:
        argv: the arguments (sys.argv[1:] when None).

    Returns:
        The exit status: 0, or 2 for a mistake (a missing folder, no runs, an unknown key,
        --plot without matplotlib).
    """
    try:
        args = _parser().parse_args(argv)
        pyplot = _import_pyplot(Path(args.plot)) if args.plot else None
        if args.plot:  # checked before any table is printed, like the format
            refuse_to_replace(Path(args.plot), f"--plot {args.plot}", PLOT_COMMAND)
        runs = find_runs(args.folders)
        rows = build_rows(runs, args.by)
        for run in runs:
            if run.problem:
                print(f"warning: {run.path}: cannot read {run.problem}; counted as "
                      f"{UNREADABLE}", file=sys.stderr)
        for warning in [*cell_warnings(rows, args.by), *protocol_warnings(rows, args.by),
                        *unstarted_jobs(args.folders, runs)]:
            print(f"warning: {warning}", file=sys.stderr)
        print(format_table(rows, args.by, args.format), end="")
        if args.plot:
            try:
                plot_curves(pyplot, [(row_label(row.key, args.by), row.counted_runs)
                                     for row in rows], Path(args.plot))
            except (OSError, ValueError) as error:
                raise ResultsError(f"--plot: {error}") from None
            print(f"wrote {args.plot}", file=sys.stderr)
    except (ResultsError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _import_pyplot(path: Path):
    """matplotlib.pyplot, once it is known to be installed and to write `path`'s format."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as pyplot
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ResultsError("--plot needs matplotlib: pip install 'fixmatch[plot]'") from None
    formats = FigureCanvasBase.get_supported_filetypes()  # checked before any table is printed
    if path.suffix[1:].lower() not in formats:
        raise ResultsError(f"--plot {path}: the file name must end in one of "
                           f"{', '.join('.' + name for name in sorted(formats))} (e.g. curves.png)")
    return pyplot


def _parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m fixmatch.results",
        description="Tabulate sweeps: one row per (dataset, model, algorithm, labels), mean ± "
                    "sample std over completed runs of the median top-1 of the last 20 "
                    "evaluations (EMA model), beside the paper's figure.")
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="sweep folders (e.g. multirun/<timestamp>); runs are found below them")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="default: markdown")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="also split rows by this config key (e.g. ssl.threshold); repeatable")
    parser.add_argument("--plot", metavar="PNG",
                        help="draw test accuracy over steps per row (needs matplotlib)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
