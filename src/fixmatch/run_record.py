"""The run's own record of how it was started: `run.log` and Hydra's `.hydra/` notes.

Hydra would write both into the folder it was given before the run decides where it
writes (`trainer.resume=false` picks a new sibling folder) or whether it may write at all
(a refused restart must leave the old run's files as they were). So Hydra's file logging
and notes are off (conf/config.yaml) and this module writes them once the run's folder
is decided: log records are held in memory until then.
"""

import logging
import logging.handlers
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fixmatch.atomic_files import write_text_atomic

LOG_FILE = "run.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's file format
NOTES_DIR = ".hydra"


class RunLog:
    """Holds the run's log records until `write_to(folder)`, then appends them (and every
    later one) to folder/run.log; `close()` detaches it from the root logger.

    Args:
        enabled: False on ranks other than 0 (rank 0 writes the run's log).
    """

    def __init__(self, enabled: bool = True):
        self._root = logging.getLogger()
        # Far more records than a start logs; flushed only when a folder is chosen.
        self._held: Optional[logging.handlers.MemoryHandler] = None
        self._file: Optional[logging.FileHandler] = None
        if enabled:
            self._held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
            self._held.setLevel(logging.INFO)
            self._root.addHandler(self._held)

    def write_to(self, run_dir: Path) -> None:
        """Append the held records and everything logged from now on to run_dir/run.log.

        Does nothing when disabled or already writing.

        Args:
            run_dir: the run's folder, decided and writable.
        """
        if self._held is None or self._file is not None:
            return
        self._file = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
        self._file.setFormatter(logging.Formatter(LOG_FORMAT))
        self._file.setLevel(logging.INFO)
        self._held.setTarget(self._file)
        self._held.flush()
        self._root.removeHandler(self._held)
        self._root.addHandler(self._file)

    def write_to_file_only(self, level: int, message: str) -> None:
        """Append one record to run.log and not to the console (which has it already).

        Nothing is written before `write_to`, or when disabled.

        Args:
            level: the record's logging level, e.g. logging.ERROR.
            message: the text, as it is (no %-formatting).
        """
        if self._file is not None:
            self._file.handle(logging.LogRecord("fixmatch", level, __file__, 0, message, None, None))

    def close(self) -> None:
        """Stop recording; records never written anywhere (a refused start) are dropped."""
        for handler in (self._held, self._file):
            if handler is not None:
                self._root.removeHandler(handler)
                handler.close()
        self._held = self._file = None


class RunRecord:
    """What a run writes about its own start, once its folder is decided and it may write:
    config_resolved.yaml, Hydra's notes and run.log.

    Args:
        cfg: the composed config for `.hydra/` (None writes no notes).
        keep_log: record the log in run.log (rank 0 of a Hydra app).
    """

    def __init__(self, cfg: Optional[DictConfig] = None, keep_log: bool = False):
        self.cfg = cfg
        self.log = RunLog(enabled=keep_log)

    def write(self, run_dir: Path, resolved_yaml: str) -> None:
        """Write config_resolved.yaml and Hydra's notes, and start run.log (held records first).

        Args:
            run_dir: the run's folder, decided and writable.
            resolved_yaml: the run's resolved config as YAML text.
        """
        write_text_atomic(run_dir / "config_resolved.yaml", resolved_yaml)
        write_hydra_notes(run_dir, self.cfg)
        self.log.write_to(run_dir)

    def write_failure(self, run_dir: Path, resolved_yaml: str, why: str) -> None:
        """`write` for a new run that stopped before training, with why in run.log: run.py
        prints it on the console only, and the log should say how the run ended too.

        Args:
            run_dir: the run's folder.
            resolved_yaml: the run's resolved config as YAML text.
            why: the one-line reason the start stopped.
        """
        self.write(run_dir, resolved_yaml)
        self.note_stop(f"stopped before training: {why}")

    def note_stop(self, message: str) -> None:
        """Say in run.log (once it is written) why the run stopped.

        Args:
            message: the reason, logged at ERROR level.
        """
        self.log.write_to_file_only(logging.ERROR, message)

    def close(self) -> None:
        """Stop recording the log (see `RunLog.close`)."""
        self.log.close()


def write_hydra_notes(run_dir: Path, cfg: Optional[DictConfig]) -> None:
    """Write Hydra's `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` for this start.

    Args:
        run_dir: the run's folder.
        cfg: the composed config (None, or outside a Hydra app, writes nothing).
    """
    if cfg is None or not HydraConfig.initialized():
        return
    notes = run_dir / NOTES_DIR
    notes.mkdir(exist_ok=True)
    hydra_cfg = HydraConfig.get()
    task = OmegaConf.to_container(cfg, resolve=False)
    task.pop("hydra", None)
    write_text_atomic(notes / "config.yaml", OmegaConf.to_yaml(task))
    write_text_atomic(notes / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}))
    write_text_atomic(notes / "overrides.yaml", OmegaConf.to_yaml(list(hydra_cfg.overrides.task)))
