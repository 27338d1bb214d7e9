"""QualityNet: a prompt-conditioned, salient-slice image-quality model for one MR sequence.

Input: a stack of S axial slices (B, S, 1, H, W) (see :mod:`proqual.quality.inputs`), a prompt
(sequence kind and anatomy) and a mask of the real slices (B, S).

1. A small 2D CNN (strided convolutions, batch norm, ReLU) encodes every slice together with its
   differences to the neighbouring slices (2.5-D input: through-plane blur and slice-to-slice motion
   show in those differences); mean and standard-deviation pooling of the last stage and of a
   mid-resolution stage keep content, texture (noise, ringing) and low-frequency shading (bias field)
   statistics. The pooling is taken over the image's footprint on the canvas (the pixels its field of
   view covers, given by the caller), not over the zero padding around a small field of view: a 48 x 48 ADC
   on the 128 x 128 canvas would otherwise have its statistics diluted sevenfold and dominated by the
   step from image to padding. The prompt modulates the slice features (FiLM), so the same weights learn what "good"
   looks like for T2W, ADC, HBV, or an unknown sequence (``OTHER``, also used during training by
   prompt dropout so that it is a trained, generic prompt).
   With ``kspace_peaks`` > 0, evidence of k-space spikes (:func:`kspace_peak_features`, from the power
   spectrum averaged over the slices, where a spike hidden by noise in the image stands out) is mapped
   linearly and added to every slice's features. With ``slice_levels``, each slice's overall intensity
   level against the stack's (:func:`slice_level_features`) is mapped linearly and added too: the layer
   norm of the slice features removes most of a slice's overall scale, so shading that varies between
   slices (a bias field along the slice axis) is otherwise nearly invisible.
2. A light inter-slice context (two residual 1D convolutions along the slice axis) lets each slice see
   its neighbours (through-plane blur, motion that varies across slices).
3. Salient-slice assessment: per slice a quality in [0, 1] and a saliency logit; a masked softmax over
   slices gives the saliency weights, and the sequence score is the saliency-weighted mean of the slice
   qualities. Trained with a gland-presence target, the saliency learns that gland-bearing slices are the
   diagnostically relevant ones.
4. Heads: the sequence score in [0, 1], PI-QUAL v2 class logits (3: inadequate, acceptable, optimal) and
   the artifact parameter regression (``n_params`` outputs in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from proqual.study import Sequence

#: prompt index of each sequence kind; anything unknown maps to OTHER
SEQUENCE_PROMPTS: dict[Sequence, int] = {
    Sequence.T2W: 0,
    Sequence.ADC: 1,
    Sequence.HBV: 2,
    Sequence.DWI: 3,
    Sequence.DCE: 4,
    Sequence.OTHER: 5,
}
ANATOMY_PROMPTS: dict[str, int] = {"prostate": 0, "other": 1}


@dataclass
class QualityNetConfig:
    n_params: int = 20
    widths: tuple[int, ...] = (16, 32, 64, 96, 128)
    prompt_dim: int = 16
    n_piqual: int = 3
    #: feed each slice with its differences to the previous and next slice (2.5-D input)
    neighbours: bool = True
    #: index of the encoder stage whose pooled features are added to the last stage's (None: last only)
    mid_stage: int | None = 2
    #: pool over the image's footprint on the canvas instead of the whole canvas (see module doc)
    masked_pool: bool = True
    #: k-space peak features (see :func:`kspace_peak_features`): how many of the strongest peaks are fed
    #: to the slice features; 0: none (checkpoints written before the option existed)
    kspace_peaks: int = 0
    #: between-slice intensity level features (see :func:`slice_level_features`); False for
    #: checkpoints written before the option existed
    slice_levels: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QualityNetConfig:
        d = dict(d)
        d["widths"] = tuple(d.get("widths", cls.widths))
        # checkpoints written before these options existed used single-slice input, last stage only
        d.setdefault("neighbours", False)
        d.setdefault("mid_stage", None)
        d.setdefault("masked_pool", False)
        return cls(**d)


def kspace_peak_features(
    x: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor, k: int
) -> torch.Tensor:
    """Evidence of k-space spikes, per image: (B, S, H, W) slices, (B, S) real-slice mask and (B, 1, H, W)
    footprint -> (B, k + 1).

    A spike is one corrupted k-space sample, the same in every slice: a stripe pattern that noise can
    hide in the image but that stands out as an isolated peak in the power spectrum averaged over the
    slices. The spectrum is taken over the image's footprint only (the zero padding of a small field
    of view would smear the peak and add the padding edges' own spectrum). Per frequency the log power
    is compared with the mean log power of its 24 neighbours in a 5 x 5 window (k-space wraps around);
    the lowest frequencies (within 2 samples of the centre on both axes), where an image's own
    spectrum peaks, are left out. The spectrum of a real image is symmetric, so one spike makes two
    equal peaks. Returned: the ``k`` largest of these contrasts (natural log units,
    divided by 4) and the amplitude of the strongest peak's stripe relative to the image scale
    (``(log(|F| / N) + 5) / 2``, N the footprint's pixel count). An image without real slices, or a
    footprint under 8 pixels on a side, gets zeros."""
    b = x.shape[0]
    out = torch.zeros((b, k + 1), dtype=torch.float32, device=x.device)
    for i in range(b):
        fp = footprint[i, 0] > 0
        rows, cols = fp.any(1).nonzero().flatten(), fp.any(0).nonzero().flatten()
        sl = x[i][mask[i]]
        if len(rows) < 8 or len(cols) < 8 or sl.shape[0] == 0:
            continue
        sl = sl[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float()
        h, w = sl.shape[-2:]
        power = torch.fft.fft2(sl).abs().square().mean(0)
        log_p = torch.log(power + 1e-12)
        ring = F.avg_pool2d(F.pad(log_p[None, None], (2, 2, 2, 2), mode="circular"), 5, stride=1)[0, 0]
        contrast = log_p - (ring * 25 - log_p) / 24
        fy = torch.fft.fftfreq(h, device=x.device).abs()[:, None] * h
        fx = torch.fft.fftfreq(w, device=x.device).abs()[None] * w
        contrast = contrast.masked_fill((fy <= 2) & (fx <= 2), float("-inf")).flatten()
        top, idx = contrast.topk(k)
        amp = 0.5 * torch.log(power.flatten()[idx[0]] + 1e-12) - math.log(h * w)
        out[i, :k] = top / 4
        out[i, k] = (amp + 5) / 2
    return out


#: features per slice of :func:`slice_level_features`
N_LEVEL_FEATURES = 4
#: a slice needs this many positive footprint pixels to have a level
LEVEL_MIN_PIXELS = 16


def slice_level_features(x: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """Evidence of shading between slices: (B, S, H, W) slices (scaled by the stack's robust intensity,
    :mod:`proqual.quality.inputs`), (B, S) real-slice mask and (B, 1, H, W) footprint -> (B, S, 4).

    A bias field that varies along the slice axis scales whole slices up or down, which the slice
    features barely keep. A slice's level is the log of the median of its positive footprint pixels (a
    slice with fewer than :data:`LEVEL_MIN_PIXELS` has no level): a median scales with the slice and, unlike
    a mean over pixels above a threshold, does not change which pixels it looks at as the slice gets
    darker. ``d`` is that level minus the median level of the stack. Per slice: ``d`` and ``|d|``; per
    image, the same on every real slice: the mean absolute change of ``d`` between neighbouring slices
    that both have a level, and the standard deviation of ``d``. All in units of 0.25 (natural log),
    ``d`` clipped to [-8, 8]. Slices without a level get zeros for the first two, padded slices for all
    four."""
    x = x.float()
    real = mask.bool()
    inside = (x > 0) & (footprint > 0) & real[:, :, None, None]
    has = inside.sum((-2, -1)) >= LEVEL_MIN_PIXELS
    values = torch.where(inside, x, torch.full_like(x, float("nan"))).flatten(2)
    level = torch.log(torch.nanmedian(values, dim=2).values.clamp_min(1e-12))
    level = torch.where(has, level, torch.full_like(level, float("nan")))
    median = torch.nanmedian(level, dim=1, keepdim=True).values
    d = torch.where(has, (level - median) * 4, torch.zeros_like(level)).nan_to_num(0.0).clamp(-8, 8)
    n = has.sum(1, keepdim=True).clamp_min(1)
    mean = d.sum(1, keepdim=True) / n
    std = ((((d - mean) * has) ** 2).sum(1, keepdim=True) / n).sqrt()
    pair = has[:, 1:] & has[:, :-1]
    step = ((d[:, 1:] - d[:, :-1]).abs() * pair).sum(1, keepdim=True) / pair.sum(1, keepdim=True).clamp_min(1)
    per_image = torch.cat([step, std], 1)[:, None].expand(-1, x.shape[1], -1)
    return torch.cat([torch.stack([d, d.abs()], -1), per_image], -1) * real[:, :, None]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class QualityNet(nn.Module):
    def __init__(self, config: QualityNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or QualityNetConfig()
        w = cfg.widths
        cin = 3 if cfg.neighbours else 1
        self.stages = nn.ModuleList([_block(cin if i == 0 else w[i - 1], w[i]) for i in range(len(w))])
        # mean and std pooling of the last stage (and of the mid stage)
        self.embed_dim = e = 2 * (w[-1] + (w[cfg.mid_stage] if cfg.mid_stage is not None else 0))
        self.sequence_embedding = nn.Embedding(len(SEQUENCE_PROMPTS), cfg.prompt_dim)
        self.anatomy_embedding = nn.Embedding(len(ANATOMY_PROMPTS), cfg.prompt_dim)
        self.film = nn.Linear(cfg.prompt_dim, 2 * e)
        self.context = nn.ModuleList([nn.Conv1d(e, e, 3, padding=1) for _ in range(2)])
        self.norm = nn.LayerNorm(e)
        # k-space peak features, added to every slice's features; zero at the start, so that adding the
        # branch to a trained model (:func:`with_kspace_peaks`) leaves its outputs unchanged
        self.kspace = nn.Linear(cfg.kspace_peaks + 1, e) if cfg.kspace_peaks else None
        if self.kspace is not None:
            nn.init.zeros_(self.kspace.weight)
            nn.init.zeros_(self.kspace.bias)
        # between-slice level features, also added at zero (:func:`with_slice_levels`)
        self.levels = nn.Linear(N_LEVEL_FEATURES, e) if cfg.slice_levels else None
        if self.levels is not None:
            nn.init.zeros_(self.levels.weight)
            nn.init.zeros_(self.levels.bias)
        self.slice_quality = nn.Linear(e, 1)
        self.slice_saliency = nn.Linear(e, 1)
        self.piqual_head = nn.Sequential(
            nn.Linear(e + cfg.prompt_dim, e), nn.GELU(), nn.Linear(e, cfg.n_piqual)
        )
        self.params_head = nn.Sequential(
            nn.Linear(e + cfg.prompt_dim, e), nn.GELU(), nn.Linear(e, cfg.n_params)
        )
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        for conv in self.context:  # residual branches start as identity
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @staticmethod
    def _pool(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean and standard deviation over the spatial axes; ``weight`` (N, 1, h, w) >= 0 (not all zero
        per row) weights the pixels (the footprint's share of each pixel)."""
        flat = x.flatten(2)
        if weight is None:
            return torch.cat([flat.mean(2), (flat.var(2, unbiased=False) + 1e-6).sqrt()], 1)
        w = weight.flatten(2)
        w = w / w.sum(2, keepdim=True)
        mean = (flat * w).sum(2, keepdim=True)
        var = (((flat - mean) ** 2) * w).sum(2)
        return torch.cat([mean.squeeze(2), (var + 1e-6).sqrt()], 1)

    @staticmethod
    def footprint(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, 1, H, W) -> (B, 1, H, W): 1 where some real slice is non-zero (the image on the
        zero-padded canvas); the whole canvas for a volume that is zero everywhere."""
        nz = ((x[:, :, 0] != 0) & mask[:, :, None, None]).any(1, keepdim=True)
        empty = ~nz.flatten(1).any(1)
        nz[empty] = True
        return nz.to(x.dtype)

    def encode_slices(self, x: torch.Tensor, footprint: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) -> (N, F) pooled slice features; ``footprint`` (N, 1, H, W) restricts the pooling
        to the image (see :meth:`footprint`)."""

        def pool(t: torch.Tensor) -> torch.Tensor:
            w = None if footprint is None else F.adaptive_avg_pool2d(footprint, t.shape[-2:])
            return self._pool(t, w)

        pooled = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == self.config.mid_stage:
                pooled.append(pool(x))
        pooled.append(pool(x))
        return torch.cat(pooled, 1)

    @staticmethod
    def with_neighbours(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, 1, H, W) -> (B, S, 3, H, W): each slice, its difference to the previous and to the next
        real slice (zero at the ends of the stack and next to padded slices)."""
        m = mask[:, :, None, None, None].to(x.dtype)
        x = x * m
        prev = torch.zeros_like(x)
        nxt = torch.zeros_like(x)
        prev[:, 1:] = (x[:, 1:] - x[:, :-1]) * m[:, :-1]
        nxt[:, :-1] = (x[:, 1:] - x[:, :-1]) * m[:, 1:]
        return torch.cat([x, prev * m, nxt * m], dim=2)

    def forward(
        self,
        x: torch.Tensor,
        *,
        sequence: torch.Tensor | None = None,
        anatomy: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        footprint: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``footprint`` (B, 1, H, W): the canvas pixels each image covers
        (:func:`proqual.quality.inputs.footprints`), used by footprint pooling; when it is not given it
        is guessed from the non-zero pixels (:meth:`footprint`), which is right for images whose
        background is not exactly zero."""
        if x.dim() != 5:
            raise ValueError(f"expected (B, S, 1, H, W), got {tuple(x.shape)}")
        b, s = x.shape[:2]
        dev = x.device
        sequence = (
            torch.full((b,), SEQUENCE_PROMPTS[Sequence.OTHER], device=dev) if sequence is None else sequence
        )
        anatomy = torch.zeros(b, dtype=torch.long, device=dev) if anatomy is None else anatomy
        mask = torch.ones((b, s), dtype=torch.bool, device=dev) if mask is None else mask.bool()
        prompt = self.sequence_embedding(sequence) + self.anatomy_embedding(anatomy)  # (B, P)

        fp = None
        if self.config.masked_pool or self.kspace is not None or self.levels is not None:
            fp = self.footprint(x, mask) if footprint is None else footprint.to(x.dtype)
        peaks = levels = None
        if self.kspace is not None:
            peaks = kspace_peak_features(x[:, :, 0], mask, fp, self.config.kspace_peaks)
        if self.levels is not None:
            levels = slice_level_features(x[:, :, 0], mask, fp)
        fp = fp.repeat_interleave(s, dim=0) if self.config.masked_pool else None  # (B * S, 1, H, W)
        if self.config.neighbours:
            x = self.with_neighbours(x, mask)
        h = self.norm(self.encode_slices(x.reshape(b * s, *x.shape[2:]), fp).reshape(b, s, -1))
        if peaks is not None:
            h = h + self.kspace(peaks.to(h.dtype))[:, None]
        if levels is not None:
            h = h + self.levels(levels.to(h.dtype))
        gamma, beta = self.film(prompt).chunk(2, dim=-1)
        h = h * (1 + gamma[:, None]) + beta[:, None]
        m = mask[:, :, None].to(h.dtype)
        h = h * m
        t = h.transpose(1, 2)
        for conv in self.context:
            t = t + torch.relu(conv(t)) * m.transpose(1, 2)
        h = t.transpose(1, 2)

        slice_q = torch.sigmoid(self.slice_quality(h).squeeze(-1))
        logits = self.slice_saliency(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        saliency = torch.softmax(logits, dim=1)
        score = (saliency * slice_q).sum(1)
        pooled = torch.cat([(saliency[:, :, None] * h).sum(1), prompt], 1)
        return {
            "score": score,
            "piqual_logits": self.piqual_head(pooled),
            "params": torch.sigmoid(self.params_head(pooled)),
            "slice_quality": slice_q * mask,
            "saliency": saliency,
            "embedding": pooled[:, : self.embed_dim],
        }


def _grown(model: nn.Module, new_keys: set[str], **change) -> nn.Module:
    """``model`` (a :class:`QualityNet` or a :class:`QualityEnsemble`, whose members all get it) rebuilt
    with its config changed by ``change``, every trained weight kept and only the parameters ``new_keys``
    new (a branch that starts at zero, so the outputs do not change until it is trained); a network whose
    config already has ``change`` is kept as it is."""
    if isinstance(model, QualityEnsemble):
        members = [_grown(m, new_keys, **change) for m in model.members]
        model.members = nn.ModuleList(members)
        model.config = replace(model.config, members=[m.config for m in members])
        return model
    if all(getattr(model.config, k) == v for k, v in change.items()):
        return model
    new = QualityNet(replace(model.config, **change)).to(next(model.parameters()).device)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or set(missing) != new_keys:
        raise RuntimeError(f"adding {sorted(new_keys)}: missing {missing}, unexpected {unexpected}")
    new.train(model.training)
    return new


def with_kspace_peaks(model: nn.Module, k: int) -> nn.Module:
    """``model`` (a :class:`QualityNet` or a :class:`QualityEnsemble`, whose members all get it) with a
    k-space peak branch of ``k`` peaks (:func:`kspace_peak_features`), started at zero so that the outputs
    do not change until it is trained; the model itself when it already has that branch. A model with a
    branch of another size is a ``ValueError``."""
    if k < 1:
        raise ValueError(f"k-space peaks must be >= 1, got {k}")
    members = model.members if isinstance(model, QualityEnsemble) else [model]
    other = {m.config.kspace_peaks for m in members} - {0, k}
    if other:
        raise ValueError(f"the model already has a k-space peak branch of {max(other)} peaks, not {k}")
    return _grown(model, {"kspace.weight", "kspace.bias"}, kspace_peaks=k)


def with_slice_levels(model: nn.Module) -> nn.Module:
    """``model`` (a :class:`QualityNet` or a :class:`QualityEnsemble`, whose members all get it) with the
    between-slice level branch (:func:`slice_level_features`), started at zero so that the outputs do
    not change until it is trained; a network that already has it is kept as it is."""
    return _grown(model, {"levels.weight", "levels.bias"}, slice_levels=True)


#: the in-plane mirror images a :class:`QualityEnsemble` with ``flips`` scores: the tensor dims flipped
#: for each view of a (B, S, 1, H, W) input (none, W, H, both)
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass
class QualityEnsembleConfig:
    """The configs of the members of a :class:`QualityEnsemble`; ``flips``: also score the in-plane mirror
    images of every input (:data:`FLIP_VIEWS`) and average over them."""

    members: list[QualityNetConfig]
    flips: bool = False

    def to_dict(self) -> dict:
        return {"members": [m.to_dict() for m in self.members], "flips": self.flips}

    @classmethod
    def from_dict(cls, d: dict) -> QualityEnsembleConfig:
        flips = d.get("flips", False)
        if not isinstance(flips, bool):
            raise ValueError(f"flips must be true or false, got {flips!r}")
        return cls([QualityNetConfig.from_dict(m) for m in d["members"]], flips=flips)


class QualityEnsemble(nn.Module):
    """The mean of several :class:`QualityNet` members (trained with different seeds): the same inputs and
    outputs as one member. ``score``, ``params``, ``slice_quality`` and ``saliency`` are the members'
    means (a mean of saliency weights still sums to 1); ``piqual_logits`` are the log of the mean class
    probabilities, so that a softmax of them gives the members' mean probabilities; ``embedding`` is the
    members' embeddings side by side. With ``config.flips`` every member also scores the in-plane mirror
    images of the input (one batch of four views) and each output is averaged over views before the members
    are combined, so the score is the same for an image and its mirror image (a shading gradient and the
    same gradient reversed, for instance); the slice axis is never flipped."""

    def __init__(self, config: QualityEnsembleConfig):
        super().__init__()
        if not config.members:
            raise ValueError("an ensemble needs at least one member")
        self.config = config
        self.members = nn.ModuleList(QualityNet(c) for c in config.members)
        self.embed_dim = sum(m.embed_dim for m in self.members)

    def _views(self, x: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, dict, int]:
        """The input with its mirror images stacked along the batch (view-major) and the keyword
        arguments to match, and the number of views."""
        if not self.config.flips:
            return x, kwargs, 1
        n = len(FLIP_VIEWS)
        xs = torch.cat([x.flip(d) if d else x for d in FLIP_VIEWS])
        kw = {}
        for k, v in kwargs.items():
            if v is None:
                kw[k] = None
            elif k == "footprint":  # (B, 1, H, W): the same in-plane axes as x
                kw[k] = torch.cat([v.flip(d) if d else v for d in FLIP_VIEWS])
            else:  # per image or per slice: the same for every view
                kw[k] = torch.cat([v] * n)
        return xs, kw, n

    def forward(self, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
        xs, kw, n = self._views(x, kwargs)
        b = x.shape[0]
        outs = []
        for m in self.members:
            o = m(xs, **kw)
            if n > 1:  # mean over views; the class logits become the mean probabilities' log
                o = {k: v.reshape(n, b, *v.shape[1:]) for k, v in o.items()}
                probs = torch.softmax(o.pop("piqual_logits").float(), -1).mean(0)
                o = {k: v.mean(0) for k, v in o.items()}
                o["piqual_logits"] = probs.clamp_min(1e-12).log()
            outs.append(o)
        out = {
            k: torch.stack([o[k] for o in outs]).mean(0)
            for k in ("score", "params", "slice_quality", "saliency")
        }
        probs = torch.stack([torch.softmax(o["piqual_logits"].float(), -1) for o in outs]).mean(0)
        out["piqual_logits"] = probs.clamp_min(1e-12).log()
        out["embedding"] = torch.cat([o["embedding"] for o in outs], -1)
        return out
