"""The results table's rows: runs grouped into cells (dataset, model, algorithm, labels and
any --by keys), each summarised over its completed runs, one per seed, beside the paper's
figure and how its runs differ from the paper's protocol."""

import difflib
import math
import posixpath
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from fixmatch.paper import PaperResult, paper_protocol, paper_result
from fixmatch.results_runs import COMPLETED, KILLED, RUNNING, STARTING, ResultsError, Run

FIGURE = "top1_ema_median_last20"  # the paper's figure of one run
FINAL = "top1_ema_final"
# A completed run of a seed that a newer completed run of the cell also has (a rerun with
# trainer.resume=false, a copied folder): only the newest counts, or one seed would count
# as several.
REPEATED = "repeated"
STATUS_ORDER = [RUNNING, STARTING, "preempted", "interrupted", KILLED, "failed", REPEATED]
# dataset.name of the datasets read from the user's own folder, dataset.root (dataset=folder
# and the presets built on it, such as dataset=mstar, which keep its name): there the root
# *is* the data, so runs on two roots are two rows, each named `folder:<root>` (`root_names`).
ROOT_IS_DATA = {"folder"}
# How `algorithm_label` names FixMatch per ssl.strong_augment (the ssl option's name, too).
STRONG_AUGMENT_SUFFIX = {"randaugment": "", "ctaugment": "_cta"}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) of n values; std is None when n < 2."""

    n: int
    mean: Optional[float]
    std: Optional[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        """Summarise some figures.

        Args:
            values: one figure per run (accuracies in %).

        Returns:
            Their count, mean and sample std; the mean is None when there are none, the std
            when there are fewer than two.
        """
        if not values:
            return cls(0, None, None)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(len(values), statistics.fmean(values), std)

    def error_rate(self) -> "Stat":
        """The same figure as the paper writes it: 100 - accuracy, same spread.

        Returns:
            The error rate (%) of the same runs; its mean is None when this one's is.
        """
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
        """The status the table gives one of its runs.

        Args:
            run: one of the row's runs.

        Returns:
            REPEATED for a repeat, else the run's own status (completed, running, ...).
        """
        return REPEATED if run.path in self.repeats else run.status

    @property
    def counted_runs(self) -> List[Run]:
        """The runs the row stands for: all but the repeats."""
        return [run for run in self.runs if run.path not in self.repeats]

    @property
    def done(self) -> int:
        """How many of its runs completed, repeats not counted."""
        return sum(self.status_of(run) == COMPLETED for run in self.runs)

    def status_text(self) -> str:
        """The row's runs by status, e.g. "2/3 done, 1 failed": every run found is accounted
        for (repeats as `repeated`).

        Returns:
            The completed count over all runs, then the count of each other status.
        """
        counts = Counter(self.status_of(run) for run in self.runs
                         if self.status_of(run) != COMPLETED)
        order = STATUS_ORDER + sorted(set(counts) - set(STATUS_ORDER))
        others = [f"{counts[status]} {status}" for status in order if counts[status]]
        return ", ".join([f"{self.done}/{len(self.runs)} done", *others])


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
                               "keys are dotted paths such as ssl.threshold, or world_size "
                               "(from metrics.json)")
    names = root_names(runs)
    groups: Dict[Tuple, List[Run]] = {}
    for run in runs:
        groups.setdefault(cell_key(run, by, names), []).append(run)
    return [_row(key, groups[key]) for key in sorted(groups, key=_sortable)]


def cell_key(run: Run, by: Sequence[str] = (),
             names: Optional[Dict[Tuple[str, str], str]] = None) -> Tuple:
    """The cell one run belongs to.

    Args:
        run: the run.
        by: dotted config keys that split cells further.
        names: short names of the dataset roots, from `root_names` over all runs of the table;
            None names roots in full.

    Returns:
        (dataset label, model, algorithm label, num_labeled, *by values); a key the run's
        config lacks is None.
    """
    config = run.config
    return (dataset_label(config, names), model_name(config), algorithm_label(config),
            config.get("ssl.num_labeled"), *(config.get(key) for key in by))


def dataset_label(config: Dict[str, object],
                  names: Optional[Dict[Tuple[str, str], str]] = None) -> Optional[str]:
    """The dataset as the table names it: dataset.name, and for a ROOT_IS_DATA dataset its
    root too, `folder:<root>`, shortened to its last folder(s) by `names` (else in full).

    Args:
        config: a run's resolved config, flattened to dotted keys.
        names: short names of the roots (`root_names`), or None.

    Returns:
        The label; None when the config has no dataset.name.
    """
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
    (`shapes` beside `/data/shapes`) keeps its whole self.

    Args:
        runs: all runs of the table.

    Returns:
        The short name of every (dataset.name, normalised root) of a ROOT_IS_DATA dataset.
    """
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
    with RandAugment, the default, plain `fixmatch`. Other algorithms have no strong views.

    Args:
        config: a run's resolved config, flattened to dotted keys.

    Returns:
        The label: ssl.algorithm, for FixMatch with a suffix per strong augmentation; None
        when the config has no ssl.algorithm.
    """
    algorithm = config.get("ssl.algorithm")
    if algorithm != "fixmatch":
        return algorithm
    augment = config.get("ssl.strong_augment")
    return f"fixmatch{STRONG_AUGMENT_SUFFIX.get(augment, f'_{augment}')}"


def model_name(config: Dict[str, object]) -> Optional[str]:
    """The model as papers name it, e.g. WRN-28-2.

    Args:
        config: a run's resolved config, flattened to dotted keys.

    Returns:
        WRN-<depth>-<widen_factor> for a wide ResNet, else model.name; None when the config
        has no model.name.
    """
    if config.get("model.name") == "wide_resnet":
        return f"WRN-{config.get('model.depth')}-{config.get('model.widen_factor')}"
    return None if config.get("model.name") is None else str(config.get("model.name"))


def protocol_differences(runs: Sequence[Run], dataset: str,
                         strong_augment: str = "randaugment") -> List[str]:
    """How the runs differ from the paper's protocol for `dataset` (`paper.PROTOCOL`): one
    entry per key, "ssl.batch_size 4 vs 64" (the runs' values, then the paper's), the model
    named as one, "model WRN-10-1 vs WRN-28-2". A key a run's config lacks (an older run, an
    unreadable file) is not held against it.

    Args:
        runs: the runs of one cell.
        dataset: their dataset.name.
        strong_augment: their ssl.strong_augment, which picks the paper's row.

    Returns:
        One line per differing key (the model counting as one key), in the protocol's key
        order after the model; empty when the runs follow the protocol.
    """
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


def _normalised_root(root: object) -> str:
    """dataset.root as written, without `./`, `//` or a trailing `/`."""
    return posixpath.normpath(str(root))


def _sortable(key: Tuple) -> Tuple:
    # Numbers before text before missing values, so 40 < 250 < 4000 and mixed types compare.
    return tuple((0, part, "") if isinstance(part, (int, float)) and not isinstance(part, bool)
                 else (2, 0, "") if part is None else (1, 0, str(part)) for part in key)


def row_label(key: Tuple, by: Sequence[str]) -> str:
    """A row's name in one line, e.g. "cifar10 WRN-28-2 fixmatch 40 labels ssl.threshold=0.8".

    Args:
        key: the row's key (`cell_key`).
        by: the --by keys, in the order of the key's extra values.

    Returns:
        The label, as the plot's legend shows it.
    """
    dataset, model, algorithm, num_labeled, *values = key
    return " ".join([f"{dataset} {model} {algorithm} {num_labeled} labels",
                     *(f"{name}={value}" for name, value in zip(by, values))])
