"""The applications behind the `keras-transfer` command and the example binaries.

`image_classifier` fine-tunes an image backbone on a folder of images or a TFDS dataset,
`text_classifier` a sentence encoder on labelled text. Not imported by `keras_transfer`
itself: they need absl, and the text application KerasHub.
"""

__all__: list[str] = []
