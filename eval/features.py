"""The judge as a torch-fidelity feature extractor, and the uint8 datasets torch-fidelity reads.

torch-fidelity builds extractors itself: `cls(name, features_list, **calculate_metrics_kwargs)`.
The judge's safetensors file arrives as `feature_extractor_weights_path` (its JSON sidecar holds
the architecture), so no weights are downloaded. Importing this module imports torch-fidelity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vaegen.errors import MissingDependency, VaegenError

try:
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
except ImportError as _exc:  # pragma: no cover - exercised only without the package
    raise MissingDependency(
        f"FID/KID need torch-fidelity ({_exc}); install it: pip install 'torch-fidelity>=0.3'"
    ) from None

JUDGE_EXTRACTOR = "vaegen-judge"
INCEPTION_EXTRACTOR = "inception-v3-compat"
FEATURE_PENULTIMATE = "penultimate"
FEATURE_LOGITS = "logits"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class JudgeFeatureExtractor(FeatureExtractorBase):
    """Penultimate layer (FID/KID/PRC) and logits (ISC) of a cached judge."""

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        feature_extractor_internal_dtype: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(name, features_list)
        from eval.judge import load_judge_file

        if feature_extractor_weights_path is None:
            raise VaegenError(f"the {name} extractor needs feature_extractor_weights_path")
        dtype_name = feature_extractor_internal_dtype or "float64"
        if dtype_name not in _DTYPES:
            raise VaegenError(f"judge internal dtype must be float32 or float64: {dtype_name}")
        net, spec, _ = load_judge_file(feature_extractor_weights_path)
        self.internal_dtype = _DTYPES[dtype_name]
        self.in_channels = spec.image_shape[0]
        self.size = tuple(spec.image_shape[1:])
        self.net = net.to(self.internal_dtype)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return FEATURE_PENULTIMATE, FEATURE_LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        # torch-fidelity asks for isc, fid, kid and prc: only the Inception score uses logits.
        return FEATURE_LOGITS if metric == "isc" else FEATURE_PENULTIMATE

    @staticmethod
    def can_be_compiled() -> bool:
        return True

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return (torch.rand([1, 3, 8, 8]) * 255).to(torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise VaegenError(f"the judge extractor expects uint8 Bx3xHxW, got {tuple(x.shape)}")
        x = x.to(self.internal_dtype) / 255.0
        if self.in_channels == 1:
            # Grayscale arrives as three equal channels (torch-fidelity wants RGB): the mean of
            # equal integers is exact, and an RGB input becomes its plain luminance average.
            x = x.mean(dim=1, keepdim=True)
        elif self.in_channels != 3:
            raise VaegenError(f"the judge takes 1 or 3 channels, not {self.in_channels}")
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        penultimate, logits = self.net.forward_features(x)
        features = {FEATURE_PENULTIMATE: penultimate, FEATURE_LOGITS: logits}
        return tuple(features[name] for name in self.features_list)


def register_judge_extractor() -> str:
    """Register the judge extractor once per process (the registry refuses duplicates)."""
    if JUDGE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(JUDGE_EXTRACTOR, JudgeFeatureExtractor)
    return JUDGE_EXTRACTOR


class UInt8ImageDataset(Dataset):
    """uint8 [N, C, H, W] images -> uint8 3xHxW tensors; grayscale repeated to 3 channels."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        tensor = torch.as_tensor(images)
        if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] not in (1, 3):
            raise VaegenError(
                f"images must be uint8 [N, 1 or 3, H, W], got {tensor.dtype} {tuple(tensor.shape)}"
            )
        if len(tensor) == 0:
            raise VaegenError("no images to score")
        self.images = tensor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image
