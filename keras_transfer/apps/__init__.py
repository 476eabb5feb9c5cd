"""The applications behind the `keras-transfer` command (`command`, also
`python -m keras_transfer`) and the example binaries in `examples/`.

`image_classifier` fine-tunes an image backbone on a folder of images or a TFDS dataset
(its steps in `image_config`, `image_plan`, `image_model`, `image_training`,
`image_diagnostics`, `image_reports`), `text_classifier` a sentence encoder on labelled
text, and `zero_shot_text` classifies text by label descriptions and a few examples with
that encoder; `predict`, `export` and `adapt` (source-free adaptation to a new domain) use a
trained model folder. Each `*_cli` module holds one
subcommand's absl flags and `main`; `cli` is what they share (one-line errors, exit codes,
`--verbose`), `config` reads `--config` files. `import keras_transfer` does not import these
modules (its lazy surface has no app in it); the text application also needs KerasHub (the
`text` extra).
"""

__all__: list[str] = []
