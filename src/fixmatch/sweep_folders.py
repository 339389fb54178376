"""Where a sweep's jobs will write, checked before the first job: two jobs whose folders
coincide would make the second continue (or skip) the first's run and overwrite its results.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationKeyError

SUBDIR_KEY = "hydra.sweep.subdir"


def shared_job_folder(config_name: str, fixed: List[str],
                       sweeps: List[List[str]]) -> Optional[str]:
    """Two values of one swept key whose jobs would write to the same folder, in one line
    saying how to tell them apart (the key in hydra.sweep.subdir); None when none do.

    Each key's values are compared with the other keys at their first value: the folder is
    built from the job's config (conf/config.yaml), so a key it names tells every job apart.
    Needs Hydra initialised (`initialize_config_dir`); leaves the last job's config in
    HydraConfig.

    Args:
        config_name: the primary config's name, without .yaml.
        fixed: the overrides every job shares (hydra.sweep.subdir among them, if given).
        sweeps: per swept key, its values as `key=value` overrides.

    Returns:
        The collision (or a value listed twice, or a subdir naming no setting) in one line;
        None when every job has its own folder, or when the folder is known only as a job
        runs (e.g. a subdir with ${hydra.job.num}).
    """
    firsts = [values[0] for values in sweeps]
    for i, values in enumerate(sweeps):
        seen = {}
        for value in values:
            job = _job_folder(config_name, fixed + firsts[:i] + [value] + firsts[i + 1:])
            if job.error or job.folder is None:
                return job.error  # None: a subdir built at run time (hydra.job.num, ...)
            if job.folder in seen:
                return _collision(seen[job.folder], value, job)
            seen[job.folder] = value
    return None


@dataclass(frozen=True)
class _JobFolder:
    """Where a sweep job writes, below hydra.sweep.dir (None: known only as it runs)."""

    folder: Optional[str]
    template: str = ""  # hydra.sweep.subdir as written
    groups: Tuple[str, ...] = ()  # the config groups, named in the folder by their choice
    error: Optional[str] = None  # the subdir names no setting


def _job_folder(config_name: str, overrides: List[str]) -> _JobFolder:
    cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    template = str(OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir"))
    HydraConfig.instance().set_config(cfg)  # for ${hydra:runtime.choices.ssl}
    try:
        folder = str(cfg.hydra.sweep.subdir)
    except InterpolationKeyError as error:  # a misspelt key: Hydra would stop with a traceback
        why = str(error.msg).splitlines()[0]  # "Interpolation key 'oops' not found"
        return _JobFolder(None, template, error=f"{SUBDIR_KEY}={template}: {why}; "
                                                "`python run.py --cfg job` prints every key")
    except Exception:  # noqa: BLE001 - e.g. ${hydra.job.num}, which Hydra fills per job
        return _JobFolder(None)
    return _JobFolder(folder, template, tuple(cfg.hydra.runtime.choices))


def _collision(first: str, second: str, job: _JobFolder) -> str:
    key, value = first.split("=", 1)[0].lstrip("+~"), second.split("=", 1)[1]
    if first.split("=", 1)[1] == value:
        return f"-m {key}=...: lists {value} twice; give each value once"
    named = f"${{hydra:runtime.choices.{key}}}" if key in job.groups else f"${{{key}}}"
    parts = job.template.rsplit("/", 1)
    leaf = key.rsplit(".", 1)[-1]
    example = "/".join([parts[0], f"{leaf}{named}", parts[1]] if len(parts) == 2
                       else [job.template, f"{leaf}{named}"])
    return (f"-m {key}=...: the jobs of {first} and {second} would share the folder "
            f"<sweep dir>/{job.folder} ({SUBDIR_KEY} does not name {key}), so the second would "
            f"continue or skip the first's run: name it there, e.g. '{SUBDIR_KEY}={example}' "
            "(single quotes keep the shell off the $)")
