"""What the subcommands of `keras-transfer` and the example binaries share on the command
line: one-line errors, exit codes, `--verbose`.

A failed run prints one line saying what went wrong and one hint line on stderr, not a
traceback and not the flags' help:

- exit 2: the command line cannot be used (an unknown flag, a value of the wrong type or
  out of range, an unknown backbone, a missing required flag, a stray argument;
  `absl.app.UsageError` from `main`, and `ConfigError`);
- exit 1: anything else that fails (a missing file, an error during training);
- an error with an `exit_code` attribute exits with it (`FolderLockedError`: 2, the
  model folder is in use by another run).

`--verbose` without a value (level 3: Keras' one line per epoch, plus tracebacks) or the
environment variable `KERAS_TRANSFER_DEBUG=1` prints the traceback as well.

`--helpshort` (or `--help`, `-h`) prints the program's description and its own flags.

```python
cli.define_verbose_flag(default=2, help="Keras fit verbosity ...")
if __name__ == "__main__":
    cli.run(main)
```
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging as absl_logging

__all__ = [
    "DEBUG_ENV",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "TRACEBACK_VERBOSITY",
    "configure_logging",
    "define_verbose_flag",
    "guarded",
    "run",
    "set_program",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
DEBUG_ENV = "KERAS_TRANSFER_DEBUG"
# `--verbose` with no value: Keras' one line per epoch, and the traceback of an error.
TRACEBACK_VERBOSITY = 3

FLAGS = flags.FLAGS
HELP_ARGUMENTS = ("--help", "-h", "-?", "--helpshort")

# The name errors and help are printed under; the `keras-transfer` command sets
# "keras-transfer <subcommand>".
_PROGRAM: str | None = None


class _VerbosityParser(flags.ArgumentParser):
    """0-3, where a bare `--verbose` means 3 and `--noverbose` 0."""

    def parse(self, argument: Any) -> int:
        if isinstance(argument, bool):
            return TRACEBACK_VERBOSITY if argument else 0
        text = str(argument).strip().lower()
        if text in ("true", "false"):
            return TRACEBACK_VERBOSITY if text == "true" else 0
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= TRACEBACK_VERBOSITY:
            raise ValueError(f"expected 0, 1, 2 or 3 (or --verbose alone for 3), got {argument!r}")
        return value

    def flag_type(self) -> str:
        return "int"


def define_verbose_flag(default: int, help: str) -> None:
    """Defines `--verbose`: 0 silent, 1 progress bar, 2 one line per epoch, 3 (or a bare
    `--verbose`) also a traceback for errors."""
    flags.DEFINE_flag(
        flags.Flag(
            _VerbosityParser(),
            flags.ArgumentSerializer(),
            "verbose",
            default,
            f"{help} 0: silent, 1: progress bar, 2: one line per epoch, 3 (or --verbose alone): "
            "as 2, and errors show their traceback.",
            boolean=True,
        )
    )


def set_program(name: str | None) -> None:
    """The program name of error and help messages; `None`: the script's file name."""
    global _PROGRAM
    _PROGRAM = name


def _program() -> str:
    if _PROGRAM:
        return _PROGRAM
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "example"


def _show_traceback() -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    try:
        return FLAGS["verbose"].value >= TRACEBACK_VERBOSITY
    except (KeyError, TypeError, flags.UnparsedFlagAccessError):
        return False


def _fail(message: str, hint: str, code: int) -> NoReturn:
    sys.stderr.write(f"{_program()}: error: {message}\n" + (f"  hint: {hint}\n" if hint else ""))
    sys.stderr.flush()
    sys.exit(code)


def _print_help(doc: str, modules: list[Any], short: bool = False) -> NoReturn:
    """The help of `--help` (the description, then every flag; by group where a module
    declares `FLAG_GROUPS`, `{group title: [flag names]}`) or of `--helpshort` (a module's
    `SHORT_FLAGS`, one line each)."""
    usage = f"usage: {_program()} [flags]"
    groups = {k: v for m in modules for k, v in getattr(m, "FLAG_GROUPS", {}).items()}
    short_flags = [name for m in modules for name in getattr(m, "SHORT_FLAGS", ())]
    if short and short_flags:
        first = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
        lines = [usage, first, "", "The flags most runs need (`--help` lists all, by group):"]
        lines += [_short_line(name) for name in short_flags]
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        text = (doc or "").strip()
        sections = [usage, text] if text else [usage]
        if groups:
            sections += [_group_help(title, names) for title, names in groups.items()]
        for module in [] if groups else modules:
            listed = FLAGS.module_help(module).strip()
            if listed:
                sections.append("flags:\n" + "\n".join(listed.splitlines()[1:]))
        sys.stdout.write("\n\n".join(sections) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def _short_line(name: str) -> str:
    flag = FLAGS[name]
    # The first sentence ("e.g." and "i.e." do not end one).
    sentence = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", " ".join(flag.help.split()))[0].rstrip(".")
    line = f"  --{name}={'' if flag.default is None else flag.default}: {sentence}"
    return line if len(line) <= 110 else line[:107] + "..."


def _group_help(title: str, names: list[str]) -> str:
    lines = [f"{title}:"]
    for name in names:
        flag = FLAGS[name]
        default = "" if flag.default is None else f" (default: {flag.default!r})"
        lines.append(f"  --{name}{default}")
        words, line = " ".join(flag.help.split()).split(), "   "
        for word in words:
            if len(line) + len(word) > 96:
                lines.append(line)
                line = "   "
            line += " " + word
        lines.append(line)
    return "\n".join(lines)


def _flags_parser(doc: str | None, modules: list[Any]) -> Callable[[list[str]], list[str]]:
    def parse(argv: list[str]) -> list[str]:
        if modules and any(argument in HELP_ARGUMENTS for argument in argv[1:]):
            _print_help(doc or "", modules, short="--helpshort" in argv[1:])
        try:
            return FLAGS(argv)
        except flags.Error as error:
            _fail(
                " ".join(str(error).split()),
                f"`{_program()} --helpshort` lists the flags and their values.",
                EXIT_USAGE,
            )

    return parse


def _first_line_and_rest(error: BaseException) -> tuple[str, str]:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__, ""
    return lines[0], " ".join(lines[1:])


class _PlainFormatter(logging.Formatter):
    """Messages as they are; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _RunHandler(logging.StreamHandler):
    """The handler `configure_logging` adds (once)."""


def configure_logging(verbose: int) -> None:
    """The run's own messages (`keras_transfer` logger) as plain lines on stderr (none at
    `--verbose=0`); other libraries' INFO lines (TensorFlow's SavedModel writer, absl) only
    with `--verbose`."""
    logger = logging.getLogger("keras_transfer")
    if not any(isinstance(handler, _RunHandler) for handler in logger.handlers):
        handler = _RunHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter("%(message)s"))
        logger.addHandler(handler)
    # --verbose=0 is silent: only warnings and errors.
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    if verbose < TRACEBACK_VERBOSITY:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.WARNING)


def guarded(
    main: Callable[[list[str]], Any], hints: dict[type, str], takes_arguments: bool = False
) -> Callable:
    """`main` as `run` calls it: logging configured, stray arguments refused (unless
    `takes_arguments`), and every error turned into one line, a hint and the exit code of
    the module docstring (`hints` as in `run`)."""

    def guarded_main(argv: list[str]) -> Any:
        try:
            try:
                verbose = int(FLAGS["verbose"].value)
            except (KeyError, TypeError, flags.UnparsedFlagAccessError):
                verbose = 0
            configure_logging(verbose)
            if len(argv) > 1 and not takes_arguments:
                raise app.UsageError(
                    f"unexpected argument(s) {' '.join(map(repr, argv[1:]))}: write flags as "
                    "--name=value (a bare --verbose takes no value)."
                )
            return main(argv)
        except Exception as error:  # noqa: BLE001 - the one place errors become exit codes
            code = getattr(error, "exit_code", None)
            usage = isinstance(error, app.UsageError | flags.Error) or code == EXIT_USAGE
            message, rest = _first_line_and_rest(error)
            hint = next((text for kind, text in hints.items() if isinstance(error, kind)), rest)
            if _show_traceback():
                traceback.print_exc()
            elif not usage:
                hint = (hint + " " if hint else "") + (
                    f"(--verbose or {DEBUG_ENV}=1 shows the traceback.)"
                )
            if usage and not hint:
                hint = f"`{_program()} --helpshort` lists the flags and their values."
            _fail(
                message,
                hint,
                code if isinstance(code, int) else (EXIT_USAGE if usage else EXIT_ERROR),
            )

    return guarded_main


def run(
    main: Callable[[list[str]], Any],
    hints: dict[type, str] | None = None,
    *,
    argv: list[str] | None = None,
    doc: str | None = None,
    flags_modules: list[Any] | None = None,
    takes_arguments: bool = False,
) -> None:
    """`absl.app.run(main)` with one-line errors and the exit codes of the module docstring.

    Args:
        main: the binary's `main(argv)`.
        hints: `{exception class: hint}` for errors whose own message does not say which
            flag to change (the first matching class wins); otherwise the hint is the rest
            of the error's message after its first line.
        argv: the command line, program name first; default `sys.argv`.
        doc: what `--helpshort` prints above the flags.
        flags_modules: the modules whose flags `--helpshort` lists (absl's own
            `--helpshort` lists only the main module's, and the flags live in the package).
        takes_arguments: whether `main` accepts arguments after the flags (otherwise they
            are a usage error).
    """
    app.run(
        guarded(main, dict(hints or {}), takes_arguments),
        argv=argv,
        flags_parser=_flags_parser(doc, list(flags_modules or [])),
    )
