"""A sweep's data and label counts checked before the first job trains.

`-m ssl.num_labeled=40,250,100000` would otherwise stop only at its third job, after the
first two trained for hours, and a sweep on a dataset that cannot be loaded (offline, a
wrong root) would fail job after job. The datasets are loaded once each, as the jobs will
load them (downloaded when absent and dataset.download=true, so the jobs find the files;
an image folder's decoded images are cached for them), and every job's split is drawn as
the job will draw it.
"""

import dataclasses
import itertools
import logging
from typing import Callable, Dict, List, Optional, Tuple

from fixmatch.config import Config
from fixmatch.errors import UserError


def data_error(jobs: List[Tuple[List[str], Config]]) -> Optional[str]:
    """The first job whose dataset cannot be loaded or whose labeled split cannot be drawn
    from it, in one line naming the job's swept values the message does not; None when
    every job's can.

    Args:
        jobs: the sweep's jobs (`jobs_that_differ_in_data`): swept values and typed config.

    Returns:
        The first problem in one line, or None. Each dataset is loaded once, for the jobs
        that share it; the data's warnings are not logged meanwhile.
    """
    by_dataset: Dict[str, List[Tuple[List[str], Config]]] = {}
    for swept, config in jobs:
        by_dataset.setdefault(_dataset_key(config), []).append((swept, config))
    logging.disable(logging.WARNING)  # the jobs log the data's warnings when they load it
    try:
        for same_data in by_dataset.values():  # one dataset in memory at a time
            error = _first_split_error(same_data)
            if error:
                return error
    finally:
        logging.disable(logging.NOTSET)
    return None


def _first_split_error(jobs: List[Tuple[List[str], Config]]) -> Optional[str]:
    """`data_error` for jobs that share one dataset."""
    arrays, error = _load(jobs[0][1])
    if error:
        return _naming_the_job(jobs[0][0], error)
    for swept, config in jobs:
        error = _split_error(config, arrays)
        if error:
            return _naming_the_job(swept, error)
    return None


def _naming_the_job(swept: List[str], error: str) -> str:
    """The error, after the job's swept values it does not name already."""
    unnamed = [value for value in swept if value not in error]
    return f"the sweep's job with {' '.join(unnamed)}: {error}" if unnamed else error


def jobs_that_differ_in_data(fixed: List[str], sweeps: List[List[str]],
                             job_config: Callable[[List[str]], Config]
                             ) -> List[Tuple[List[str], Config]]:
    """The sweep's jobs over every combination of the swept keys that change a job's dataset
    or label count (`-m ssl.num_labeled=40,250 dataset=cifar10,cifar100`: four), the other
    keys (seeds, say) at their first value.

    Args:
        fixed: the overrides every job shares.
        sweeps: per swept key, its values as `key=value` overrides.
        job_config: a job's typed config from its overrides.

    Returns:
        Per job, the values (`key=value`) of the keys that change the data, and its config.
    """
    firsts = [values[0] for values in sweeps]
    first_data = _data_of(job_config(fixed + firsts))

    def changes_data(i: int) -> bool:
        return any(_data_of(job_config(fixed + firsts[:i] + [value] + firsts[i + 1:])) != first_data
                   for value in sweeps[i][1:])

    relevant = [i for i in range(len(sweeps)) if changes_data(i)]
    jobs = []
    for values in itertools.product(*(sweeps[i] for i in relevant)):
        job = list(firsts)
        for i, value in zip(relevant, values):
            job[i] = value
        jobs.append((list(values), job_config(fixed + job)))
    return jobs


def _data_of(config: Config) -> Tuple[str, str, int]:
    """What decides whether a job's split can be drawn: its data and its label count."""
    return _dataset_key(config), config.dataset.labeled_split.name, config.ssl.num_labeled


# Dataset settings that do not change the images a load gives (how they are normalised and
# flipped, how the labels spread over the classes: each job draws its split from the same
# arrays, `_data_of` keeps labeled_split apart): sweeping them loads the data once.
NOT_THE_ARRAYS = ("mean", "std", "hflip", "labeled_split")


def _dataset_key(config: Config) -> str:
    """The dataset settings that decide the arrays a load gives."""
    settings = dataclasses.asdict(config.dataset)
    return repr({key: value for key, value in settings.items() if key not in NOT_THE_ARRAYS})


def _load(config: Config) -> Tuple[object, Optional[str]]:
    """(the dataset's arrays, None), or (None, why it cannot be loaded)."""
    from fixmatch.data.datasets import load_dataset  # imports torch: only for sweeps

    try:
        return load_dataset(config.dataset), None
    except UserError as error:
        return None, str(error)


def _split_error(config: Config, arrays) -> Optional[str]:
    from fixmatch.run_data import draw_new_split

    try:
        draw_new_split(config, arrays)
    except UserError as error:
        return str(error)
    return None
