"""Checkpoint files: atomic writes, the last K kept, newest-valid discovery, safe loading.

A checkpoint holds only tensors and plain Python values (the config travels as YAML
text), so it is read with `torch.load(..., weights_only=True)`: a crafted file cannot run
code. Files are `checkpoints/step_<step>.pt`; `checkpoints/last.pt` links to the newest.
"""

import logging
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from fixmatch.atomic_files import replaced_atomically
from fixmatch.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
CHECKPOINT_FORMAT = "fixmatch-checkpoint-v1"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
# What training says when a run folder holds checkpoints but none loads.
RESUME_ADVICE = ("move the run folder away, or set trainer.resume=false to start fresh in a new "
                 "folder")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, truncated, unsafe or of another format."""


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely and check it is one of ours.

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint's state, its tensors on the CPU.

    Raises:
        CheckpointError: when the file is missing, truncated, corrupt, would need to run
            code to load, is an exported TorchScript model, or is not a fixmatch checkpoint.
    """
    if is_torchscript_archive(path):  # torch.load's own refusal is a paragraph and a warning
        raise CheckpointError(f"checkpoint {path} is an exported model (TorchScript), not a "
                              "training checkpoint; give the run folder or one of its "
                              "checkpoints/step_*.pt")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses anyway.
            warnings.filterwarnings("ignore", category=UserWarning, module="torch")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError, IndexError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} {_why_unloadable(path, error)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fixmatch checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return state


def is_torchscript_archive(path: Path) -> bool:
    """Whether `path` is a TorchScript model (torch.jit's zip, with code/ entries); a
    checkpoint written by torch.save is a zip without them.

    Args:
        path: any file; a missing one or one that is not a zip gives False.

    Returns:
        True when it is a zip archive with an entry in a code/ folder.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in f"/{name}" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _why_unloadable(path: Path, error: Exception) -> str:
    """Why torch.load refused `path`, in a few words (torch's own message is a paragraph
    that, for a file that is no checkpoint at all, advises weights_only=False)."""
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if unsafe:
        return (f"is unsafe to load: it would import {unsafe.group(1)}, and fixmatch checkpoints "
                "hold only tensors and plain values; it was not loaded")
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip archive
        size = path.stat().st_size if path.exists() else 0
        return (f"is unreadable: {'empty' if size == 0 else f'{size} bytes, truncated or corrupt'}"
                " (or not a PyTorch file at all)")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"is unreadable ({reason[:200]})"


class CheckpointStore:
    """The checkpoints of one run: saves atomically, keeps the newest `keep`, finds the newest valid.

    Args:
        folder: the run's `checkpoints/` folder.
        keep: how many step files to keep (at least 1).

    Raises:
        UserError: when keep is below 1.
    """

    def __init__(self, folder: Path, keep: int):
        if keep < 1:
            raise UserError(f"trainer.keep_checkpoints={keep} must be at least 1")
        self.folder = folder
        self.keep = keep

    def step_files(self) -> List[Tuple[int, Path]]:
        """(step, path) of every step checkpoint, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(match.group(1)), path) for path in self.folder.iterdir()
                 if (match := _STEP_FILE.match(path.name))]
        return sorted(found, reverse=True)

    def save(self, state: dict, step: int) -> Path:
        """Write `state` as the checkpoint of `step`, point last.pt at it, drop old ones.

        Args:
            state: tensors and plain values only, with the "format" marker
                (CHECKPOINT_FORMAT) that load_checkpoint requires.
            step: the training step; names the file step_<step, 9 digits>.pt.

        Returns:
            The file written.

        Raises:
            UserError: when the file cannot be written (disk full, no permission); the
                previous checkpoint is left as it was.
        """
        path = self.folder / f"step_{step:09d}.pt"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(state, path)
            _link_atomic(self.folder / LAST_CHECKPOINT, path.name)
        except OSError as error:
            previous = next((p for s, p in self.step_files() if s != step), None)
            raise UserError(
                f"cannot write checkpoint {path} ({error.strerror or error}); the previous "
                f"checkpoint {previous or '(none)'} is intact: free space or fix permissions, "
                "then rerun the same command to resume"
            ) from None
        for _, old in self.step_files()[self.keep:]:
            old.unlink(missing_ok=True)
        # A process killed while writing left its temporary file (named by its pid); the
        # folder lock makes this process the only writer, so any other is stale.
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return path

    def newest_valid(self, advice: str = RESUME_ADVICE) -> Optional[Tuple[Path, dict]]:
        """The newest checkpoint that loads, falling back past corrupt ones with a warning.

        Args:
            advice: what the error tells the user to do when none loads; training's
                (RESUME_ADVICE) names trainer.resume, which the evaluate, predict and export
                commands do not have, so they pass their own.

        Returns:
            (path, state), or None when the run has no checkpoint at all.

        Raises:
            CheckpointError: when checkpoints exist but none of them loads.
        """
        errors = []
        files = self.step_files()
        for number, (_, path) in enumerate(files, start=1):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as error:
                if number < len(files):  # the last one's failure is the error below
                    log.warning("%s; trying the one before it", error)
                errors.append(str(error))
        if errors:
            raise CheckpointError(
                f"no readable checkpoint in {self.folder} ({errors[0]}); {advice}")
        return None


def _write_atomic(state: dict, path: Path) -> None:
    with replaced_atomically(path, "wb") as file:
        torch.save(state, file)
    _fsync_folder(path.parent)


def _link_atomic(link: Path, target_name: str) -> None:
    temporary = link.with_name(f".{link.name}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target_name, temporary)
    os.replace(temporary, link)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk too.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
