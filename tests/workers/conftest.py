"""Fixtures for the workers tests: a small valid vaegen decoder built directly with onnx.helper,
and the SIGKILL of a driver with its local Ray."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest


def make_test_decoder(
    path: str | os.PathLike[str],
    conditional: bool = True,
    latent_dim: int = 8,
    image_shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 10,
    *,
    seed: int = 0,
    metadata: bool = True,
    class_names: list[str] | None = None,
) -> Path:
    """Write a decoder with the DESIGN.md contract: mean = sigmoid(z@W + V[y] + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, h, w = image_shape
    d = c * h * w
    rng = np.random.default_rng(seed)
    weights = {
        "W": rng.normal(0, 1.0, (latent_dim, d)).astype(np.float32),
        "b": rng.normal(0, 0.5, (d,)).astype(np.float32),
        "shape": np.array([-1, c, h, w], dtype=np.int64),
        "s255": np.array(255.0, dtype=np.float32),
        "zero": np.array(0.0, dtype=np.float32),
        "full": np.array(255.0, dtype=np.float32),
    }
    nodes = [helper.make_node("MatMul", ["z", "W"], ["zw"])]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", latent_dim])]
    pre = "zw"
    if conditional:
        # onehot(y) @ V is a row gather of V: same numbers, one node.
        weights["V"] = rng.normal(0, 2.0, (num_classes, d)).astype(np.float32)
        inputs.append(helper.make_tensor_value_info("y", TensorProto.INT64, ["B"]))
        nodes += [
            helper.make_node("Gather", ["V", "y"], ["vy"], axis=0),
            helper.make_node("Add", ["zw", "vy"], ["zwv"]),
        ]
        pre = "zwv"
    nodes += [
        helper.make_node("Add", [pre, "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["mean"]),
        helper.make_node("Mul", ["mean", "s255"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "zero", "full"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["image"], to=TensorProto.UINT8),
    ]
    outputs = [
        helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", c, h, w]),
        helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["B", c, h, w]),
    ]
    graph = helper.make_graph(
        nodes,
        "test_decoder",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        k = num_classes if conditional else 0
        names = class_names if class_names is not None else [f"c{i}" for i in range(k)]
        props = {
            "vaegen_version": "0.1.0",
            "latent_dim": str(latent_dim),
            "num_classes": str(k),
            "class_names": json.dumps(names),
            "image_shape": json.dumps(list(image_shape)),
            "likelihood": "bernoulli",
            "source_sha256": "0" * 64,
        }
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoders")


@pytest.fixture(scope="session")
def cvae_onnx(decoder_dir: Path) -> Path:
    return make_test_decoder(decoder_dir / "cvae.onnx")


@pytest.fixture(scope="session")
def vae_onnx(decoder_dir: Path) -> Path:
    return make_test_decoder(decoder_dir / "vae.onnx", conditional=False, num_classes=0)


@pytest.fixture(scope="session")
def make_decoder():  # noqa: ANN201 - returns make_test_decoder
    """make_test_decoder as a fixture: importlib mode cannot import conftest by name."""
    return make_test_decoder


def kill_driver_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a driver; its local Ray (GCS, raylet, actors) goes down too, as on a lost machine.

    Ray's own fate-sharing takes a minute for some agents, so they are ended now, by pid.
    """
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(tree, timeout=30)


@pytest.fixture(scope="session")
def kill_driver():  # noqa: ANN201 - returns kill_driver_tree
    return kill_driver_tree
