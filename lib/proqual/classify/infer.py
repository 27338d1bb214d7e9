"""Classifier checkpoints and inference: PI-RADS and ISUP probabilities with the derived binary calls."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, Field

from proqual.classify.data import INPUTS, InputConfig, study_tensor
from proqual.errors import CheckpointError
from proqual.labels import Scheme, get_scheme
from proqual.study import Study


class ClassificationResult(BaseModel):
    study_id: str
    task: str
    scheme: str
    #: probability of each class of the scheme, by class name
    probabilities: dict[str, float]
    #: the clinically relevant positive call: P(PI-RADS >= 4) (>= 3 for pirads_ge3) or P(csPCa)
    positive_probability: float
    positive_name: str
    #: positive_probability >= threshold
    positive_call: bool
    threshold: float = 0.5
    model: dict = Field(default_factory=dict)


def build_classifier(config: dict):
    """Model from a checkpoint's config: {"backbone": "profound-conv", "preset", "n_classes", "hidden"}."""
    from proqual.nets.classifier import Classifier
    from proqual.nets.profound_conv import profound_conv

    backbone = config.get("backbone", "profound-conv")
    if backbone != "profound-conv":
        raise CheckpointError(f"unsupported backbone {backbone!r} in checkpoint config")
    encoder = profound_conv(config.get("preset", "small-cpu"))
    return Classifier(encoder, int(config["n_classes"]), hidden=int(config.get("hidden", 256)))


def classifier_config(*, preset: str, scheme: Scheme, inputs: InputConfig, hidden: int = 256) -> dict:
    return {
        "backbone": "profound-conv",
        "preset": preset,
        "n_classes": scheme.n_classes,
        "hidden": hidden,
        "scheme": scheme.name,
        "inputs": inputs.name,
    }


def load_classifier(path: str | Path, *, device: str = "cpu"):
    """(model, scheme, inputs) from a ProQual classifier checkpoint; never a model with random weights."""
    from proqual.checkpoints import checkpoint_version, load_checkpoint, read_checkpoint

    p = Path(path)
    blob = read_checkpoint(p, what="classifier checkpoint")
    config = blob.get("config") if isinstance(blob, dict) else None
    if not config:
        raise CheckpointError(f"{p}: no 'config' in checkpoint; not a ProQual classifier checkpoint")
    model = build_classifier(config)
    load_checkpoint(model, blob, strict=True)
    model.eval().to(device)
    model.version = checkpoint_version(p)
    return model, get_scheme(config["scheme"]), INPUTS[config.get("inputs", "small")]


@torch.inference_mode()
def classify_tensor(
    model, image: torch.Tensor, scheme: Scheme, *, device: str = "cpu"
) -> tuple[list[float], float]:
    logits = model(image[None].to(device))
    probs = torch.softmax(logits.float(), 1)[0].cpu().numpy()
    return [float(p) for p in probs], float(scheme.binary_prob(probs))


def classify_study(
    model,
    study: Study,
    scheme: Scheme,
    inputs: InputConfig,
    *,
    device: str = "cpu",
    image: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> ClassificationResult:
    """Class probabilities of one study (``image`` may be the preprocessed tensor from a shared cache)."""
    x = study_tensor(study, inputs) if image is None else image
    probs, pos = classify_tensor(model, x, scheme, device=device)
    positive_name = {"pirads_ge3": "PI-RADS>=3"}.get(
        scheme.name, "PI-RADS>=4" if scheme.task == "pirads" else "csPCa"
    )
    return ClassificationResult(
        study_id=study.study_id,
        task=scheme.task,
        scheme=scheme.name,
        probabilities={n: round(p, 4) for n, p in zip(scheme.class_names, probs, strict=True)},
        positive_probability=round(pos, 4),
        positive_name=positive_name,
        positive_call=pos >= threshold,
        threshold=threshold,
        model=getattr(model, "version", {}),
    )
