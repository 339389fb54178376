"""Using a trained run: the evaluate, predict and export commands on a tiny CIFAR run."""

import csv
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fixmatch import evaluate, export, predict
from fixmatch.app import build_model, run_experiment
from fixmatch.checkpoint import CheckpointError, CheckpointStore
from fixmatch.data.datasets import load_dataset
from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.data.image_folder import Preprocessing, Resize, decode_image
from fixmatch.data.normalization import Normalization
from fixmatch.data.transforms import EvalTransform
from fixmatch.errors import UserError
from fixmatch.trained_model import TrainedModel, load_trained_model

from conftest import compose_config, tiny_cifar_overrides, write_cifar10


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_class=20, test_per_class=10)
    run_dir = tmp_path_factory.mktemp("run")
    # EMA warm-up makes the averaged weights follow training, so the score is not the init's.
    overrides = tiny_cifar_overrides(root, "trainer.total_steps=4", "optim.ema_warmup=true",
                                     "optim.lr=0.1")
    summary = run_experiment(compose_config(overrides), run_dir)
    last_eval = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if "eval/top1_ema" in line][-1]
    return run_dir, root, {**summary, **last_eval}


def test_evaluate_computes_the_logits_the_run_evaluated_bit_for_bit(trained_run):
    # The run evaluated a channels-last model (trainer.channels_last, the default); before,
    # evaluate and predict used NCHW, whose sums round differently: where two classes nearly
    # tied, evaluate's top-1 differed from the run's own.
    run_dir, _, _ = trained_run
    trained = load_trained_model(str(run_dir))
    assert trained.config.trainer.channels_last
    as_run = build_model(trained.config, len(trained.class_names)).eval()
    as_run.load_state_dict(trained.model.state_dict())
    as_run = as_run.to(memory_format=torch.channels_last)
    run_inputs = DeviceInputs(trained.normalization, torch.device("cpu"), channels_last=True)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(trained.model(trained.inputs.images(images)),
                           as_run(run_inputs.images(images)))


def test_evaluate_reproduces_the_runs_final_accuracy(trained_run, tmp_path):
    run_dir, _, summary = trained_run
    record = evaluate.main([f"checkpoint={run_dir}", f"out={tmp_path}"])
    assert record["top1"] == summary["top1_ema_final"] == summary["eval/top1_ema"]
    assert record["top5"] == summary["eval/top5_ema"]
    assert record["weights"] == "ema" and record["step"] == 4 and record["num_images"] == 100
    assert sum(map(sum, record["confusion"])) == 100
    if importlib.util.find_spec("matplotlib") is not None:  # optional for users
        assert (tmp_path / "confusion.png").stat().st_size > 0
    with (tmp_path / "confusion.csv").open() as file:
        rows = list(csv.reader(file))
    assert rows[0][1:] == record["class_names"] and [row[0] for row in rows[1:]] == record["class_names"]
    assert 0.0 <= record["macro_f1"] <= 1.0


def test_classification_report_by_hand():
    # true 0,0,1,2 ; predicted 0,1,1,1 (class 3 has no test images)
    logits = torch.tensor([[9., 1, 0, 0], [0, 9, 1, 0], [0, 9, 1, 0], [0, 9, 0, 1]])
    report = evaluate.classification_report(logits, torch.tensor([0, 0, 1, 2]))
    assert report.top1 == 50.0 and report.top5 == 100.0
    assert report.confusion == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert report.per_class_accuracy == [50.0, 100.0, 0.0, None]
    # F1: class 0 2/3, class 1 2·1/(2·1+2+0) = 1/2, class 2 0; class 3 has no images
    assert report.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_evaluate_skips_the_png_without_matplotlib(trained_run, tmp_path, monkeypatch, caplog):
    run_dir, _, _ = trained_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    evaluate.main([f"checkpoint={run_dir}", f"out={tmp_path}"])
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "confusion.csv").is_file()
    assert not (tmp_path / "confusion.png").exists() and "matplotlib is not installed" in caplog.text


def test_evaluate_writes_next_to_the_run_and_takes_a_pt_file(trained_run, tmp_path):
    # A copy: the run folder the other tests share stays as training left it.
    run_dir = Path(shutil.copytree(trained_run[0], tmp_path / "run", symlinks=True))
    summary = trained_run[2]
    record = evaluate.main([f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", "model=raw"])
    assert record["weights"] == "raw" and record["top1"] == summary["eval/top1_raw"]
    assert json.loads((run_dir / "eval.json").read_text())["weights"] == "raw"


def _write_pngs(folder: Path, count: int) -> list:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 28, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_writes_one_row_per_image_and_lists_unreadable_ones(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    images = _write_pngs(tmp_path / "images", 5)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "predictions.csv"
    predict.main([f"checkpoint={run_dir}", f"inputs={tmp_path / 'images'}", f"output={output}",
                  "top_k=3", "batch_size=2"])
    with output.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6
    by_path = {Path(row["path"]).name: row for row in rows}
    assert by_path["broken.png"]["error"] and not by_path["broken.png"]["predicted"]
    for path in images:
        row = by_path[path.name]
        assert row["error"] == "" and row["predicted"] == row["class_1"]
        assert float(row["confidence"]) == pytest.approx(float(row["probability_1"]))
        assert float(row["probability_1"]) >= float(row["probability_2"]) >= float(row["probability_3"])


def test_predict_matches_the_evaluated_model(trained_run, tmp_path):
    """A test image written as PNG gets the class the evaluate path predicts for it."""
    run_dir, root, _ = trained_run
    trained = load_trained_model(str(run_dir))
    test = load_dataset(trained.config.dataset).test
    folder = tmp_path / "test_images"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(test.images[i]).save(folder / f"{i}.png")
    records = predict.predict_files(trained, sorted(folder.iterdir(), key=lambda p: int(p.stem)), 1, 3)
    transform = EvalTransform()
    with torch.no_grad():
        logits = trained.model(trained.inputs.images(torch.stack([transform(image) for image in test.images[:8]])))
    expected = [trained.class_names[i] for i in logits.argmax(dim=1).tolist()]
    assert [record["predicted"] for record in records] == expected


def test_predict_decodes_files_as_image_folder_training_does(tmp_path):
    """Grayscale, center-cropped, non-square RGB files: the same tensors as training's."""
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    for pool, count in (("labeled", 2), ("test", 3)):
        for name in ("a", "b"):
            (root / pool / name).mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(14, 30)), int(rng.integers(14, 30)))
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / pool / name / f"{i}.png")
    config = OmegaConf.to_object(compose_config([
        "dataset=folder", f"dataset.root={root}", "dataset.channels=1", "dataset.image_size=12",
        "dataset.resize=center_crop", "model.depth=10", "model.widen_factor=1"]))
    torch.manual_seed(0)
    trained = TrainedModel(build_model(config, 2).eval(), config, ["a", "b"],
                           Normalization([0.4], [0.2], "checkpoint"), tmp_path / "x.pt",
                           tmp_path, "ema", 0, torch.device("cpu"))
    arrays = load_dataset(config.dataset)
    files = [path for name in arrays.class_names for path in sorted((root / "test" / name).iterdir())]
    records = predict.predict_files(trained, files, 2, 4)
    transform = EvalTransform()
    with torch.no_grad():
        expected = trained.model(trained.inputs.images(
            torch.stack([transform(image) for image in arrays.test.images])))
    probabilities = expected.softmax(dim=1)
    assert [record["confidence"] for record in records] == pytest.approx(
        probabilities.max(dim=1).values.tolist(), abs=1e-6)


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fixmatch.evaluate",
                             f"checkpoint={tmp_path / 'nowhere'}"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: checkpoint=")


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        evaluate.main([f"checkpoint={corrupt}"])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a fixmatch checkpoint"):
        predict.main([f"checkpoint={foreign}", f"inputs={foreign}"])
    with pytest.raises(CheckpointError, match="no checkpoints"):
        evaluate.main([f"checkpoint={tmp_path}"])


def test_evaluate_on_another_root_with_the_same_classes(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    other = write_cifar10(tmp_path / "other", train_per_class=2, test_per_class=3, seed=5)
    record = evaluate.main([f"checkpoint={run_dir}", f"dataset.root={other}", f"out={tmp_path}"])
    assert record["num_images"] == 30 and record["dataset_root"] == str(other)


def test_predict_command_refuses_a_foreign_file_in_one_line(tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"model": {}}, foreign)
    result = subprocess.run([sys.executable, "-m", "fixmatch.predict", f"checkpoint={foreign}",
                             f"inputs={foreign}"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "not a fixmatch checkpoint" in result.stderr


def test_data_with_other_classes_is_refused(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    other = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    meta = other / "cifar-10-batches-py" / "batches.meta"
    names = [f"class_{i}" for i in range(10)]
    meta.write_bytes(pickle.dumps({"label_names": names}))
    with pytest.raises(UserError, match="was trained on"):
        evaluate.main([f"checkpoint={run_dir}", f"dataset.root={other}", f"out={tmp_path / 'o'}"])


def test_bad_arguments_are_one_line(trained_run):
    run_dir, _, _ = trained_run
    with pytest.raises(UserError, match="unknown setting"):
        evaluate.main([f"checkpoint={run_dir}", "modle=raw"])
    with pytest.raises(UserError, match="model=best"):
        evaluate.main([f"checkpoint={run_dir}", "model=best"])
    with pytest.raises(UserError, match="only dataset"):
        evaluate.main([f"checkpoint={run_dir}", "optim.lr=1"])
    with pytest.raises(UserError, match="inputs=... must be given"):
        predict.main([f"checkpoint={run_dir}"])


@pytest.fixture(scope="module")
def torchscript_export(trained_run, tmp_path_factory):
    """The run's model exported as <folder>/model.pt and model.json (tracing takes seconds)."""
    return export.main([f"checkpoint={trained_run[0]}", "format=torchscript",
                        f"output={tmp_path_factory.mktemp('export') / 'model.pt'}"])


def test_torchscript_export_round_trips(trained_run, torchscript_export):
    run_dir, _, _ = trained_run
    output = torchscript_export
    meta = json.loads(output.with_suffix(".json").read_text())
    assert meta["image_size"] == 32 and meta["channels"] == 3 and len(meta["class_names"]) == 10
    assert meta["resize"] == "resize" and len(meta["mean"]) == 3 and meta["weights"] == "ema"
    trained = load_trained_model(str(run_dir))
    batch = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(output))(batch), trained.model(batch))


def test_onnx_export_without_the_onnx_package_says_what_is_missing(trained_run, tmp_path,
                                                                    monkeypatch):
    run_dir, _, _ = trained_run
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnx" else real_find_spec(name, *args))
    with pytest.raises(UserError, match=r"needs the onnx package \(pip install onnx onnxscript\)"):
        export.main([f"checkpoint={run_dir}", "format=onnx",
                     f"output={tmp_path / 'new' / 'model.onnx'}"])
    assert not (tmp_path / "new").exists()  # before: an empty folder stayed behind


def test_onnx_export_round_trips(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    arguments = [f"checkpoint={run_dir}", "format=onnx", f"output={tmp_path / 'new' / 'model.onnx'}"]
    pytest.importorskip("onnx")  # the dev extra installs it; users may not have it
    onnxruntime = pytest.importorskip("onnxruntime")
    output = export.main(arguments)
    batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = load_trained_model(str(run_dir)).model(batch).numpy()
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": batch.numpy()})[0], expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("override", ["dataset.image_size=64", "dataset.channels=1",
                                      "dataset.resize=center_crop", "dataset.mean=[0.5,0.5,0.5]"])
def test_what_the_model_was_trained_to_see_cannot_be_overridden(trained_run, tmp_path, override):
    # Before: dataset.channels=1 blamed the checkpoint ("its weights do not fit the model of
    # its config"), and dataset.image_size=64 evaluated and predicted at a size never trained on.
    run_dir, _, _ = trained_run
    key = override.partition("=")[0]
    with pytest.raises(UserError, match=f"the model was trained on {key}(=| computed from)"):
        evaluate.main([f"checkpoint={run_dir}", override, f"out={tmp_path}"])
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(UserError, match=f"the model was trained on {key}(=| computed from)"):
        predict.main([f"checkpoint={run_dir}", f"inputs={image}", override,
                      f"output={tmp_path / 'p.csv'}"])
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "p.csv").exists()


def test_the_value_a_model_was_trained_with_may_be_given_again(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    size = OmegaConf.load(run_dir / "config_resolved.yaml").dataset.image_size
    plain = evaluate.main([f"checkpoint={run_dir}", f"out={tmp_path / 'plain'}"])
    again = evaluate.main([f"checkpoint={run_dir}", f"dataset.image_size={size}",
                           f"out={tmp_path / 'again'}"])
    assert again["confusion"] == plain["confusion"] and again["top1"] == plain["top1"]


def test_output_places_that_cannot_be_written_are_one_line(trained_run, tmp_path):
    # Before: each of these was a traceback (IsADirectoryError, FileExistsError, RuntimeError).
    run_dir, _, _ = trained_run
    (tmp_path / "a_file").write_text("")
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(UserError, match="out=.* is a file"):
        evaluate.main([f"checkpoint={run_dir}", f"out={tmp_path / 'a_file'}"])
    with pytest.raises(UserError, match="output=.* is a folder"):
        predict.main([f"checkpoint={run_dir}", f"inputs={image}", f"output={tmp_path}"])
    with pytest.raises(UserError, match="output=.* is a folder"):
        export.main([f"checkpoint={run_dir}", f"output={tmp_path}"])
    with pytest.raises(UserError, match="cannot create"):
        export.main([f"checkpoint={run_dir}", f"output={tmp_path / 'a_file' / 'model.pt'}"])
    result = subprocess.run([sys.executable, "-m", "fixmatch.predict", f"checkpoint={run_dir}",
                             f"inputs={image}", f"output={tmp_path}"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_export_never_overwrites_the_runs_files_or_its_own_model(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    before = {path: path.read_bytes() for path in [*checkpoints, run_dir / "metrics.json"]}
    for output, message in [(checkpoints[-1], "checkpoints/ folder"),
                            (run_dir / "checkpoints" / "model.pt", "checkpoints/ folder"),
                            (run_dir / "metrics.pt", "would overwrite .*metrics.json"),
                            (tmp_path / "model.json", "cannot be a .json file"),
                            # before: a TorchScript file written under an ONNX name
                            (tmp_path / "model.onnx", r"ends in .onnx, the extension of onnx, but "
                                                      r"format=torchscript: use output=.*model.pt, "
                                                      r"or format=onnx")]:
        with pytest.raises(UserError, match=message):
            export.main([f"checkpoint={run_dir}", f"output={output}"])
    assert {path: path.read_bytes() for path in before} == before
    assert not (run_dir / "checkpoints" / "model.pt").exists()
    # An earlier export's model and metadata are replaced, as asked.
    output = tmp_path / "model.pt"
    export.main([f"checkpoint={run_dir}", f"output={output}"])
    assert export.main([f"checkpoint={run_dir}", f"output={output}"]) == output
    # But not a file of the user's beside an export's model.json (before: model.pth and a
    # copied training checkpoint were replaced, since only the .json beside them was read).
    for name, content in [("model.pth", b"my own weights"), ("model.pt", checkpoints[-1].read_bytes())]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=r"already exists and no export wrote it"):
            export.main([f"checkpoint={run_dir}", f"output={tmp_path / name}"])
        assert (tmp_path / name).read_bytes() == content


def test_an_exported_model_given_as_checkpoint_is_named_as_one(trained_run, tmp_path, capsys):
    # Before: torch's warning (two lines) and "unreadable (Cannot use weights_only=True with
    # TorchScript archives ...)", a paragraph about a setting the user never chose.
    run_dir, _, _ = trained_run
    model = export.main([f"checkpoint={run_dir}", f"output={tmp_path / 'model.pt'}"])
    capsys.readouterr()
    with pytest.raises(UserError, match=r"is an exported model \(TorchScript\), not a training "
                                        r"checkpoint; give the run folder or one of its "
                                        r"checkpoints/step_\*.pt"):
        evaluate.main([f"checkpoint={model}"])
    assert "Warning" not in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_before_any_work(trained_run, tmp_path,
                                                                        monkeypatch):
    # Before: a traceback (PermissionError) once every image was classified: os.access says
    # yes to root on a read-only mount, so only a real write tells.
    run_dir, _, _ = trained_run
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (90, 40, 200)).save(image)
    real_write = Path.write_bytes

    def read_only(path, data):
        if path.parent == tmp_path / "ro":
            raise PermissionError(13, "Permission denied")
        return real_write(path, data)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(UserError, match=r"output=.*ro/p.csv: cannot write in .*ro \(Permission "
                                        r"denied\); choose a writable place"):
        predict.main([f"checkpoint={run_dir}", f"inputs={image}",
                      f"output={tmp_path / 'ro' / 'p.csv'}"])


def test_evaluate_on_a_folder_that_holds_only_test_images(tmp_path):
    # README: "python -m fixmatch.evaluate checkpoint=outputs/run dataset.root=/data/new_chips".
    # Before: new data without labeled/ (or train/) was refused ("no folder 'labeled/' or
    # 'train/'"), so scoring new chips meant copying training images next to them.
    names = ["cat", "dog", "eel"]
    root = tmp_path / "images"
    for label, name in enumerate(names):
        for part, count in (("labeled", 4), ("test", 2)):
            for i in range(count):
                path = root / part / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (12, 10), 60 * (label + 1)).save(path)
    run_dir = tmp_path / "run"
    run_experiment(compose_config([
        "dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "ssl.num_labeled=-1",
        "ssl.batch_size=3", "ssl.unlabeled_ratio=1", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=2", "trainer.eval_every_steps=2", "trainer.num_workers=0",
        "trainer.num_threads=2", "trainer.device=cpu"]), run_dir)
    new = tmp_path / "new"
    shutil.copytree(root / "test" / "dog", new / "test" / "dog")  # one class is enough
    shutil.copytree(root / "test" / "eel", new / "test" / "eel")
    record = evaluate.main([f"checkpoint={run_dir}", f"dataset.root={new}", f"out={tmp_path / 'e'}"])
    assert record["num_images"] == 4 and record["class_names"] == names
    assert [sum(row) for row in record["confusion"]] == [0, 2, 2]  # labelled by the model's classes
    same = evaluate.main([f"checkpoint={run_dir}", f"out={tmp_path / 'e2'}"])
    assert same["confusion"][1:] == record["confusion"][1:]
    (new / "test" / "fox").mkdir()
    with pytest.raises(UserError, match="test/fox is not a class the model was trained on"):
        evaluate.main([f"checkpoint={run_dir}", f"dataset.root={new}", f"out={tmp_path / 'e3'}"])
    shutil.rmtree(new / "test" / "fox")
    (new / "test" / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*bad.png"):
        evaluate.main([f"checkpoint={run_dir}", f"dataset.root={new}", f"out={tmp_path / 'e4'}"])
    skipped = evaluate.main([f"checkpoint={run_dir}", f"dataset.root={new}",
                             "dataset.skip_bad_images=true", f"out={tmp_path / 'e5'}"])
    assert skipped["num_images"] == 4


def test_device_cuda_without_cuda_names_the_commands_own_setting(trained_run, monkeypatch):
    # Before: "trainer.device=cuda but no CUDA device is visible", a key these commands refuse.
    run_dir, _, _ = trained_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^device=cuda but no CUDA device is visible; use device=auto"):
        evaluate.main([f"checkpoint={run_dir}", "device=cuda"])


def test_a_skipped_checkpoint_is_a_warning_line(trained_run, tmp_path):
    # Before: the commands set up no logging, so the fallback printed as a bare line.
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir, symlinks=True)
    newest = max((run_dir / "checkpoints").glob("step_*.pt"))
    newest.write_bytes(newest.read_bytes()[:1000])
    result = subprocess.run([sys.executable, "-m", "fixmatch.export", f"checkpoint={run_dir}",
                             f"output={tmp_path / 'model.pt'}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: checkpoint {newest} is unreadable: "), lines
    assert lines[0].endswith("; trying the one before it"), lines


def test_predict_never_overwrites_files_it_did_not_write(trained_run, tmp_path):
    # Before: any output= was replaced with CSV text, exit 0: a checkpoint, last.pt (written
    # through into the newest step file), metrics.json, config_resolved.yaml, an input image.
    run_dir, _, _ = trained_run
    images = _write_pngs(tmp_path / "images", 2)
    notes = tmp_path / "notes.csv"
    notes.write_text("path,label\na.png,cat\n")
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    kept = [*checkpoints, run_dir / "metrics.json", run_dir / "config_resolved.yaml", notes, *images]
    before = {path: path.read_bytes() for path in kept}
    for output, message in [
            (checkpoints[-1], r"^output=.*step_\d+\.pt is in a run's checkpoints/ folder \(or is "
                              r"the checkpoint itself\), which it could overwrite; write the "
                              r"predictions elsewhere$"),
            (run_dir / "checkpoints" / "last.pt", "is in a run's checkpoints/ folder"),
            (run_dir / "checkpoints" / "predictions.csv", "is in a run's checkpoints/ folder"),
            (run_dir / "checkpoints" / "sub" / "p.csv", "is in a run's checkpoints/ folder"),
            (run_dir / "metrics.json", r"^output=.*metrics\.json already exists and no predict "
                                       r"wrote it; choose another name$"),
            (run_dir / "config_resolved.yaml", "config_resolved.yaml already exists and no predict"),
            (notes, r"^output=.*notes\.csv already exists and no predict wrote it"),
            (images[0], r"^output=.*image_0\.png is one of the inputs, which it would overwrite; "
                        r"write the predictions elsewhere")]:
        with pytest.raises(UserError, match=message):
            predict.main([f"checkpoint={run_dir}", f"inputs={tmp_path / 'images'}",
                          f"output={output}"])
    assert {path: path.read_bytes() for path in kept} == before
    assert not (run_dir / "checkpoints" / "predictions.csv").exists()
    result = subprocess.run([sys.executable, "-m", "fixmatch.predict", f"checkpoint={run_dir}",
                             f"inputs={images[0]}", f"output={run_dir / 'metrics.json'}"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "error: output=" in result.stderr, result.stderr


def test_predict_replaces_its_own_earlier_output(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    _write_pngs(tmp_path / "images", 3)
    output = tmp_path / "images" / "predictions.csv"  # beside the inputs: not an image, not read
    arguments = [f"checkpoint={run_dir}", f"inputs={tmp_path / 'images'}", f"output={output}"]
    predict.main(arguments + ["top_k=2"])
    assert predict.is_predictions_file(output)
    predict.main(arguments + ["top_k=2"])  # the same command again
    records = predict.main(arguments)  # another top_k: another header, still predict's
    with output.open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == predict.csv_header(5) and len(rows) == 1 + len(records) == 4


def test_export_refuses_an_existing_file_that_no_export_wrote(trained_run, tmp_path):
    # Before: only <name>.json was checked, so output=config_resolved.yaml or an image was
    # replaced by the model.
    run_dir, _, _ = trained_run
    config = run_dir / "config_resolved.yaml"
    image = _write_pngs(tmp_path / "images", 1)[0]
    before = {path: path.read_bytes() for path in (config, image)}
    with pytest.raises(UserError, match=r"^output=.*config_resolved\.yaml already exists and no "
                                        r"export wrote it; choose another name$"):
        export.main([f"checkpoint={run_dir}", f"output={config}"])
    with pytest.raises(UserError, match="image_0.png already exists and no export wrote it"):
        export.main([f"checkpoint={run_dir}", f"output={image}"])
    assert {path: path.read_bytes() for path in before} == before


def test_unreadable_checkpoints_get_advice_that_fits_the_command(trained_run, tmp_path):
    # Before: evaluate, predict and export advised "set trainer.resume=false", a setting
    # they do not have.
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir, symlinks=True)
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"\x00garbage")
    result = subprocess.run([sys.executable, "-m", "fixmatch.evaluate", f"checkpoint={run_dir}"],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: no readable checkpoint in {run_dir / 'checkpoints'}")
    assert error.endswith("; give checkpoint= a .pt file that loads (another run's, or a copy of "
                          "this one's), or train the run again"), error
    assert "trainer.resume" not in result.stderr
    with pytest.raises(CheckpointError, match="give checkpoint= a .pt file that loads"):
        predict.main([f"checkpoint={run_dir}", f"inputs={_write_pngs(tmp_path / 'in', 1)[0]}",
                      f"output={tmp_path / 'p.csv'}"])
    with pytest.raises(CheckpointError, match="give checkpoint= a .pt file that loads"):
        export.main([f"checkpoint={run_dir}", f"output={tmp_path / 'model.pt'}"])
    # Training's own advice is unchanged: it can start fresh.
    with pytest.raises(CheckpointError, match="set trainer.resume=false to start fresh"):
        CheckpointStore(run_dir / "checkpoints", keep=1).newest_valid()


def test_evaluate_never_writes_into_checkpoints_or_over_files_it_did_not_write(trained_run,
                                                                               tmp_path):
    # Before: out=<run>/checkpoints put eval.json and confusion.* among the checkpoints, and
    # an eval.json, confusion.csv or confusion.png that evaluate did not write was replaced.
    run_dir, _, _ = trained_run
    checkpoints = run_dir / "checkpoints"
    listed = sorted(path.name for path in checkpoints.iterdir())
    with pytest.raises(UserError, match=r"^out=.*checkpoints is a run's checkpoints/ folder \(or "
                                        r"lies in one\), which holds only its checkpoints; write "
                                        r"the report elsewhere \(leave out= off for the run "
                                        r"folder\)$"):
        evaluate.main([f"checkpoint={run_dir}", f"out={checkpoints}"])
    with pytest.raises(UserError, match="checkpoints/ folder \\(or lies in one\\)"):
        evaluate.main([f"checkpoint={run_dir}", f"out={checkpoints / 'sub'}"])  # was accepted
    with pytest.raises(UserError, match="is a run's checkpoints/ folder"):
        evaluate.main([f"checkpoint={run_dir}", f"out={tmp_path / 'new' / 'checkpoints'}"])
    assert sorted(path.name for path in checkpoints.iterdir()) == listed
    assert not (tmp_path / "new" / "checkpoints").exists()  # refused before it was created
    foreign = {"eval.json": b'{"accuracy": 0.9}\n', "confusion.csv": b"a,b\n1,2\n"}
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    foreign["confusion.png"] = buffer.getvalue()
    for name, content in foreign.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(content)
        with pytest.raises(UserError, match=rf"^out=.* would overwrite .*{name}, which no evaluate "
                                            r"wrote; choose another out= folder$"):
            evaluate.main([f"checkpoint={run_dir}", f"out={folder}"])
        assert (folder / name).read_bytes() == content and len(list(folder.iterdir())) == 1
    # Its own earlier report is replaced, beside files it leaves alone (a run's metrics.json),
    # and so is a confusion.png of a version that did not mark it, beside its eval.json.
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"top1_ema_final": 1}\n')
    evaluate.main([f"checkpoint={run_dir}", f"out={folder}"])
    assert all(evaluate.is_report_file(folder / name) for name in ("eval.json", "confusion.csv"))
    (folder / "confusion.png").write_bytes(foreign["confusion.png"])
    record = evaluate.main([f"checkpoint={run_dir}", f"out={folder}", "model=raw"])
    assert json.loads((folder / "eval.json").read_text()) == record and record["weights"] == "raw"
    assert (folder / "metrics.json").read_text() == '{"top1_ema_final": 1}\n'
    if importlib.util.find_spec("matplotlib") is not None:
        assert (folder / "confusion.png").read_bytes() != foreign["confusion.png"]
        assert evaluate.is_report_file(folder / "confusion.png")


@pytest.mark.parametrize("command, flag", [(evaluate, "--help"), (predict, "--help"),
                                           (export, "-h")])
def test_help_lists_each_argument_with_its_default(command, flag, monkeypatch, capsys):
    # Before: "error: --help: arguments are key=value", exit 2, and no usage anywhere.
    name = command.__name__.rpartition(".")[2]
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "checkpoint=x", flag])
    with pytest.raises(SystemExit) as exit_:
        command.console_main()
    printed = capsys.readouterr()
    assert exit_.value.code == 0 and printed.err == ""
    assert printed.out.startswith(f"usage: python -m fixmatch.{name} checkpoint=... ")
    for key, default in command.DEFAULTS.items():
        assert f"  {key}={default or '...'} " in printed.out, key
    assert max(map(len, printed.out.splitlines())) <= 100


def test_an_argument_without_equals_points_to_help():
    with pytest.raises(UserError, match=r"^-x: arguments are key=value .*; --help lists them$"):
        evaluate.main(["-x"])


def _readme_snippets() -> list:
    """The python blocks of README's "Use a trained model" section: preprocessing,
    TorchScript, ONNX."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use a trained model: evaluate, predict, export\n")[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0], re.S)
    assert len(blocks) == 3, "README: expected the preprocessing, TorchScript and ONNX snippets"
    return blocks


def _snippet_images(folder: Path) -> list:
    """The files the README snippet names: a JPEG turned by its EXIF orientation, a gray PNG."""
    rng = np.random.default_rng(4)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(rng.integers(0, 255, (40, 28, 3), dtype=np.uint8)).save(folder / "cat.jpg",
                                                                          exif=exif)
    Image.fromarray(rng.integers(0, 255, (9, 20), dtype=np.uint8)).save(folder / "dog.png")
    return [folder / "cat.jpg", folder / "dog.png"]


def _predicted_probabilities(trained, paths) -> np.ndarray:
    records = predict.predict_files(trained, paths, len(trained.class_names), len(paths))
    return np.array([[dict(record["top_k"])[name] for name in trained.class_names]
                     for record in records])


def test_readme_snippet_runs_the_torchscript_export_as_predict_does(trained_run, tmp_path,
                                                                   torchscript_export, monkeypatch):
    run_dir, _, _ = trained_run
    prepare, torchscript, _ = _readme_snippets()
    for name in ("model.pt", "model.json"):  # the files the snippet names, as export wrote them
        shutil.copy(torchscript_export.with_name(name), tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = _snippet_images(tmp_path)
    namespace = {}
    exec(prepare, namespace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(torchscript, namespace)
    # README: the one warning it may print is TorchScript's deprecation.
    assert all(issubclass(w.category, FutureWarning) and "`torch.jit.load` is deprecated"
               in str(w.message) for w in caught), [str(w.message) for w in caught]
    expected = _predicted_probabilities(load_trained_model(str(run_dir)), paths)
    np.testing.assert_allclose(namespace["probabilities"], expected, atol=1e-5)


def test_readme_snippet_runs_the_onnx_export_as_predict_does(trained_run, tmp_path, monkeypatch):
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("format=onnx needs the onnx package")
    pytest.importorskip("onnxruntime")
    run_dir, _, _ = trained_run
    prepare, _, onnx_snippet = _readme_snippets()
    monkeypatch.chdir(tmp_path)
    paths = _snippet_images(tmp_path)
    export.main([f"checkpoint={run_dir}", "format=onnx", "output=made/model.onnx"])
    # The two files are the whole model (before: its weights were in a model.onnx.data file
    # that a model shipped without failed to load).
    assert sorted(path.name for path in (tmp_path / "made").iterdir()) == ["model.json", "model.onnx"]
    for name in ("model.json", "model.onnx"):
        shutil.copy(tmp_path / "made" / name, tmp_path / name)
    namespace = {}
    exec(prepare + onnx_snippet, namespace)
    expected = _predicted_probabilities(load_trained_model(str(run_dir)), paths)
    np.testing.assert_allclose(namespace["probabilities"], expected, atol=1e-5)


def test_readme_preprocessing_matches_predict_for_gray_center_crops(tmp_path, monkeypatch):
    """The snippet's other branches: 1 channel, center_crop of a large and of a short image,
    a 16-bit file (before: the snippet clipped it at 255, so SAR chips were misclassified)."""
    prepare = _readme_snippets()[0]
    monkeypatch.chdir(tmp_path)
    paths = _snippet_images(tmp_path)
    wide = np.random.default_rng(5).integers(0, 65535, (9, 20)).astype(np.uint16)
    Image.fromarray(wide).save(paths[1])
    assert Image.open(paths[1]).mode.startswith("I;16")
    meta = {"image_size": 12, "channels": 1, "resize": "center_crop", "mean": [0.4], "std": [0.2]}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    namespace = {}
    exec(prepare, namespace)
    prep = Preprocessing(12, 1, Resize.center_crop)
    images = torch.stack([EvalTransform()(decode_image(path, prep)) for path in paths])
    inputs = DeviceInputs(Normalization([0.4], [0.2], "checkpoint"), torch.device("cpu"))
    np.testing.assert_allclose(namespace["batch"], inputs.images(images).numpy(), atol=1e-5)


def test_evaluation_leaves_the_model_in_its_mode_even_when_it_fails():
    # Before: an error during evaluation (out of memory, a bad batch) left the live model
    # in eval mode, so training would have gone on with frozen BatchNorm statistics.
    model = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="bad batch"):
        with evaluate.eval_mode(model):
            assert not model.training
            raise RuntimeError("bad batch")
    assert model.training
    with evaluate.eval_mode(model.eval()):
        pass
    assert not model.training


def test_top_k_hits_by_hand_with_k_capped_at_the_classes():
    # Row 1 ranks its classes 1, 2, 0, so its target 2 is its second guess.
    hits = evaluate.top_k_hits(torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), torch.tensor([0, 2]))
    assert hits.tolist() == [[True, False, False], [False, True, False]]  # k = 5, capped at 3
    # Six classes: the least likely one is outside the top 5.
    hits = evaluate.top_k_hits(torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]), torch.tensor([5]))
    assert hits.shape == (1, 5) and not hits.any()


def test_tied_scores_give_one_top1_whatever_k_ties_to_the_lower_class():
    # Ten classes, the even ones tied: torch.topk(1) and topk(5) named different classes here.
    logits = torch.zeros(4, 10)
    logits[:, ::2] = 1.0
    assert evaluate.ranked_classes(logits, 1)[:, 0].tolist() == [0] * 4
    assert evaluate.ranked_classes(logits, 5).tolist() == [[0, 2, 4, 6, 8]] * 4
    assert evaluate.ranked_classes(logits, 50).shape == (4, 10)
    # the report's top-1 and its confusion matrix's diagonal count the same predictions
    report = evaluate.classification_report(logits, torch.tensor([0, 0, 2, 1]))
    assert report.top1 == 50.0 and report.top5 == 75.0
    assert [row[0] for row in report.confusion[:3]] == [2, 1, 1]


def test_both_formats_of_one_model_share_its_json_and_another_model_is_refused(
        trained_run, tmp_path, capfd):
    pytest.importorskip("onnx")
    run_dir, _, _ = trained_run
    export.main([f"checkpoint={run_dir}", f"output={tmp_path / 'model.pt'}"])
    export.main([f"checkpoint={run_dir}", "format=onnx", f"output={tmp_path / 'model.onnx'}"])
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["format"] == ["onnx", "torchscript"] and record["weights"] == "ema"
    assert "Traceback" not in capfd.readouterr().err  # before: torch's opset conversion printed one
    # Again in one format: still both files' metadata; the raw weights under that name: refused.
    export.main([f"checkpoint={run_dir}", f"output={tmp_path / 'model.pt'}"])
    assert json.loads((tmp_path / "model.json").read_text())["format"] == ["onnx", "torchscript"]
    with pytest.raises(UserError, match=r"model.json describes .*model.onnx, another model; give "
                                        r"this one its own name .*output=.*model_raw_step\d+.pt$"):
        export.main([f"checkpoint={run_dir}", "model=raw", f"output={tmp_path / 'model.pt'}"])
    assert json.loads((tmp_path / "model.json").read_text())["weights"] == "ema"
    # The same model named another way is the same model (before: refused as another).
    newest = os.path.relpath(run_dir / "checkpoints" / "last.pt")
    export.main([f"checkpoint={newest}", "format=onnx", f"output={tmp_path / 'model.onnx'}"])
    # Once the other file is gone, the name is free again.
    (tmp_path / "model.onnx").unlink()
    export.main([f"checkpoint={run_dir}", "model=raw", f"output={tmp_path / 'model.pt'}"])
    record = json.loads((tmp_path / "model.json").read_text())
    assert (record["format"], record["weights"]) == ("torchscript", "raw")


def test_export_never_replaces_a_users_own_model_beside_its_metadata(trained_run, tmp_path):
    # Before: an export-written model.json beside made any model.onnx / model.pt "export's own".
    pytest.importorskip("onnx")
    run_dir, _, _ = trained_run
    export.main([f"checkpoint={run_dir}", f"output={tmp_path / 'model.pt'}"])
    (tmp_path / "model.onnx").write_bytes(b"my own onnx model")
    with pytest.raises(UserError, match=r"model.onnx already exists and no export wrote it"):
        export.main([f"checkpoint={run_dir}", "format=onnx", f"output={tmp_path / 'model.onnx'}"])
    assert (tmp_path / "model.onnx").read_bytes() == b"my own onnx model"
    with pytest.raises(UserError, match=r"output=.*mymodel: an ONNX model's name ends in \.onnx; "
                                        r"use output=.*mymodel\.onnx$"):
        export.main([f"checkpoint={run_dir}", "format=onnx", f"output={tmp_path / 'mymodel'}"])


def test_a_run_folder_that_is_itself_named_checkpoints_is_used_in_place(trained_run, tmp_path,
                                                                        monkeypatch):
    # Before: checkpoint= looked for step files in the run folder itself, and every default
    # output there was refused as "in a run's checkpoints/ folder".
    run_dir = tmp_path / "x" / "checkpoints"
    shutil.copytree(trained_run[0], run_dir, symlinks=True)
    record = evaluate.main([f"checkpoint={run_dir}"])
    assert record["top1"] == trained_run[2]["top1_ema_final"] and (run_dir / "eval.json").exists()
    assert export.main([f"checkpoint={run_dir}"]) == run_dir / "model.pt"
    holder = tmp_path / "checkpoints"  # a folder only named so: it holds runs
    shutil.copytree(trained_run[0], holder / "run1", symlinks=True)
    images = _write_pngs(tmp_path / "images", 2)
    monkeypatch.chdir(holder)
    predict.main(["checkpoint=run1", f"inputs={images[0].parent}", "output=p.csv"])
    assert (holder / "p.csv").exists()
