"""The decoder loop: batch size, thread count and IO binding do not change a single byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from workers.pool import user_error
from workers.sampler import (
    ActorRefused,
    Decoder,
    ProviderUnavailable,
    SamplerConfig,
    ShardGenerator,
    make_session,
)
from workers.spec import build_spec, plan_shards, shard_inputs


def _cfg(spec, **kw) -> SamplerConfig:  # noqa: ANN001
    info = spec.decoder
    base = dict(
        out_dir="/nonexistent", fmt="parquet", encoding="raw", batch_size=spec.batch_size,
        latent_dim=info.latent_dim, image_shape=info.image_shape, class_names=info.class_names,
        conditional=info.conditional,
    )  # fmt: skip
    return SamplerConfig(**{**base, **kw})


def test_decoder_matches_numpy_reference(cvae_onnx: Path) -> None:
    """Check the graph's math independently: image = round(255 * sigmoid(zW + V[y] + b))."""
    import onnx
    from onnx import numpy_helper

    weights = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(cvae_onnx)).graph.initializer
    }
    spec = build_spec(str(cvae_onnx), 300, shard_size=300, batch_size=64)
    _, labels, z = shard_inputs(plan_shards(spec)[0], 8)
    images, seconds = Decoder(cvae_onnx.read_bytes(), _cfg(spec)).decode(z, labels)
    assert len(seconds) == 5 and images.dtype == np.uint8 and images.shape == (300, 1, 8, 8)
    logits = z @ weights["W"] + weights["V"][labels] + weights["b"]
    want = np.clip(np.round(255 / (1 + np.exp(-logits.astype(np.float64)))), 0, 255)
    diff = np.abs(images.reshape(300, -1).astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert len(np.unique(images)) > 100  # not a constant image


def test_batch_threads_and_binding_do_not_change_bytes(cvae_onnx: Path) -> None:
    spec = build_spec(str(cvae_onnx), 1000, shard_size=1000)
    _, labels, z = shard_inputs(plan_shards(spec)[0], 8)
    model = cvae_onnx.read_bytes()
    ref, _ = Decoder(model, _cfg(spec, batch_size=1000)).decode(z, labels)
    for kw in ({"batch_size": 7}, {"threads": 2, "batch_size": 333}, {"io_binding": True}):
        got, _ = Decoder(model, _cfg(spec, **kw)).decode(z, labels)
        assert np.array_equal(got, ref), kw


def test_vae_decodes_without_labels(vae_onnx: Path) -> None:
    spec = build_spec(str(vae_onnx), 10, shard_size=10)
    _, labels, z = shard_inputs(plan_shards(spec)[0], 8)
    images, _ = Decoder(vae_onnx.read_bytes(), _cfg(spec, io_binding=True)).decode(z, None)
    assert images.shape == (10, 1, 8, 8) and (labels == -1).all()


def test_cuda_never_falls_back_to_cpu(cvae_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for CUDA where it cannot run raises; it never quietly decodes on the CPU."""
    if ort.get_device() == "GPU" and _cuda_works(cvae_onnx):
        pytest.skip("CUDA works here; the fallback cannot be provoked")
    with pytest.raises(ProviderUnavailable, match="vaegen-actor-refused: --gpus-per-worker: "):
        make_session(cvae_onnx.read_bytes(), gpu=True, threads=1)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable, match="install onnxruntime-gpu"):
        make_session(cvae_onnx.read_bytes(), gpu=True, threads=1)


def _cuda_works(model: Path) -> bool:
    try:
        make_session(model.read_bytes(), gpu=True, threads=1)
    except ProviderUnavailable:
        return False
    return True


def test_actor_refuses_an_out_folder_it_cannot_see(cvae_onnx: Path, tmp_path: Path) -> None:
    spec = build_spec(str(cvae_onnx), 10, shard_size=10)
    cfg = _cfg(spec, out_dir=str(tmp_path / "not-mounted-here"))
    with pytest.raises(ActorRefused) as caught:
        ShardGenerator(cvae_onnx.read_bytes(), cfg)
    # The driver finds the marker inside Ray's wrapped error text and keeps only the reason.
    wrapped = f"ActorDiedError: creation task failed\n  File ...\n{caught.value}\n"
    reason = str(user_error(RuntimeError(wrapped)))
    assert reason.startswith("--out: ") and "shares" in reason
    assert user_error(RuntimeError("some other failure")) is None
