"""run.py's command line checked against the config before Hydra starts.

Hydra reports a misspelt key, a value of the wrong type or a missing group option in several
lines, exits 1, and for a misspelt key suggests appending it with `+key=...` (which the run
then refuses). Composing the config here first turns each of these into one line naming the
key and what would work, with the exit status of every other mistake (2). Every value of a
sweep (`-m key=a,b,c`) is checked before the first job starts, and so is where its jobs will
write: two jobs in one folder would make the second continue (or skip) the first's run.
"""

import difflib
import os
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Set, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, InterpolationResolutionError,
                              MissingMandatoryValue, ValidationError)

from fixmatch.errors import UserError
from fixmatch.sweep_folders import SUBDIR_KEY, shared_job_folder

MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra's flags that choose what the command does; it takes one (several: a traceback).
MODE_FLAGS = {"-m": "multirun", "--multirun": "multirun", "-c": "cfg", "--cfg": "cfg",
              "-i": "info", "--info": "info", "-r": "run", "--run": "run",
              "-sc": "shell_completion", "--shell-completion": "shell_completion"}
RUN_PY = "python run.py"
SCHEMA_SUFFIX = "_schema"  # conf groups' typed schemas in the ConfigStore (config.register_configs)
# hydra/launcher options that come from a plugin: (its package, its pip name, setup.cfg's extra)
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
}


def typed_config(cfg: DictConfig):
    """The composed config as its dataclasses (`OmegaConf.to_object`), for run.py and preview.

    Args:
        cfg: the config Hydra composed (its root is the registered schema).

    Returns:
        The config as a tree of the schema's dataclasses.

    Raises:
        UserError: for a key left ??? in the config (dataset.root of dataset=folder, say),
            or an interpolation that does not resolve.
    """
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as error:
        raise UserError(f"{error.full_key} must be given (it is ??? in the config): add "
                        f"{error.full_key}=... to the command") from None
    except InterpolationResolutionError as error:  # ssl.split_seed=${sed}, or ~seed
        why = str(error.msg).splitlines()[0]
        raise UserError(f"{error.full_key}: {why}; `python run.py --cfg job` prints every "
                        "key") from None


def _listing(program: str) -> str:
    return f"`{program} --cfg job` prints every key"


def override_error(args: Sequence[str], config_dir: Path, config_name: str = "config",
                   program: str = RUN_PY, run_checks: bool = False) -> Optional[str]:
    """What is wrong with the command line's overrides, in one line; None when they compose.

    Command lines with Hydra flags other than -m/--multirun (--cfg, --help, -cn, ...) and the
    `hydra...` overrides are left to Hydra. `program` is how the messages name the command.
    Every job of a sweep is checked as the run checks its config (`config_checks`). With
    `run_checks` (run.py), so is a single run, before Hydra makes its folder; and where the
    jobs run on this machine (Hydra's basic launcher), `trainer.device` must be there and a
    sweep has its data loaded and every job's label count drawn (`sweep_data_check`); a
    plugin launcher's jobs run elsewhere, where the devices and data may be other.

    Args:
        args: the command-line arguments after the program name (overrides and flags).
        config_dir: the folder of the primary config (conf/).
        config_name: the primary config's name, without .yaml.
        program: how the messages name the command (e.g. "python run.py").
        run_checks: check a single run's config too, and (with the basic launcher) the
            device and a sweep's data, as run.py does.

    Returns:
        The first mistake found, in one line; None when the overrides compose and pass the
        checks, or when the command line is left for Hydra to report.
    """
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    error = _modes_error(args, program)
    if error or any(arg.startswith("-") for arg in overrides):
        return error  # other Hydra flags: left to Hydra
    error = _folder_setting_error(overrides) or _flag_position_error(args, overrides, program)
    if error:
        return error
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return _unparsable(overrides, multirun, program)
    error = _sweep_given_twice(parsed, overrides)
    if error:
        return error
    split = _split(parsed, overrides, multirun, program)
    if split.error or split.left_to_hydra:
        return split.error
    here = run_checks and all(o.key_or_group != "hydra/launcher" or _plain_values(o) == ["basic"]
                              for o in parsed)
    return _first_failure(config_dir, config_name, split, program, run_checks, here)


def _modes_error(args: Sequence[str], program: str) -> Optional[str]:
    """Hydra's mode flags combined (Hydra: a traceback)."""
    modes = [arg for arg in args if arg in MODE_FLAGS]
    if len(set(MODE_FLAGS[arg] for arg in modes)) > 1:
        return (f"{' and '.join(modes)} cannot be combined: run ({program} ...), sweep (-m), "
                "print the config (--cfg job) and --info are one at a time")
    return None


def _flag_position_error(args: Sequence[str], overrides: Sequence[str],
                         program: str) -> Optional[str]:
    """Overrides on both sides of -m (argparse: a usage dump)."""
    flag_at = next((i for i, arg in enumerate(args) if arg in MULTIRUN_FLAGS), None)
    if flag_at is not None and 0 < flag_at < len(args) - 1:
        return f"-m must come before the overrides: {program} -m {' '.join(overrides)}"
    return None


def _folder_setting_error(overrides: Sequence[str]) -> Optional[str]:
    """hydra.run.dir or hydra.sweep.dir at a file, or below one (Hydra: FileExistsError)."""
    for arg in overrides:
        key, _, folder = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir"):
            path = Path(folder).expanduser()
            file = next((part for part in (path, *path.parents) if part.is_file()), None)
            if file is not None:
                where = "is a file" if file == path else f"lies below the file {file}"
                return f"{arg}: {folder} {where}; {key} must be a folder (new or existing)"
    return None


def _unparsable(overrides: Sequence[str], multirun: bool, program: str) -> str:
    """One line for the first override Hydra's grammar does not read."""
    bad = next(arg for arg in overrides if not _parses(arg))
    key, equals, value = bad.partition("=")
    parts = value.split(",")
    if equals and len(parts) > 1 and "" in parts and not any(q in value for q in "'\""):
        return (f"{bad!r}: a comma with no value beside it (a stray comma?); "
                f"write {key}={','.join(part for part in parts if part)}")
    if equals and re.fullmatch(r"[+~]*[\w./@-]+", key):
        # A path with ( ) [ ] { } , = ~ ' # ! & or spaces is Hydra syntax unless quoted.
        where = "each value" if multirun and "," in value else "it"
        return (f"{bad!r}: the value {value!r} has characters Hydra reads as syntax; quote "
                f"{where} inside the argument: {_quoted(key, value, multirun)}")
    return (f"{bad!r} is not an override: write key=value (e.g. seed=2) or group=option "
            f"(e.g. dataset=cifar100); {_listing(program)}")


@dataclass
class _Split:
    """The overrides sorted for composing: fixed ones, sweeps (value lists, or a group's
    glob), the hydra.sweep.subdir given; or why not (error), or a sweep Hydra must expand."""

    fixed: List[str] = field(default_factory=list)
    sweeps: list = field(default_factory=list)
    subdir: List[str] = field(default_factory=list)
    error: Optional[str] = None
    left_to_hydra: bool = False


def _split(parsed, overrides: Sequence[str], multirun: bool, program: str) -> _Split:
    split = _Split()
    for override, text in zip(parsed, overrides):
        key = override.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            split.error = _missing_launcher(override)
            if split.error:
                return split
            if key == SUBDIR_KEY and not override.is_sweep_override():
                split.subdir = [text]  # where the jobs write: checked for collisions
            continue  # the rest of Hydra's own settings are left to Hydra
        schema = next((value for value in _plain_values(override) if value.endswith(SCHEMA_SUFFIX)), None)
        if schema is not None and "." not in key:
            split.error = (f"{key}={schema}: {schema} is the typed schema the {key} options "
                           f"extend, not an option (`{program} --help` lists the options)")
        elif not override.is_sweep_override():
            split.fixed.append(text)
        elif not multirun:
            name, _, value = text.partition("=")
            # Under torchrun a sweep (-m) is refused: one torchrun runs one experiment.
            sweep = ("start one torchrun per value" if "WORLD_SIZE" in os.environ
                     else f"add -m ({program} -m {text})")
            split.error = (f"{text} gives several values, which is a sweep: {sweep}; if the "
                           f"commas belong to one value (a path), quote it: "
                           f"{_quoted(name, value, sweep=False)}")
        elif isinstance(override.value(), Glob):
            split.sweeps.append(override)  # a group's options: expanded once the config is loaded
        else:
            values = _sweep_values(override)
            if values is None:  # a sweep form Hydra expands itself (ranges with steps, ...)
                split.left_to_hydra = True
            elif not values:
                split.error = (f"{text} gives no value, so the sweep would run no job: give at "
                               "least one (e.g. seed=range(1,4) is 1, 2, 3)")
            else:
                split.sweeps.append([f"{key}={value}" for value in values])
        if split.error or split.left_to_hydra:
            return split
    return split


def _quoted(key: str, value: str, sweep: bool) -> str:
    """`key=value` as the shell argument that gives Hydra `value` quoted (each of its
    comma-separated values, in a sweep): Hydra's quotes inside, the shell's around them."""
    values = value.split(",") if sweep else [value]
    inner = ",".join(f'"{part}"' if "'" in part else f"'{part}'" for part in values)
    return '"' + f"{key}={inner}".replace('"', '\\"') + '"'


def _sweep_given_twice(parsed, texts: Sequence[str]) -> Optional[str]:
    """A key swept and also given again: Hydra keeps only the last, and drops the sweep."""
    by_key = {}
    for override, text in zip(parsed, texts):
        by_key.setdefault(override.get_key_element().lstrip("+~"), []).append((override, text))
    for key, given in by_key.items():
        if len(given) > 1 and any(override.is_sweep_override() for override, _ in given):
            written = " and ".join(text for _, text in given)
            return (f"{written} both set {key}; Hydra would keep only {given[-1][1]}: give {key} "
                    f"once, with every value (e.g. {key}=a,b,c)")
    return None


def existing_folders(args: Sequence[str], key: str) -> Set[Path]:
    """The folders that `key=<folder>` on the command line names and that exist already
    (resolved): Hydra creates a run's folder before the run, and a start that stops on a
    mistake removes the folder only when it made it.

    Args:
        args: the command-line arguments.
        key: the setting that names a folder, e.g. "hydra.run.dir".

    Returns:
        The resolved paths of the named folders that exist now; empty when none is given.
    """
    given = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{key}=")]
    return {Path(folder).expanduser().resolve() for folder in given
            if Path(folder).expanduser().is_dir()}


def remove_if_made_empty(folder: Path, existing: Set[Path]) -> None:
    """Remove the run folder Hydra made before a start that stopped on a mistake, when it is
    still empty; a folder in `existing` (`existing_folders`) was the user's and stays.

    Args:
        folder: the run's folder.
        existing: the resolved folders that existed before Hydra started.
    """
    if folder.resolve() in existing:
        return
    try:
        folder.rmdir()  # only ever succeeds on an empty folder
    except OSError:
        pass


def _missing_launcher(override) -> Optional[str]:
    """hydra/launcher=<a plugin's launcher> without the plugin: Hydra reports several lines."""
    if override.key_or_group != "hydra/launcher":
        return None
    for option in _plain_values(override):
        if option in LAUNCHER_PLUGINS and not _importable(LAUNCHER_PLUGINS[option][0]):
            _, package, extra = LAUNCHER_PLUGINS[option]
            return (f"hydra/launcher={option} needs the launcher plugin {package}, which is not "
                    f"installed: pip install -e \".[{extra}]\" in the checkout")
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package (hydra_plugins) is missing too
        return False


def _plain_values(override) -> List[str]:
    """The override's values as written, for a plain value or a simple sweep list."""
    if override.is_sweep_override():
        return _sweep_values(override) or []
    value = override.value()
    return [value] if isinstance(value, str) else []


def _parses(arg: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([arg])
    except OverrideParseException:
        return False
    return True


def _sweep_values(override) -> Optional[List[str]]:
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # noqa: BLE001 - Hydra raises various types for forms it expands later
        return None


def _candidates(fixed: List[str], sweeps: List[List[str]]) -> Iterator[List[str]]:
    """The first value of every sweep, then each other value on its own."""
    firsts = [values[0] for values in sweeps]
    yield fixed + firsts
    for i, values in enumerate(sweeps):
        for value in values[1:]:
            yield fixed + firsts[:i] + [value] + firsts[i + 1:]


def _first_failure(config_dir: Path, config_name: str, split: _Split, program: str,
                   run_checks: bool, here: bool) -> Optional[str]:
    """Compose each candidate job (`_candidates`) and check it; then, for a sweep, where its
    jobs write and (`here`) their data."""
    fixed, sweeps, subdir = split.fixed, split.sweeps, split.subdir
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            sweeps = [_glob_values(sweep) if isinstance(sweep, Override) else sweep
                      for sweep in sweeps]
            refused = next((values for values in sweeps if isinstance(values, str)), None)
            if refused:
                return refused
            composed = {}
            for overrides in _candidates(fixed, sweeps):
                cfg, error = _composed(config_name, overrides, program)
                if (sweeps or run_checks) and cfg is not None:
                    # A value the schema's type admits but the run refuses (ssl.threshold=1.5)
                    # would otherwise stop a sweep's job only after the jobs before it trained,
                    # and leave a run's folder (made by Hydra) behind.
                    error = _value_error(cfg, here)
                    composed[tuple(overrides)] = cfg
                if error:
                    return error
            if sweeps:
                return (shared_job_folder(config_name, fixed + subdir, sweeps)
                        or (_data_error(config_name, fixed, sweeps, composed) if here else None))
    finally:
        GlobalHydra.instance().clear()  # hydra.main initialises its own
        HydraConfig.instance().cfg = None  # set by sweep_folders; hydra.main sets its own
    return None


def _glob_values(override: Override):
    """`group=glob(...)`'s values as Hydra will expand them (the group's options), or one
    line when that runs no job or would run a typed schema as a job."""
    group, glob = override.key_or_group, override.value()
    options = GlobalHydra.instance().config_loader().get_group_options(group)
    values = glob.filter(options)
    text = override.input_line or f"{override.get_key_element()}={glob}"
    if not values:
        listed = [option for option in options if not option.endswith(SCHEMA_SUFFIX)]
        return (f"{text} matches no option of {group} ({', '.join(listed) or 'it has none'}), so "
                "the sweep would run no job")
    schemas = [value for value in values if value.endswith(SCHEMA_SUFFIX)]
    if schemas:
        return (f"{text} includes {schemas[0]}, the typed schema the {group} options extend, not "
                f"an option: exclude it, e.g. '{group}=glob(*,exclude=*{SCHEMA_SUFFIX})'")
    return [f"{override.get_key_element()}={value}" for value in values]


def _value_error(cfg: DictConfig, here: bool) -> Optional[str]:
    """config_checks.check_config's one line for a job's composed config (with torchrun's
    ranks when it started this process), and with `here` whether this machine has its
    trainer.device; None when it passes."""
    from fixmatch.config_checks import check_config  # imports torch: only for run.py and sweeps
    from fixmatch.distributed import environment
    from fixmatch.runtime import select_device

    try:
        config = typed_config(cfg)
        check_config(config, environment())
        if here:
            select_device(config.trainer.device)
    except UserError as error:
        return str(error)
    return None


def _data_error(config_name: str, fixed: List[str], sweeps: List[List[str]],
                composed: dict) -> Optional[str]:
    """sweep_data_check's one line for the jobs' data and label counts, or None."""
    from fixmatch.sweep_data_check import data_error, jobs_that_differ_in_data

    def job_config(overrides: List[str]):
        key = tuple(overrides)
        if key not in composed:
            composed[key] = compose(config_name=config_name, overrides=overrides)
        return typed_config(composed[key])

    return data_error(jobs_that_differ_in_data(fixed, sweeps, job_config))


def _composed(config_name: str, overrides: List[str],
              program: str) -> Tuple[Optional[DictConfig], Optional[str]]:
    """(the composed config, None), or (None, what is wrong in one line); (None, None) for
    a failure Hydra reports better itself."""
    try:
        return compose(config_name=config_name, overrides=overrides), None
    except MissingConfigException as error:
        return None, _missing_option(error, overrides)
    except ConfigCompositionException as error:
        cause = error.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
            return None, _unknown_key(cause.full_key, config_name, overrides, program)
        if isinstance(cause, ValidationError) and cause.full_key:
            # The last override of a key is the one that applies (and failed).
            given = next((o for o in reversed(overrides)
                          if o.split("=", 1)[0].lstrip("+~") == cause.full_key), cause.full_key)
            return None, f"{given}: {str(cause.msg).splitlines()[0]}"
    return None, None


def _unknown_key(key: str, config_name: str, overrides: List[str], program: str) -> str:
    others = [o for o in overrides if o.split("=", 1)[0] != key]
    try:
        known = list(_flat_keys(compose(config_name=config_name, overrides=others)))
    except Exception:  # noqa: BLE001 - the hint is optional; the message stands without it
        known = []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{key} is not a setting{hint} ({_listing(program)})"


def _flat_keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for name in node.keys():
        value = node._get_node(name)
        key = f"{prefix}{name}"
        if OmegaConf.is_dict(value):
            yield from _flat_keys(value, f"{key}.")
        else:
            yield key


def _missing_option(error: MissingConfigException, overrides: List[str]) -> str:
    match = re.search(r"Could not find '([^']+)/([^'/]+)'", str(error))
    if not match:
        return str(error).splitlines()[0]
    group, option = match.groups()
    options = [o for o in (error.options or []) if not o.endswith(SCHEMA_SUFFIX)]
    close = difflib.get_close_matches(option, options, n=1)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return (f"{group}={option}: {group} has no option {option!r}; {hint}"
            f"the options are {', '.join(options)}")
