"""Score the image quality of studies with a trained QualityNet: the plain, JSON-ready result objects
used by the CLI, the MONAI Label app and (serialised) the Slicer extension."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from proqual import artifacts as A
from proqual.checkpoints import checkpoint_version, read_checkpoint
from proqual.errors import CheckpointError, InputError
from proqual.io.readers import Volume, read_volume
from proqual.quality.classical import classical_measures
from proqual.quality.inputs import SliceStack, batch_stacks, footprints, slice_stack
from proqual.quality.piqual import STUDY_RULE, study_piqual
from proqual.quality.prerequisites import PrerequisiteResult, check_prerequisites
from proqual.study import Sequence, Study

SCORED_SEQUENCES = (Sequence.T2W, Sequence.HBV, Sequence.ADC, Sequence.DWI, Sequence.DCE)


class SalientSlice(BaseModel):
    #: slice index along the source volume's third (z) voxel axis
    index: int
    #: patient coordinates (LPS, mm) of the slice centre
    position_lps: tuple[float, float, float]


class SequenceQuality(BaseModel):
    sequence: str
    #: continuous quality in [0, 1] (1 = no visible degradation)
    score: float
    #: PI-QUAL v2 class: 1 inadequate, 2 acceptable, 3 optimal
    piqual: int
    piqual_probs: dict[str, float]
    #: estimated artifact parameters (names of proqual.artifacts.PARAM_NAMES, each in [0, 1])
    artifacts: dict[str, float]
    slice_quality: list[float]
    saliency: list[float]
    salient_slice: SalientSlice
    prerequisites: list[PrerequisiteResult] = Field(default_factory=list)
    classical: dict[str, float | None] = Field(default_factory=dict)


class StudyQuality(BaseModel):
    study_id: str
    sequences: dict[str, SequenceQuality]
    #: study-level PI-QUAL v2 from the sequences (rule in ``study_rule``)
    study_piqual: int
    study_rule: str = STUDY_RULE
    model: dict = Field(default_factory=dict)
    seconds: float = 0.0


def load_quality_model(path: str | Path, *, device: str = "cpu"):
    """Load a quality checkpoint (``{"model", "config", "meta"}``): one :class:`QualityNet`, or a
    :class:`QualityEnsemble` when the config lists ``members`` (``proqual ensemble-quality``). A missing or
    incompatible file raises :class:`CheckpointError`; the model never runs with random weights."""
    from proqual.nets.quality_net import QualityEnsemble, QualityEnsembleConfig, QualityNet, QualityNetConfig

    p = Path(path)
    ckpt = read_checkpoint(p, what="quality checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{p}: not a ProQual quality checkpoint (needs 'model' and 'config')")
    cfg = ckpt["config"]
    try:
        if isinstance(cfg, dict) and "members" in cfg:
            model = QualityEnsemble(QualityEnsembleConfig.from_dict(cfg))
        else:
            model = QualityNet(QualityNetConfig.from_dict(cfg))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{p}: config does not describe a quality model ({exc})") from exc
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{p}: missing keys {sorted(missing)}; unexpected keys {sorted(unexpected)}")
    model.eval().to(device)
    model.version = checkpoint_version(p)
    model.meta = ckpt.get("meta", {})
    # float16 storage (ensemble-quality --half), so a rewrite of the checkpoint can keep it
    model.stored_half = any(
        isinstance(v, torch.Tensor) and v.dtype == torch.float16 for v in ckpt["model"].values()
    )
    return model


def _result(
    seq: Sequence, stack: SliceStack, out: dict, i: int, n: int, volume: Volume, metadata
) -> SequenceQuality:
    probs = torch.softmax(out["piqual_logits"][i].float(), 0).cpu().numpy()
    sal = out["saliency"][i, :n].float().cpu().numpy()
    k = int(np.argmax(sal))
    return SequenceQuality(
        sequence=seq.value,
        score=round(float(out["score"][i]), 4),
        piqual=int(np.argmax(probs)) + 1,
        piqual_probs={str(c + 1): round(float(p), 4) for c, p in enumerate(probs)},
        artifacts={
            name: round(float(v), 4)
            for name, v in zip(A.PARAM_NAMES, out["params"][i].cpu().numpy(), strict=True)
        },
        slice_quality=[round(float(v), 4) for v in out["slice_quality"][i, :n].cpu().numpy()],
        saliency=[round(float(v), 4) for v in sal],
        salient_slice=SalientSlice(
            index=int(stack.source_index[k]),
            position_lps=tuple(round(float(v), 3) for v in stack.positions_lps[k]),
        ),
        prerequisites=check_prerequisites(seq, metadata) if metadata is not None else [],
        classical={
            key: (None if not np.isfinite(v) else round(float(v), 4))
            for key, v in classical_measures(volume.array).items()
        },
    )


@torch.inference_mode()
def score_volumes(
    model, volumes: dict[Sequence, Volume], *, metadata: dict | None = None, device: str = "cpu"
) -> dict[str, SequenceQuality]:
    """Score several sequences of one study in one batched forward pass."""
    from proqual.nets.quality_net import SEQUENCE_PROMPTS

    if not volumes:
        return {}
    seqs = list(volumes)
    stacks = [slice_stack(volumes[s]) for s in seqs]
    x, mask = batch_stacks([st.slices for st in stacks])
    fp = footprints([st.fov for st in stacks], x.shape[-1])
    prompt = torch.tensor(
        [SEQUENCE_PROMPTS.get(s, SEQUENCE_PROMPTS[Sequence.OTHER]) for s in seqs], device=device
    )
    out = model(x.to(device), sequence=prompt, mask=mask.to(device), footprint=fp.to(device))
    meta = metadata or {}
    return {
        s.value: _result(s, st, out, i, st.slices.shape[0], volumes[s], meta.get(s))
        for i, (s, st) in enumerate(zip(seqs, stacks, strict=True))
    }


def score_study(
    model, study: Study, *, device: str = "cpu", volumes: dict[Sequence, Volume] | None = None
) -> StudyQuality:
    """Quality of every scorable sequence of a study (``volumes`` may hold images already read, e.g. from
    a shared cache). Raises :class:`InputError` when the study has no scorable sequence."""
    t0 = time.perf_counter()
    present = [s for s in SCORED_SEQUENCES if s in study.sequences] or [s for s in study.sequences]
    if not present:
        raise InputError(study.source, f"study {study.study_id} has no images to score")
    vols = {s: (volumes or {}).get(s) or read_volume(_paths(study, s)) for s in present}
    seqs = score_volumes(
        model, vols, metadata={s: study.sequences[s].metadata for s in present}, device=device
    )
    return StudyQuality(
        study_id=study.study_id,
        sequences=seqs,
        study_piqual=study_piqual({k: v.piqual for k, v in seqs.items()}),
        model=getattr(model, "version", {}),
        seconds=round(time.perf_counter() - t0, 3),
    )


def _paths(study: Study, seq: Sequence):
    ref = study.sequences[seq]
    return ref.paths if len(ref.paths) > 1 else ref.paths[0]
