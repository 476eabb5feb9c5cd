"""The `targets` of `keras_transfer.enable_lora`, and their one-line text form.

`enable_lora(targets=...)` takes `None` (the backbone's default), `"all"`, `"all_dense"`, or
a list of entries: an entry without `/` or regex syntax is a layer name, any other entry is
a regular expression searched in each layer's path (`"transformer_block_2/.*/key$"`).
`keras-transfer train --lora_targets=...` (and the `--config` key `lora_targets`) writes the
same in one string, which `parse_lora_targets` reads: the list is comma-separated, and a
comma inside `()`, `[]` or `{}` belongs to its pattern (`"block_(1|2)/.*/query$,value"`
is two entries; `"dense_{1,2}$"` one).
"""

from __future__ import annotations

import re

__all__ = ["TARGET_CHOICES", "is_path_pattern", "parse_lora_targets"]

# What `targets` accepts besides a list of layer names and patterns.
TARGET_CHOICES = ("all", "all_dense")


def is_path_pattern(target: str) -> bool:
    """Whether a `targets` entry is a layer-path pattern (it has `/` or regex syntax) rather
    than a layer name: a layer name has neither."""
    return bool(re.search(r"[/*+?\[\](){}|^$\\]", target))


def parse_lora_targets(text: str) -> str | list[str] | None:
    """`enable_lora`'s `targets` from their text form: `""` is `None` (the backbone's
    default), `"all"` and `"all_dense"` stay as they are, anything else is split at the
    commas outside brackets into a list of layer names and layer-path patterns.

    Raises:
        ValueError: an empty entry, `all` or `all_dense` inside a list, or an entry that is
            not a valid regular expression; the message names the entry.

    Example:

    ```python
    parse_lora_targets("transformer_block_(11|12)/.*/(query|value)$,dense")
    # -> ["transformer_block_(11|12)/.*/(query|value)$", "dense"]
    ```
    """
    text = text.strip()
    if not text or text in TARGET_CHOICES:
        return text or None
    entries = [entry.strip() for entry in _split_outside_brackets(text)]
    for entry in entries:
        if not entry:
            raise ValueError(
                f"lora_targets={text!r} has an empty entry: separate layer names and "
                "layer-path patterns by single commas."
            )
        if entry in TARGET_CHOICES:
            raise ValueError(
                f"lora_targets={text!r}: {entry!r} stands alone (every supported layer), not "
                "in a list of layer names."
            )
        try:
            re.compile(entry)
        except re.error as error:
            raise ValueError(
                f"lora_targets entry {entry!r} is not a valid regular expression ({error}). "
                "Write a layer name, or a pattern searched in layer paths such as "
                "'transformer_block_12/.*/(query|value)$'."
            ) from None
    return entries


def _split_outside_brackets(text: str) -> list[str]:
    entries, current, depth, escaped = [], [], 0, False
    for char in text:
        if escaped or char == "\\":
            escaped = not escaped
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    return [*entries, "".join(current)]
