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
         f"hydra.run.dir={tmp_path}", "preview.num_images=0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: preview.num_images=0 must be at least 1, preview.num_strong=4 not negative and "
        "preview.cell_size=96 positive"]


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
