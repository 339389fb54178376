"""What a start may do to the folder it trains in: a completed run is never called done
on data that changed under its root, and files the user put there are never overwritten."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import compose_config
from fixmatch.app import run_experiment
from fixmatch.errors import UserError

CLASSES = ("blue", "red")


def write_folder(root: Path) -> Path:
    """Two flat-colour classes: 4 labeled and 2 test images each."""
    for label, name in enumerate(CLASSES):
        colour = (30, 90, 200) if label == 0 else (200, 40, 30)
        for part, count in (("labeled", 4), ("test", 2)):
            for index in range(count):
                path = root / part / name / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), colour).save(path)
    return root


def run(root: Path, run_dir: Path) -> dict:
    return run_experiment(compose_config([
        "dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "ssl.num_labeled=4",
        "ssl.batch_size=2", "ssl.unlabeled_ratio=1", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=2", "trainer.eval_every_steps=2", "trainer.num_workers=0",
        "trainer.num_threads=2", "trainer.device=cpu"]), run_dir)


def files_of(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("change", ["class renamed", "image added"])
def test_a_completed_run_whose_data_changed_under_the_same_root_is_not_called_done(
        tmp_path, change):
    # Before: only another dataset.root was checked, so renaming a class folder (or adding
    # an image) and rerunning said "already completed; nothing to do" with the old results.
    root, run_dir = write_folder(tmp_path / "data"), tmp_path / "run"
    run(root, run_dir)
    before = files_of(run_dir)
    if change == "class renamed":
        for part in ("labeled", "test"):
            (root / part / "red").rename(root / part / "crimson")
        found = r"now has the classes \['blue', 'crimson'\], the run was trained on \['blue', 'red'\]"
    else:
        shutil.copy(root / "labeled" / "red" / "0.png", root / "labeled" / "red" / "9.png")
        found = "now has other training images than the run was trained on"
    with pytest.raises(UserError, match=found + "; use another hydra.run.dir"):
        run(root, run_dir)
    assert files_of(run_dir) == before


def test_files_the_user_put_in_the_run_folder_are_never_overwritten(tmp_path):
    # Before: a run folder with the user's own split.json and normalization.json (no run
    # in it) had both replaced by the run's.
    root, run_dir = write_folder(tmp_path / "data"), tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "split.json").write_text('{"mine": true}')
    (run_dir / "normalization.json").write_text('{"mine": true}')
    with pytest.raises(UserError, match=r"mine holds split.json, normalization.json but no run "
                                        r"\(no metrics.json\); a new run would overwrite them"):
        run(root, run_dir)
    assert sorted(files_of(run_dir)) == ["normalization.json", "split.json"]
    assert json.loads((run_dir / "split.json").read_text()) == {"mine": True}


def test_a_run_marks_its_folder_before_writing_anything_else(tmp_path, monkeypatch):
    # A run killed before its first evaluation left config, split and log without a
    # metrics.json; its rerun must still start over there, not take them for the user's.
    root, run_dir = write_folder(tmp_path / "data"), tmp_path / "run"

    def killed(self, stop):
        raise SystemExit("killed before the first step")

    with monkeypatch.context() as patch:
        patch.setattr("fixmatch.trainer.Trainer.fit", killed)
        with pytest.raises(SystemExit):
            run(root, run_dir)
    (run_dir / "metrics.json").write_text(
        json.dumps({**json.loads((run_dir / "metrics.json").read_text()), "status": "running"}))
    assert (run_dir / "split.json").exists()
    assert run(root, run_dir)["status"] == "completed"


def test_a_completed_run_whose_data_is_gone_is_still_done(tmp_path, caplog):
    # The images deleted once trained: nothing to compare with, so the run is left as it is
    # ("nothing to do"), not refused, and a sweep rerun finishes its other jobs.
    root, run_dir = write_folder(tmp_path / "data"), tmp_path / "run"
    run(root, run_dir)
    before = files_of(run_dir)
    shutil.rmtree(root)
    assert run(root, run_dir)["status"] == "completed"
    assert "cannot read dataset.root to compare it with the completed run's data" in caplog.text
    assert files_of(run_dir) == before
