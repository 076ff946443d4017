"""Pinned bytes: a fixed spec, in every format and encoding, gives the recorded shard hashes.

The hashes were recorded from the code before the issue #11 refactor; any later change to the
planner, the streams, the writers or the manifest's shard records that alters a byte fails here.
Issue #16 changed parquet's bytes on purpose (the `huggingface` schema metadata; png images as
Hugging Face's struct<bytes, path>): those were recorded again, and webdataset's added; npz and
imagefolder kept theirs.
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
                          ("imagefolder", "png"), ("webdataset", "png"))
]  # fmt: skip
SPECS = {
    "cvae": {"num_samples": 300, "class_counts": "cat=40,1=100,2=60,ému=100", "shard_size": 64,
             "batch_size": 50, "seed": 11},
    "vae": {"num_samples": 50, "shard_size": 20, "batch_size": 7, "seed": 3},
}  # fmt: skip
# Recorded from main at d8ddfc0 (before the refactor); parquet and webdataset at 5e62cd4 (#16):
# shard sha256 values in index order, the sha256 of labels.csv (imagefolder), and the sha256 of
# the manifest's byte-deciding fields.
EXPECTED: dict[tuple[str, str, str], dict] = {
    ("cvae", "parquet", "raw"): {
        "shards": [
            "07217f4bb65c69de9665e41b77c0b8feca034309d358c4c122f525df81b31bf5",
            "3bc7774f8a8c109f9707653a3e108c636b0fa6807ab30e8debfbc619f3b05ead",
            "66b2652f40deeff6e61ca6b467bedb578a529bc16581c1ec8892920d4273ee44",
            "edb9230543b3c19b80ce38023e19fbfa0c2bf99d581e626c6e81ba403ee4b575",
            "6421cfdb30c8c275ff6dfaee20f8b91ef08aed56373c778806e003259488e9a8",
        ],
        "labels_csv": None,
        "manifest": "85a26efb61dc0cb2f2116c576060174f9e7559d6fac8bedf3bfc2bc3f5ff180d",
    },
    ("cvae", "parquet", "png"): {
        "shards": [
            "b330a11ca4e792c85b9666eaea0004554e04f8d1acde6762a8609f576204ad29",
            "9b8c8df6841c03ab046dac0d9500ff80b2e3120518e804976100b48a30311dc4",
            "84f24794962963ad54404d12a535cc0ae19fafaba30349f1427e8f13f1470f50",
            "5ae87f0100feea68da0a2516bd269d74438c9e86f257f6ea32416c9d3f8292c1",
            "f2acd3979c9fbd4dc08f67e56392cf4ea697c108a43bf4ef619b7266a6e54ffa",
        ],
        "labels_csv": None,
        "manifest": "1ec2538805ab6e3d2f4c442bf5f02db69113545e40de2bfe99975389cc756bde",
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
            "039aac69d0b69ff97cb76d79137d30d813aafbb879a4b59adb8a73f7d5e634a5",
            "7c5a1117537ceef722fc09a2c8923563d7472f9a3f83a92e7fc81166389cc0af",
            "9acd83744b3782b7d346fedd89c0a61437d136eadd7f597991a56ebea7d64f12",
        ],
        "labels_csv": None,
        "manifest": "ac309920f00e58d68be661a76834b955e89504db607df7eede2b606ee0dfeaef",
    },
    ("vae", "parquet", "png"): {
        "shards": [
            "0f5265c6f83a005ff2271bd9d0b18e64304793d66bc7436cb5266f242e47f0e6",
            "9edfdecb948eb9b9c67c7c3e162391f7e02ea51ce64da2bd58929044a9695013",
            "59d5333370e8dedbed1f3c7b1d0faa84b6d3706285daba72ba5259bc2442968b",
        ],
        "labels_csv": None,
        "manifest": "731ff4a482e933029d9a8f3901e4340aff4c69a9659df7ff7a2573dc664d9aaf",
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
    ("cvae", "webdataset", "png"): {
        "shards": [
            "ea544d18d69d6baa36037c8e012ae95ec97d4e98f93ab2f71ab8d5f3fa46b01a",
            "2499379e72b3c0e4b608ff48944380e611f9b2574a30aa4edd14e39718a2c84a",
            "927390eb1d987ae49fcdc41ffd40a98a711612311641e77a3d6e6dcacf911d40",
            "46e74763d8c9db51611acc7755da4fa13301fc5a8630b58ee2bcc60983b69905",
            "88ed268f4ea965b8e9b8baddeb23a3fe43a2616de0c6de575b3058dbc453fa97",
        ],
        "labels_csv": None,
        "manifest": "e198fe19318cf2cd2a72bcd8a6fa9f217730a0dc84bac2da82732caa6eb10845",
    },
    ("vae", "webdataset", "png"): {
        "shards": [
            "db92371ac99d99070a7d9b665c5ec1a44d5330f524c9d8a7fdf82d3f1fd35c57",
            "954003fd7ac8d06530875e1819ff57a6166b09009848b538dece1cb67b0dc13f",
            "befb57ca2ed38eb1c19fa8db84999e50df0086e7d0462c49ed49bb5123cc54d0",
        ],
        "labels_csv": None,
        "manifest": "cac4f0f8e184dfe5af231f2fb4a923f8af7e109616fd97c1176689c8d8b7a82f",
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
