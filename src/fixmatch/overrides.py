"""run.py's command line checked against the config before Hydra starts.

Hydra reports a misspelt key, a value of the wrong type or a missing group option in several
lines, exits 1, and for a misspelt key suggests appending it with `+key=...` (which the run
then refuses). Composing the config here first turns each of these into one line naming the
key and what would work, with the exit status of every other mistake (2). Every value of a
sweep (`-m key=a,b,c`) is checked before the first job starts.
"""

import difflib
import importlib.util
import re
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
                              ValidationError)

from fixmatch.errors import UserError

MULTIRUN_FLAGS = ("-m", "--multirun")
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

    Raises:
        UserError: for a key left ??? in the config (dataset.root of dataset=folder, say).
    """
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as error:
        raise UserError(f"{error.full_key} must be given (it is ??? in the config): add "
                        f"{error.full_key}=... to the command") from None


def _listing(program: str) -> str:
    return f"`{program} --cfg job` prints every key"


def override_error(args: Sequence[str], config_dir: Path, config_name: str = "config",
                   program: str = RUN_PY) -> Optional[str]:
    """What is wrong with the command line's overrides, in one line; None when they compose.

    Command lines with Hydra flags other than -m/--multirun (--cfg, --help, -cn, ...) and the
    `hydra...` overrides are left to Hydra. `program` is how the messages name the command.
    """
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    if any(arg.startswith("-") for arg in overrides):
        return None
    flag_at = next((i for i, arg in enumerate(args) if arg in MULTIRUN_FLAGS), None)
    if flag_at is not None and 0 < flag_at < len(args) - 1:
        # Overrides on both sides of the flag: argparse stops with a usage dump.
        return (f"-m must come before the overrides: {program} -m "
                f"{' '.join(overrides)}")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        bad = next(arg for arg in overrides if not _parses(arg))
        return (f"{bad!r} is not an override: write key=value (e.g. seed=2) or group=option "
                f"(e.g. dataset=cifar100); {_listing(program)}")
    fixed, sweeps = [], []
    for override, text in zip(parsed, overrides):
        if override.get_key_element().lstrip("+~").startswith("hydra"):
            missing = _missing_launcher(override)
            if missing:
                return missing
            continue  # the rest of Hydra's own settings are left to Hydra
        schema = next((value for value in _plain_values(override) if value.endswith(SCHEMA_SUFFIX)), None)
        if schema is not None and "." not in override.get_key_element():
            return (f"{override.get_key_element()}={schema}: {schema} is the typed schema the "
                    f"{override.get_key_element()} options extend, not an option (`{program} "
                    "--help` lists the options)")
        if not override.is_sweep_override():
            fixed.append(text)
        elif not multirun:
            return f"{text} gives several values, which is a sweep: add -m ({program} -m {text})"
        else:
            values = _sweep_values(override)
            if values is None:
                return None  # a sweep form Hydra expands itself (glob, ranges with steps, ...)
            sweeps.append([f"{override.get_key_element()}={value}" for value in values])
    return _first_failure(config_dir, config_name, fixed, sweeps, program)


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


def _first_failure(config_dir: Path, config_name: str, fixed: List[str],
                   sweeps: List[List[str]], program: str) -> Optional[str]:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            for overrides in _candidates(fixed, sweeps):
                error = _compose_error(config_name, overrides, program)
                if error:
                    return error
    finally:
        GlobalHydra.instance().clear()  # hydra.main initialises its own
    return None


def _compose_error(config_name: str, overrides: List[str], program: str) -> Optional[str]:
    try:
        compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as error:
        return _missing_option(error, overrides)
    except ConfigCompositionException as error:
        cause = error.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
            return _unknown_key(cause.full_key, config_name, overrides, program)
        if isinstance(cause, ValidationError) and cause.full_key:
            # The last override of a key is the one that applies (and failed).
            given = next((o for o in reversed(overrides)
                          if o.split("=", 1)[0].lstrip("+~") == cause.full_key), cause.full_key)
            return f"{given}: {str(cause.msg).splitlines()[0]}"
    return None


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
