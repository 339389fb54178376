"""The augmentation preview: `python -m fixmatch.preview` writes a PNG grid of the real views."""

import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image

import fixmatch.preview as preview
from conftest import CONF_DIR
from fixmatch.data.transforms import EvalTransform, StrongTransform, WeakTransform
from fixmatch.errors import UserError
from fixmatch.pipeline import build_views


def _compose(overrides):
    preview.register_preview_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_cli_writes_a_grid_of_the_expected_size_into_the_run_dir(tmp_path):
    run_dir = tmp_path / "preview"
    result = subprocess.run(
        [sys.executable, "-m", "fixmatch.preview", "experiment=quickstart",
         f"hydra.run.dir={run_dir}", "preview.num_images=3", "preview.num_strong=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    path = run_dir / "preview.png"
    assert result.stdout.strip().splitlines()[-1] == str(path)
    with Image.open(path) as image:
        # 8 px digits enlarged 12x to 96 px cells; columns original, weak, 2 strong.
        assert image.size == preview.grid_size(3, 2, 96) == (4 * 96 + 5 * 2, 16 + 3 * 96 + 4 * 2)
        assert image.mode == "RGB"


def test_cli_reports_a_bad_setting_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fixmatch.preview", "experiment=quickstart",
         f"hydra.run.dir={tmp_path}/run", "preview.num_images=0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: preview.num_images=0 must be at least 1, preview.num_strong=4 not negative and "
        "preview.cell_size=96 positive"]
    assert not (tmp_path / "run").exists()  # before: Hydra's empty run folder stayed behind
    (tmp_path / "mine").mkdir()  # but a folder the user had is theirs, empty or not
    result = subprocess.run(
        [sys.executable, "-m", "fixmatch.preview", "experiment=quickstart",
         f"hydra.run.dir={tmp_path}/mine", "preview.num_images=0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2 and (tmp_path / "mine").is_dir()


@pytest.mark.parametrize("override,message", [
    ("preview.num_imgs=3", "error: preview.num_imgs is not a setting; did you mean preview.num_images? "
                           "(`python -m fixmatch.preview --cfg job` prints every key)"),
    ("ssl.treshold=0.9", "error: ssl.treshold is not a setting; did you mean ssl.threshold?"),
])
def test_cli_reports_a_misspelt_key_in_one_line_as_run_py_does(tmp_path, override, message):
    # Before: Hydra's several-line report, exit 1.
    result = subprocess.run(
        [sys.executable, "-m", "fixmatch.preview", "experiment=quickstart",
         f"hydra.run.dir={tmp_path}", override],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_preview_keys_are_validated_and_run_overrides_apply():
    config = OmegaConf.to_object(_compose(["dataset=stl10", "preview.num_strong=1"]))
    assert isinstance(config, preview.PreviewAppConfig)
    assert config.preview.num_strong == 1 and config.model.num_stages == 4
    with pytest.raises(ConfigCompositionException):
        _compose(["preview.num_image=3"])


def test_grid_starts_with_the_enlarged_original_and_uses_the_run_pipelines(tmp_path):
    config = OmegaConf.to_object(_compose(["experiment=quickstart", "preview.num_images=2",
                                           "preview.num_strong=1", "preview.cell_size=16"]))
    path = preview.write_preview(config, tmp_path / "grid.png")
    weak, strong = build_views(config)
    assert isinstance(weak, WeakTransform) and isinstance(strong, StrongTransform)
    assert weak.hflip is False and strong.randaugment.variant == "official"
    with Image.open(path) as grid:
        assert grid.size == preview.grid_size(2, 1, 16)
        # The first cell is an image of the training set, enlarged 2x.
        cell = np.asarray(grid)[preview.HEADER + preview.GAP:][:16, preview.GAP:preview.GAP + 16, 0]
        assert (cell[::2, ::2] == cell[1::2, 1::2]).all() and cell.max() > cell.min()


def test_to_display_gives_back_the_image():
    image = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    assert np.array_equal(preview.to_display(EvalTransform()(image)), image)


def test_a_missing_conf_dir_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(preview, "CONF_DIR", tmp_path / "conf")
    with pytest.raises(UserError, match="no config folder at .*conf/config.yaml"):
        preview.find_conf_dir()


def _run_preview(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-m", "fixmatch.preview", f"hydra.run.dir={tmp_path / 'run'}",
                           *overrides], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_cli_without_a_required_value_says_which_key_in_one_line(tmp_path):
    # Before: omegaconf's MissingMandatoryValue traceback, exit 1; now run.py's line.
    result = _run_preview(tmp_path, "dataset=folder")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: dataset.root must be given (it is ??? in the config): add dataset.root=... to the command"]


def test_cli_refuses_a_file_name_pil_cannot_write_before_loading(tmp_path):
    # Before: PIL's "unknown file extension: .txt" traceback after drawing the grid.
    result = _run_preview(tmp_path, "experiment=quickstart", "preview.file_name=x.txt")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: preview.file_name=x.txt: PIL cannot write .txt files; end it with an image "
        "extension such as .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp"]
    assert not (tmp_path / "run" / "x.txt").exists()


@pytest.mark.parametrize("file_name", ["grid.jpg", "grid.PNG", "grid.webp"])
def test_image_file_names_pass_and_are_written(tmp_path, file_name):
    config = OmegaConf.to_object(_compose(["experiment=quickstart", "preview.num_images=1",
                                           "preview.num_strong=1", f"preview.file_name={file_name}"]))
    with Image.open(preview.write_preview(config, tmp_path / file_name)) as grid:
        assert grid.size == preview.grid_size(1, 1, 96)


@pytest.mark.parametrize("file_name,expected", [
    ("preview", "preview.file_name=preview: no file extension; end it with an image extension such as .png"),
    ("x.txt", "preview.file_name=x.txt: PIL cannot write .txt files; end it with an image extension "
              "such as .png, .jpg"),
])
def test_a_file_name_without_an_image_extension_is_refused(file_name, expected):
    with pytest.raises(UserError) as caught:
        preview.check_options(preview.PreviewConfig(file_name=file_name), image_size=32)
    assert str(caught.value).startswith(expected)


def test_a_grid_over_the_size_limit_is_refused_naming_the_limit():
    # Before: preview.num_images=5000 on the digits wrote a 590x127124 px PNG.
    with pytest.raises(UserError) as caught:
        preview.check_options(preview.PreviewConfig(num_images=5000), image_size=8)
    assert str(caught.value) == (
        "preview.num_images=5000, preview.num_strong=4 and preview.cell_size=96 make a "
        f"590x{16 + 5000 * 96 + 5001 * 2} px grid, over the limit of 8192 px a side; with 96 px "
        "cells that allows at most 83 images and 81 strong views")
    preview.check_options(preview.PreviewConfig(num_images=83, num_strong=81), image_size=8)
    assert max(preview.grid_size(83, 81, 96)) <= preview.MAX_SIDE
    for too_many in (dict(num_images=84), dict(num_strong=82), dict(cell_size=9000)):
        with pytest.raises(UserError, match="over the limit of 8192 px a side"):
            preview.check_options(preview.PreviewConfig(**too_many), image_size=8)
    # The cell is the image enlarged by a whole factor: 96 px images (STL-10) and 100 px become 192.
    with pytest.raises(UserError, match="with 192 px cells that allows at most 42 images"):
        preview.check_options(preview.PreviewConfig(num_images=50, cell_size=100), image_size=96)


def test_a_preview_replaces_its_own_png_but_never_a_file_it_did_not_write(tmp_path):
    # Before: preview.file_name=confusion.png in an evaluated run's folder replaced
    # evaluate's confusion matrix, and a user's own preview.png went without a word.
    config = OmegaConf.to_object(_compose(["experiment=quickstart", "preview.num_images=1",
                                           "preview.num_strong=1"]))
    path = preview.write_preview(config, tmp_path / "preview.png")
    first = path.read_bytes()
    assert preview.write_preview(config, path) == path  # a rerun replaces its own grid
    assert path.read_bytes() == first
    mine = tmp_path / "confusion.png"
    Image.new("RGB", (4, 4)).save(mine)
    before = mine.read_bytes()
    with pytest.raises(UserError, match=r"preview.file_name=preview.png: .*confusion.png already "
                                        r"exists and is a file no preview drew; choose another name"):
        preview.write_preview(config, mine)
    assert mine.read_bytes() == before
