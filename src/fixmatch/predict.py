"""`python -m fixmatch.predict checkpoint=<...> inputs=<folder or files> output=predictions.csv`.

Classifies image files with a trained run's model, listing folders as training does
(folder_listing.find_images), decoding them exactly as its training images were
(image_folder.decode_image: size, channels, resize rule) and normalising with the
checkpoint's mean/std. Unreadable files and files of the wrong size get a row with the
reason, never stop the run.
"""

import csv
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from fixmatch.data.folder_listing import IMAGE_EXTENSIONS, Skipped, find_images
from fixmatch.data.image_folder import (
    UNREADABLE_IMAGE_ERRORS,
    Preprocessing,
    WrongImageSize,
    decode_image,
    unreadable_reason,
)
from fixmatch.data.transforms import EvalTransform
from fixmatch.atomic_files import replaced_atomically
from fixmatch.errors import UserError
from fixmatch.evaluate import ranked_classes
from fixmatch.trained_model import (
    TrainedModel,
    load_trained_model,
    output_path,
    parse_arguments,
    refuse_checkpoints_folder,
    refuse_foreign_file,
    run_command,
    usage,
    writing,
)

DEFAULTS = {"inputs": "", "output": "predictions.csv", "top_k": "5", "batch_size": "256",
            "model": "ema", "device": "auto"}
REQUIRED = ("checkpoint", "inputs")
ABOUT = ("Classifies image files with a trained run's model, decoded and normalised as its\n"
         "training images were; writes one CSV row per file: the predicted class and the top-k.")
DESCRIPTIONS = {  # --help lines beyond trained_model.SHARED_DESCRIPTIONS
    "inputs": "a folder (searched recursively for images, as training reads a class folder) "
              "or comma-separated image files",
    "output": "the CSV file to write; never over a file that predict did not write",
    "top_k": "how many classes, with their probabilities, each row lists",
    "batch_size": "images per forward pass",
}


UNREADABLE = "unreadable"  # a record's "failure": Pillow cannot decode the file
WRONG_SIZE = "wrong size"  # not the size of a model trained with dataset.resize=none


def list_inputs(inputs: str) -> Tuple[List[Path], Skipped]:
    """The image files that `inputs=` names, and what listing its folders skipped: a folder
    is listed as training lists a class folder (image extensions only, hidden entries
    skipped, linked folders read once; sorted), comma-separated files are taken as given,
    whatever their extension.

    Args:
        inputs: inputs= as given: a file or folder, or comma-separated files and folders.

    Returns:
        (the image files in the order named, each folder's sorted; what listing skipped).

    Raises:
        UserError: when `inputs` names nothing, a named file or folder does not exist, or a
            folder has no images or cannot be listed.
    """
    paths = _named_paths(inputs)
    if not paths:
        raise UserError("inputs=... must name a folder or image files (comma-separated)")
    found: List[Path] = []
    skipped = Skipped()
    for path in paths:
        if path.is_dir():
            # Named from the folder as given (os.path.join adds the one "/"), for the CSV.
            images = [Path(name) for name, _, _ in
                      find_images(path, skipped, prefix=os.path.join(path, ""))]
            if not images:
                raise UserError(f"inputs={path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                "in it (hidden files and folders are not read)")
            found += images
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"inputs={path}: no such file or folder")
    return found, skipped


def _named_paths(inputs: str) -> List[Path]:
    """The paths of `inputs=`: one path when it exists as written (a file named "a,b.jpg"),
    else its comma-separated parts, without the spaces around them."""
    whole = Path(inputs.strip()).expanduser()
    if inputs.strip() and whole.exists():
        return [whole]
    return [Path(part.strip()).expanduser() for part in inputs.split(",") if part.strip()]


def _decode(paths: Sequence[Path], prep: Preprocessing
            ) -> Tuple[List[Optional[np.ndarray]], List[Tuple[str, str]]]:
    """Decoded images (None where not) and (failure, reason) pairs (("", "") where decoded)."""
    images, failures = [], []
    for path in paths:
        try:
            images.append(decode_image(path, prep))
            failures.append(("", ""))
        except WrongImageSize as error:
            images.append(None)
            failures.append((WRONG_SIZE, _wrong_size_reason(error)))
        except UNREADABLE_IMAGE_ERRORS as error:
            images.append(None)
            failures.append((UNREADABLE, unreadable_reason(error)))
    return images, failures


def _wrong_size_reason(error: WrongImageSize) -> str:
    # Not the error's own text: its advice (set dataset.resize=...) is for training; predict
    # takes the preprocessing from the checkpoint, so only the images can change.
    (width, height), side = error.size, error.side
    return (f"{width}x{height} pixels, but this model needs {side}x{side} images, as it was "
            f"trained with dataset.resize=none; resize the image to {side}x{side}")


@torch.no_grad()
def predict_files(trained: TrainedModel, paths: Sequence[Path], top_k: int,
                  batch_size: int) -> List[dict]:
    """One record per file: path, predicted class, confidence, the top-k, or the failure
    (UNREADABLE or WRONG_SIZE) and its reason ("error").

    Args:
        trained: the model with its preprocessing.
        paths: image files.
        top_k: how many classes (and softmax probabilities) to list per image.
        batch_size: images per forward pass.

    Returns:
        The records in the order of `paths`, each with "path", "failure" and "error" (both
        "" when decoded); a decoded file's also with "predicted", "confidence" and "top_k"
        ((class name, probability) pairs, at most one per class).
    """
    dataset = trained.config.dataset
    prep = Preprocessing(dataset.image_size, dataset.channels, dataset.resize)
    transform, inputs = EvalTransform(), trained.inputs
    top_k = min(top_k, len(trained.class_names))
    records = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, failures = _decode(chunk, prep)
        readable = [image for image in images if image is not None]
        if readable:
            batch = inputs.images(torch.stack([transform(image) for image in readable]))
            logits = trained.model(batch).float().cpu()
            # ranked on the logits, as evaluate ranks them: softmax can round near-equal
            # logits to equal probabilities
            indices = ranked_classes(logits, top_k)
            values = logits.softmax(dim=1).gather(1, indices)
        row = 0
        for path, image, (failure, error) in zip(chunk, images, failures):
            record = {"path": str(path), "failure": failure, "error": error}
            if image is not None:
                names = [trained.class_names[i] for i in indices[row].tolist()]
                record.update(predicted=names[0], confidence=float(values[row, 0]),
                              top_k=list(zip(names, values[row].tolist())))
                row += 1
            records.append(record)
    return records


def csv_header(top_k: int) -> List[str]:
    """path, predicted, confidence, class_1, probability_1, ..., class_k, probability_k, error.

    Args:
        top_k: the number of ranked (class, probability) column pairs, k.

    Returns:
        The 4 + 2·k column names.
    """
    header = ["path", "predicted", "confidence"]
    for rank in range(1, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    return header + ["error"]


def shown_path(path: str) -> str:
    """`path` as UTF-8 text: a name whose bytes are not UTF-8 (a Latin-1 "caf\\xe9.png" on
    Linux) shows its odd bytes as \\xNN escapes, where printing it would fail.

    Args:
        path: a file name as Python holds it (surrogate-escaped where its bytes are not UTF-8).

    Returns:
        The name as printable text.
    """
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def write_csv(records: Sequence[dict], top_k: int, path: Path) -> None:
    """One row per file under csv_header(top_k), as UTF-8 (paths through shown_path).

    Written to a temporary file beside `path` and renamed over it, so a failure leaves an
    earlier predictions file whole rather than cut short.

    Args:
        records: `predict_files` records, one row each.
        top_k: the ranked column pairs; a record with fewer leaves the rest empty.
        path: the CSV file (through a link, its target is replaced); its folder is created
            when missing.
    """
    target = path.resolve()  # through a link, as writing to `path` itself would
    target.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: any other text with such bytes (a reason) keeps the file UTF-8 too.
    with replaced_atomically(target, "w", newline="", encoding="utf-8",
                             errors="backslashreplace") as file:
        rows = csv.writer(file)
        rows.writerow(csv_header(top_k))
        rows.writerows(_csv_row(record, top_k) for record in records)


def _csv_row(record: dict, top_k: int) -> List[str]:
    cells = [shown_path(record["path"]), record.get("predicted", ""),
             f"{record['confidence']:.6f}" if "confidence" in record else ""]
    ranked = record.get("top_k", [])
    for rank in range(top_k):
        cells += [ranked[rank][0], f"{ranked[rank][1]:.6f}"] if rank < len(ranked) else ["", ""]
    return cells + [record["error"]]


def is_predictions_file(path: Path) -> bool:
    """Whether `path` starts with the header write_csv writes (any top_k): an earlier
    predict's output, which a rerun may replace.

    Args:
        path: an existing file.

    Returns:
        True for an earlier predictions CSV; False also when the file cannot be read.
    """
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

    Args:
        output: the CSV file to write.
        inputs: the image files to classify.

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


def _count_setting(settings: dict, key: str) -> int:
    """A whole-number setting of at least 1; a mistake names only the setting that is wrong."""
    try:
        value = int(settings[key])
    except ValueError:
        raise UserError(f"{key}={settings[key]} must be a whole number (at least 1)") from None
    if value < 1:
        raise UserError(f"{key}={value} must be at least 1")
    return value


def main(argv: Sequence[str]) -> List[dict]:
    """`checkpoint=... inputs=... [output=predictions.csv] [top_k=5] [batch_size=256]
    [model=ema|raw] [device=auto]` (`--help` describes each argument).

    Args:
        argv: the command-line arguments, each key=value.

    Returns:
        The `predict_files` records, one per input file.

    Raises:
        UserError: for bad arguments, a bad checkpoint, missing inputs, or an output that
            would overwrite a file predict did not write or cannot be written.
    """
    settings, overrides = parse_arguments(argv, DEFAULTS, REQUIRED)
    top_k, batch_size = (_count_setting(settings, key) for key in ("top_k", "batch_size"))
    output = output_path(settings["output"], "output")
    paths, skipped = list_inputs(settings["inputs"])
    check_output(output, paths)  # before the model is loaded: the cheap mistakes first
    trained = load_trained_model(settings["checkpoint"], settings["model"], overrides,
                                 settings["device"])
    records = predict_files(trained, paths, top_k, batch_size)
    top_k = min(top_k, len(trained.class_names))
    with writing("output", output):
        write_csv(records, top_k, output)
    _print_summary(records, skipped, settings["output"])
    return records


def _print_summary(records: Sequence[dict], skipped: Skipped, output: str) -> None:
    """What was classified, what was not and why (the first ten), what listing skipped."""
    failed = [record for record in records if record["failure"]]
    wrong_size = sum(record["failure"] == WRONG_SIZE for record in failed)
    print(f"{len(records) - len(failed)} images classified, {len(failed) - wrong_size} "
          f"unreadable, {wrong_size} of the wrong size; wrote {output}")
    for record in failed[:10]:
        print(f"{record['failure']}: {shown_path(record['path'])} ({record['error']})")
    if skipped.not_images:
        print(f"skipped {len(skipped.not_images)} files that are hidden or not images "
              f"({', '.join(IMAGE_EXTENSIONS)}), e.g. "
              + ", ".join(map(shown_path, skipped.not_images[:3])))
    if skipped.broken_links:
        print(f"skipped {len(skipped.broken_links)} links that point nowhere, loop back to a "
              "folder above them or lead to a folder already read, e.g. "
              + ", ".join(map(shown_path, skipped.broken_links[:3])))


def console_main() -> None:
    """The `fixmatch-predict` console script."""
    run_command(main, usage("predict", ABOUT, DEFAULTS, DESCRIPTIONS, REQUIRED))


if __name__ == "__main__":
    console_main()
