"""Test-set scoring of a model: top-1, top-5 and mean cross-entropy over a loader.

DDP-aware: each rank scores its shard of the test set and the counts are summed. Also the
`python -m fixmatch.evaluate checkpoint=...` command: the full report of a trained run.
"""

import csv
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.distributed import DistEnv, all_reduce_sum
from fixmatch.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    top1: float  # accuracy in percent
    top5: float  # percent; equals 100 when there are at most 5 classes
    loss: float  # mean cross-entropy
    num_images: int


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block, and in its former mode after it, also when
    the block fails: a model left in eval mode after evaluation is a bug of popular ports.

    Args:
        model: the module to switch.

    Yields:
        The same model, in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ranked_classes(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best classes of each image, best first, ties going to the lower class index.

    torch.topk breaks ties differently for different k (on the CPU, `topk(1)` and `topk(5)`
    of equal scores name different classes), so top-1, top-5, the confusion matrix and
    predict's answer all come from this one stable ranking.

    Args:
        scores: (N, C) logits or probabilities.
        k: how many classes to keep; at most C are.

    Returns:
        (N, min(k, C)) class indices.
    """
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :min(k, scores.shape[1])]


def top_k_hits(logits: torch.Tensor, targets: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(N, min(k, C)) booleans: whether each of the k best predictions is the target. Column
    0 is top-1 (`ranked_classes`), so a tie breaks the same way wherever it is counted
    (the run's `eval/top1_*` and the evaluate command agree).

    Args:
        logits: (N, C) class scores.
        targets: (N,) true class indices.
        k: how many of the best predictions to compare (at most C are).

    Returns:
        Column j is True where the (j + 1)-th best prediction is the target; `[:, 0]`
        counts top-1 hits and `.any(dim=1)` top-k hits.
    """
    return ranked_classes(logits, k) == targets[:, None]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, inputs: DeviceInputs,
             env: DistEnv = DistEnv()) -> EvalResult:
    """Score `model` on every image of `loader` in eval mode, then restore its mode.

    Args:
        model: the classifier (the EMA copy or the live model, unwrapped from DDP).
        loader: yields (uint8 images, labels); with several ranks, this rank's shard.
        inputs: moves batches to the model's device and normalises them.
        env: the ranks whose shards are summed.

    Returns:
        Accuracies and loss over the whole loader.
    """
    device = inputs.device
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    with eval_mode(model):
        for images, targets in loader:
            logits = model(inputs.images(images)).float()
            targets = inputs.targets(targets)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum")
            hits = top_k_hits(logits, targets)
            correct1 += hits[:, 0].sum()
            correct5 += hits.any(dim=1).sum()
            count += len(targets)
    totals = all_reduce_sum(torch.stack([correct1, correct5, loss_sum, count]).double(), env)
    correct1, correct5, loss_sum, count = totals.tolist()
    return EvalResult(
        top1=100.0 * correct1 / count,
        top5=100.0 * correct5 / count,
        loss=loss_sum / count,
        num_images=int(count),
    )


# --- the evaluate command --------------------------------------------------------------

@dataclass(frozen=True)
class ClassificationReport:
    top1: float  # percent
    top5: float  # percent
    per_class_accuracy: List[Optional[float]]  # percent (recall); None for a class without test images
    macro_f1: float  # mean F1 over the classes that have test images, in [0, 1]
    confusion: List[List[int]]  # [true class][predicted class] counts
    num_images: int


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, inputs: DeviceInputs) -> tuple:
    """(logits (N, C) float32, targets (N,)) of every image of `loader`, in order, eval mode.

    Args:
        model: the classifier; back in its former mode afterwards.
        loader: yields (uint8 images, labels) batches.
        inputs: moves batches to the model's device and normalises them.

    Returns:
        (logits, targets), both on the CPU, the targets as the loader gives them.
    """
    logits, targets = [], []
    with eval_mode(model):
        for images, labels in loader:
            logits.append(model(inputs.images(images)).float().cpu())
            targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def classification_report(logits: torch.Tensor, targets: torch.Tensor) -> ClassificationReport:
    """Top-1/top-5, per-class accuracy, macro F1 and the confusion matrix (top-1 counted as
    `evaluate` counts it, so the number equals the run's own `eval/top1_*`).

    Args:
        logits: (N, C) class scores of N >= 1 images.
        targets: (N,) their true class indices, in 0 .. C - 1.

    Returns:
        The report; per-class accuracy is None for a class without test images, and macro
        F1 averages over the classes that have some.
    """
    num_classes = logits.shape[1]
    top = ranked_classes(logits, 5)
    hits = top == targets[:, None]
    predicted = top[:, 0].numpy()
    truth = targets.numpy()
    confusion = np.bincount(truth * num_classes + predicted,
                            minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    per_class = [100.0 * int(c) / int(n) if n else None for c, n in zip(correct, support)]
    denominator = support + confusion.sum(axis=0)  # 2TP + FP + FN
    f1 = np.divide(2.0 * correct, denominator, out=np.zeros(num_classes), where=denominator > 0)
    count = len(targets)
    return ClassificationReport(
        top1=100.0 * int(hits[:, 0].sum()) / count,
        top5=100.0 * int(hits.any(dim=1).sum()) / count,
        per_class_accuracy=per_class,
        macro_f1=float(f1[support > 0].mean()),
        confusion=confusion.tolist(),
        num_images=count,
    )


REPORT_FILES = ("eval.json", "confusion.csv", "confusion.png")  # what write_report writes
PNG_MARK = {"Description": "fixmatch evaluate: confusion matrix"}  # a tEXt chunk of confusion.png
CSV_CORNER = "true \\ predicted"  # confusion.csv's first header cell


def write_report(report: ClassificationReport, class_names: Sequence[str], out: Path,
                 about: dict) -> List[Path]:
    """Write eval.json, confusion.csv and (with matplotlib) confusion.png into `out`.

    Args:
        report: the scores to write.
        class_names: the classes in label order: the matrix's rows and columns.
        out: the folder, created when missing; report files already there are replaced.
        about: what was scored (checkpoint, step, weights, dataset root), first in eval.json.

    Returns:
        The files written, eval.json first; confusion.png only when matplotlib is installed.
    """
    out.mkdir(parents=True, exist_ok=True)
    record = {**about, **asdict(report), "class_names": list(class_names),
              "per_class_accuracy": dict(zip(class_names, report.per_class_accuracy))}
    written = [out / "eval.json", out / "confusion.csv"]
    written[0].write_text(json.dumps(record, indent=1) + "\n")
    with written[1].open("w", newline="") as file:
        rows = csv.writer(file)
        rows.writerow([CSV_CORNER, *class_names])
        rows.writerows([name, *counts] for name, counts in zip(class_names, report.confusion))
    if _plot_confusion(report.confusion, class_names, out / "confusion.png"):
        written.append(out / "confusion.png")
    return written


def _plot_confusion(confusion: List[List[int]], class_names: Sequence[str], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: confusion.png skipped (pip install matplotlib)")
        return False
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(np.asarray(confusion), cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=90)
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if len(class_names) <= 20:  # counts stay legible up to about this many cells a row
        darkest = max(map(max, confusion)) or 1
        for row, counts in enumerate(confusion):
            for column, value in enumerate(counts):
                axes.text(column, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if value > darkest / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata=PNG_MARK)
    plt.close(figure)
    return True


def is_report_file(path: Path) -> bool:
    """Whether `path` (eval.json, confusion.csv or confusion.png) is an earlier evaluate's,
    which a rerun may replace: eval.json by its keys, confusion.csv by its header corner,
    confusion.png by the tEXt chunk written with it (or, from versions without that chunk,
    by evaluate's eval.json beside it).

    Args:
        path: an existing report file; a name other than eval.json or confusion.csv is
            checked as confusion.png.

    Returns:
        True for an earlier evaluate's file; False also when it cannot be read or parsed.
    """
    try:
        if path.name == "eval.json":
            record = json.loads(path.read_text())
            return isinstance(record, dict) and {"top1", "confusion", "class_names", "weights",
                                                 "checkpoint"} <= set(record)
        if path.name == "confusion.csv":
            with path.open(newline="") as file:
                return next(csv.reader([file.readline(65536)]), [""])[0] == CSV_CORNER
        from PIL import Image
        with Image.open(path) as image:
            if image.format != "PNG":
                return False
            marked = getattr(image, "text", {}).get("Description") == PNG_MARK["Description"]
        return marked or is_report_file(path.with_name("eval.json"))
    except (OSError, ValueError, SyntaxError):  # unreadable, not JSON / CSV text, not an image
        return False


def check_out(value: str) -> Path:
    """The folder `out=value` (created when the report is written), refused when it is a run's
    checkpoints/ folder or holds an eval.json, confusion.csv or confusion.png that no
    evaluate wrote.

    Args:
        value: out= as given.

    Returns:
        The folder, with ~ expanded; not created here.

    Raises:
        UserError: for such a folder, a file where the folder is meant or an unwritable place.
    """
    from fixmatch.trained_model import output_path, refuse_checkpoints_folder, refuse_foreign_file

    folder = Path(value).expanduser()
    refuse_checkpoints_folder(folder, "out", "the report", folder=True)  # before it is created
    folder = output_path(value, "out", folder=True)
    for name in REPORT_FILES:
        refuse_foreign_file(folder, "out", "evaluate", is_report_file, target=folder / name,
                            advice="choose another out= folder")
    return folder


def _refuse_out_inside_the_images(out: Path, dataset) -> None:
    """An image folder's dataset.root holds images in any subfolder: confusion.png written
    into test/<class>/ would be scored as a test image by the next evaluate (and trained on
    from labeled/)."""
    if dataset.name != "folder" or not dataset.root:
        return
    root = Path(dataset.root).expanduser().resolve()
    if root == out.resolve() or root in out.resolve().parents:
        raise UserError(f"out={out} lies inside dataset.root={dataset.root}, whose images would "
                        "then include the report's confusion.png; choose a folder outside it")


def _refuse_a_root_for_bundled_data(name: str, overrides: Sequence[str]) -> None:
    # Before: the digits' own test set was scored and eval.json named the root given.
    from fixmatch.data.datasets import BUNDLED_DATASETS

    given = [override for override in overrides if override.startswith("dataset.root=")]
    if given and name in BUNDLED_DATASETS:
        raise UserError(f"{given[-1]}: the checkpoint was trained on dataset {name!r}, which ships "
                        "with its package and has no files, so it is always scored on its own "
                        "test set; leave dataset.root out")


def _test_images(trained):
    """The test images of the checkpoint's dataset (or of dataset.root=...). An image folder
    is read through its test/<class>/ folders alone, labelled by the model's class names:
    labeled/ and unlabeled/ are training data, which scoring needs neither to read nor to
    agree with."""
    from fixmatch.data.datasets import load_dataset
    from fixmatch.data.image_folder import load_test_folder

    dataset = trained.config.dataset
    if dataset.name == "folder":
        return load_test_folder(dataset, trained.class_names)
    arrays = load_dataset(dataset)
    if arrays.class_names != trained.class_names:
        raise UserError(f"dataset.root={dataset.root} has the classes {arrays.class_names}, but "
                        f"{trained.checkpoint_path} was trained on {trained.class_names}; give "
                        "test data with the same class folders")
    return arrays.test


DEFAULTS = {"model": "ema", "out": "", "device": "auto"}  # out: the run folder
ABOUT = ("Scores a trained run's model on its test set, or on another with dataset.root=: top-1,\n"
         "top-5, per-class accuracy, macro F1. Writes eval.json, confusion.csv and confusion.png.")
DESCRIPTIONS = {  # --help lines beyond trained_model.SHARED_DESCRIPTIONS
    "out": "the folder for the report; by default the run folder (never its checkpoints/)",
    "dataset.*": "where the test data lives, e.g. dataset.root=/data/new_chips (the same "
                 "classes); not image_size, channels, resize, mean or std: the checkpoint's",
}


def main(argv: Sequence[str]) -> dict:
    """`checkpoint=<run dir or .pt> [model=ema|raw] [out=<dir>] [device=auto] [dataset.*=...]`
    (`--help` describes each argument).

    Args:
        argv: the command-line arguments, each key=value.

    Returns:
        The eval.json record.

    Raises:
        UserError: for bad arguments, a bad checkpoint, data whose classes differ, a
            dataset.root for a dataset that ships with its package, or an out= folder that
            is a run's checkpoints/, lies inside an image folder's dataset.root, holds report
            files evaluate did not write or cannot be written.
    """
    # Imported here: the trainer imports `evaluate` and must not pull in the app.
    from fixmatch.data.loaders import AugmentedImages, build_eval_loader
    from fixmatch.data.transforms import EvalTransform
    from fixmatch.trained_model import load_trained_model, parse_arguments, writing

    settings, overrides = parse_arguments(argv, DEFAULTS)
    out = check_out(settings["out"]) if settings["out"] else None  # before the model is loaded
    trained = load_trained_model(settings["checkpoint"], settings["model"], overrides,
                                 settings["device"])
    _refuse_a_root_for_bundled_data(trained.config.dataset.name, overrides)
    if out is not None:
        _refuse_out_inside_the_images(out, trained.config.dataset)
    test = _test_images(trained)
    test_set = AugmentedImages(test.images, test.targets, EvalTransform())
    loader = build_eval_loader(test_set, trained.config.trainer.eval_batch_size, 0,
                               trained.device.type == "cuda")
    report = classification_report(*predict_logits(trained.model, loader, trained.inputs))
    about = {"checkpoint": str(trained.checkpoint_path), "step": trained.step,
             "weights": trained.weights, "dataset_root": trained.config.dataset.root}
    out = out or check_out(str(trained.run_dir))
    with writing("out", out):
        written = write_report(report, trained.class_names, out, about)
    print(f"top-1 {report.top1:.2f} %, top-5 {report.top5:.2f} %, macro F1 {report.macro_f1:.4f} "
          f"({trained.weights} weights, step {trained.step}, {report.num_images} test images)")
    print("wrote " + ", ".join(str(path) for path in written))
    return json.loads(written[0].read_text())


def console_main() -> None:
    """The `fixmatch-evaluate` console script."""
    from fixmatch.trained_model import run_command, usage
    run_command(main, usage("evaluate", ABOUT, DEFAULTS, DESCRIPTIONS))


if __name__ == "__main__":
    console_main()
