"""`python -m fixmatch.predict checkpoint=<...> inputs=<folder or files> output=predictions.csv`.

Classifies image files with a trained run's model, decoding them exactly as its training
images were (image_folder.decode_image: size, channels, resize rule) and normalising with
the checkpoint's mean/std. Unreadable files get a row with the reason, never stop the run.
"""

import csv
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import UnidentifiedImageError

from fixmatch.data.image_folder import IMAGE_EXTENSIONS, Preprocessing, decode_image
from fixmatch.data.image_folder import UNREADABLE_IMAGE_ERRORS as UNREADABLE_IMAGE  # what Pillow raises
from fixmatch.data.transforms import EvalTransform
from fixmatch.errors import UserError
from fixmatch.trained_model import (
    TrainedModel,
    load_trained_model,
    output_path,
    parse_arguments,
    refuse_checkpoints_folder,
    refuse_foreign_file,
    run_command,
    usage,
)

DEFAULTS = {"inputs": "", "output": "predictions.csv", "top_k": "5", "batch_size": "256",
            "model": "ema", "device": "auto"}
REQUIRED = ("checkpoint", "inputs")
ABOUT = ("Classifies image files with a trained run's model, decoded and normalised as its\n"
         "training images were; writes one CSV row per file: the predicted class and the top-k.")
DESCRIPTIONS = {  # --help lines beyond trained_model.SHARED_DESCRIPTIONS
    "inputs": "a folder (searched recursively for images) or comma-separated image files",
    "output": "the CSV file to write; never over a file that predict did not write",
    "top_k": "how many classes, with their probabilities, each row lists",
    "batch_size": "images per forward pass",
}


def list_inputs(inputs: str) -> List[Path]:
    """The image files that `inputs=` names: a folder (searched recursively, image extensions
    only, sorted) or comma-separated files (taken as given, whatever their extension).

    Raises:
        UserError: when a named file or folder does not exist or a folder has no images.
    """
    paths = [Path(part).expanduser() for part in inputs.split(",") if part]
    if not paths:
        raise UserError("inputs=... must name a folder or image files (comma-separated)")
    found: List[Path] = []
    for path in paths:
        if path.is_dir():
            images = sorted(file for file in path.rglob("*") if file.is_file()
                            and file.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise UserError(f"inputs={path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
            found += images
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"inputs={path}: no such file or folder")
    return found


def _decode(paths: Sequence[Path], prep: Preprocessing) -> Tuple[List[np.ndarray], List[str]]:
    """Decoded images (None where unreadable) and the reasons ("" where readable)."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(decode_image(path, prep))
            errors.append("")
        except UnidentifiedImageError:
            images.append(None)
            errors.append("not an image file that Pillow can identify")
        except (UNREADABLE_IMAGE + (UserError,)) as error:  # UserError: resize=none, wrong size
            images.append(None)
            errors.append(f"{type(error).__name__}: {error}")
    return images, errors


@torch.no_grad()
def predict_files(trained: TrainedModel, paths: Sequence[Path], top_k: int,
                  batch_size: int) -> List[dict]:
    """One record per file: path, predicted class, confidence, the top-k, or the error.

    Args:
        trained: the model with its preprocessing.
        paths: image files.
        top_k: how many classes (and softmax probabilities) to list per image.
        batch_size: images per forward pass.
    """
    dataset = trained.config.dataset
    prep = Preprocessing(dataset.image_size, dataset.channels, dataset.resize)
    transform, inputs = EvalTransform(), trained.inputs
    top_k = min(top_k, len(trained.class_names))
    records = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, errors = _decode(chunk, prep)
        readable = [image for image in images if image is not None]
        if readable:
            batch = inputs.images(torch.stack([transform(image) for image in readable]))
            probabilities = trained.model(batch).float().softmax(dim=1).cpu()
            values, indices = probabilities.topk(top_k, dim=1)
        row = 0
        for path, image, error in zip(chunk, images, errors):
            record = {"path": str(path), "error": error}
            if image is not None:
                names = [trained.class_names[i] for i in indices[row].tolist()]
                record.update(predicted=names[0], confidence=float(values[row, 0]),
                              top_k=list(zip(names, values[row].tolist())))
                row += 1
            records.append(record)
    return records


def csv_header(top_k: int) -> List[str]:
    """path, predicted, confidence, class_1, probability_1, ..., class_k, probability_k, error."""
    header = ["path", "predicted", "confidence"]
    for rank in range(1, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    return header + ["error"]


def write_csv(records: Sequence[dict], top_k: int, path: Path) -> None:
    """One row per file under csv_header(top_k)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        rows = csv.writer(file)
        rows.writerow(csv_header(top_k))
        for record in records:
            cells = [record["path"], record.get("predicted", ""),
                     f"{record['confidence']:.6f}" if "confidence" in record else ""]
            ranked = record.get("top_k", [])
            for rank in range(top_k):
                cells += [ranked[rank][0], f"{ranked[rank][1]:.6f}"] if rank < len(ranked) else ["", ""]
            rows.writerow(cells + [record["error"]])


def is_predictions_file(path: Path) -> bool:
    """Whether `path` starts with the header write_csv writes (any top_k): an earlier
    predict's output, which a rerun may replace."""
    try:
        with path.open("rb") as file:
            first = file.readline(4096).decode("utf-8", errors="replace").rstrip("\r\n")
    except OSError:
        return False
    cells = first.split(",")
    top_k = (len(cells) - 4) // 2
    return top_k >= 1 and cells == csv_header(top_k)


def check_output(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that would overwrite a file predict did not write: a checkpoint,
    the run's config or metrics, an input image or any other file.

    Raises:
        UserError: for a file in a run's checkpoints/ folder, one of the inputs, or an
            existing file that is not an earlier predictions CSV.
    """
    refuse_checkpoints_folder(output, "output", "the predictions")
    resolved = output.resolve()
    if any(resolved == path.resolve() for path in inputs):
        raise UserError(f"output={output} is one of the inputs, which it would overwrite; "
                        "write the predictions elsewhere, e.g. output=predictions.csv")
    refuse_foreign_file(output, "output", "predict", is_predictions_file)


def main(argv: Sequence[str]) -> List[dict]:
    """`checkpoint=... inputs=... [output=predictions.csv] [top_k=5] [batch_size=256]
    [model=ema|raw] [device=auto]` (`--help` describes each argument).

    Raises:
        UserError: for bad arguments, a bad checkpoint or missing inputs.
    """
    settings, overrides = parse_arguments(argv, DEFAULTS, REQUIRED)
    try:
        top_k, batch_size = int(settings["top_k"]), int(settings["batch_size"])
    except ValueError:
        raise UserError(f"top_k={settings['top_k']} and batch_size={settings['batch_size']} "
                        "must be whole numbers") from None
    if top_k < 1 or batch_size < 1:
        raise UserError(f"top_k={top_k} and batch_size={batch_size} must be at least 1")
    output = output_path(settings["output"], "output")
    paths = list_inputs(settings["inputs"])
    check_output(output, paths)  # before the model is loaded: the cheap mistakes first
    trained = load_trained_model(settings["checkpoint"], settings["model"], overrides,
                                 settings["device"])
    records = predict_files(trained, paths, top_k, batch_size)
    top_k = min(top_k, len(trained.class_names))
    write_csv(records, top_k, output)
    bad = [record for record in records if record["error"]]
    print(f"{len(records) - len(bad)} images classified, {len(bad)} unreadable; "
          f"wrote {settings['output']}")
    for record in bad[:10]:
        print(f"unreadable: {record['path']} ({record['error']})")
    return records


def console_main() -> None:
    """The `fixmatch-predict` console script."""
    run_command(main, usage("predict", ABOUT, DEFAULTS, DESCRIPTIONS, REQUIRED))


if __name__ == "__main__":
    console_main()
