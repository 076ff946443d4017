"""read_decoder accepts the DESIGN.md contract and rejects everything else with VaegenError."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaegen.contracts import sha256_file
from vaegen.errors import VaegenError
from workers.decoder_meta import read_decoder


def test_reads_cvae_metadata(cvae_onnx: Path) -> None:
    info = read_decoder(cvae_onnx)
    assert info.conditional and info.num_classes == 10
    assert info.latent_dim == 8 and info.image_shape == (1, 8, 8)
    assert info.class_names[3] == "c3"
    assert info.sha256 == sha256_file(cvae_onnx) and len(info.sha256) == 64


def test_reads_vae_metadata(vae_onnx: Path) -> None:
    info = read_decoder(vae_onnx)
    assert not info.conditional and info.num_classes == 0 and info.class_names == ()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-metadata", "not a vaegen decoder"),
        ("garbage", "not an ONNX model"),
        ("wrong-inputs", "decoder inputs"),
        ("names", "class_names"),
        ("latent", "input 'z' must have shape"),
    ],
)
def test_rejects_bad_files(tmp_path: Path, make_decoder, case: str, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "model.onnx"
    if case == "no-metadata":
        make_decoder(path, metadata=False)
    elif case == "garbage":
        path.write_bytes(b"definitely not protobuf")
    elif case == "wrong-inputs":
        # A CVAE graph (inputs z and y) whose metadata claims a plain VAE.
        _edit_props(make_decoder(path), num_classes="0", class_names="[]")
    elif case == "names":
        make_decoder(path, class_names=["a", "b"])
    else:
        _edit_props(make_decoder(path), latent_dim="16")
    with pytest.raises(VaegenError, match=message):
        read_decoder(path)


def test_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VaegenError, match="no such model file"):
        read_decoder(tmp_path / "absent.onnx")


def _edit_props(path: Path, **props: str) -> None:
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key in props:
            prop.value = props[prop.key]
    onnx.save(model, str(path))
