"""Peak memory and time of loading an image folder with decompression bombs in it.

A 20000x20000 1-bit PNG is ~50 KB on disk and 1.2 GB once decoded to RGB. Three arms, each
in a fresh process (peak resident memory is per process), each loading the same synthetic
folder with `image_folder_dataset` and iterating one epoch of its training split:

- `clean`: the folder without bombs.
- `bombs`: the folder with `--bombs` PNG bombs, default `max_pixels` (50 megapixels): the
  bombs are found from their headers and skipped before any decoding.
- `bombs_no_limit`: the same folder with `max_pixels=None`, what the loader did before it
  read headers: every bomb is decoded in full, once to check it and once for training.

    python benchmarks/decompression_bomb.py

The machine these numbers come from is shared: timings are noisy (the load average is
printed); peak memory is not. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

CHILD = """
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from keras_transfer.data import folders as data
start = time.perf_counter()
max_pixels = None if sys.argv[2] == "none" else int(sys.argv[2])
loaded = data.image_folder_dataset(sys.argv[1], image_size=32, batch_size=8, max_pixels=max_pixels)
images = sum(int(x.shape[0]) for x, _ in loaded.train)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "train_images": images,
    "skipped": len(loaded.skipped),
}))
"""


def png_bomb(side: int) -> bytes:
    """A valid 1-bit grayscale PNG of `side x side` black pixels."""
    import struct
    import zlib

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" + bytes((side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def run_arm(directory: pathlib.Path, max_pixels: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(_common.REPO_ROOT))
    output = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), max_pixels],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per_class", type=int, default=16)
    parser.add_argument("--bombs", type=int, default=2)
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    clean = _common.smoke_image_folder(per_class=args.per_class)
    with_bombs = _common.smoke_image_folder(per_class=args.per_class)
    bomb = png_bomb(args.side)
    for i in range(args.bombs):
        (with_bombs / "train" / "ants" / f"bomb_{i}.png").write_bytes(bomb)

    start = time.perf_counter()
    arms = {
        "clean": run_arm(clean, "50000000"),
        "bombs": run_arm(with_bombs, "50000000"),
        "bombs_no_limit": run_arm(with_bombs, "none"),
    }
    for name, arm in arms.items():
        print(
            f"{name:15s} {arm['peak_rss_mb']:8.0f} MB peak  {arm['seconds']:6.1f} s  "
            f"{arm['train_images']} training images, {arm['skipped']} skipped"
        )
    result = {
        "benchmark": "decompression_bomb",
        "bomb": {"side": args.side, "bytes": len(bomb), "count": args.bombs},
        "arms": arms,
        "peak_rss_ratio_bombs_vs_clean": arms["bombs"]["peak_rss_mb"]
        / arms["clean"]["peak_rss_mb"],
        "peak_rss_ratio_no_limit_vs_clean": (
            arms["bombs_no_limit"]["peak_rss_mb"] / arms["clean"]["peak_rss_mb"]
        ),
        "total_seconds": time.perf_counter() - start,
        "load_average": _common.load_average(),
        "command": "python benchmarks/decompression_bomb.py",
    }
    output = (
        pathlib.Path(args.output)
        if args.output
        else (_common.REPO_ROOT / "benchmarks" / "results" / "decompression_bomb_synthetic.json")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    _common.write_json(output, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
