"""`python -m fixmatch.export checkpoint=<...> format=torchscript|onnx [output=...]`.

Writes a trained run's model (EMA weights by default) as TorchScript or ONNX, with a
`<name>.json` beside it that holds what a user needs to feed it: class names, image size,
channels, resize rule and normalisation mean/std.
"""

import importlib.util
import inspect
import json
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from fixmatch.checkpoint import is_torchscript_archive
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
    writing,
)

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


def example_batch(trained: TrainedModel, batch_size: int = 2) -> torch.Tensor:
    """A normalised-looking random batch of the model's input shape, on its device.

    Args:
        trained: the model, whose config gives the input shape.
        batch_size: images in the batch.

    Returns:
        Standard-normal (batch_size, channels, image_size, image_size) float32 values,
        seeded with 0, so every export traces the same input.
    """
    dataset = trained.config.dataset
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, dataset.channels, dataset.image_size, dataset.image_size)
    return torch.randn(shape, generator=generator).to(trained.device)


def metadata(trained: TrainedModel, file_format: str) -> dict:
    """What the exported file's `<name>.json` records about its inputs and outputs.

    Args:
        trained: the exported model.
        file_format: "torchscript" or "onnx".

    Returns:
        The record: format, class names, image size, channels, resize rule, mean/std, the
        input and output layouts, weights, step and source checkpoint. (`export_model` makes
        format a list of both names when the same model lies beside it in both formats.)
    """
    dataset = trained.config.dataset
    return {
        "format": file_format,
        "class_names": trained.class_names,
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "resize": dataset.resize.value,
        "mean": trained.normalization.mean,  # in [0, 1] pixel units: (x / 255 - mean) / std
        "std": trained.normalization.std,
        "input": "float32 (N, channels, image_size, image_size), normalised",
        "output": "logits (N, classes)",
        "weights": trained.weights,
        "step": trained.step,
        "checkpoint": str(trained.checkpoint_path.resolve()),  # the step file, links followed
    }


@torch.no_grad()
def export_model(trained: TrainedModel, file_format: str, output: Path) -> Path:
    """Write the model to `output` and its metadata to `output` with suffix .json.

    Args:
        trained: the model to export, in eval mode.
        file_format: "torchscript" (traced) or "onnx" (one self-contained file, free batch
            size; opset 18, or 17 on torch < 2.9).
        output: the model file; its folder is created when missing.

    Returns:
        `output`.

    Raises:
        UserError: for an unknown format, onnx without the `onnx` package (or without
            onnxscript, where torch exports through it), or a TorchScript model or
            metadata file that cannot be written.
    """
    if file_format not in FORMATS:
        raise UserError(f"format={file_format} is not known; use format=torchscript or format=onnx")
    if file_format == "onnx" and importlib.util.find_spec("onnx") is None:
        # Before the output's folder is made: a refused export leaves no empty folder.
        raise UserError("format=onnx needs the onnx package (pip install onnx onnxscript); "
                        "or use format=torchscript")
    output.parent.mkdir(parents=True, exist_ok=True)
    # The file's users feed plain NCHW tensors; the weights' layout inside the file follows.
    trained.model.to(memory_format=torch.contiguous_format)
    batch = example_batch(trained)
    if file_format == "torchscript":
        # Tracing suffices: the WideResNet's forward has no data-dependent control flow.
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript deprecated; the file still loads in C++ and Python.
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
            traced = torch.jit.trace(trained.model, batch)
        # torch reports a file it cannot open as a RuntimeError ("open file failed")
        with writing("output", output, (OSError, RuntimeError)):
            traced.save(str(output))
    else:
        try:
            with writing("output", output):
                torch.onnx.export(trained.model, batch, str(output), input_names=["images"],
                                  output_names=["logits"], **_onnx_options())
        except ImportError as error:  # torch >= 2.9 exports through onnxscript
            raise UserError(f"format=onnx: {error} (pip install onnx onnxscript); "
                            "or use format=torchscript") from None
    meta, record = output.with_suffix(".json"), metadata(trained, file_format)
    described = _other_formats_described(meta, _export_record(meta), file_format)
    if described:  # the same model in the other format (check_output refused another model)
        record["format"] = sorted({file_format, *described})
    with writing("output", meta):
        meta.write_text(json.dumps(record, indent=1) + "\n")
    return output


def _onnx_options() -> dict:
    """torch.onnx.export's settings for one self-contained file with a free batch size.

    Where the export goes through torch.export by default (torch >= 2.9): opset 18, its
    lowest (asking for 17 converts the graph down and prints a traceback on the way), the
    weights inside the file (by default they go to a `<name>.onnx.data` file the model
    cannot load without), no progress lines, and `dynamic_shapes` (`dynamic_axes` is
    deprecated there). Before: opset 17 (onnxruntime >= 1.11) and `dynamic_axes`.
    """
    dynamo = inspect.signature(torch.onnx.export).parameters.get("dynamo")
    if dynamo is not None and dynamo.default is True:
        return {"opset_version": 18, "dynamic_shapes": ({0: torch.export.Dim("batch")},),
                "external_data": False, "verbose": False}
    return {"opset_version": 17, "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}


def _formats_of(record: dict) -> List[str]:
    formats = record.get("format")
    return [formats] if isinstance(formats, str) else list(formats)


def _other_formats_described(meta: Path, record: Optional[dict], file_format: str) -> List[str]:
    """The other formats whose model files `record` (an earlier export's metadata, read from
    `meta`) describes and that still lie beside it: `model.json` serves `model.pt` and
    `model.onnx` alike."""
    if record is None:
        return []
    return [other for other in _formats_of(record)
            if other != file_format and meta.with_suffix(FORMATS[other]).exists()]


def check_output(output: Path, trained: TrainedModel, suffix: str) -> None:
    """Refuse an output that would overwrite the run's own files or lose the model itself.

    Args:
        output: the model file to write.
        trained: the model; its checkpoint file is refused as the output.
        suffix: the chosen format's extension, ".pt" or ".onnx".

    Raises:
        UserError: for a .json model name (its metadata file would replace it), the other
            format's extension (a .onnx name with format=torchscript, or the reverse), a
            file in a run's checkpoints/ folder or the checkpoint itself, a <name>.json
            beside it that is not an earlier export's metadata (eval.json, metrics.json,
            ...), an existing model file without such metadata for its format
            (config_resolved.yaml, an image, a model of the user's own, ...), an ONNX name
            without .onnx, or another model under a name whose other-format file is there.
    """
    if output.suffix.lower() == ".json":
        raise UserError(f"output={output}: the metadata is written to <name>.json beside the "
                        f"model, so the model cannot be a .json file; use e.g. "
                        f"output={output.with_suffix(suffix)}")
    other = next((name for name, ending in FORMATS.items()
                  if ending != suffix and output.suffix.lower() == ending), None)
    if other is not None:  # a TorchScript file named .onnx would fail in every ONNX runtime
        chosen = next(name for name, ending in FORMATS.items() if ending == suffix)
        raise UserError(f"output={output} ends in {output.suffix}, the extension of {other}, but "
                        f"format={chosen}: use output={output.with_suffix(suffix)}, or "
                        f"format={other}")
    file_format = next(name for name, ending in FORMATS.items() if ending == suffix)
    if file_format == "onnx" and output.suffix.lower() != suffix:
        # An ONNX file is known as export's own by its extension (a rerun replaces it).
        raise UserError(f"output={output}: an ONNX model's name ends in .onnx; use "
                        f"output={output.with_name(output.name + suffix)}")
    refuse_checkpoints_folder(output, "output", "the model", trained.checkpoint_path)
    meta = output.with_suffix(".json")
    earlier = _export_record(meta)  # read once: the checks below all ask about it
    refuse_foreign_file(output, "output", "export", lambda _: earlier is not None, target=meta)
    # An earlier export's model: the metadata beside it names this format, and the file is
    # such a model (a user's model.pth, a copied checkpoint or their own model.onnx beside
    # an export's model.json is not).
    refuse_foreign_file(output, "output", "export", lambda model: earlier is not None
                        and file_format in _formats_of(earlier) and _is_exported_model(model))
    described = _other_formats_described(meta, earlier, file_format)
    if described and not _same_model(earlier, metadata(trained, file_format)):
        others = " and ".join(str(meta.with_suffix(FORMATS[other])) for other in described)
        raise UserError(f"output={output}: {meta} describes {others}, another model; give this "
                        f"one its own name (and <name>.json), e.g. "
                        f"output={_free_name(output, trained)}")


def _free_name(output: Path, trained: TrainedModel) -> Path:
    """A name beside `output` that says which model it is and that no file (or its .json)
    takes yet: `model_raw_step60.pt`, then `model_raw_step60_2.pt`, ..."""
    stem, number = f"{output.stem}_{trained.weights}_step{trained.step}", 1
    while True:
        candidate = output.with_name(f"{stem}{'' if number == 1 else f'_{number}'}{output.suffix}")
        if not (candidate.exists() or candidate.with_suffix(".json").exists()):
            return candidate
        number += 1


def _is_exported_model(path: Path) -> bool:
    """Whether `path` is a model export wrote: an ONNX file by its extension, a TorchScript
    archive by its code/ entries (a training checkpoint is a zip without them)."""
    if path.suffix.lower() == FORMATS["onnx"]:
        return True
    return is_torchscript_archive(path)


def _same_model(record: dict, other: dict) -> bool:
    """Whether two metadata records describe one model: they may differ in format and in how
    the checkpoint was named (`checkpoint=run`, `run/checkpoints/last.pt`, a relative path)."""
    def essence(meta: dict) -> dict:
        kept = {key: value for key, value in meta.items() if key not in ("format", "checkpoint")}
        return {**kept, "checkpoint": str(Path(str(meta.get("checkpoint"))).resolve())}
    return essence(record) == essence(other)


def _export_record(path: Path) -> Optional[dict]:
    """`path` read as an earlier export's metadata; None when it is not one (or unreadable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # "format" is one name, or the names of both files it serves
    if not isinstance(record, dict) or "class_names" not in record \
            or not isinstance(record.get("format"), (str, list)):
        return None
    formats = _formats_of(record)
    valid = bool(formats) and all(isinstance(name, str) and name in FORMATS for name in formats)
    return record if valid else None


DEFAULTS = {"format": "torchscript", "output": "", "model": "ema", "device": "auto"}
ABOUT = ("Writes a trained run's model as TorchScript or ONNX, and <name>.json beside it: class\n"
         "names, image size, channels, resize rule, mean/std (README: how to load and feed it).")
DESCRIPTIONS = {  # --help lines beyond trained_model.SHARED_DESCRIPTIONS
    "format": "torchscript (.pt) or onnx (.onnx; needs pip install onnx onnxscript)",
    "output": "the model file; by default <run folder>/model.pt or model.onnx (never in "
              "checkpoints/)",
    "device": "auto, cpu or cuda (where the model is traced)",
}


def main(argv: Sequence[str]) -> Path:
    """`checkpoint=... [format=torchscript|onnx] [output=<run dir>/model.pt] [model=ema|raw]
    [device=auto]` (`--help` describes each argument).

    Args:
        argv: the command-line arguments, each key=value.

    Returns:
        The model file written.

    Raises:
        UserError: for bad arguments, a bad checkpoint, or an output that `check_output`
            refuses or that cannot be written.
    """
    settings, overrides = parse_arguments(argv, DEFAULTS)
    if settings["format"] not in FORMATS:
        raise UserError(f"format={settings['format']} is not known; use torchscript or onnx")
    trained = load_trained_model(settings["checkpoint"], settings["model"], overrides,
                                 settings["device"])
    suffix = FORMATS[settings["format"]]
    output = output_path(settings["output"] or str(trained.run_dir / f"model{suffix}"), "output")
    check_output(output, trained, suffix)
    export_model(trained, settings["format"], output)
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return output


def console_main() -> None:
    """The `fixmatch-export` console script."""
    run_command(main, usage("export", ABOUT, DEFAULTS, DESCRIPTIONS))


if __name__ == "__main__":
    console_main()
