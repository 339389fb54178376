"""Files replaced as a whole: written to a temporary file beside the target, flushed to disk
and renamed over it, so a reader, or a crash, sees the old file or the new one, never half.
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, List


@contextmanager
def replaced_atomically(path: Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """A file object whose contents replace `path` when the block ends without an error; on
    an error (or Ctrl-C) `path` is left as it was and no temporary file stays behind.

    Args:
        path: the file to replace (created when absent).
        mode: "w" for text, "wb" for bytes.
        **open_args: passed to `open` (encoding, newline, errors).

    Yields:
        The open temporary file to write the new contents to.
    """
    # The pid keeps two processes writing one path (two ranks, two sweeps) apart.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file as a whole.

    Args:
        path: the file to replace (created when absent).
        text: its new contents, written as they are.
    """
    with replaced_atomically(path) as file:
        file.write(text)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Replace a JSON file as a whole.

    Args:
        path: the file to replace (created when absent).
        payload: the object to write, indented by one space, with a final newline.
    """
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def write_lines_atomic(path: Path, lines: List[str]) -> None:
    """Replace a line-per-record file as a whole.

    Args:
        path: the file to replace (created when absent).
        lines: the records, without line endings; each gets a newline.
    """
    write_text_atomic(path, "".join(line + "\n" for line in lines))
