"""Training of the quality model: upstream on simulated degradations, downstream on expert ratings.

Upstream (MedIQA-style pretraining): clean volumes (phantoms by default, or any clean volumes a user
points at) are degraded by :mod:`proqual.artifacts` with known parameters. Targets per sample:

- ``params``: the artifact parameter vector (:func:`proqual.artifacts.param_vector`), regression;
- ``score``: ``1 - severity`` (combined severity of the degradations; 1 = clean);
- ``piqual``: the PI-QUAL v2 class the severity maps to (:func:`piqual_from_severity`);
- ``saliency``: gland area per slice (normalised) where a gland mask is known: the salient-slice head
  learns that gland-bearing slices matter.

Downstream: expert PI-QUAL v2 ratings per sequence (1..3), the same loop with the classification loss
and a score target derived from the rating (:data:`RATING_SCORE`); this is the function the MONAI Label
quality trainer calls.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from proqual import artifacts as A
from proqual.errors import ValidationError
from proqual.io.readers import Volume
from proqual.quality.inputs import SLICE_SIZE, batch_stacks, footprints, slice_stack
from proqual.study import Sequence

log = logging.getLogger(__name__)

#: severity limits of the PI-QUAL v2 classes used for simulated data: severity <= 0.2 -> 3 (optimal),
#: <= 0.55 -> 2 (acceptable), else 1 (inadequate)
PIQUAL_SEVERITY_LIMITS: tuple[float, float] = (0.2, 0.55)
#: score target of an expert rating during downstream finetuning (centre of each class's score band)
RATING_SCORE: dict[int, float] = {1: 0.22, 2: 0.62, 3: 0.9}


def piqual_from_severity(severity: float) -> int:
    """PI-QUAL v2 class (1..3) of a simulated degradation of the given severity."""
    lo, hi = PIQUAL_SEVERITY_LIMITS
    return 3 if severity <= lo else (2 if severity <= hi else 1)


@dataclass
class QualitySample:
    """One training example: a slice stack and its targets."""

    slices: torch.Tensor  # (S, 1, H, W) float16 to save memory
    sequence: Sequence
    score: float
    piqual: int
    params: np.ndarray
    saliency: np.ndarray  # (S,), sums to 1
    family: str = "clean"
    severity: float = 0.0
    #: 1.0 when the parameter targets are known (simulated), 0.0 for expert-rated real images
    has_params: float = 1.0
    #: canvas rows and columns the image covers (:attr:`SliceStack.fov`); None: the whole canvas
    fov: tuple[int, int] | None = None


def saliency_target(gland: np.ndarray | None, source_index: np.ndarray) -> np.ndarray:
    """Per-slice target weights: gland area of each slice (source z index), normalised; uniform when
    no gland is known or visible."""
    n = len(source_index)
    if gland is None:
        return np.full(n, 1.0 / n, np.float32)
    area = gland.reshape(-1, gland.shape[-1]).sum(0).astype(np.float64)  # per source z
    w = np.array([area[i] if 0 <= i < len(area) else 0.0 for i in source_index])
    if w.sum() <= 0:
        return np.full(n, 1.0 / n, np.float32)
    return (w / w.sum()).astype(np.float32)


def simulate_samples(
    volume: Volume,
    sequence: Sequence,
    *,
    rng: np.random.Generator,
    n: int,
    gland: np.ndarray | None = None,
    clean_fraction: float = 0.12,
    pair_fraction: float = 0.15,
    slice_size: int = SLICE_SIZE,
    pixel_mm: float | None = None,
    gamma_range: tuple[float, float] | None = (0.6, 1.6),
    fov_crop: tuple[float, float] | None = None,
    fov_crop_probability: float = 0.3,
    zero_background: float = 0.0,
    family_weights: Mapping[str, float] | None = None,
) -> list[QualitySample]:
    """``n`` degraded versions of one clean volume with their targets (see module doc). ``gland`` is a
    mask on the volume's grid (for the saliency target). ``gamma_range``: half of the samples start from
    the clean volume with its contrast changed by an intensity power law (``(v / max) ** gamma * max``,
    gamma drawn log-uniformly from the range), so the model does not learn one phantom contrast as
    "clean"; ``None`` turns it off. ``fov_crop`` (lo, hi): a ``fov_crop_probability`` share of the
    samples start from an in-plane crop of the clean volume, each in-plane axis cut to a fraction drawn
    uniformly from the range, about the centre (a smaller field of view or matrix, as real volumes
    have), before it is degraded; ``None`` (the default) turns it off. ``zero_background``: the share of
    samples whose clean volume first gets an exactly zero background (:func:`zero_background_of`), as
    masked or background-suppressed real images have. ``family_weights`` (family name -> relative
    weight, 1 for families not named): how often each family is drawn for a degraded sample; ``None``
    (the default) draws the families of the sequence uniformly."""
    fams = A.families_for(sequence.value)
    pick_p = family_probabilities(fams, family_weights)
    target = "ADC" if sequence is Sequence.ADC else "HBV"
    out = []
    top = float(volume.array.max())
    for _ in range(n):
        r = rng.random()
        seed = int(rng.integers(0, 2**31 - 1))
        clean = volume.array
        if gamma_range is not None and top > 0 and rng.random() < 0.5:
            g = float(np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1]))))
            clean = (np.power(np.clip(volume.array, 0, None) / top, g) * top).astype(np.float32)
        grid, mask = volume, gland
        if fov_crop is not None and rng.random() < fov_crop_probability:
            grid, clean, mask = _crop_in_plane(volume, clean, gland, rng, fov_crop)
        if zero_background > 0 and rng.random() < zero_background:
            clean = zero_background_of(clean, level=float(rng.uniform(0.03, 0.15)))
        if r < clean_fraction:
            img, params, name = clean, [], "clean"
        else:
            k = 2 if r > 1 - pair_fraction else 1
            chosen = list(rng.choice(len(fams), size=k, replace=False, p=pick_p))
            picked = [fams[i] for i in chosen]
            img, params = A.compose(
                clean,
                grid.spacing,
                picked,
                seed=seed,
                pe_axis=int(rng.integers(0, 2)),
                sequence=target,
            )
            name = "+".join(f.value for f in picked)
        sev = A.combined_severity(params)
        stack = slice_stack(
            Volume(img, grid.spacing, grid.origin, grid.direction), size=slice_size, pixel_mm=pixel_mm
        )
        out.append(
            QualitySample(
                slices=stack.slices.half(),
                sequence=sequence,
                score=1.0 - sev,
                piqual=piqual_from_severity(sev),
                params=A.param_vector(params) if params else np.zeros(len(A.PARAM_NAMES), np.float32),
                saliency=saliency_target(mask, stack.source_index),
                family=name,
                severity=sev,
                fov=stack.fov,
            )
        )
    return out


def check_family_weights(
    weights: Mapping[str, float], *, field: str = "family_weights", sequences: Seq[str] = ()
) -> None:
    """Raise :class:`ValidationError` on ``field`` unless every name in ``weights`` is an artifact family,
    every weight is a finite number >= 0 and, for each of ``sequences`` (e.g. ``"T2W"``), at least two
    of its families keep a weight above 0 (a caller can so check the weights before any simulation)."""
    known = {f.value for f in A.Family}
    for name, w in weights.items():
        if name not in known:
            raise ValidationError(field, f"unknown family {name!r}; known: {', '.join(sorted(known))}")
        if not (np.isfinite(w) and w >= 0):
            raise ValidationError(field, f"weight of {name} must be a finite number >= 0, got {w}")
    for seq in sequences:
        _check_two_drawn(A.families_for(seq), weights, field=field, label=seq)


def _check_two_drawn(fams: Seq[A.Family], weights: Mapping[str, float], *, field: str, label: str) -> None:
    if sum(float(weights.get(f.value, 1.0)) > 0 for f in fams) < 2:
        raise ValidationError(
            field, f"at least two families of {label} need a weight above 0 (pairs are drawn)"
        )


def family_probabilities(fams: Seq[A.Family], weights: Mapping[str, float] | None) -> np.ndarray | None:
    """Draw probabilities of ``fams`` from relative ``weights`` (family name -> weight >= 0; 1 for
    families not named; names of families that do not apply to this sequence are ignored). ``None``
    when ``weights`` is ``None`` (uniform draws, the same random stream as before the option existed)."""
    if weights is None:
        return None
    check_family_weights(weights)
    _check_two_drawn(fams, weights, field="family_weights", label="each sequence")
    w = np.array([float(weights.get(f.value, 1.0)) for f in fams])
    return w / w.sum()


def zero_background_of(array: np.ndarray, *, level: float) -> np.ndarray:
    """A copy of ``array`` (axes x, y, z) with the background set to exactly zero: per slice, the voxels
    outside :func:`proqual.artifacts.object_mask` at ``level``, except holes enclosed by the object (dark
    organs stay)."""
    from scipy import ndimage

    if array.size == 0 or float(array.max()) <= 0:
        return array.copy()
    keep = A.object_mask(array, level=level)
    for z in range(array.shape[2]):
        keep[:, :, z] = ndimage.binary_fill_holes(keep[:, :, z])
    return np.where(keep, array, 0).astype(np.float32)


def _crop_in_plane(
    volume: Volume,
    array: np.ndarray,
    gland: np.ndarray | None,
    rng: np.random.Generator,
    fraction: tuple[float, float],
) -> tuple[Volume, np.ndarray, np.ndarray | None]:
    """A random in-plane sub-block of ``array`` (on ``volume``'s grid, axes x, y, z): each of the first
    two axes keeps a fraction drawn from ``fraction`` of its voxels (at least 8), centred on the field of
    view up to a random shift of a quarter of the voxels cut away (a smaller field of view is still
    placed on the anatomy; a crop of mostly air would not be a clean image). Returns the cropped grid
    (origin moved to the block's first voxel), the array and the gland mask."""
    lo, hi = fraction
    if not 0 < lo <= hi <= 1:
        raise ValidationError("fov_crop", f"fractions must satisfy 0 < lo <= hi <= 1, got {fraction}")
    start, stop = [0, 0, 0], list(array.shape)
    for ax in (0, 1):
        n = array.shape[ax]
        keep = min(n, max(8, int(round(n * rng.uniform(lo, hi)))))
        slack = n - keep
        start[ax] = slack // 2 + int(rng.integers(-(slack // 4), slack // 4 + 1))
        stop[ax] = start[ax] + keep
    sl = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    origin = tuple(float(v) for v in volume.index_to_world(start))
    grid = Volume(np.ascontiguousarray(array[sl]), volume.spacing, origin, volume.direction, volume.source)
    return grid, grid.array, None if gland is None else gland[sl]


@dataclass
class CleanVolume:
    """A clean volume to degrade: its sequence kind and, when known, the gland mask on its grid."""

    volume: Volume
    sequence: Sequence
    gland: np.ndarray | None = None


def phantom_volumes(
    *,
    n_studies: int,
    seed: int,
    preset: str = "sample",
    start: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[CleanVolume]:
    """The clean sequence volumes of phantom studies ``start .. start + n_studies - 1`` (all three
    sequences, gland masks on each sequence's grid)."""
    from proqual.phantom import make_study

    out: list[CleanVolume] = []
    for i in range(n_studies):
        study = make_study(start + i, seed=seed, preset=preset)
        gland_t2 = study.masks["gland"].array > 0
        for seq, vol in study.volumes.items():
            gland = gland_t2 if seq is Sequence.T2W else _mask_on_grid(study.masks["gland"], vol)
            out.append(CleanVolume(vol, seq, gland))
        if progress:
            progress(i + 1, n_studies)
    return out


class FreshDegradations:
    """Training data that is simulated anew for every epoch: ``per_volume`` fresh degradations of each
    clean volume, drawn from a generator seeded by ``(seed, epoch)`` (reproducible, and independent of
    when it runs). The simulator costs about 35 ms per PI-CAI-sized T2W sample, a fraction of a training
    step, so the model never sees the same degraded image twice instead of memorising a fixed set.
    ``sequence_weights`` (sequence name -> weight > 0, 1 for sequences not named): a volume of that
    sequence gets ``round(per_volume * weight)`` degradations (at least one), so a sequence the model
    finds harder can be seen more often; ``None`` (the default): ``per_volume`` for every volume.
    ``kwargs`` go to :func:`simulate_samples`."""

    def __init__(
        self,
        volumes: Seq[CleanVolume],
        *,
        per_volume: int,
        seed: int,
        sequence_weights: Mapping[str, float] | None = None,
        **kwargs,
    ):
        if not volumes:
            raise ValidationError("volumes", "no clean volumes to degrade")
        if per_volume < 1:
            raise ValidationError("per_volume", f"must be >= 1, got {per_volume}")
        check_sequence_weights(sequence_weights or {})
        self.volumes = list(volumes)
        self.per_volume = per_volume
        self.seed = seed
        self.sequence_weights = dict(sequence_weights or {})
        self.kwargs = kwargs

    def count(self, sequence: Sequence) -> int:
        """Degradations per epoch of one volume of ``sequence``."""
        w = float(self.sequence_weights.get(sequence.value, 1.0))
        return max(1, int(round(self.per_volume * w)))

    def __len__(self) -> int:
        return sum(self.count(v.sequence) for v in self.volumes)

    def __call__(self, epoch: int) -> list[QualitySample]:
        rng = np.random.default_rng((self.seed, epoch))
        out: list[QualitySample] = []
        for v in self.volumes:
            out += simulate_samples(
                v.volume, v.sequence, rng=rng, n=self.count(v.sequence), gland=v.gland, **self.kwargs
            )
        return out


def check_sequence_weights(weights: Mapping[str, float], *, field: str = "sequence_weights") -> None:
    """Raise :class:`ValidationError` on ``field`` unless every name in ``weights`` is a
    :class:`proqual.study.Sequence` value (e.g. ``"HBV"``) and every weight a finite number above 0."""
    known = {s.value for s in Sequence}
    for name, w in weights.items():
        if name not in known:
            raise ValidationError(field, f"unknown sequence {name!r}; known: {', '.join(sorted(known))}")
        if not (np.isfinite(w) and w > 0):
            raise ValidationError(field, f"weight of {name} must be a finite number above 0, got {w}")


def phantom_samples(
    *,
    n_studies: int,
    per_volume: int,
    seed: int,
    preset: str = "sample",
    start: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **kwargs,
) -> list[QualitySample]:
    """One fixed set of samples from phantom studies ``start .. start + n_studies - 1`` (all three
    sequences): the draw of epoch 0 of :class:`FreshDegradations`."""
    vols = phantom_volumes(n_studies=n_studies, seed=seed, preset=preset, start=start, progress=progress)
    return FreshDegradations(vols, per_volume=per_volume, seed=seed, **kwargs)(0)


def _mask_on_grid(mask: Volume, target: Volume) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto another volume's grid."""
    import SimpleITK as sitk

    res = sitk.Resample(mask.to_sitk(), target.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    return Volume.from_sitk(res).array > 0


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    #: loss weights
    w_score: float = 4.0
    w_piqual: float = 0.5
    w_params: float = 2.0
    w_saliency: float = 0.3
    #: pairwise ranking loss over every pair of samples in a batch whose severities differ by more than
    #: ``rank_min_gap`` (RankNet-style logistic loss on the predicted severities at temperature
    #: ``rank_temperature``): the per-family SRCC pools volumes and sequences, so the score must rank
    #: across images, not only fit each one
    w_rank: float = 1.0
    rank_min_gap: float = 0.05
    rank_temperature: float = 0.1
    #: batches made of blocks of this many samples of one artifact family (0: random batches); see
    #: :func:`family_order`
    family_block: int = 0
    #: fraction of training samples whose prompt is replaced by OTHER, so that the OTHER prompt (used
    #: for sequences the model does not know) is trained as a generic one
    prompt_dropout: float = 0.2
    #: probability that a training input is mirrored along each in-plane axis (independently; inputs and
    #: their footprints alike, the targets do not depend on it), so the model cannot tie its scores to
    #: which way the phantom anatomy or a shading gradient runs; 0 (off) for the shipped weights
    flip: float = 0.0
    #: learning rate of the k-space spike branch (:class:`proqual.nets.quality_net.QualityNet`'s
    #: ``kspace``) as a multiple of ``lr``, so a branch added to a trained model at zero can learn faster
    #: than the layers that are only finetuned; 1 (one rate for all) for every shipped model but c6 (for
    #: which an ablation at 1 gave the same spike figures: model card)
    kspace_lr_scale: float = 1.0
    #: the same for the between-slice level branch (``levels``, :func:`proqual.nets.quality_net.slice_level_features`)
    levels_lr_scale: float = 1.0
    extra: dict = field(default_factory=dict)


def _batches(
    samples: list[QualitySample], batch_size: int, rng: np.random.Generator | None, *, family_block: int = 0
):
    """Batches of ``batch_size`` in a random order (``rng``; ``None``: in order). With ``family_block``
    K > 0 (and ``rng``) a batch is made of blocks of K samples that share an artifact family, drawn
    from different volumes and sequences (see :func:`family_order`)."""
    if rng is None:
        order = np.arange(len(samples))
    elif family_block > 0:
        order = family_order(samples, family_block, rng)
    else:
        order = rng.permutation(len(samples))
    for i in range(0, len(order), batch_size):
        yield [samples[j] for j in order[i : i + batch_size]]


def family_order(samples: Seq[QualitySample], block: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``samples`` in which consecutive runs of ``block`` indices share a family: a
    sample's family is the first one in its name (``"bias+noise"`` -> bias); a clean sample joins a family
    of its sequence drawn at random. Each family's samples are shuffled and cut into blocks (the last
    one may be shorter) and the blocks are shuffled. The per-family evaluation pools volumes and
    sequences, so blocks put pairs of one family from different images into the ranking loss."""
    if block < 1:
        raise ValidationError("family_block", f"must be >= 1, got {block}")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.family == "clean":
            fams = A.families_for(s.sequence.value if s.sequence is not Sequence.OTHER else "T2W")
            key = fams[int(rng.integers(len(fams)))].value
        else:
            key = s.family.split("+")[0]
        groups.setdefault(key, []).append(i)
    blocks = []
    for key in sorted(groups):
        idx = rng.permutation(np.asarray(groups[key]))
        blocks += [idx[j : j + block] for j in range(0, len(idx), block)]
    return np.concatenate([blocks[k] for k in rng.permutation(len(blocks))])


def _collate(batch: list[QualitySample], device: str):
    from proqual.nets.quality_net import SEQUENCE_PROMPTS

    x, mask = batch_stacks([b.slices.float() for b in batch])
    s_max = x.shape[1]
    sal = torch.zeros((len(batch), s_max))
    for i, b in enumerate(batch):
        sal[i, : len(b.saliency)] = torch.from_numpy(b.saliency)
    return {
        "x": x.to(device),
        "mask": mask.to(device),
        "sequence": torch.tensor([SEQUENCE_PROMPTS[b.sequence] for b in batch], device=device),
        "score": torch.tensor([b.score for b in batch], dtype=torch.float32, device=device),
        "piqual": torch.tensor([b.piqual - 1 for b in batch], device=device),
        "params": torch.from_numpy(np.stack([b.params for b in batch])).to(device),
        "has_params": torch.tensor([b.has_params for b in batch], device=device),
        "saliency": sal.to(device),
        "footprint": footprints([b.fov for b in batch], x.shape[-1]).to(device),
    }


def mirror_in_plane(batch: dict, which: np.ndarray) -> None:
    """Mirror, in place, the inputs ``x`` (B, S, C, H, W) and ``footprint`` (B, 1, H, W) of a collated
    batch: sample i along W where ``which[i, 0]`` and along H where ``which[i, 1]``."""
    for col, dim in ((0, -1), (1, -2)):
        rows = torch.from_numpy(np.flatnonzero(which[:, col])).to(batch["x"].device)
        if len(rows):
            for key in ("x", "footprint"):
                batch[key][rows] = batch[key][rows].flip(dim)


def forward(model, batch: dict) -> dict:
    return model(batch["x"], sequence=batch["sequence"], mask=batch["mask"], footprint=batch["footprint"])


def losses(out: dict, batch: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    l_score = F.smooth_l1_loss(out["score"], batch["score"], beta=0.1)
    l_piqual = F.cross_entropy(out["piqual_logits"], batch["piqual"])
    per = F.smooth_l1_loss(out["params"], batch["params"], beta=0.1, reduction="none").mean(1)
    l_params = (per * batch["has_params"]).sum() / batch["has_params"].sum().clamp(min=1)
    sal = out["saliency"].clamp(min=1e-8)
    l_sal = -(batch["saliency"] * sal.log()).sum(1).mean()
    l_rank = rank_loss(
        out["score"], batch["score"], min_gap=cfg.rank_min_gap, temperature=cfg.rank_temperature
    )
    total = (
        cfg.w_score * l_score
        + cfg.w_piqual * l_piqual
        + cfg.w_params * l_params
        + cfg.w_saliency * l_sal
        + cfg.w_rank * l_rank
    )
    return {
        "total": total,
        "score": l_score,
        "piqual": l_piqual,
        "params": l_params,
        "saliency": l_sal,
        "rank": l_rank,
    }


def rank_loss(
    pred: torch.Tensor, target: torch.Tensor, *, min_gap: float, temperature: float
) -> torch.Tensor:
    """Mean logistic loss ``log(1 + exp(-(pred_i - pred_j) / T))`` over the ordered pairs with
    ``target_i - target_j > min_gap``; zero when a batch has no such pair."""
    diff_t = target[:, None] - target[None, :]
    keep = diff_t > min_gap
    if not bool(keep.any()):
        return pred.sum() * 0.0
    diff_p = (pred[:, None] - pred[None, :])[keep]
    return F.softplus(-diff_p / temperature).mean()


#: the branches that can have a learning rate of their own: module name -> (TrainConfig field, what the
#: model needs to have the branch)
BRANCH_LR = {
    "kspace": ("kspace_lr_scale", "the k-space spike branch (kspace_peaks > 0)"),
    "levels": ("levels_lr_scale", "the slice-level branch (slice_levels)"),
}


def param_groups(model, cfg: TrainConfig) -> tuple[list[dict], list[float]]:
    """The optimizer's parameter groups and their peak learning rates: one group at ``cfg.lr``, and for
    every branch of :data:`BRANCH_LR` whose scale is not 1 a group of its parameters (any module of that
    name, in one model or in every member of an ensemble) at ``cfg.lr`` times the scale. A scale for a
    model without the branch is a :class:`ValidationError` naming the field."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups, rates, taken = [], [], set()
    for module, (field_name, needs) in BRANCH_LR.items():
        scale = getattr(cfg, field_name)
        if not (math.isfinite(scale) and scale > 0):
            raise ValidationError(field_name, f"must be a positive number, got {scale}")
        if scale == 1:
            continue
        branch = {name for name, _ in params if module in name.split(".")}
        if not branch:
            raise ValidationError(field_name, f"{scale:g} needs a model with {needs}")
        groups.append({"params": [p for name, p in params if name in branch]})
        rates.append(cfg.lr * scale)
        taken.update(branch)
    rest = {"params": [p for name, p in params if name not in taken]}
    return [rest, *groups], [cfg.lr, *rates]


def train(
    model,
    train_samples: list[QualitySample] | FreshDegradations,
    *,
    cfg: TrainConfig,
    val_samples: list[QualitySample] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``model`` in place; returns the history. Keeps the weights of the best validation SRCC.

    ``train_samples`` is a fixed list (every epoch sees the same samples) or a
    :class:`FreshDegradations` (new samples every epoch; the next epoch's are simulated on a
    background thread while the current one trains)."""
    if len(train_samples) == 0:
        raise ValidationError("train_samples", "no training samples")
    from concurrent.futures import ThreadPoolExecutor

    from proqual.nets.quality_net import SEQUENCE_PROMPTS

    fresh = isinstance(train_samples, FreshDegradations)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(cfg.device)
    groups, max_lr = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train_samples) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(steps, 1), pct_start=0.15)
    history: list[dict] = []
    best, best_state = -math.inf, None
    pool = ThreadPoolExecutor(1, thread_name_prefix="proqual-simulate") if fresh else None
    upcoming = pool.submit(train_samples, 0) if pool else None
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            if pool:
                data = upcoming.result()
                upcoming = pool.submit(train_samples, epoch + 1) if epoch + 1 < cfg.epochs else None
            else:
                data = train_samples
            row = _train_epoch(model, data, opt, sched, cfg, rng, SEQUENCE_PROMPTS[Sequence.OTHER])
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 1), **row}
            if val_samples:
                row.update(evaluate(model, val_samples, device=cfg.device))
                if row["srcc"] > best:
                    best = row["srcc"]
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(row)
            if progress:
                progress(row)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "history": history,
        "best_val_srcc": None if best_state is None else best,
        "config": asdict(cfg),
        "fresh_samples_per_epoch": fresh,
    }


def _train_epoch(model, samples, opt, sched, cfg: TrainConfig, rng: np.random.Generator, other: int) -> dict:
    """One pass over ``samples``; returns the mean of every loss term."""
    model.train()
    totals, n = {}, 0
    for chunk in _batches(samples, cfg.batch_size, rng, family_block=cfg.family_block):
        batch = _collate(chunk, cfg.device)
        if cfg.prompt_dropout > 0:
            drop = torch.from_numpy(rng.random(len(chunk)) < cfg.prompt_dropout).to(cfg.device)
            batch["sequence"] = batch["sequence"].masked_fill(drop, other)
        if cfg.flip > 0:
            mirror_in_plane(batch, rng.random((len(chunk), 2)) < cfg.flip)
        parts = losses(forward(model, batch), batch, cfg)
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v.item() * len(chunk)
        n += len(chunk)
    return {f"loss_{k}": v / n for k, v in totals.items()}


@torch.no_grad()
def predict(
    model, samples: Seq[QualitySample], *, device: str = "cpu", batch_size: int = 16
) -> dict[str, np.ndarray]:
    model.eval()
    scores, classes = [], []
    for i in range(0, len(samples), batch_size):
        batch = _collate(list(samples[i : i + batch_size]), device)
        out = forward(model, batch)
        scores.append(out["score"].float().cpu().numpy())
        classes.append(out["piqual_logits"].argmax(1).cpu().numpy() + 1)
    return {"score": np.concatenate(scores), "piqual": np.concatenate(classes)}


def evaluate(model, samples: Seq[QualitySample], *, device: str = "cpu") -> dict[str, float]:
    """SRCC / PLCC / KRCC / RMSE of the predicted severity (1 - score) against the true severity, and
    PI-QUAL class accuracy."""
    from proqual.metrics import krcc, plcc, rmse, srcc

    pred = predict(model, samples, device=device)
    sev_true = np.array([s.severity for s in samples])
    sev_pred = 1.0 - pred["score"]
    return {
        "srcc": float(srcc(sev_true, sev_pred)),
        "plcc": float(plcc(sev_true, sev_pred)),
        "krcc": float(krcc(sev_true, sev_pred)),
        "rmse": float(rmse(sev_true, sev_pred)),
        "piqual_accuracy": float(np.mean(pred["piqual"] == np.array([s.piqual for s in samples]))),
    }


def rated_samples(
    items: Iterable[tuple[Volume, Sequence, int]],
    *,
    slice_size: int = SLICE_SIZE,
    pixel_mm: float | None = None,
) -> list[QualitySample]:
    """Downstream samples from expert-rated volumes: (volume, sequence, PI-QUAL v2 rating 1..3)."""
    out = []
    for vol, seq, rating in items:
        if rating not in RATING_SCORE:
            raise ValidationError("piqual", f"rating must be 1..3, got {rating}")
        stack = slice_stack(vol, size=slice_size, pixel_mm=pixel_mm)
        score = RATING_SCORE[rating]
        out.append(
            QualitySample(
                slices=stack.slices.half(),
                sequence=seq,
                score=score,
                piqual=rating,
                params=np.zeros(len(A.PARAM_NAMES), np.float32),
                saliency=saliency_target(None, stack.source_index),
                family="rated",
                severity=1.0 - score,
                has_params=0.0,
                fov=stack.fov,
            )
        )
    return out


def save_quality_checkpoint(model, path: str | Path, *, meta: dict, half: bool = False) -> Path:
    """``{"model": state_dict, "config": net config, "meta": {...}}`` written atomically (``half``: weights
    stored as float16, see :func:`proqual.checkpoints.save_checkpoint`)."""
    from proqual.checkpoints import save_checkpoint

    return save_checkpoint(model, path, meta=meta, config=model.config.to_dict(), half=half)
