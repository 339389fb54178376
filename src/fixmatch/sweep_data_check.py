"""A sweep's label counts checked against its data before the first job trains.

`-m ssl.num_labeled=40,250,100000` would otherwise stop only at its third job, after the
first two trained for hours. The datasets are loaded once each (images decoded by the
sweep's first job are then cached) and every job's split is drawn as the job will draw it.
"""

import dataclasses
import itertools
import logging
from typing import Callable, Dict, List, Optional, Tuple

from fixmatch.config import Config
from fixmatch.errors import UserError


def label_count_error(jobs: List[Tuple[List[str], Config]]) -> Optional[str]:
    """The first job whose labeled split cannot be drawn from its data, in one line naming
    the job's swept values the message does not; None when every one can, when the jobs
    share one dataset and label count (the first job finds that mistake at once itself), or
    when a dataset is not on disk yet but may be downloaded (the job fetches it).

    Args:
        jobs: the sweep's jobs (`jobs_that_differ_in_data`): swept values and typed config.
    """
    if len({_data_of(config) for _, config in jobs}) < 2:
        return None
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
    """`label_count_error` for jobs that share one dataset."""
    arrays, error = _load_without_download(jobs[0][1])
    if error:
        return error
    if arrays is None:
        return None
    for swept, config in jobs:
        error = _split_error(config, arrays)
        if error:
            unnamed = [value for value in swept if value not in error]
            return f"the sweep's job with {' '.join(unnamed)}: {error}" if unnamed else error
    return None


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


def _data_of(config: Config) -> Tuple[str, int]:
    return _dataset_key(config), config.ssl.num_labeled


def _dataset_key(config: Config) -> str:
    return repr(config.dataset)


def _load_without_download(config: Config) -> Tuple[object, Optional[str]]:
    """(the dataset's arrays, None), (None, why it cannot load), or (None, None) when it is
    absent but the job would download it."""
    from fixmatch.data.datasets import load_dataset  # imports torch: only for sweeps

    try:
        return load_dataset(dataclasses.replace(config.dataset, download=False)), None
    except UserError as error:
        return None, None if config.dataset.download else str(error)


def _split_error(config: Config, arrays) -> Optional[str]:
    from fixmatch.pipeline import draw_new_split

    try:
        draw_new_split(config, arrays)
    except UserError as error:
        return str(error)
    return None
