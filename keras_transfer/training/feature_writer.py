"""The writer behind `extraction.extract_features`: feature batches in memory, streamed to
raw files on disk once they exceed a byte budget, read back as memory maps."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import keras
import numpy as np

from keras_transfer.utils import reliability

__all__ = ["FeatureWriter"]


class FeatureWriter:
    """Keeps feature batches in memory, spilling to raw files past a byte budget.

    Labels may be a structure (a dict by head name for multi-task models): each leaf is
    kept, or written to its own file, and the structure is rebuilt at the end.
    """

    def __init__(self, cache_dir, max_memory_bytes: int, expected_batches: int | None = None):
        self.cache_dir = cache_dir
        self.max_memory_bytes = max_memory_bytes
        self.expected_batches = expected_batches
        self.num_batches = 0
        self.batches: list[tuple[np.ndarray, list[np.ndarray]]] = []
        self.structure = None
        self.bytes = 0
        self.num_examples = 0
        self.path = None
        self.files = None
        self.shapes = None

    def add(self, features: np.ndarray, labels: Any) -> None:
        """Keeps one batch, spilling everything to disk once past the memory budget."""
        features = features.astype(np.float32, copy=False)
        leaves = [np.asarray(leaf) for leaf in keras.tree.flatten(labels)]
        shapes = (features.shape[1:], tuple((leaf.shape[1:], leaf.dtype) for leaf in leaves))
        if self.shapes is None:
            self.shapes = shapes
            self.structure = labels
        elif shapes != self.shapes:
            raise ValueError(
                f"Batches differ in feature/label shape or label dtype: {self.shapes} then "
                f"{shapes}. Use one image size for the whole dataset."
            )
        self.num_examples += len(features)
        self.num_batches += 1
        if self.files is None:
            self.batches.append((features, leaves))
            self.bytes += features.nbytes
            if self.bytes > self.max_memory_bytes:
                self._spill()
        else:
            self.write(features, leaves)

    def _spill(self) -> None:
        parent = tempfile.gettempdir() if self.cache_dir is None else os.fspath(self.cache_dir)
        os.makedirs(parent, exist_ok=True)
        # Bytes per example so far, times the examples expected (or at least those held).
        per_example = (
            sum(f.nbytes + sum(leaf.nbytes for leaf in y) for f, y in self.batches)
            / self.num_examples
        )
        batches = max(self.expected_batches or 0, self.num_batches)
        expected = self.num_examples * batches / self.num_batches
        reliability.check_free_space(parent, int(per_example * expected), "the feature cache")
        # A folder of its own: another extraction into `cache_dir` (which may still be
        # memory-mapped by an earlier `CachedFeatures`) never shares its files.
        self.path = tempfile.mkdtemp(prefix="keras_transfer_features_", dir=parent)
        self.files = (
            open(os.path.join(self.path, "features.f32"), "wb"),
            *[
                open(os.path.join(self.path, f"labels_{i}.bin"), "wb")
                for i in range(len(self.shapes[1]))
            ],
        )
        for features, labels in self.batches:
            self.write(features, labels)
        self.batches = []

    def write(self, features: np.ndarray, leaves: list[np.ndarray]) -> None:
        """Appends one batch to the files: the features, then each label leaf."""
        for file, array in zip(self.files, [features, *leaves], strict=True):
            file.write(np.ascontiguousarray(array).tobytes())

    def delete(self) -> None:
        """Closes and deletes the files of an extraction that did not finish."""
        for file in self.files or ():
            file.close()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def finish(self) -> tuple[np.ndarray, Any, str | None]:
        """`(features, labels, folder)`: arrays in memory (folder `None`) or memory maps."""
        if self.shapes is None:
            raise ValueError("The dataset is empty: there are no features to extract.")
        feature_shape, label_specs = self.shapes
        if self.files is None:
            features = np.concatenate([f for f, _ in self.batches])
            leaves = [
                np.concatenate([y[i] for _, y in self.batches]) for i in range(len(label_specs))
            ]
            return features, keras.tree.pack_sequence_as(self.structure, leaves), None
        for file in self.files:
            file.close()
        features = np.memmap(
            os.path.join(self.path, "features.f32"),
            dtype=np.float32,
            mode="r",
            shape=(self.num_examples, *feature_shape),
        )
        leaves = [
            np.memmap(
                os.path.join(self.path, f"labels_{i}.bin"),
                dtype=label_dtype,
                mode="r",
                shape=(self.num_examples, *label_shape),
            )
            for i, (label_shape, label_dtype) in enumerate(label_specs)
        ]
        return features, keras.tree.pack_sequence_as(self.structure, leaves), self.path
