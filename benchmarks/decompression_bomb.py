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

`--repeats` rounds (default 3) run the three arms back to back, the order rotated each round;
the results file (benchmarks/results/decompression_bomb_synthetic.json, the results schema
of `_common.write_results`, kind "timing") keeps every round's values and the per-round
ratios to the clean arm. Timings on a shared machine are noisy (the load average is
recorded); peak memory is not. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

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


ARMS = {"clean": "50000000", "bombs": "50000000", "bombs_no_limit": "none"}
SELECTION = {
    "tuned": "nothing: the folder, the bombs and max_pixels (50 MP, or None) are fixed flags",
    "tuned_on": None,
    "pairing": "round r runs clean, bombs and bombs_no_limit back to back, each in a fresh "
    "process, the order rotated by r; the ratios to clean are taken within a round",
}


def results_arms(rounds: list[dict]) -> dict:
    """`{arm: {metric: [one value per round]}}` from each round's `{arm: child output}`; the
    bomb arms also carry their peak RSS over the same round's clean arm."""
    arms = {}
    for name in ARMS:
        arms[name] = {
            metric: [float(r[name][metric]) for r in rounds]
            for metric in ("peak_rss_mb", "seconds", "train_images", "skipped")
        }
        if name != "clean":
            arms[name]["peak_rss_vs_clean"] = [
                r[name]["peak_rss_mb"] / r["clean"]["peak_rss_mb"] for r in rounds
            ]
    return arms


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per_class", type=int, default=16)
    parser.add_argument("--bombs", type=int, default=2)
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three arms")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    run = _common.start_run(SELECTION, script=__file__, argv=argv)

    clean = _common.smoke_image_folder(per_class=args.per_class)
    with_bombs = _common.smoke_image_folder(per_class=args.per_class)
    bomb = png_bomb(args.side)
    for i in range(args.bombs):
        (with_bombs / "train" / "ants" / f"bomb_{i}.png").write_bytes(bomb)

    folders = {"clean": clean, "bombs": with_bombs, "bombs_no_limit": with_bombs}
    names = list(ARMS)
    rounds = []
    for index in range(args.repeats):
        order = names[index % len(names) :] + names[: index % len(names)]
        rounds.append({name: run_arm(folders[name], ARMS[name]) for name in order})
        for name in names:
            arm = rounds[-1][name]
            print(
                f"round {index}: {name:15s} {arm['peak_rss_mb']:8.0f} MB peak  "
                f"{arm['seconds']:6.1f} s  {arm['train_images']} training images, "
                f"{arm['skipped']} skipped"
            )
    output = (
        pathlib.Path(args.output)
        if args.output
        else (_common.REPO_ROOT / "benchmarks" / "results" / "decompression_bomb_synthetic.json")
    )
    record = _common.write_results(
        output,
        run,
        kind="timing",
        benchmark="decompression_bomb",
        dataset="synthetic",
        # The images of each class folder; the bomb arms' train/ also holds the bombs.
        splits={"train": 2 * args.per_class, "validation": 2 * args.per_class},
        evaluated_on="train",
        repeats=args.repeats,
        arms=results_arms(rounds),
        primary_metric="peak_rss_mb",
        comparisons=[["bombs", "clean"], ["bombs_no_limit", "clean"]],
        details={"bomb": {"side": args.side, "bytes": len(bomb), "count": args.bombs}},
    )
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
