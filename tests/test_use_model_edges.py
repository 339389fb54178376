"""predict and evaluate on image folders as users' disks hold them: hidden and unsupported
files, link loops, names that are not UTF-8, a model of fixed image size, new test data
beside training folders that evaluate must not read. Every folder is generated PNGs."""

import csv
import os
import unicodedata
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from fixmatch import evaluate, predict
from fixmatch.app import build_model, run_experiment
from fixmatch.data.folder_listing import Skipped, find_images
from fixmatch.data.normalization import Normalization
from fixmatch.errors import UserError
from fixmatch.trained_model import TrainedModel

CLASSES = [unicodedata.normalize("NFC", "café"), "dog", "eel"]


def _write_png(path: Path, value: int, size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A two-step run on labeled/ + test/ with classes café (NFC), dog and eel."""
    root = tmp_path_factory.mktemp("images")
    for label, name in enumerate(CLASSES):
        for part, count in (("labeled", 4), ("test", 2)):
            for i in range(count):
                _write_png(root / part / name / f"{i}.png", 60 * (label + 1))
    run_dir = tmp_path_factory.mktemp("run")
    run_experiment(compose_config([
        "dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "ssl.num_labeled=-1",
        "ssl.batch_size=3", "ssl.unlabeled_ratio=1", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=2", "trainer.eval_every_steps=2", "trainer.num_workers=0",
        "trainer.num_threads=2", "trainer.device=cpu"]), run_dir)
    return run_dir, root


def _untrained_model(tmp_path: Path, *overrides: str) -> TrainedModel:
    config = OmegaConf.to_object(compose_config([
        "dataset=folder", f"dataset.root={tmp_path}", "model.depth=10", "model.widen_factor=1",
        *overrides]))
    torch.manual_seed(0)
    return TrainedModel(build_model(config, 2).eval(), config, ["a", "b"],
                        Normalization([0.5] * 3, [0.25] * 3, "checkpoint"), tmp_path / "x.pt",
                        tmp_path, "ema", 0, torch.device("cpu"))


# --- predict: listing ------------------------------------------------------------------

@pytest.fixture
def messy_inputs(tmp_path) -> Path:
    """Two images, and what a user's folder also holds: macOS AppleDouble files, a hidden
    thumbnails folder, a .webp, a folder link loop and a file link to itself."""
    inputs = tmp_path / "incoming"
    _write_png(inputs / "a.png", 60)
    _write_png(inputs / "sub" / "b.png", 120)
    _write_png(inputs / "._a.png", 0)
    _write_png(inputs / ".thumbnails" / "t.png", 0)
    (inputs / "c.webp").write_bytes(b"RIFF")
    os.symlink("..", inputs / "sub" / "up")
    os.symlink("self.png", inputs / "self.png")
    return inputs


def test_predict_lists_a_folder_as_training_does(messy_inputs):
    # Before: ._a.png was "unreadable", .thumbnails/t.png classified, c.webp skipped without
    # a count, and the loop crashed with "Too many levels of symbolic links".
    paths, skipped = predict.list_inputs(str(messy_inputs))
    assert paths == [messy_inputs / "a.png", messy_inputs / "sub" / "b.png"]
    training = Skipped()
    assert [name for name, _, _ in find_images(messy_inputs, training)] == ["a.png", "sub/b.png"]
    assert sorted(skipped.not_images) == sorted(f"{messy_inputs}/{name}"
                                                for name in training.not_images)
    assert sorted(skipped.not_images) == [f"{messy_inputs}/._a.png", f"{messy_inputs}/c.webp"]
    assert sorted(skipped.broken_links) == [f"{messy_inputs}/self.png", f"{messy_inputs}/sub/up"]


def test_predict_counts_what_it_skipped(folder_run, messy_inputs, tmp_path, capsys):
    run_dir, _ = folder_run
    records = predict.main([f"checkpoint={run_dir}", f"inputs={messy_inputs}",
                            f"output={tmp_path / 'p.csv'}"])
    assert len(records) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("2 images classified, 0 unreadable, 0 of the wrong size; "
                        f"wrote {tmp_path / 'p.csv'}")
    assert lines[1].startswith("skipped 2 files that are hidden or not images (.png,")
    assert lines[2].startswith("skipped 2 links that point nowhere, loop back")


# --- predict: the CSV --------------------------------------------------------------------

def test_a_name_that_is_not_utf8_gets_an_escaped_row_in_a_utf8_csv(folder_run, tmp_path, capsys):
    # Before: write_csv raised UnicodeEncodeError and left the output cut to its header.
    run_dir, _ = folder_run
    latin1 = tmp_path / "incoming" / os.fsdecode(b"caf\xe9.png")
    try:
        _write_png(latin1, 60)
    except (OSError, UnicodeError):  # macOS and Windows file systems refuse such names
        pytest.skip("this file system takes UTF-8 names only")
    output = tmp_path / "p.csv"
    predict.main([f"checkpoint={run_dir}", f"inputs={latin1.parent}", f"output={output}"])
    text = output.read_bytes().decode("utf-8")  # strict: valid UTF-8
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["path"] == f"{latin1.parent}/caf\\xe9.png" and rows[0]["predicted"] in CLASSES
    assert predict.is_predictions_file(output)


def test_a_failed_write_leaves_the_earlier_predictions_whole(tmp_path):
    output = tmp_path / "p.csv"
    good = [{"path": "a.png", "failure": "", "error": "", "predicted": "a", "confidence": 0.9,
             "top_k": [("a", 0.9)]}]
    predict.write_csv(good, 1, output)
    before = output.read_bytes()
    broken = good + [{"path": "b.png", "failure": "", "error": "", "confidence": "not a number"}]
    with pytest.raises(ValueError):
        predict.write_csv(broken, 1, output)
    assert output.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["p.csv"]  # no temporary file left


# --- predict: files it cannot classify ---------------------------------------------------

def test_a_model_of_fixed_image_size_says_which_size_it_needs(tmp_path):
    # Before: "unreadable: ... (UserError: ... set dataset.resize=resize or center_crop ...)",
    # advice that predict refuses, and an exception name in the CSV.
    trained = _untrained_model(tmp_path, "dataset.image_size=16", "dataset.resize=none")
    fits = _write_png(tmp_path / "fits.png", 60, (16, 16))
    other = _write_png(tmp_path / "other.png", 60, (40, 30))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    records = predict.predict_files(trained, [fits, other, broken], 2, 8)
    assert records[0]["failure"] == "" and records[0]["predicted"] in ("a", "b")
    assert records[1]["failure"] == predict.WRONG_SIZE and "predicted" not in records[1]
    assert records[1]["error"] == ("40x30 pixels, but this model needs 16x16 images, as it was "
                                   "trained with dataset.resize=none; resize the image to 16x16")
    assert records[2]["failure"] == predict.UNREADABLE
    assert all("Error" not in record["error"] for record in records)


def test_the_summary_counts_wrong_sizes_apart_from_unreadable_files(tmp_path, capsys):
    records = [{"path": "a.png", "failure": "", "error": ""},
               {"path": "b.png", "failure": predict.WRONG_SIZE, "error": "40x30 pixels, ..."},
               {"path": "c.png", "failure": predict.UNREADABLE, "error": "truncated"}]
    predict._print_summary(records, Skipped(), "p.csv")
    assert capsys.readouterr().out.splitlines() == [
        "1 images classified, 1 unreadable, 1 of the wrong size; wrote p.csv",
        "wrong size: b.png (40x30 pixels, ...)", "unreadable: c.png (truncated)"]


# --- evaluate ------------------------------------------------------------------------------

def test_evaluate_on_a_new_root_reads_only_its_test_folder(folder_run, tmp_path):
    # Before: labeled/ and unlabeled/ were decoded too, so a corrupt file or an extra class
    # there stopped evaluate ("has the classes [aaa, ...], but ... was trained on [...]").
    run_dir, root = folder_run
    new = tmp_path / "new"
    for label, name in enumerate(CLASSES[1:], start=1):
        for i in range(3):
            _write_png(new / "test" / name / f"{i}.png", 60 * (label + 1))
    (new / "labeled" / "aaa").mkdir(parents=True)
    (new / "labeled" / "aaa" / "x.png").write_bytes(b"corrupt")
    _write_png(new / "unlabeled" / "u.png", 5)
    record = evaluate.main([f"checkpoint={run_dir}", f"dataset.root={new}",
                            f"out={tmp_path / 'e'}"])
    assert record["num_images"] == 6 and [sum(row) for row in record["confusion"]] == [0, 3, 3]


def test_evaluate_matches_test_folders_in_either_unicode_form(folder_run, tmp_path):
    # Before: a test/ copied from macOS (decomposed "café") was not a class of the model.
    run_dir, root = folder_run
    new = tmp_path / "new"
    for name in CLASSES:
        for i in range(2):
            _write_png(new / "test" / unicodedata.normalize("NFD", name) / f"{i}.png", 60)
    record = evaluate.main([f"checkpoint={run_dir}", f"dataset.root={new}",
                            f"out={tmp_path / 'e'}"])
    assert [sum(row) for row in record["confusion"]] == [2, 2, 2]


def test_evaluate_with_an_empty_test_folder_asks_for_class_folders(folder_run, tmp_path):
    run_dir, _ = folder_run
    (tmp_path / "new" / "test").mkdir(parents=True)
    with pytest.raises(UserError, match=r"test has no class folders; expected test/<class>/\*"):
        evaluate.main([f"checkpoint={run_dir}", f"dataset.root={tmp_path / 'new'}",
                       f"out={tmp_path / 'e'}"])


def test_inputs_name_a_file_with_a_comma_and_parts_with_spaces(tmp_path):
    # Before: "inputs=a,b.jpg" was split at the comma ("inputs=b.jpg: no such file") and
    # "x.jpg, y.png" looked for " y.png".
    for name in ("a,b.png", "x.png", "y.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert predict.list_inputs(str(tmp_path / "a,b.png"))[0] == [tmp_path / "a,b.png"]
    assert predict.list_inputs(f"{tmp_path / 'x.png'}, {tmp_path / 'y.png'}")[0] == [
        tmp_path / "x.png", tmp_path / "y.png"]


def test_a_command_that_stops_on_a_mistake_leaves_no_output_folders(tmp_path):
    # Before: evaluate out=fresh/a/b and predict output=fresh/a/p.csv created their folders
    # before the missing checkpoint stopped them.
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(UserError, match="no such file or folder"):
        evaluate.main([f"checkpoint={tmp_path / 'nope'}", f"out={tmp_path / 'fresh' / 'a' / 'b'}"])
    with pytest.raises(UserError, match="no such file or folder"):
        predict.main([f"checkpoint={tmp_path / 'nope'}", f"inputs={image}",
                      f"output={tmp_path / 'fresh' / 'a' / 'p.csv'}"])
    assert not (tmp_path / "fresh").exists()


def test_evaluate_refuses_to_write_its_report_among_the_images(folder_run, tmp_path):
    # Before: out=<root>/test/<class> put confusion.png there, and the next evaluate scored
    # it as a test image (40 -> 41 images).
    run_dir, root = folder_run
    inside = Path(root) / "test" / CLASSES[0]
    before = sorted(path.name for path in inside.iterdir())
    with pytest.raises(UserError, match=r"out=.* lies inside dataset.root=.*; choose a folder "
                                        r"outside it"):
        evaluate.main([f"checkpoint={run_dir}", f"out={inside}"])
    assert sorted(path.name for path in inside.iterdir()) == before


def test_a_root_for_a_bundled_dataset_is_refused_not_ignored(tmp_path):
    # Before: a digits checkpoint with dataset.root=<anything> scored the digits' own test
    # set, and eval.json named the root it was given.
    run_dir = tmp_path / "run"
    run_experiment(compose_config(["experiment=quickstart", "trainer.total_steps=2",
                                   "trainer.eval_every_steps=2"]), run_dir)
    with pytest.raises(UserError, match=r"^dataset.root=/data/chips: the checkpoint was trained "
                                        r"on dataset 'digits', which ships with its package"):
        evaluate.main([f"checkpoint={run_dir}", "dataset.root=/data/chips", f"out={tmp_path}/e"])
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("argument,message", [
    ("top_k=0", "top_k=0 must be at least 1"),  # before: named batch_size=256 as wrong too
    ("batch_size=two", "batch_size=two must be a whole number (at least 1)"),
])
def test_predict_names_only_the_setting_that_is_wrong(tmp_path, argument, message):
    with pytest.raises(UserError) as caught:
        predict.main([f"checkpoint={tmp_path}", f"inputs={tmp_path}", argument])
    assert str(caught.value) == message
