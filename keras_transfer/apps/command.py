"""`keras-transfer`, the command the package installs (also `python -m keras_transfer`).

    keras-transfer train --data_dir=DIR --model_dir=OUT [--backbone=... --weights=...]
    keras-transfer train-text --data_path=FILE.tsv --model_dir=OUT
    keras-transfer predict --model_dir=OUT IMAGE_OR_FOLDER...
    keras-transfer export --model_dir=OUT --format=saved_model|tflite|onnx
    keras-transfer adapt --model_dir=OUT --target_dir=DIR --output_dir=NEW --method=tent

`keras-transfer <command> --helpshort` lists a command's flags. Errors print one line and
a hint: exit 2 for a command line that cannot be used, 1 for anything else.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

import keras_transfer
from keras_transfer.apps import _startup
from keras_transfer.apps import cli

__all__ = ["COMMANDS", "main"]

# name -> (module with the flags and `main`, one line of description)
COMMANDS = {
    "train": (
        "keras_transfer.apps.image_classifier_cli",
        "fine-tune an image classifier on a folder of images or a TFDS dataset",
    ),
    "train-text": (
        "keras_transfer.apps.text_classifier_cli",
        "fine-tune a sentence encoder on labelled text (needs the `text` extra)",
    ),
    "predict": (
        "keras_transfer.apps.predict_cli",
        "top-k classes of image files by a trained model",
    ),
    "export": (
        "keras_transfer.apps.export_cli",
        "write a trained model as a SavedModel, TFLite or ONNX file",
    ),
    "adapt": (
        "keras_transfer.apps.adapt_cli",
        "adapt a trained model to unlabeled images of a new domain (AdaBN, TENT, SHOT)",
    ),
}
# Commands whose `main` takes arguments after the flags.
_TAKE_ARGUMENTS = {"predict"}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {_startup.COMMAND_NAME} <command> [flags] [arguments]",
        "",
        f"keras_transfer {keras_transfer.__version__}: transfer learning for Keras 3.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        f"`{_startup.COMMAND_NAME} <command> --helpshort` lists a command's flags.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Runs `keras-transfer <command> ...` (`argv` as `sys.argv`, program name first)."""
    argv = list(sys.argv if argv is None else argv)
    program = _startup.COMMAND_NAME
    if len(argv) < 2 or argv[1] in ("-h", "-?", "--help", "--helpshort", "help"):
        sys.stdout.write(_usage())
        sys.exit(0 if len(argv) >= 2 else cli.EXIT_USAGE)
    if argv[1] == "--version":
        print(f"{program} {keras_transfer.__version__}")
        return
    name = argv[1]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        sys.stderr.write(
            f"{program}: error: unknown command {name!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"\n  hint: the commands are {', '.join(COMMANDS)}; `{program} --help` "
            "describes them.\n"
        )
        sys.exit(cli.EXIT_USAGE)
    # Only now, with a subcommand that needs it, is TensorFlow imported (quietly).
    _startup.quiet_tensorflow(argv)
    module = importlib.import_module(COMMANDS[name][0])
    cli.set_program(f"{program} {name}")
    cli.run(
        module.main,
        hints=getattr(module, "HINTS", None),
        argv=[f"{program} {name}", *argv[2:]],
        doc=module.__doc__,
        flags_modules=[module],
        takes_arguments=name in _TAKE_ARGUMENTS,
    )
