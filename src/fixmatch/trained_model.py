"""A trained run's model, back from its checkpoint: config, weights, classes and preprocessing.

Shared by the evaluate, predict and export commands, which all start from a run folder or a
checkpoint file and must see the model exactly as training left it.
"""

import logging
import sys
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from fixmatch import app
from fixmatch.checkpoint import (CHECKPOINT_DIR, LAST_CHECKPOINT, CheckpointError, CheckpointStore,
                                 load_checkpoint)
from fixmatch.config import Config, Device
from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.data.normalization import Normalization
from fixmatch.errors import UserError
from fixmatch.output_marks import cannot_write_in
from fixmatch.runtime import select_device

log = logging.getLogger(__name__)

RUN_CONFIG = "config_resolved.yaml"  # every run folder holds it
WEIGHTS = ("ema", "raw")  # model=ema (the averaged weights the paper reports) or raw
# What the model was trained to see: always the checkpoint's, never an override.
MODEL_INPUT_KEYS = ("dataset.image_size", "dataset.channels", "dataset.resize", "dataset.mean",
                    "dataset.std")
# When no checkpoint of a run folder loads. Not training's advice (trainer.resume=false):
# these commands only read a checkpoint, so the way out is another one or a new one.
NO_READABLE_CHECKPOINT_ADVICE = ("give checkpoint= a .pt file that loads (another run's, or a "
                                 "copy of this one's), or train the run again")


@dataclass
class TrainedModel:
    """A model in eval mode with everything needed to feed it and name its outputs."""

    model: nn.Module
    config: Config  # the run's config, with any dataset.* overrides applied
    class_names: List[str]
    normalization: Normalization
    checkpoint_path: Path
    run_dir: Path  # the folder that holds checkpoints/
    weights: str  # "ema" or "raw"
    step: int
    device: torch.device

    @property
    def inputs(self) -> DeviceInputs:
        """Turns uint8 image batches into this model's normalised input on its device, in the
        memory format the run evaluated in (trainer.channels_last): the same arithmetic, so
        evaluate's top-1 is the run's own even where two classes' scores nearly tie."""
        return DeviceInputs(self.normalization, self.device, self.config.trainer.channels_last)


def resolve_checkpoint(location: str) -> Path:
    """The checkpoint file that `checkpoint=` names: a .pt file, or a run folder's newest.

    Args:
        location: checkpoint= as given: a file, a run folder or its checkpoints/ folder.

    Returns:
        `location` itself when it is a file (not read here), else the newest step_*.pt
        of the run that loads.

    Raises:
        CheckpointError: when nothing is there, or a run folder holds no checkpoint or
            none that loads.
    """
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint={location}: no such file or folder; give a run folder "
                              "or a checkpoints/step_*.pt file")
    # A run's checkpoints/ folder, or a run folder (one may itself be named checkpoints).
    run_folder = (path / CHECKPOINT_DIR).is_dir() or path.name != CHECKPOINT_DIR
    folder = path / CHECKPOINT_DIR if run_folder else path
    newest = CheckpointStore(folder, keep=1).newest_valid(NO_READABLE_CHECKPOINT_ADVICE)
    if newest is None:
        raise CheckpointError(f"checkpoint={location}: no checkpoints/step_*.pt in {path}; "
                              "give a run folder that has trained at least one checkpoint")
    return newest[0]


def rebuild_config(config_yaml: str, overrides: Sequence[str] = ()) -> Config:
    """The run's typed config from its resolved YAML, with `dataset.*` overrides applied.

    Args:
        config_yaml: the checkpoint's resolved config, as YAML text.
        overrides: dataset.key=value settings; one of MODEL_INPUT_KEYS only with the value
            the model was trained with.

    Returns:
        The typed config, checked against the schema.

    Raises:
        UserError: for an override outside dataset.*, a changed model input (image size,
            channels, resize rule, mean/std), an unknown key or a bad value.
    """
    for override in overrides:
        if not override.startswith("dataset."):
            raise UserError(f"{override}: only dataset.* settings can be changed when using a "
                            "trained model (the model itself comes from the checkpoint)")
        key = override.partition("=")[0]
        if key in MODEL_INPUT_KEYS:
            saved = OmegaConf.select(OmegaConf.create(config_yaml), key)
            given = OmegaConf.select(OmegaConf.from_dotlist([override]), key)
            if given == saved:
                continue  # the value it was trained with: nothing changes
            trained_on = (f"{key} computed from its training images" if saved is None
                          else f"{key}={saved}")
            raise UserError(f"{override}: the model was trained on {trained_on}, so that is "
                            "what it is fed (image size, channels, resize rule and mean/std come "
                            "from the checkpoint); change where the data lives, e.g. "
                            "dataset.root=...")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(config_yaml),
                                 OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        reason = str(error).strip().splitlines()[0]
        what = " ".join(overrides) or "the checkpoint's config"
        raise UserError(f"cannot apply {what}: {reason}") from None


def load_trained_model(location: str, weights: str = "ema", overrides: Sequence[str] = (),
                       device: str = "auto") -> TrainedModel:
    """Load the model of a run folder or checkpoint file, in eval mode, on `device`.

    Args:
        location: a run folder (its newest valid checkpoint) or a .pt file.
        weights: "ema" (default; falls back to raw when the run had no EMA) or "raw".
        overrides: dataset.key=value settings (another test folder with the same classes).
        device: auto, cpu or cuda.

    Returns:
        The model in eval mode on the chosen device, with its config, class names,
        normalisation, checkpoint file, run folder, the weights used and the step.

    Raises:
        CheckpointError: missing, corrupt, of another format or inconsistent checkpoint.
        UserError: a bad `weights`, `device` or override, or device=cuda without a visible
            CUDA device.
    """
    if weights not in WEIGHTS:
        raise UserError(f"model={weights} is not known; use model=ema or model=raw")
    try:
        choice = Device(device)
    except ValueError:
        raise UserError(f"device={device} is not known; use auto, cpu or cuda") from None
    if choice is Device.cuda and not torch.cuda.is_available():  # named as these commands name it
        raise UserError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    path = resolve_checkpoint(location)
    state = load_checkpoint(path)
    missing = [key for key in ("config_yaml", "class_names", "normalization", "model")
               if state.get(key) is None]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it was not written by a "
                              "fixmatch run of this version")
    config = rebuild_config(state["config_yaml"], overrides)
    model = app.build_model(config, len(state["class_names"]))
    weights_used = "ema" if weights == "ema" and state.get("ema") is not None else "raw"
    if weights_used != weights:
        log.warning("%s has no EMA weights (optim.ema_enabled=false): using the raw model", path)
    try:
        model.load_state_dict(state["ema"] if weights_used == "ema" else state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit the model of its config "
                              f"({str(error).splitlines()[0][:200]})") from None
    selected = select_device(choice)
    normalization = Normalization(list(state["normalization"]["mean"]),
                                  list(state["normalization"]["std"]), "checkpoint")
    run_dir = path.resolve().parent.parent if path.resolve().parent.name == CHECKPOINT_DIR \
        else path.resolve().parent
    model = model.to(selected).eval()
    if config.trainer.channels_last:  # as the run evaluated it (TrainedModel.inputs)
        model = model.to(memory_format=torch.channels_last)
    return TrainedModel(model, config, list(state["class_names"]), normalization, path, run_dir,
                        weights_used, int(state["step"]), selected)


def parse_arguments(argv: Sequence[str], defaults: Dict[str, str],
                    required: Sequence[str] = ("checkpoint",)) -> tuple:
    """Split `key=value` arguments into known settings and dataset.* overrides.

    Args:
        argv: the command-line arguments.
        defaults: the command's settings with their default values.
        required: the settings that must be given a non-empty value.

    Returns:
        (settings: dict of every key of `defaults` plus the given ones, dataset overrides).
        Every argument whose key has a "." is an override, kept as written, in order, for
        `rebuild_config` to check.

    Raises:
        UserError: for an argument without '=', an unknown key or a missing required one.
    """
    settings, overrides = dict(defaults), []
    for argument in argv:
        key, equals, value = argument.partition("=")
        if not equals:
            raise UserError(f"{argument}: arguments are key=value (e.g. checkpoint=outputs/run); "
                            "--help lists them")
        if "." in key:
            overrides.append(argument)  # rebuild_config accepts dataset.* only
        elif key in defaults or key in required:
            settings[key] = value
        else:
            known = ", ".join(sorted(set(defaults) | set(required)))
            raise UserError(f"{key}={value}: unknown setting; known: {known}, dataset.*")
    for key in required:
        if not settings.get(key):
            raise UserError(f"{key}=... must be given")
    return settings, overrides


def output_path(value: str, setting: str, folder: bool = False) -> Path:
    """Where a command will write (`setting=value`), checked before any work is done.

    Args:
        value: the path as given.
        setting: the argument's name, for the messages (out, output).
        folder: the command writes several files into this folder (created when written);
            otherwise `value` names one file (its folder created when written).

    Returns:
        `value` as a path, with ~ expanded; no folder is created.

    Raises:
        UserError: when it is a folder where a file is meant (or the reverse), or its folder
            cannot be created or written.
    """
    path = Path(value).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{setting}={value} is a file; {setting}= names a folder to write into")
    if not folder and path.is_dir():
        raise UserError(f"{setting}={value} is a folder; give a file name inside it, "
                        f"e.g. {setting}={path / 'name'}")
    where = path if folder else path.parent
    # Folders are made when the output is written: a command that stops on a mistake leaves
    # no empty folders behind. Checked now: the nearest folder that exists takes a file.
    existing = next(part for part in (where, *where.parents) if part.exists())
    if not existing.is_dir():
        raise UserError(f"{setting}={value}: cannot create {where}, as {existing} is a file; "
                        "choose a writable place")
    reason = cannot_write_in(existing)
    if reason:
        raise UserError(f"{setting}={value}: cannot write in {existing} ({reason}); choose a "
                        "writable place")
    return path


@contextmanager
def writing(setting: str, where: Path, errors: Tuple[type, ...] = (OSError,)):
    """Turn a failed write of a command's output (a full disk, a read-only mount) into one
    line naming the setting and the place.

    Args:
        setting: the argument's name, for the message (out, output).
        where: the file or folder being written, for the message.
        errors: the exceptions that mean the write failed.

    Raises:
        UserError: when the block raises one of `errors`.
    """
    try:
        yield
    except errors as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise UserError(f"{setting}: cannot write {where} ({reason}); choose a writable place "
                        "with enough space") from None


def refuse_checkpoints_folder(output: Path, setting: str, what: str,
                              checkpoint: Optional[Path] = None, folder: bool = False) -> None:
    """Refuse to write into a run's checkpoints/ folder or over the checkpoint in use.

    A checkpoint is the run itself (resuming, evaluating, exporting start from it), and
    last.pt is a link that a write would follow into the newest step file.

    Args:
        output: the file a command will write, or with `folder` the folder it writes into.
        setting: the argument's name, for the message (output, out).
        what: what the command writes, for the message (the model, the predictions).
        checkpoint: the checkpoint file in use, refused also outside a checkpoints/ folder.
        folder: `output` is a folder that the command writes several files into (evaluate).

    Raises:
        UserError: when `output` (links followed) is in a checkpoints/ folder, below a run's,
            or is `checkpoint`; with `folder`, when it is a checkpoints/ folder or below a run's.
    """
    resolved = output.resolve()
    if folder:
        if _is_runs_checkpoints(resolved) or _below_a_runs_checkpoints(resolved):
            raise UserError(f"{setting}={output} is a run's {CHECKPOINT_DIR}/ folder (or lies "
                            f"in one), which holds only its checkpoints; write {what} elsewhere "
                            f"(leave {setting}= off for the run folder)")
        return
    if _is_runs_checkpoints(resolved.parent) or _below_a_runs_checkpoints(resolved.parent) or (
            checkpoint is not None and resolved == checkpoint.resolve()):
        raise UserError(f"{setting}={output} is in a run's {CHECKPOINT_DIR}/ folder (or is the "
                        f"checkpoint itself), which it could overwrite; write {what} elsewhere")


def _is_runs_checkpoints(folder: Path) -> bool:
    """Whether `folder` is, or may become, a run's checkpoints/ folder: so named, and not yet
    there, or holding checkpoint files, or inside a run's folder. (A folder that is only so
    named, such as /data/checkpoints holding runs, or a run folder itself named so, is not.)"""
    if folder.name != CHECKPOINT_DIR:
        return False
    if not folder.exists():
        return True
    return ((folder / LAST_CHECKPOINT).exists() or any(folder.glob("step_*.pt"))
            or (folder.parent / RUN_CONFIG).exists())


def _below_a_runs_checkpoints(path: Path) -> bool:
    """Whether a folder above `path` is a run's checkpoints/ folder (`_is_runs_checkpoints`)."""
    return any(_is_runs_checkpoints(parent) for parent in path.parents)


def refuse_foreign_file(output: Path, setting: str, command: str,
                        written_by_command: Callable[[Path], bool],
                        target: Optional[Path] = None,
                        advice: str = "choose another name") -> None:
    """Refuse to overwrite an existing file unless `command` wrote it on an earlier run.

    A run's config_resolved.yaml, metrics.json or a training image has no other copy, but
    rerunning the same command into the same place must still replace its own output.

    Args:
        output: the file named by `setting=`.
        setting: the argument's name, for the message (output, out).
        command: the command's name, for the message (predict, export, evaluate).
        written_by_command: whether an existing file is an earlier output of `command`.
        target: the file that would be overwritten, when not `output` itself (export's
            <name>.json beside the model, evaluate's eval.json in its out= folder).
        advice: what to do instead, ending the message.

    Raises:
        UserError: when the file exists and `written_by_command` does not recognise it.
    """
    target = output if target is None else target
    if not target.exists() or written_by_command(target):
        return
    if target == output:
        raise UserError(f"{setting}={output} already exists and no {command} wrote it; {advice}")
    raise UserError(f"{setting}={output} would overwrite {target}, which no {command} wrote; "
                    f"{advice}")


class _LevelPrefix(logging.Formatter):
    """`warning: <message>`, as the commands print their `error: ...` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


# --help lines of the arguments every model command takes (a command may word its own).
SHARED_DESCRIPTIONS = {
    "checkpoint": "a run folder (its newest readable checkpoint) or a checkpoints/step_*.pt file",
    "model": "ema (the averaged weights) or raw (the live ones)",
    "device": "auto, cpu or cuda",
}


def usage(command: str, about: str, defaults: Dict[str, str], descriptions: Dict[str, str],
          required: Sequence[str] = ("checkpoint",)) -> str:
    """A command's --help text: its synopsis, what it does, then each argument with its default.

    Args:
        command: the module's name (evaluate, predict, export).
        about: what the command does, a sentence or two.
        defaults: the settings that parse_arguments is given, with their defaults ("" for one
            computed later, which its description then names).
        descriptions: a line on each argument but those of SHARED_DESCRIPTIONS (unless the
            command words its own), and on any other accepted form (dataset.*); listed in the
            order of `required`, `defaults`, then the rest.
        required: the settings that must be given.

    Returns:
        The help text, each argument's line wrapped at 96 characters.

    Raises:
        KeyError: when an argument has no description (so the help cannot fall behind).
    """
    described = {key: descriptions.get(key, SHARED_DESCRIPTIONS.get(key))
                 for key in [*required, *defaults, *descriptions]}
    missing = [key for key, description in described.items() if description is None]
    if missing:
        raise KeyError(f"no --help line for {', '.join(missing)}")
    synopsis = " ".join(f"{key}=..." for key in required)
    lines = [f"usage: python -m fixmatch.{command} {synopsis} [key=value ...]", "", about, "",
             "arguments (key=default):"]
    for key, description in described.items():
        shown = f"{key}={defaults[key]}" if defaults.get(key) else f"{key}=..."
        if key in required:
            description = f"required: {description}"
        lines += textwrap.wrap(description, 96, initial_indent=f"  {shown:<23} ",
                               subsequent_indent=" " * 26, break_on_hyphens=False)
    return "\n".join(lines)


def run_command(main: Callable[[Sequence[str]], object], usage_text: str = "") -> None:
    """Run a command's `main(argv)`: -h/--help prints `usage_text` and exits 0, warnings
    (a skipped checkpoint, ...) become `warning: ...` lines on stderr, a user mistake one
    `error: ...` line and exit 2.

    Args:
        main: the command's main, given sys.argv[1:].
        usage_text: the --help text; when empty, -h and --help are passed on to `main`.

    Raises:
        SystemExit: with status 0 after --help, 2 after a UserError.
    """
    if usage_text and any(argument in ("-h", "--help") for argument in sys.argv[1:]):
        print(usage_text)
        sys.exit(0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        main(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
