"""RUN/model round trip: the exact file set, identical outputs, refusal of bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import MODEL_FILES, load_model, save_model
from trainer.config import ModelConfig
from trainer.models import build_model
from vaegen.errors import VaegenError

DATASET = {"name": "digits", "image_shape": [1, 8, 8], "class_names": [str(i) for i in range(10)]}


def _saved(tmp_path: Path, **cfg: object) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_dims=(32, 16), **cfg))
    out = save_model(tmp_path / "model", model, DATASET, {"epochs": 1}, {"test_elbo": -1.0})
    return model, out


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_round_trip_rebuilds_identical_model(tmp_path: Path, arch: str, likelihood: str) -> None:
    model, model_dir = _saved(tmp_path, arch=arch, likelihood=likelihood)
    assert {p.name for p in model_dir.iterdir()} == MODEL_FILES
    loaded, info = load_model(tmp_path)  # RUN or RUN/model both work
    model.eval()
    x, y = torch.rand(5, 1, 8, 8), torch.arange(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, y).logits, model(x, y).logits, rtol=0, atol=0)
    assert info.class_names == DATASET["class_names"]
    assert info.metrics == {"test_elbo": -1.0}
    assert info.config == model.cfg


def test_config_json_holds_the_contract_fields(tmp_path: Path) -> None:
    _, model_dir = _saved(tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("model", "dataset", "train", "metrics", "vaegen_version"):
        assert key in config
    assert config["dataset"]["image_shape"] == [1, 8, 8]


def test_pickle_in_place_of_weights_is_refused_unread(tmp_path: Path) -> None:
    _, model_dir = _saved(tmp_path)
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self) -> tuple:
            return (marker.touch, ())

    (model_dir / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(VaegenError, match="pickle"):
        load_model(model_dir)
    assert not marker.exists()


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    _, model_dir = _saved(tmp_path)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(VaegenError, match="truncated|corrupt"):
        load_model(model_dir)


def test_config_and_weights_that_disagree_are_refused(tmp_path: Path) -> None:
    _, model_dir = _saved(tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["model"]["latent_dim"] = 7
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(VaegenError, match="disagree"):
        load_model(model_dir)


def test_missing_files_are_refused(tmp_path: Path) -> None:
    _, model_dir = _saved(tmp_path)
    (model_dir / "config.json").unlink()
    with pytest.raises(VaegenError, match="missing"):
        load_model(model_dir)
