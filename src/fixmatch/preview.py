"""`python -m fixmatch.preview [run.py's overrides]`: a PNG grid of what the model sees.

Rows are training images of the configured dataset; columns are the image itself, its weak
view and several strong views, made by the training pipelines and un-normalised for display.
"""

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Set, Tuple

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from fixmatch.config import Config, register_configs
from fixmatch.data.datasets import load_dataset
from fixmatch.data.transforms import Pipeline
from fixmatch.errors import UserError
from fixmatch.output_marks import pil_save_kwargs, refuse_to_replace
from fixmatch.overrides import (existing_folders, override_error, remove_if_made_empty,
                                typed_config)
from fixmatch.pipeline import build_views

# The package lives in <repo>/src/fixmatch; the configs in <repo>/conf (editable install).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GAP = 2  # px of background between cells
HEADER = 16  # px of column titles above the grid
BACKGROUND = (255, 255, 255)
MAX_SIDE = 8192  # px: the longest grid side written (preview.num_images=5000 would be ~500k px)
PREVIEW_COMMAND = "preview"  # the mark in the PNGs it writes (output_marks)
COMMON_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class PreviewConfig:
    """What the preview draws; set with `preview.<key>=...` on the command line."""

    num_images: int = 8  # rows: training images, drawn with `seed`
    num_strong: int = 4  # strong views per image, each a fresh RandAugment + Cutout draw
    cell_size: int = 96  # px: images are enlarged by a whole factor (nearest) to at least this
    file_name: str = "preview.png"  # written into Hydra's run directory


@dataclass
class PreviewAppConfig(Config):
    """run.py's configuration plus the `preview` node."""

    preview: PreviewConfig = field(default_factory=PreviewConfig)


def register_preview_configs() -> None:
    """run.py's schemas, with the root schema extended by `preview`.

    conf/config.yaml names `config_schema` as its root schema; storing the extended schema
    under that name makes every override of run.py valid here, plus `preview.*`.
    """
    register_configs()
    ConfigStore.instance().store(name="config_schema", node=PreviewAppConfig)


def grid_size(num_images: int, num_strong: int, cell: int) -> Tuple[int, int]:
    """The size of the grid: columns original, weak, num_strong strong views.

    Args:
        num_images: rows of the grid.
        num_strong: strong views per row.
        cell: displayed side of one image, in px (`cell_side`).

    Returns:
        (width, height) in px, gaps and the title row included.
    """
    columns = 2 + num_strong
    return columns * cell + (columns + 1) * GAP, HEADER + num_images * cell + (num_images + 1) * GAP


def check_options(options: PreviewConfig, image_size: int) -> None:
    """Refuse a preview setting before loading anything: bad counts, a file name PIL cannot
    write, or a grid over MAX_SIDE px a side.

    Args:
        options: the preview settings.
        image_size: the dataset's image side, in px.

    Raises:
        UserError: naming the setting and what would work.
    """
    if options.num_images < 1 or options.num_strong < 0 or options.cell_size < 1:
        raise UserError(f"preview.num_images={options.num_images} must be at least 1, "
                        f"preview.num_strong={options.num_strong} not negative and "
                        f"preview.cell_size={options.cell_size} positive")
    suffix = Path(options.file_name).suffix.lower()
    writable = image_extensions()
    if suffix not in writable:
        common = [extension for extension in COMMON_EXTENSIONS if extension in writable]
        raise UserError(f"preview.file_name={options.file_name}: "
                        + (f"PIL cannot write {suffix} files" if suffix else "no file extension")
                        + f"; end it with an image extension such as {', '.join(common)}")
    cell = cell_side(image_size, options.cell_size)
    width, height = grid_size(options.num_images, options.num_strong, cell)
    if max(width, height) > MAX_SIDE:
        most_rows = (MAX_SIDE - HEADER - GAP) // (cell + GAP)
        most_strong = (MAX_SIDE - GAP) // (cell + GAP) - 2
        raise UserError(f"preview.num_images={options.num_images}, preview.num_strong="
                        f"{options.num_strong} and preview.cell_size={options.cell_size} make a "
                        f"{width}x{height} px grid, over the limit of {MAX_SIDE} px a side; with "
                        f"{cell} px cells that allows at most {max(most_rows, 0)} images and "
                        f"{max(most_strong, 0)} strong views")


def image_extensions() -> List[str]:
    """The file extensions PIL can write.

    Returns:
        The lower-case extensions with their dot (".png", ".jpg", ...), sorted.
    """
    Image.init()
    return sorted(extension for extension, image_format in Image.registered_extensions().items()
                  if image_format in Image.SAVE)


def cell_side(image_side: int, cell_size: int) -> int:
    """The displayed side of an image: enlarged by a whole factor to at least `cell_size`.

    Args:
        image_side: the image's side, in px.
        cell_size: the smallest displayed side wanted, in px.

    Returns:
        The side in px: `image_side` times the smallest whole factor (at least 1) that
        reaches `cell_size`.
    """
    return image_side * max(1, math.ceil(cell_size / image_side))


def to_display(view: torch.Tensor) -> np.ndarray:
    """A uint8 (C, H, W) view as a uint8 (H, W, C) image.

    Args:
        view: a pipeline's output, on the CPU.

    Returns:
        The same pixels, channels last (a view of the tensor's memory, not a copy).
    """
    return view.permute(1, 2, 0).numpy()


def preview_grid(images: Sequence[np.ndarray], weak: Pipeline, strong: Pipeline,
                 num_strong: int, seed: int, cell_size: int) -> Image.Image:
    """Draw the grid: one row per image; original, weak view, `num_strong` strong views.

    Args:
        images: uint8 (H, W, C) images of one size.
        weak: the weak pipeline (returns a uint8 (C, H, W) tensor).
        strong: the strong pipeline.
        num_strong: strong views per image.
        seed: seeds every view (view j of row i draws from [seed, i, j]).
        cell_size: minimum displayed side of an image, in px.

    Returns:
        An RGB image of `grid_size(len(images), num_strong, cell)` px.
    """
    cell = cell_side(images[0].shape[0], cell_size)
    grid = Image.new("RGB", grid_size(len(images), num_strong, cell), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    titles = ["original", "weak"] + [f"strong {j + 1}" for j in range(num_strong)]
    for column, title in enumerate(titles):
        draw.text((GAP + column * (cell + GAP), 2), title, fill=(0, 0, 0))
    for row, image in enumerate(images):
        views = [image, to_display(weak(image, np.random.default_rng([seed, row, 1])))]
        views += [to_display(strong(image, np.random.default_rng([seed, row, 2 + j])))
                  for j in range(num_strong)]
        for column, view in enumerate(views):
            tile = Image.fromarray(np.ascontiguousarray(view[:, :, 0] if view.shape[2] == 1 else view))
            tile = tile.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (GAP + column * (cell + GAP), HEADER + GAP + row * (cell + GAP)))
    return grid


def write_preview(config: PreviewAppConfig, path: Path) -> Path:
    """Load the configured dataset and write the preview grid of its training images to `path`.

    Args:
        config: run.py's typed config plus the preview settings; `seed` picks the images
            and seeds the views.
        path: the image file to write; its extension picks the format.

    Returns:
        `path`, once written.

    Raises:
        UserError: for a dataset that cannot be loaded, a bad preview or augmentation
            setting, a file at `path` that the preview did not draw, or a file PIL cannot
            write.
    """
    options = config.preview
    check_options(options, config.dataset.image_size)
    # The run folder may hold a run's or evaluate's files (confusion.png): never replaced.
    refuse_to_replace(path, f"preview.file_name={options.file_name}", PREVIEW_COMMAND)
    train = load_dataset(config.dataset).train
    weak, strong = build_views(config)
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(len(train.images), min(options.num_images, len(train.images)),
                              replace=False))
    grid = preview_grid([np.asarray(train.images[i]) for i in rows], weak, strong,
                        options.num_strong, config.seed, options.cell_size)
    try:
        grid.save(path, **pil_save_kwargs(path, PREVIEW_COMMAND))
    except (OSError, ValueError) as error:  # a format PIL lists but cannot write RGB to, say
        raise UserError(f"cannot write preview.file_name={options.file_name} to {path} "
                        f"({error}); a .png always works") from None
    return path


def find_conf_dir() -> Path:
    """The repository's conf/ folder.

    Returns:
        The folder, which holds config.yaml.

    Raises:
        UserError: when the package is not run from a checkout (no conf/ next to src/).
    """
    if not (CONF_DIR / "config.yaml").is_file():
        raise UserError(f"no config folder at {CONF_DIR} (expected conf/config.yaml at the "
                        "repository root); install the package from a checkout with "
                        "`pip install -e .` and run it there")
    return CONF_DIR


EXISTING_RUN_DIRS: Set[Path] = set()  # hydra.run.dir when it existed before the start


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """Compose like run.py, then write the preview into Hydra's run directory.

    A mistake is printed as one `error:` line; the process then exits with status 2, after
    removing the run directory when Hydra made it and it is still empty.

    Args:
        cfg: the config Hydra composed from the command line.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config: PreviewAppConfig = typed_config(cfg)
        print(write_preview(config, run_dir / config.preview.file_name))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        remove_if_made_empty(run_dir, EXISTING_RUN_DIRS)  # Hydra made it for the grid
        sys.exit(2)


if __name__ == "__main__":
    try:
        find_conf_dir()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    register_preview_configs()
    EXISTING_RUN_DIRS.update(existing_folders(sys.argv[1:], "hydra.run.dir"))
    error = override_error(sys.argv[1:], CONF_DIR, program="python -m fixmatch.preview")
    if error:  # one line, as run.py gives, instead of Hydra's report (exit 1)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
