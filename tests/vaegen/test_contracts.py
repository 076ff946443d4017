"""The shared artifact helpers: one file sha256 and one pixel quantization for every stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vaegen.contracts import quantize, sha256_file


def test_sha256_file_reads_past_one_block(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_quantize_rounds_half_to_even_and_clips() -> None:
    # 0.5/255 -> 0 and 1.5/255 -> 2 (half to even, as ONNX Round); out of range clips.
    mean = np.array([-0.3, 0.5 / 255, 1.5 / 255, 2.4 / 255, 0.5, 1.0, 1.7], np.float32)
    assert quantize(mean).tolist() == [0, 0, 2, 2, 128, 255, 255]
    assert quantize(mean).dtype == np.uint8


def test_quantize_is_the_exported_graph_function() -> None:
    # decoder.onnx quantizes with exporter.graph.quantize (torch ops, Round then Clip); eval
    # with this one: the same bytes for any float32 mean, in range or not.
    import torch

    from exporter.graph import quantize as graph_quantize

    rng = np.random.default_rng(1)
    mean = rng.uniform(-0.1, 1.1, 200_000).astype(np.float32)
    mean[:512] = (np.arange(512, dtype=np.float32) % 256 + 0.5) / 255  # halfway points
    want = graph_quantize(torch.from_numpy(mean)).numpy()
    assert np.array_equal(quantize(mean), want)
