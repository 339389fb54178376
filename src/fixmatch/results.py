"""Sweep folders -> the paper's table: one row per (dataset, model, algorithm, labels) cell.

Every run is read from its own `config_resolved.yaml` and `metrics.json` (and the
training-set fingerprint in its `split.json`), never from folder names or logs, so any
folder layout and several sweeps at once work:

    python -m fixmatch.results multirun/2026-11-25_10-00-00 [more folders]
        [--format markdown|csv|latex] [--by ssl.threshold] [--plot curves.png]
"""

import argparse
import difflib
import json
import math
import os
import posixpath
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from fixmatch.curves import PLOT_COMMAND, plot_curves
from fixmatch.errors import CommandLineParser, UserError
from fixmatch.folder_lock import is_held
from fixmatch.output_marks import refuse_to_replace
from fixmatch.paper import PaperResult, paper_protocol, paper_result
from fixmatch.results_table import FORMATS, format_table
from fixmatch.sweep_plan import unstarted_jobs

FIGURE = "top1_ema_median_last20"  # the paper's figure of one run
FINAL = "top1_ema_final"
COMPLETED = "completed"
RUNNING = "running"
STARTING = "starting"  # config written, no metrics.json yet: before the first evaluation
UNREADABLE = "unreadable"  # its config_resolved.yaml or metrics.json cannot be parsed
# metrics.json says running, yet no process holds the folder (folder_lock): the run was
# killed (SIGKILL, out of memory, a lost node) before it could say so; a rerun resumes it.
KILLED = "killed"
# A completed run of a seed that a newer completed run of the cell also has (a rerun with
# trainer.resume=false, a copied folder): only the newest counts, or one seed would count
# as several.
REPEATED = "repeated"
STATUS_ORDER = [RUNNING, STARTING, "preempted", "interrupted", KILLED, "failed", REPEATED]
# Keys that may differ between the runs of one cell without making them different experiments.
# (Unlike resume, a table does mind trainer.total_steps and trainer.eval_every_steps.)
# dataset.root is one only where it is just where the same files are kept on each machine
# (CIFAR, SVHN, STL-10); for ROOT_IS_DATA datasets it is part of the cell (`dataset_label`).
PER_RUN_KEYS = {"seed", "ssl.split_seed", "dataset.root", "dataset.download", "trainer.device",
                "trainer.num_workers", "trainer.num_threads", "trainer.progress_bar",
                "trainer.eval_batch_size", "trainer.log_every_steps",
                "trainer.checkpoint_every_steps", "trainer.keep_checkpoints", "trainer.resume"}
SEED_KEYS = {"seed", "ssl.split_seed"}  # per run, but two runs that share them repeat each other
# dataset.name of the datasets read from the user's own folder, dataset.root (dataset=folder
# and the presets built on it, such as dataset=mstar, which keep its name): there the root
# *is* the data, so runs on two roots are two rows, each named `folder:<root>` (`root_names`).
ROOT_IS_DATA = {"folder"}
# How `algorithm_label` names FixMatch per ssl.strong_augment (the ssl option's name, too).
STRONG_AUGMENT_SUFFIX = {"randaugment": "", "ctaugment": "_cta"}


class ResultsError(Exception):
    """A mistake on the command line: a missing folder, a folder without runs, an unknown key."""


@dataclass(frozen=True)
class Run:
    """One run folder: its resolved config (flattened to dotted keys) and its metrics.json."""

    path: Path
    config: Dict[str, object]
    metrics: Optional[dict]  # None while the run has written no metrics.json
    problem: Optional[str] = None  # why a file of the run could not be read (status "unreadable")
    # The images it trained on, from split.json's training_set (count and sha256 of the labels
    # and, for image folders, the relative paths); None before the data was read, or in old runs.
    training_set: Optional[str] = None
    held: Optional[bool] = None  # whether a process trains in it now (None: cannot be told)

    @property
    def status(self) -> str:
        if self.metrics is None:
            return STARTING
        status = str(self.metrics.get("status", "unknown"))
        return KILLED if status == RUNNING and self.held is False else status

    @property
    def experiment(self) -> Tuple:
        """What two runs share when one repeats the other: the config but for the keys that
        only say where and how it ran (the seeds kept), and the images it trained on."""
        kept = (key for key in sorted(self.config) if key not in PER_RUN_KEYS - SEED_KEYS)
        return (*((key, repr(self.config[key])) for key in kept), self.training_set)

    def finished_at(self) -> float:
        """When its metrics.json was last written (0 when it cannot be told)."""
        try:
            return (self.path / "metrics.json").stat().st_mtime
        except OSError:
            return 0.0

    def value(self, name: str) -> Optional[float]:
        """A number from metrics.json (None when absent)."""
        return None if self.metrics is None else self.metrics.get(name)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) of n values; std is None when n < 2."""

    n: int
    mean: Optional[float]
    std: Optional[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        if not values:
            return cls(0, None, None)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(len(values), statistics.fmean(values), std)

    def error_rate(self) -> "Stat":
        """The same figure as the paper writes it: 100 - accuracy, same spread."""
        return Stat(self.n, None if self.mean is None else 100.0 - self.mean, self.std)


@dataclass(frozen=True)
class Row:
    """One cell of the table and the runs found for it, whatever their status."""

    key: Tuple  # (dataset label, model, algorithm, num_labeled, *values of the --by keys)
    runs: List[Run]  # every run found, repeats included
    accuracy: Stat  # of top1_ema_median_last20 over completed runs, one per seed
    final: Stat  # of top1_ema_final over completed runs, one per seed
    paper: Optional[PaperResult]
    # How its runs differ from the paper's protocol for the cell (`protocol_differences`), e.g.
    # "trainer.total_steps 20 vs 1048576"; empty when they follow it or there is no paper figure.
    off_protocol: Tuple[str, ...] = ()
    # Completed runs of a seed that a newer completed run also has (`REPEATED`), left out.
    repeats: Tuple[Path, ...] = ()

    @property
    def paper_protocol(self) -> Optional[bool]:
        """Whether its runs follow the protocol of the paper's figure; None without a figure."""
        return None if self.paper is None else not self.off_protocol

    def status_of(self, run: Run) -> str:
        return REPEATED if run.path in self.repeats else run.status

    @property
    def counted_runs(self) -> List[Run]:
        """The runs the row stands for: all but the repeats."""
        return [run for run in self.runs if run.path not in self.repeats]

    @property
    def done(self) -> int:
        return sum(self.status_of(run) == COMPLETED for run in self.runs)

    def status_text(self) -> str:
        """E.g. "2/3 done, 1 failed": every run found is accounted for."""
        counts = Counter(self.status_of(run) for run in self.runs
                         if self.status_of(run) != COMPLETED)
        order = STATUS_ORDER + sorted(set(counts) - set(STATUS_ORDER))
        others = [f"{counts[status]} {status}" for status in order if counts[status]]
        return ", ".join([f"{self.done}/{len(self.runs)} done", *others])


def find_runs(folders: Sequence[str]) -> List[Run]:
    """Every run below the given folders: each folder holding a config_resolved.yaml.

    Args:
        folders: sweep folders (or single run folders); each run is read once.

    Returns:
        The runs, whatever their status.

    Raises:
        ResultsError: a folder does not exist or holds no run.
    """
    found: Dict[Path, Run] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            raise ResultsError(f"{folder}: {what}; pass a sweep folder such as "
                               "multirun/<timestamp> (or a run folder)")
        configs = _run_configs(folder)
        if not configs:
            raise ResultsError(f"{folder}: no runs in it (no config_resolved.yaml below it)")
        for config in configs:
            if config.parent.resolve() not in found:  # a folder given twice, or nested
                found[config.parent.resolve()] = load_run(config.parent)
    return list(found.values())


def _run_configs(folder: Path) -> List[Path]:
    """Every config_resolved.yaml below `folder`, through symlinked folders too (a sweep
    linked into a folder of sweeps), each real folder once."""
    found, seen = [], set()
    for parent, children, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a link back up the tree, or two links to one folder
            children.clear()
            continue
        seen.add(real)
        children.sort()
        if "config_resolved.yaml" in files:
            found.append(Path(parent) / "config_resolved.yaml")
    return found


def load_run(run_dir: Path) -> Run:
    """Read one run folder; a config_resolved.yaml or metrics.json that cannot be parsed (a
    run killed while writing it, a file edited by hand) shows as status 'unreadable'."""
    try:
        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config_resolved.yaml"))
    except (OSError, YAMLError, OmegaConfBaseException) as error:
        config = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if not isinstance(config, dict) or not config:
        reason = config if isinstance(config, str) else "empty or not a mapping"
        return Run(run_dir, {}, {"status": UNREADABLE}, f"config_resolved.yaml: {reason}")
    metrics, problem = None, None
    if (run_dir / "metrics.json").exists():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError) as error:
            problem = f"metrics.json: {error}"
        else:
            if not isinstance(metrics, dict):
                problem = "metrics.json: not a JSON object"
        if problem:
            metrics = {"status": UNREADABLE}
    held = is_held(run_dir) if metrics is not None and metrics.get("status") == RUNNING else None
    return Run(run_dir, _flatten(config), metrics, problem, _training_set(run_dir), held)


def _training_set(run_dir: Path) -> Optional[str]:
    """`<num_images>:<sha256>` of split.json's training_set; None when it has none. Only a
    check (`cell_warnings`), so a split.json that cannot be read is no error."""
    try:
        record = json.loads((run_dir / "split.json").read_text()).get("training_set")
        return f"{record['num_images']}:{record['sha256']}"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def build_rows(runs: Sequence[Run], by: Sequence[str] = ()) -> List[Row]:
    """Group runs into cells and summarise each over its completed runs.

    Args:
        runs: the runs to tabulate.
        by: dotted config keys that split cells further (e.g. ssl.threshold).

    Returns:
        One row per cell, sorted by dataset, model, algorithm, labels and the --by values.

    Raises:
        ResultsError: a --by key is in no run's config.
    """
    for key in by:
        if all(key not in run.config for run in runs):
            known = sorted({name for run in runs for name in run.config})
            below = [name for name in known if name.startswith(f"{key}.")]
            if below:  # --by ssl: a group of settings
                raise ResultsError(f"--by {key}: {key} is a group of settings, not one; name one "
                                   f"of its keys, e.g. --by {below[0]} (its keys: "
                                   f"{', '.join(below[:8])}{', ...' if len(below) > 8 else ''})")
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ResultsError(f"--by {key}: no run's config_resolved.yaml has this key; {hint}"
                               "keys are dotted paths such as ssl.threshold")
    names = root_names(runs)
    groups: Dict[Tuple, List[Run]] = {}
    for run in runs:
        groups.setdefault(cell_key(run, by, names), []).append(run)
    return [_row(key, groups[key]) for key in sorted(groups, key=_sortable)]


def cell_key(run: Run, by: Sequence[str] = (),
             names: Optional[Dict[Tuple[str, str], str]] = None) -> Tuple:
    """(dataset label, model, algorithm label, num_labeled, *by values) of one run; `names`
    from `root_names` over all runs of the table."""
    config = run.config
    return (dataset_label(config, names), model_name(config), algorithm_label(config),
            config.get("ssl.num_labeled"), *(config.get(key) for key in by))


def dataset_label(config: Dict[str, object],
                  names: Optional[Dict[Tuple[str, str], str]] = None) -> Optional[str]:
    """The dataset as the table names it: dataset.name, and for a ROOT_IS_DATA dataset its
    root too, `folder:<root>`, shortened to its last folder(s) by `names` (else in full)."""
    name = config.get("dataset.name")
    if name not in ROOT_IS_DATA or config.get("dataset.root") is None:
        return name
    root = _normalised_root(config.get("dataset.root"))
    return f"{name}:{(names or {}).get((name, root), root)}"


def root_names(runs: Sequence[Run]) -> Dict[Tuple[str, str], str]:
    """(dataset.name, root) -> the root's shortest ending that no other root of that dataset
    among `runs` shares: `/data/shapes` is `shapes`, beside `/backup/shapes` `data/shapes`
    (and `backup/shapes`). Roots are compared as written (normalised: `./a/` is `a`), since
    the runs may come from machines with other folders; one that is the ending of another
    (`shapes` beside `/data/shapes`) keeps its whole self."""
    roots: Dict[str, set] = {}
    for run in runs:
        name, root = run.config.get("dataset.name"), run.config.get("dataset.root")
        if name in ROOT_IS_DATA and root is not None:
            roots.setdefault(name, set()).add(_normalised_root(root))
    names = {}
    for name, group in roots.items():
        for root in group:
            count = 1
            while count < len(PurePosixPath(root).parts) and any(
                    _ending(other, count) == _ending(root, count) for other in group - {root}):
                count += 1
            names[(name, root)] = _ending(root, count)
    return names


def _ending(root: str, count: int) -> str:
    """The last `count` components of a path (all of it when it has fewer): `a/b/c`, 2: `b/c`."""
    parts = PurePosixPath(root).parts
    return str(PurePosixPath(*parts[-count:])) if parts else root


def algorithm_label(config: Dict[str, object]) -> Optional[str]:
    """The algorithm as the table names it: FixMatch with CTAugment is `fixmatch_cta` (a row
    of its own, as in the paper's Table 2 and in the sweep folders of `ssl=fixmatch_cta`);
    with RandAugment, the default, plain `fixmatch`. Other algorithms have no strong views."""
    algorithm = config.get("ssl.algorithm")
    if algorithm != "fixmatch":
        return algorithm
    augment = config.get("ssl.strong_augment")
    return f"fixmatch{STRONG_AUGMENT_SUFFIX.get(augment, f'_{augment}')}"


def model_name(config: Dict[str, object]) -> Optional[str]:
    """The model as papers name it, e.g. WRN-28-2."""
    if config.get("model.name") == "wide_resnet":
        return f"WRN-{config.get('model.depth')}-{config.get('model.widen_factor')}"
    return None if config.get("model.name") is None else str(config.get("model.name"))


def cell_warnings(rows: Sequence[Row], by: Sequence[str] = ()) -> List[str]:
    """Cells whose runs are not seeds of one experiment: other keys differ, they trained on
    other images (split.json), or a seed repeats (the warning names the copies' folders)."""
    warnings = []
    for row in rows:
        label = _label(row.key, by)
        keys = sorted({key for run in row.runs for key in run.config} - PER_RUN_KEYS - set(by))
        differ = [key for key in keys if len({repr(run.config.get(key)) for run in row.runs}) > 1]
        if differ:
            warnings.append(f"{label}: its runs differ in {', '.join(differ)}; "
                            f"split them with --by {differ[0]}")
        first_of: Dict[str, Run] = {}
        for run in row.runs:
            if run.training_set is not None:
                first_of.setdefault(run.training_set, run)
        if len(first_of) > 1:
            examples = " and ".join(str(run.path) for run in list(first_of.values())[:2])
            warnings.append(f"{label}: its runs trained on {len(first_of)} different sets of "
                            f"images (training_set in their split.json), e.g. {examples}; "
                            "they are not seeds of one experiment")
        extended = [run for run in row.counted_runs if run.value("earlier_total_steps")]
        if extended:
            run = extended[0]
            lengths = " -> ".join(str(steps) for steps in
                                  [*run.value("earlier_total_steps"), run.value("total_steps")])
            warnings.append(f"{label}: {len(extended)} of its runs changed trainer.total_steps "
                            f"while they trained (e.g. {run.path}: {lengths}), so their learning "
                            "rate did not follow one schedule: they are not fresh runs of their "
                            "final length")
        if row.repeats:
            seeds = sorted({str(run.config.get("seed")) for run in row.runs
                            if run.path in row.repeats})
            kept = {run.experiment: run for run in row.counted_runs if run.status == COMPLETED}
            first = next(run for run in row.runs if run.path in row.repeats)
            warnings.append(f"{label}: seed {', '.join(seeds)} completed more than once; only "
                            f"the newest run of a seed counts (seed {first.config.get('seed')}: "
                            f"{kept[first.experiment].path}, not {first.path}"
                            f"{' and others' if len(row.repeats) > 1 else ''})")
    return warnings


def protocol_differences(runs: Sequence[Run], dataset: str,
                         strong_augment: str = "randaugment") -> List[str]:
    """How the runs differ from the paper's protocol for `dataset` (`paper.PROTOCOL`): one
    entry per key, "ssl.batch_size 4 vs 64" (the runs' values, then the paper's), the model
    named as one, "model WRN-10-1 vs WRN-28-2". A key a run's config lacks (an older run, an
    unreadable file) is not held against it."""
    protocol = paper_protocol(dataset, strong_augment)
    model_keys = ("model.name", "model.depth", "model.widen_factor")
    differences = []
    models = sorted({str(model_name(run.config)) for run in runs
                     if any(_differs(run.config, key, protocol[key]) for key in model_keys)})
    if models:
        wanted = model_name({key: protocol[key] for key in model_keys})
        differences.append(f"model {'/'.join(models)} vs {wanted}")
    for key, wanted in protocol.items():
        if key in model_keys:
            continue
        values = sorted({repr(run.config[key]): run.config[key] for run in runs
                         if _differs(run.config, key, wanted)}.items())
        if values:
            differences.append(f"{key} {'/'.join(str(value) for _, value in values)} vs {wanted}")
    return differences


def protocol_warnings(rows: Sequence[Row], by: Sequence[str] = ()) -> List[str]:
    """Rows beside a paper figure whose runs do not follow the paper's protocol: the figure is
    the paper's runs, not what these runs should reach."""
    return [f"{_label(row.key, by)}: not the paper's protocol ({', '.join(row.off_protocol)}); "
            "its paper columns are the paper's runs, for reference" for row in rows
            if row.off_protocol]


def _differs(config: Dict[str, object], key: str, wanted: object) -> bool:
    """Whether a run's config has `key` at another value than `wanted` (numbers compared as
    numbers, 1 == 1.0, but a bool only equals a bool)."""
    if key not in config:
        return False
    value = config[key]
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is not wanted
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)):
        return not math.isclose(value, wanted, rel_tol=1e-9)
    return value != wanted


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
                plot_curves(pyplot, [(_label(row.key, args.by), row.counted_runs)
                                     for row in rows], Path(args.plot))
            except (OSError, ValueError) as error:
                raise ResultsError(f"--plot: {error}") from None
            print(f"wrote {args.plot}", file=sys.stderr)
    except (ResultsError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _row(key: Tuple, runs: List[Run]) -> Row:
    repeats = _repeats(runs)
    completed = [run for run in runs if run.status == COMPLETED and run.path not in repeats]
    figures = [run.value(FIGURE) for run in completed if run.value(FIGURE) is not None]
    finals = [run.value(FINAL) for run in completed if run.value(FINAL) is not None]
    variants = {(run.config.get("dataset.name"), run.config.get("ssl.algorithm"),
                 run.config.get("ssl.strong_augment")) for run in runs}
    paper, off_protocol = None, ()
    if len(variants) == 1:
        dataset, algorithm, strong_augment = variants.pop()
        paper = paper_result(dataset, key[3], algorithm, strong_augment)
        if paper is not None:
            off_protocol = tuple(protocol_differences(runs, dataset, strong_augment))
    return Row(key, runs, Stat.of(figures), Stat.of(finals), paper, off_protocol, repeats)


def _repeats(runs: Sequence[Run]) -> Tuple[Path, ...]:
    """The completed runs that a newer completed run (metrics.json written later) repeats:
    the same experiment and seed (`Run.experiment`); runs whose config cannot be read repeat
    nothing."""
    newest: Dict[Tuple, Run] = {}
    repeats = []
    completed = [run for run in runs if run.status == COMPLETED and run.config]
    for run in sorted(completed, key=lambda run: (run.finished_at(), str(run.path)), reverse=True):
        if run.experiment in newest:
            repeats.append(run.path)
        else:
            newest[run.experiment] = run
    return tuple(sorted(repeats))


def _flatten(node: dict, prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for name, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:  # lists become tuples so that a --by value can be a dictionary key
            flat[f"{prefix}{name}"] = tuple(value) if isinstance(value, list) else value
    return flat


def _normalised_root(root: object) -> str:
    """dataset.root as written, without `./`, `//` or a trailing `/`."""
    return posixpath.normpath(str(root))


def _sortable(key: Tuple) -> Tuple:
    # Numbers before text before missing values, so 40 < 250 < 4000 and mixed types compare.
    return tuple((0, part, "") if isinstance(part, (int, float)) and not isinstance(part, bool)
                 else (2, 0, "") if part is None else (1, 0, str(part)) for part in key)


def _label(key: Tuple, by: Sequence[str]) -> str:
    """E.g. "cifar10 WRN-28-2 fixmatch 40 labels ssl.threshold=0.8"."""
    dataset, model, algorithm, num_labeled, *values = key
    return " ".join([f"{dataset} {model} {algorithm} {num_labeled} labels",
                     *(f"{name}={value}" for name, value in zip(by, values))])


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
