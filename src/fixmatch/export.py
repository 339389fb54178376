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
from typing import Sequence

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
ONNX_OPSET = 17  # supported by onnxruntime >= 1.11 and torch >= 1.13


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
        input and output layouts, weights, step and source checkpoint.
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
        "checkpoint": str(trained.checkpoint_path),
    }


@torch.no_grad()
def export_model(trained: TrainedModel, file_format: str, output: Path) -> Path:
    """Write the model to `output` and its metadata to `output` with suffix .json.

    Args:
        trained: the model to export, in eval mode.
        file_format: "torchscript" (traced) or "onnx" (opset ONNX_OPSET, free batch size).
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
                                  output_names=["logits"], opset_version=ONNX_OPSET,
                                  **_any_batch_size())
        except ImportError as error:  # torch >= 2.9 exports through onnxscript
            raise UserError(f"format=onnx: {error} (pip install onnx onnxscript); "
                            "or use format=torchscript") from None
    with writing("output", output.with_suffix(".json")):
        output.with_suffix(".json").write_text(json.dumps(metadata(trained, file_format), indent=1) + "\n")
    return output


def _any_batch_size() -> dict:
    """torch.onnx.export's argument that leaves the batch dimension free: `dynamic_shapes`
    where the export goes through torch.export by default (torch >= 2.9; dynamic_axes
    there is deprecated and warns), else `dynamic_axes`."""
    dynamo = inspect.signature(torch.onnx.export).parameters.get("dynamo")
    if dynamo is not None and dynamo.default is True:
        return {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
    return {"dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}


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
            ...), or an existing model file without such metadata (config_resolved.yaml, an
            image, ...).
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
    refuse_checkpoints_folder(output, "output", "the model", trained.checkpoint_path)
    meta = output.with_suffix(".json")
    refuse_foreign_file(output, "output", "export", _is_export_metadata, target=meta)
    # An earlier export's model: the metadata written beside it says so, and the file is
    # such a model (a user's model.pth or a copied checkpoint beside an export's model.json
    # is not).
    refuse_foreign_file(output, "output", "export", lambda model: _is_export_metadata(meta)
                        and _is_exported_model(model))


def _is_exported_model(path: Path) -> bool:
    """Whether `path` is a model export wrote: an ONNX file by its extension, a TorchScript
    archive by its code/ entries (a training checkpoint is a zip without them)."""
    if path.suffix.lower() == FORMATS["onnx"]:
        return True
    return is_torchscript_archive(path)


def _is_export_metadata(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") in FORMATS and "class_names" in record


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
