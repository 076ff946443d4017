"""Pinned bytes: a fixed spec, in every format and encoding, gives the recorded shard hashes.

The hashes were recorded from the code before the issue #11 refactor; any later change to the
planner, the streams, the writers or the manifest's shard records that alters a byte fails here.
The decoder is exact on every CPU (a 0/1 selection matmul, a power-of-two scale, integer class
offsets, then Round/Clip/Cast: each step is one correctly rounded IEEE operation), so the bytes
depend on numpy's streams and the writers' libraries (pyarrow, Pillow, zlib), never on which
SIMD kernels onnxruntime picks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

CVAE_NAMES = ["cat", "dog/wolf", ".hidden", "ému"]  # a slash, a dot name, a non-ASCII name
CASES = [
    (model, fmt, encoding)
    for model in ("cvae", "vae")
    for fmt, encoding in (("parquet", "raw"), ("parquet", "png"), ("npz", "raw"),
                          ("imagefolder", "png"))
]  # fmt: skip
SPECS = {
    "cvae": {"num_samples": 300, "class_counts": "cat=40,1=100,2=60,ému=100", "shard_size": 64,
             "batch_size": 50, "seed": 11},
    "vae": {"num_samples": 50, "shard_size": 20, "batch_size": 7, "seed": 3},
}  # fmt: skip
# Recorded from main at d8ddfc0 (before the refactor): shard sha256 values in index order, the
# sha256 of labels.csv (imagefolder), and the sha256 of the manifest's byte-deciding fields.
EXPECTED: dict[tuple[str, str, str], dict] = {
    ("cvae", "parquet", "raw"): {
        "shards": [
            "d1869727e17f0248e76a45ded409971015103437ff3f7b1ab8d5336b631df070",
            "de25bc78566455565ef6e2d29a003b5232708ebf4fddd91f1303daca0f2a632c",
            "f91bca828881cd8ed4bba66a6b9fa90e4c69fbe4fa188a2bf9cb41ec2fec943f",
            "61dc3ae73de9be2f520493c1328ebd22bf9633190bb4f04229f993a07f6ff97c",
            "e52372a56545aabcf504aad46727b01175345a60feadc3df3635dd762e53c557",
        ],
        "labels_csv": None,
        "manifest": "c22600130d070826828cb1d6596c96c3cbe5a4e3fa3d4ff8362522b778868a5b",
    },
    ("cvae", "parquet", "png"): {
        "shards": [
            "64302f2cdf4a451f149a1cef43b609b81224ad53aa35a2e4401e0f18b953fafd",
            "72983db4c8b757acb1d323618d5244873f6c827f7e266d49f378c7dc26b5f411",
            "bd22e19fd44e81a66c86879561195d547ad036874e9ffc2c321eda8f592a0f2a",
            "f9d0c13cb3d1474ba6f3582999274eb96eec9579afce5a0ca2fe691057bbd258",
            "1fe3f8386518528426106da9220f37072e9bd2c765234ccce47e0cb39ecda1a9",
        ],
        "labels_csv": None,
        "manifest": "69c6a27cd674c8666a9bfc1486d257e15a2076f2dd0bd5a359d948fbeb5a98c5",
    },
    ("cvae", "npz", "raw"): {
        "shards": [
            "6b3155cdee66a9903f1fba24a1f8db21688eafb18fa7e74cf647685b67d88eff",
            "6456df3784cc54c49f9e89f68cf30705cc29338e393a3edbc3d4e7d9ec7a7887",
            "c8156dab98339c76dcb57b9ea449c393c6d7d11c47e11f68c1b1961ba75e9100",
            "35d13adec114f9cf966154f09a1edaa9b8c7379ed3109773ad27165c638e9e1e",
            "285b56cb416ec2adbb093790314f0937a9e5cc6f9c66a8a9ec5c54514ab84177",
        ],
        "labels_csv": None,
        "manifest": "7d91fceb8aeec32e3ad1c789bafe3907d1f6448da4cf47e09c3c3587c4a3a060",
    },
    ("cvae", "imagefolder", "png"): {
        "shards": [
            "7496e532d37c8de532974cf44f204f92dd7e452d3be903e295f5e4481316dfb6",
            "28876f4a1ea8c55063c46eed2dfaf9bec81b685835a076ed8acaad4183921ad3",
            "73f645ccb57436ffa40e9119cf830929012d548180e0803bcecb57ab4a580c05",
            "6a21fed01353243e4ac1bb598356b57336768dded714e016f641c7eb7f88954f",
            "46e8ad94b50cd53a246f529653db4c7449a344a2e40e2ae5db110fdf1fc1c0b5",
        ],
        "labels_csv": "a8189cbf833ad77766f9d86312880df2fcba43238fb3106f8f5c63b6d16f233b",
        "manifest": "6080b8692399f025fd15e6dc636b3f0b9ce6ca8efcbf9195a5e8f0485feec37a",
    },
    ("vae", "parquet", "raw"): {
        "shards": [
            "8ef7f30b5efb8e206b8c244ab799a5d7aa35e4922d5b152a8975e14f772c43fa",
            "dfe8063b7a3c6b40276b980b953618e99e1a5d8c241fd764fdb030559e74d797",
            "95608ae98dbd9316b0c81b908dd50506db178c51c4e49f30167fa4c5509370ca",
        ],
        "labels_csv": None,
        "manifest": "03ec1b09b0581551256ca9d3af8ef62a2ea7fa74aa64bc187a0ef9c13697d968",
    },
    ("vae", "parquet", "png"): {
        "shards": [
            "bd7b3c694a832f36ac97bc1697f82df55e645d66c7e4887a273d06270cbafd46",
            "aff71f69a3fd82635856aece053a7ecc24ea6e08a231bd7ffc407e28d8c83fa5",
            "0915f7a045dfefc50df615d7a330c6496055768f4158689e381f661d5b7fbb74",
        ],
        "labels_csv": None,
        "manifest": "5b9bad26bac7fca5ca2660e69256ae316c14e6ad028f4113112ab7f2d3e13d88",
    },
    ("vae", "npz", "raw"): {
        "shards": [
            "ba9d57671b0623e220256461dc11d58dff4f31680717b61022088291969cc1e9",
            "6b2608a7022c7b88259ceee34e58b31fea9b2867c8ccd50ef3ca30e871620696",
            "b78f8ebe5f95bf037ebdaa3432fbf4d8b73e7f6e9fa842716efaa5f86ae3e126",
        ],
        "labels_csv": None,
        "manifest": "ec032f703dbce006883744e30eaa5037280448c3534ce9fd4551f540655ad5d4",
    },
    ("vae", "imagefolder", "png"): {
        "shards": [
            "da2ff959870928d5434f3028407d2767fa6f80784ece4d7a77e1801ad7004215",
            "cb5fe1c61ae3f702e1b73006bca8adf5e7b31178142ec7224272e6cf4117fd95",
            "b831a958cf9f5b9f96bb50ce8331e7b7a99020b7eff9d20e27baba49ebe2e400",
        ],
        "labels_csv": "27612ed562982af263d567b573280925b5c6f9c57bedd663fe751630f604fc5e",
        "manifest": "e29e3ad53914ea36684be48ab234070a84923e83da1a3ec8a5fda4593c219ffd",
    },
}


def exact_decoder(path: Path, *, conditional: bool, image_shape: tuple[int, int, int]) -> Path:
    """A decoder whose `image` is bit-exact on any CPU: 128 + 32*z[j % L] + class offset."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    latent = 4
    c, h, w = image_shape
    d = c * h * w
    select = np.zeros((latent, d), np.float32)
    select[np.arange(d) % latent, np.arange(d)] = 1.0
    weights = {
        "W": select,
        "s32": np.array(32.0, np.float32),
        "c128": np.array(128.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "full": np.array(255.0, np.float32),
        "s255": np.array(255.0, np.float32),
        "shape": np.array([-1, c, h, w], np.int64),
    }
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", latent])]
    nodes = [
        helper.make_node("MatMul", ["z", "W"], ["zw"]),
        helper.make_node("Mul", ["zw", "s32"], ["scaled"]),
        helper.make_node("Add", ["scaled", "c128"], ["centered"]),
    ]
    pre = "centered"
    names = CVAE_NAMES if conditional else []
    if conditional:
        weights["V"] = (np.arange(len(names) * d, dtype=np.float32).reshape(len(names), d) % 7) * 9
        inputs.append(helper.make_tensor_value_info("y", TensorProto.INT64, ["B"]))
        nodes += [
            helper.make_node("Gather", ["V", "y"], ["vy"], axis=0),
            helper.make_node("Add", ["centered", "vy"], ["shifted"]),
        ]
        pre = "shifted"
    nodes += [
        helper.make_node("Round", [pre], ["rounded"]),
        helper.make_node("Clip", ["rounded", "zero", "full"], ["clipped"]),
        helper.make_node("Reshape", ["clipped", "shape"], ["pixels"]),
        helper.make_node("Cast", ["pixels"], ["image"], to=TensorProto.UINT8),
        helper.make_node("Div", ["pixels", "s255"], ["mean"]),
    ]
    outputs = [
        helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", c, h, w]),
        helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["B", c, h, w]),
    ]
    graph = helper.make_graph(
        nodes, "exact", inputs, outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "vaegen_version": "0.1.0",
            "latent_dim": str(latent),
            "num_classes": str(len(names)),
            "class_names": json.dumps(names),
            "image_shape": json.dumps(list(image_shape)),
            "likelihood": "bernoulli",
            "source_sha256": "0" * 64,
        },
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exact")
    return {
        "cvae": exact_decoder(root / "cvae.onnx", conditional=True, image_shape=(1, 6, 5)),
        "vae": exact_decoder(root / "vae.onnx", conditional=False, image_shape=(3, 4, 4)),
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(out: Path, manifest: dict) -> dict:
    """What must not change: shard hashes, labels.csv, and the manifest's byte-deciding part."""
    stable = {
        "spec": {k: v for k, v in manifest["spec"].items() if k != "model_sha256"},
        "image_shape": manifest["image_shape"],
        "class_names": manifest["class_names"],
        "num_shards": manifest["num_shards"],
        "num_rows": manifest["num_rows"],
        "class_counts": manifest["class_counts"],
        "shards": [
            {
                k: s[k]
                for k in (
                    "index",
                    "file",
                    "rows",
                    "first_id",
                    "sha256",
                    "bytes",
                    "seed",
                    "class_counts",
                )
            }  # fmt: skip
            for s in manifest["shards"]
        ],
    }
    labels_csv = out / "labels.csv"
    return {
        "shards": [s["sha256"] for s in manifest["shards"]],
        "labels_csv": _sha(labels_csv.read_bytes()) if labels_csv.exists() else None,
        "manifest": _sha(json.dumps(stable, sort_keys=True).encode()),
    }


@pytest.mark.parametrize(("model", "fmt", "encoding"), CASES, ids="-".join)
def test_fixed_spec_gives_recorded_shard_hashes(
    local_ray,  # noqa: ANN001 - fixture
    models: dict[str, Path],
    tmp_path: Path,
    model: str,
    fmt: str,
    encoding: str,
) -> None:
    from workers.job import run_generation
    from workers.options import GenerateOptions
    from workers.spec import build_spec

    args = dict(SPECS[model])
    spec = build_spec(str(models[model]), args.pop("num_samples"), format=fmt, encoding=encoding,
                      **args)  # fmt: skip
    out = tmp_path / "ds"
    manifest = run_generation(spec, out, GenerateOptions(workers=2, show_progress=False))
    got = _fingerprint(out, manifest)
    assert got == EXPECTED[(model, fmt, encoding)]
