"""Finetuning a ProFound-compatible classifier: full finetuning with layer-wise learning-rate decay
(AdamW), linear probing (frozen encoder) and training from scratch (the baseline). Class-balanced and
quality-stratified sampling, MONAI augmentations, AMP on CUDA, early stopping on the validation AUROC of
the scheme's positive call. The CLI (``proqual finetune``), the experiment grid and the MONAI Label
trainers all call :func:`finetune`.

Data-parallel training: with ``FinetuneConfig(distributed=True)`` inside an initialised
``torch.distributed`` process group (one process per rank, see :mod:`proqual.classify.distributed`, whose
:func:`~proqual.classify.distributed.finetune_distributed` starts them), the model is wrapped in
``DistributedDataParallel``; every rank draws the same stratified, class-balanced epoch order and trains on
its own disjoint shard of it (positions ``rank, rank + world_size, ...``; the tail that does not divide
evenly is left out, so every rank runs the same number of steps); ``batch_size`` is per rank. The epoch loss
is averaged over all ranks, BatchNorm statistics are taken from rank 0 after every epoch, and the validation
set is split across the ranks and its probabilities gathered, so every rank computes the same metrics and
makes the same early-stopping decision. Only rank 0 calls ``progress``; this function writes no files
(the caller of the launcher saves the checkpoint, once).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from proqual.errors import ValidationError
from proqual.labels import Scheme
from proqual.metrics import classification_report
from proqual.stratify import PoolItem, StratifiedSampler

log = logging.getLogger(__name__)

Mode = Literal["full", "linear", "scratch"]


@dataclass
class Example:
    """One preprocessed study: input (3, D, H, W), encoded class, quality stratum."""

    study_id: str
    image: torch.Tensor
    label: int
    stratum: str = "unknown"


@dataclass
class FinetuneConfig:
    mode: Mode = "full"
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    #: layer-wise learning-rate decay: group i of n gets lr * layer_decay ** (n - 1 - i)
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # only on CUDA (bf16 autocast)
    patience: int = 5  # early stopping: epochs without a better validation AUROC
    class_balance: bool = True
    augment: bool = True
    #: HQ fraction kept in every epoch (None: the finetune set's own make-up)
    hq_fraction: float | None = None
    #: data-parallel (DDP) across the ranks of the initialised torch.distributed process group; without
    #: one, training runs on this process alone (said in the result's ``distributed`` note)
    distributed: bool = False
    extra: dict = field(default_factory=dict)


def augmenter(seed: int):
    """MONAI augmentations: left-right flip, small affine, bias field, smoothing (array transforms)."""
    from monai.transforms import Compose, RandAffine, RandBiasField, RandFlip, RandGaussianSmooth

    t = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=2),
            RandAffine(
                prob=0.5, rotate_range=(0.0, 0.0, 0.15), scale_range=(0.0, 0.08, 0.08), padding_mode="zeros"
            ),
            RandBiasField(prob=0.3, coeff_range=(0.0, 0.1)),
            RandGaussianSmooth(prob=0.2, sigma_x=(0.25, 0.75), sigma_y=(0.25, 0.75), sigma_z=(0.25, 0.75)),
        ]
    )
    t.set_random_state(seed=seed)
    return t


def param_groups(model, cfg: FinetuneConfig) -> list[dict]:
    if cfg.mode == "linear":
        model.freeze_encoder()
        return [{"params": [p for p in model.head.parameters()], "lr": cfg.lr}]
    groups = model.layer_groups()
    n = len(groups)
    decay = 1.0 if cfg.mode == "scratch" else cfg.layer_decay
    return [{"params": g, "lr": cfg.lr * decay ** (n - 1 - i)} for i, g in enumerate(groups) if g]


def _batches(order: Seq[int], size: int):
    for i in range(0, len(order), size):
        yield list(order[i : i + size])


@torch.no_grad()
def predict_probs(
    model, images: Seq[torch.Tensor], *, device: str = "cpu", batch_size: int = 8
) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack(list(images[i : i + batch_size])).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(x)
        out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return np.concatenate(out)


def evaluate(model, examples: Seq[Example], scheme: Scheme, *, device: str = "cpu") -> dict[str, float]:
    probs = predict_probs(model, [e.image for e in examples], device=device)
    return classification_report([e.label for e in examples], probs, scheme)


def _process_group(cfg: FinetuneConfig) -> tuple[int, int, str | None]:
    """(rank, world size, note): (0, 1, ...) unless ``cfg.distributed`` inside an initialised group."""
    if not cfg.distributed:
        return 0, 1, None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1, "distributed requested, but torch.distributed is not initialised: trained on one process"
    return dist.get_rank(), dist.get_world_size(), None


def _evaluate_sharded(
    model, examples: Seq[Example], scheme: Scheme, *, device: str, rank: int, world: int
) -> dict[str, float]:
    """:func:`evaluate` with the examples split across the ranks and the probabilities gathered: every
    rank returns the metrics of the whole set."""
    import torch.distributed as dist

    mine = list(range(rank, len(examples), world))
    probs = (
        predict_probs(model, [examples[i].image for i in mine], device=device)
        if mine
        else np.zeros((0, scheme.n_classes), dtype=np.float32)
    )
    parts: list = [None] * world
    dist.all_gather_object(parts, (mine, probs))
    full = np.zeros((len(examples), scheme.n_classes), dtype=np.float32)
    for idx, p in parts:
        full[idx] = p
    return classification_report([e.label for e in examples], full, scheme)


def _all_reduce_sum(values: list[float], device: str) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _broadcast_buffers(model) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: after its last forward pass each
    rank has updated them from its own batch."""
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, 0)


def finetune(
    model,
    train: Seq[Example],
    *,
    scheme: Scheme,
    cfg: FinetuneConfig,
    val: Seq[Example] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``model`` (a :class:`proqual.nets.classifier.Classifier`) in place; keep the weights of the
    best validation AUROC (or the last epoch without a validation set). Returns history and metrics.

    With ``cfg.distributed`` in an initialised process group this is one rank of data-parallel training
    (module docstring); the result then has ``distributed``: rank, world size, the training indices this
    rank used in each epoch (``seen``) and a digest of its final parameters."""
    if len(train) < 2:
        raise ValidationError("train", f"need at least 2 labeled studies, got {len(train)}")
    bad = [e.study_id for e in train if not 0 <= e.label < scheme.n_classes]
    if bad:
        raise ValidationError("label", f"studies {bad[:5]} have labels outside 0..{scheme.n_classes - 1}")
    rank, world, dist_note = _process_group(cfg)
    distributed = world > 1
    if distributed and len(train) < 2 * world:
        raise ValidationError(
            "train", f"{world} ranks need at least {2 * world} studies (2 per rank), got {len(train)}"
        )
    torch.manual_seed(cfg.seed)
    dev = cfg.device
    model.to(dev)
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)  # freezes (linear)
    net = model  # what the training forward passes go through
    if distributed:
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # the depthwise kernels (C, 1, k, k, k) in channels_last_3d have a size-1 dimension whose stride
        # differs between the gradient and DDP's bucket view: the same memory layout, a spurious warning
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = DistributedDataParallel(
            model, device_ids=[torch.device(dev).index] if dev.startswith("cuda") else None
        )
    pool = [PoolItem(e.study_id, e.label, e.stratum if e.stratum in ("HQ", "LQ") else "LQ") for e in train]
    hq = sum(p.stratum == "HQ" for p in pool) / len(pool)
    target = hq if cfg.hq_fraction is None else cfg.hq_fraction
    sampler = StratifiedSampler(pool, hq_fraction=target, seed=cfg.seed, class_balance=cfg.class_balance)
    per_rank = len(sampler) // world  # every rank's share of an epoch (the same on all ranks)
    steps = cfg.epochs * math.ceil(per_rank / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(1, steps), pct_start=0.1
    )
    aug = augmenter(cfg.seed + rank) if cfg.augment else None  # each rank its own augmentation draws
    use_amp = cfg.amp and dev.startswith("cuda")
    history, best, best_state, stale, seen = [], -math.inf, None, 0, []
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.mode == "linear":
            model.encoder.eval()
        sampler.set_epoch(epoch)
        t0, total, n = time.perf_counter(), 0.0, 0
        order = list(sampler)  # the same on every rank: deterministic for (seed, epoch)
        if distributed:
            order = order[: per_rank * world][rank::world]
        used: list[int] = []
        for idx in _batches(order, cfg.batch_size):
            if len(idx) < 2:  # BatchNorm in the head needs two samples (same on every rank)
                continue
            imgs = [train[i].image for i in idx]
            if aug is not None:
                imgs = [torch.as_tensor(aug(im)).float() for im in imgs]
            x = torch.stack(imgs).to(dev)
            y = torch.tensor([train[i].label for i in idx], device=dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP: gradients averaged over the ranks here
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
            used.extend(idx)
        if distributed:
            total, n = _all_reduce_sum([total, n], dev)
            n = int(n)
            _broadcast_buffers(model)
            seen.append(used)
        row = {
            "epoch": epoch + 1,
            "loss": total / max(n, 1),
            "samples": n,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if val:
            if distributed:
                metrics = _evaluate_sharded(model, val, scheme, device=dev, rank=rank, world=world)
            else:
                metrics = evaluate(model, val, scheme, device=dev)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            score = metrics["auroc"] if not math.isnan(metrics["auroc"]) else -metrics.get("loss", 0)
            if score > best:
                best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
        history.append(row)
        if progress and rank == 0:
            progress(row)
        if val and stale >= cfg.patience:  # the same decision on every rank (same metrics)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    out = {
        "history": history,
        "best_val_auroc": None if best_state is None else best,
        "epochs_run": len(history),
        "sampler_notes": sampler.notes,
        "config": asdict(cfg),
        "scheme": scheme.name,
    }
    if distributed:
        from proqual.classify.distributed import parameter_digest

        out["distributed"] = {
            "rank": rank,
            "world_size": world,
            "seen": seen,
            "samples": sum(len(s) for s in seen),
            "parameters_sha256": parameter_digest(model),
        }
    elif cfg.distributed:
        out["distributed"] = {"rank": 0, "world_size": 1, "note": dist_note}
    return out
