"""The results command's warnings about its rows: cells whose runs are not seeds of one
experiment, and rows beside a paper figure whose runs do not follow the paper's protocol."""

from typing import Dict, List, Sequence

from fixmatch.results_rows import Row, row_label
from fixmatch.results_runs import COMPLETED, PER_RUN_KEYS, WORLD_SIZE_KEY, Run

def _values(runs: Sequence[Run], key: str) -> set:
    # world_size is known only from a readable metrics.json (not a starting run's)
    return {repr(run.config.get(key)) for run in runs
            if key != WORLD_SIZE_KEY or key in run.config}


def cell_warnings(rows: Sequence[Row], by: Sequence[str] = ()) -> List[str]:
    """Cells whose runs are not seeds of one experiment: other keys differ, they trained on
    other images (split.json), or a seed repeats (the warning names the copies' folders); and
    cells with runs whose trainer.total_steps changed while they trained.

    Args:
        rows: from `build_rows`.
        by: the --by keys the rows were split by (not held against a cell).

    Returns:
        One line per problem of each row, without the `warning:` prefix; empty when none.
    """
    warnings = []
    for row in rows:
        label = row_label(row.key, by)
        keys = sorted({key for run in row.runs for key in run.config} - PER_RUN_KEYS - set(by))
        differ = [key for key in keys if len(_values(row.runs, key)) > 1]
        if differ:
            warnings.append(f"{label}: its runs differ in {', '.join(differ)}; "
                            f"split them with {' '.join(f'--by {key}' for key in differ)}")
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


def protocol_warnings(rows: Sequence[Row], by: Sequence[str] = ()) -> List[str]:
    """Rows beside a paper figure whose runs do not follow the paper's protocol: the figure is
    the paper's runs, not what these runs should reach.

    Args:
        rows: from `build_rows`.
        by: the --by keys the rows were split by (for the row labels).

    Returns:
        One line per such row, naming how its runs differ; empty when none.
    """
    return [f"{row_label(row.key, by)}: not the paper's protocol ({', '.join(row.off_protocol)}); "
            "its paper columns are the paper's runs, for reference" for row in rows
            if row.off_protocol]
