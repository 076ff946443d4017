"""How a shard's bytes should reach the disk: one write() against 1 MiB pieces.

workers.writers writes shard files (about 13 MB for 16,384 MNIST-sized rows) in 1 MiB pieces.
This prints, for fresh files in --dir, the median wall and CPU milliseconds per file of
- one write() of the whole buffer (the baseline),
- pieces of 64 KiB, 1 MiB (what the writers use) and 4 MiB,
and each one's ratio to the baseline. Files are new each time, as shards are.

    .venv/bin/python bench/write.py                 # in a temp folder beside the repo
    .venv/bin/python bench/write.py --dir /data     # on the disk the datasets go to
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

KIB = 1 << 10


def write_file(path: Path, data: memoryview, piece: int | None) -> tuple[float, float]:
    """(wall s, CPU s) to write `data` to a new file, whole or in pieces of `piece` bytes."""
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "wb") as fh:
        if piece is None:
            fh.write(data)
        else:
            for start in range(0, data.nbytes, piece):
                fh.write(data[start : start + piece])
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--mib", type=float, default=12.4, help="file size (a 16k-row shard)")
    parser.add_argument("--files", type=int, default=30, help="files per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    data = memoryview(os.urandom(int(args.mib * KIB * KIB)))
    variants = {"one write()": None, "64 KiB pieces": 64 * KIB, "1 MiB pieces": KIB * KIB,
                "4 MiB pieces": 4 * KIB * KIB}  # fmt: skip
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    work = Path(tempfile.mkdtemp(prefix="vaegen-write-", dir=args.dir))
    try:
        for round_ in range(args.rounds):
            for name, piece in variants.items():  # interleaved: noise hits every variant
                for i in range(args.files):
                    w, c = write_file(work / f"{round_}-{piece}-{i}", data, piece)
                    wall[name].append(w)
                    cpu[name].append(c)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(wall["one write()"])
    print(f"{args.files * args.rounds} new files of {data.nbytes / KIB / KIB:.1f} MiB each "
          f"in {args.dir} (medians)")  # fmt: skip
    for name in variants:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:14s} {w * 1e3:7.1f} ms wall  {c * 1e3:7.1f} ms CPU  "
              f"x{w / base:5.2f} of one write()")  # fmt: skip


if __name__ == "__main__":
    main()
