"""Where the toolkit's commands write: marks in the images they draw (results --plot,
preview), so that a rerun may replace its own earlier image but never a file of the user's
that has the same name, and a check that a folder takes a file at all.

The mark is a plain-text metadata entry ("fixmatch <command>"): a PNG tEXt chunk, the
Creator of a PDF, SVG or PostScript file, a JPEG comment, a TIFF image description. Formats
without such an entry (WebP, GIF, ...) carry no mark, so an existing file of theirs is never
replaced.
"""

import os
from pathlib import Path
from typing import Optional

from PIL.PngImagePlugin import PngInfo

from fixmatch.errors import UserError

MATPLOTLIB_KEYS = {".png": "Software", ".pdf": "Creator", ".svg": "Creator", ".ps": "Creator",
                   ".eps": "Creator"}
MAX_BYTES_READ = 64 << 20  # a drawn image is far smaller; a larger file is not one of ours


def mark(command: str) -> str:
    """The mark of a command's images.

    Args:
        command: the command's name, e.g. "preview".

    Returns:
        The text "fixmatch <command>".
    """
    return f"fixmatch {command}"


def pil_save_kwargs(path: Path, command: str) -> dict:
    """PIL's `Image.save` arguments that mark `path` as `command`'s.

    Args:
        path: the image to write; its suffix picks the format.
        command: the command that draws it.

    Returns:
        Keyword arguments for `Image.save`: a PNG tEXt chunk, a JPEG comment or a TIFF
        description; empty for formats that carry no mark.
    """
    suffix = path.suffix.lower()
    if suffix == ".png":
        info = PngInfo()
        info.add_text("Software", mark(command))
        return {"pnginfo": info}
    if suffix in (".jpg", ".jpeg"):
        return {"comment": mark(command).encode()}
    if suffix in (".tif", ".tiff"):
        return {"description": mark(command)}
    return {}


def matplotlib_save_kwargs(path: Path, command: str) -> dict:
    """savefig's arguments that mark `path` as `command`'s: `metadata=` where matplotlib
    writes it, PIL's arguments for the formats it hands to PIL (matplotlib refuses
    `metadata=`, even empty, for those).

    Args:
        path: the image to write; its suffix picks the format.
        command: the command that draws it.

    Returns:
        Keyword arguments for `savefig` (`metadata` or `pil_kwargs`); empty for formats
        that carry no mark.
    """
    key = MATPLOTLIB_KEYS.get(path.suffix.lower())
    if key:
        return {"metadata": {key: mark(command)}}
    pil = pil_save_kwargs(path, command)
    return {"pil_kwargs": pil} if pil else {}


def carries_mark(path: Path, command: str) -> bool:
    """Whether the file at `path` is an image `command` drew (its mark is in its bytes).

    Args:
        path: the file to look at.
        command: the command whose mark is looked for.

    Returns:
        True when the mark is there; False when it is not, when the file is larger than
        MAX_BYTES_READ, or when it cannot be read (or does not exist).
    """
    try:
        if path.stat().st_size > MAX_BYTES_READ:
            return False
        return mark(command).encode() in path.read_bytes()
    except OSError:
        return False


def refuse_to_replace(path: Path, setting: str, command: str) -> None:
    """Refuse to write `path` when it exists and `command` did not draw it.

    Args:
        path: the file about to be written.
        setting: the option that named it, for the message (e.g. "--plot out.png").
        command: the command about to write it.

    Raises:
        UserError: naming the setting, the file and what to do instead.
    """
    if path.exists() and not carries_mark(path, command):
        what = "a folder" if path.is_dir() else "a file"
        raise UserError(f"{setting}: {path} already exists and is {what} no {command} drew; "
                        "choose another name (or move it away)")


def cannot_write_in(folder: Path) -> Optional[str]:
    """Why a file cannot be written in `folder`, found by a real write: os.access says yes
    to root on a read-only mount (/sys, a read-only NFS).

    Args:
        folder: an existing folder.

    Returns:
        The operating system's reason (e.g. "Permission denied"), None when a file can be
        written there.
    """
    probe = folder / f".fixmatch-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as error:
        return error.strerror or str(error)
    finally:
        _remove_probe(probe)  # also when Ctrl-C lands after the write
    return None


def _remove_probe(probe: Path) -> None:
    try:
        probe.unlink(missing_ok=True)
    except OSError:  # the write failed: there is nothing to remove
        pass
