"""The writer behind `extraction.extract_features`: feature batches in memory, streamed to
raw files on disk once they exceed a byte budget, read back as memory maps (or, in a
remote `cache_dir` such as `gs://...`, where there are none, as `FileRows`)."""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import keras
import numpy as np

from keras_transfer.utils import files
from keras_transfer.utils import reliability

__all__ = ["FeatureWriter", "FileRows"]


class FileRows:
    """The rows of a raw array file, read through `files.open_file` on demand: what a
    memory map is to a local file, for a remote one (`gs://...`). `rows[indices]` reads
    those rows only (consecutive ones in one read); `np.asarray(rows)` reads them all.

    Args:
        path: the file, rows of `shape[1:]` values of `dtype` one after the other.
        dtype: the values' dtype.
        shape: `(rows, *row_shape)`.
    """

    def __init__(self, path: str, dtype: Any, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        count = self.shape[0]
        if isinstance(index, slice):
            indices = np.arange(*index.indices(count))
        else:
            indices = np.asarray(index, dtype=np.int64)
        single = indices.ndim == 0
        indices = np.atleast_1d(indices)
        indices = np.where(indices < 0, indices + count, indices)
        if np.any((indices < 0) | (indices >= count)):
            raise IndexError(f"row index out of range for {count} rows of {self.path!r}")
        rows = np.empty((len(indices), *self.shape[1:]), self.dtype)
        order = np.argsort(indices, kind="stable")
        with files.open_file(self.path, "rb") as f:
            start = 0
            while start < len(order):  # one read per run of consecutive rows
                end = start + 1
                while end < len(order) and indices[order[end]] == indices[order[end - 1]] + 1:
                    end += 1
                first = int(indices[order[start]])
                f.seek(first * self.row_bytes)
                block = f.read((end - start) * self.row_bytes)
                values = np.frombuffer(block, self.dtype).reshape(end - start, *self.shape[1:])
                rows[order[start:end]] = values
                start = end
        return rows[0] if single else rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


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
        files.makedirs(parent)
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
        if files.is_remote(parent):  # streamed straight to the remote files
            self.path = os.path.join(parent, f"keras_transfer_features_{uuid.uuid4().hex[:12]}")
            files.makedirs(self.path)
        else:
            self.path = tempfile.mkdtemp(prefix="keras_transfer_features_", dir=parent)
        names = ["features.f32", *[f"labels_{i}.bin" for i in range(len(self.shapes[1]))]]
        self.files = tuple(
            files.open_file(os.path.join(self.path, name), "wb", buffered=False) for name in names
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
            files.rmtree(self.path, ignore_errors=True)

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
        if files.is_remote(self.path):
            return self._remote_rows(feature_shape, label_specs)
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

    def _remote_rows(self, feature_shape, label_specs) -> tuple[FileRows, Any, str]:
        """`finish` for a remote folder: the files as `FileRows`."""
        count = self.num_examples
        features = FileRows(
            os.path.join(self.path, "features.f32"), np.float32, (count, *feature_shape)
        )
        leaves = [
            FileRows(os.path.join(self.path, f"labels_{i}.bin"), dtype, (count, *shape))
            for i, (shape, dtype) in enumerate(label_specs)
        ]
        return features, keras.tree.pack_sequence_as(self.structure, leaves), self.path
