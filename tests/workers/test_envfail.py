"""A full disk is told plainly: one line (cause, file, shards finished, --resume), exit 1, no
temporary files; with more room, --resume finishes with the same bytes."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workers.cli import app
from workers.envfail import environment_failure
from workers.verify import verify_dataset

# 10 npz shards of 500 rows x 784 bytes (~392 KB each, uncompressed): 3.9 MB, on a 2 MB disk.
ARGS = ["--num-samples", "5000", "--shard-size", "500", "--format", "npz", "--workers", "1"]


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201 - yields the mount point
    """A 2 MB tmpfs (needs root and a mount(8) that may mount; CI containers often may not)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here to make a size-limited file system")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_line_and_resume_continues(
    local_ray,
    make_decoder,
    small_disk: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    model = make_decoder(tmp_path / "big.onnx", image_shape=(1, 28, 28))
    out = small_disk / "ds"
    full = CliRunner().invoke(app, [str(model), *ARGS, "--out", str(out)])
    assert full.exit_code == 1, full.output
    # One line for the error (the progress line before it is the bar's, on a terminal).
    [line] = [x for x in full.output.splitlines() if x.startswith("error")]
    assert line.startswith("error: no space left on the device writing "), line
    assert (
        f"{out}/part-0000" in line
        and ".npz: " in line
        and " of 10 shards are finished and kept" in line
        and "--resume" in line
    )
    assert "Traceback" not in full.output and "Ray" not in line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    resumed = CliRunner().invoke(app, [str(model), *ARGS, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert verify_dataset(out).intact
    reference = tmp_path / "reference"
    done = CliRunner().invoke(app, [str(model), *ARGS, "--out", str(reference)])
    assert done.exit_code == 0, done.output
    for shard in sorted(reference.glob("part-*.npz")):
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_only_the_environments_errors_are_told_so() -> None:
    lost = PermissionError(errno.EACCES, "Permission denied", "/d/.part-00003.npz.0a1b2c3d.tmp")
    failure = environment_failure(lost)
    assert failure is not None and failure.exit_code == 1
    assert str(failure.with_progress(3, 8)) == (
        "permission denied writing /d/part-00003.npz: 3 of 8 shards are finished and kept; "
        "once that is fixed, rerun with --resume to continue"
    )
    assert environment_failure(FileNotFoundError(errno.ENOENT, "gone", "/d/x")) is None
    assert environment_failure(ValueError("not an OSError")) is None
