"""Checkpoints in three layouts, loaded with clear errors and never silently partial.

(a) ``fcmae``: ProFound's FCMAE pretraining checkpoint. The encoder is stored in MinkowskiEngine's
    sparse layout under ``encoder.``: convolution kernels as ``...kernel`` of shape (k^3, C_in, C_out)
    (depth-wise: (k^3, C)), ``MinkowskiLinear`` as ``....linear.weight``, ``MinkowskiLayerNorm`` as
    ``....ln.weight``, GRN parameters as (1, C). :func:`remap_fcmae` turns it into dense ``Conv3d`` /
    ``Linear`` / ``LayerNorm`` weights; decoder, mask token and projection keys are dropped (reported).
    Kernel offsets are taken with the first spatial axis varying fastest (MinkowskiEngine's kernel
    region order, as in ConvNeXt-V2's own sparse-to-dense remapping). Only the encoder is loaded.
(b) ``profound_classifier``: ProFound's finetuned classifier, dense ``encoder.*`` + ``head.*``.
(c) ``proqual``: our own checkpoints, ``{"model": state_dict, "meta": ..., "config": ...}`` (MONAI
    Label's layout), or a plain state dict / ``{"state_dict": ...}``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from proqual.errors import CheckpointError

DROPPED_PREFIXES = ("decoder.", "mask_token", "proj.", "pred.", "decoder_embed", "decoder_pred")


@dataclass
class LoadReport:
    layout: str
    loaded: int
    dropped: list[str] = field(default_factory=list)
    #: model keys that the checkpoint did not provide (only allowed for the head with an fcmae checkpoint)
    not_in_checkpoint: list[str] = field(default_factory=list)
    source: str = ""


def _state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        "checkpoint holds no state dict (expected {'model': ...}, {'state_dict': ...} or tensors)"
    )


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.endswith(".kernel") or ".ln." in k or ".linear." in k for k in keys):
        return "fcmae"
    if any(k.startswith("encoder.") for k in keys) and any(k.startswith("head.") for k in keys):
        return "profound_classifier"
    return "proqual"


def _dense_kernel(v: torch.Tensor, depthwise: bool) -> torch.Tensor:
    k = round(v.shape[0] ** (1 / 3))
    if k**3 != v.shape[0]:
        raise CheckpointError(f"sparse kernel with {v.shape[0]} offsets is not a cube")
    if depthwise:  # (k^3, C) -> (C, 1, k, k, k)
        w = v.permute(1, 0).reshape(v.shape[1], 1, k, k, k)
    else:  # (k^3, C_in, C_out) -> (C_out, C_in, k, k, k)
        w = v.permute(2, 1, 0).reshape(v.shape[2], v.shape[1], k, k, k)
    return w.permute(0, 1, 4, 3, 2).contiguous()  # flat offset index has the first axis fastest


def sparse_kernel(w: torch.Tensor, depthwise: bool) -> torch.Tensor:
    """Inverse of the dense conversion (used to build sparse-layout test checkpoints)."""
    k = w.shape[-1]
    w = w.permute(0, 1, 4, 3, 2)
    if depthwise:
        return w.reshape(w.shape[0], k**3).permute(1, 0).contiguous()
    return w.reshape(w.shape[0], w.shape[1], k**3).permute(2, 1, 0).contiguous()


def remap_fcmae(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Sparse FCMAE checkpoint -> (dense encoder state dict without the ``encoder.`` prefix, dropped keys)."""
    dense, dropped = {}, []
    for key, v in sd.items():
        if not key.startswith("encoder.") or any(
            key.startswith(p) or f".{p}" in key for p in DROPPED_PREFIXES
        ):
            dropped.append(key)
            continue
        k = key[len("encoder.") :]
        parts = k.split(".")
        if len(parts) >= 2 and parts[-2] in ("ln", "linear"):
            parts.pop(-2)
        k = ".".join(parts)
        if k.endswith(".kernel"):
            k = k[: -len(".kernel")] + ".weight"
            v = _dense_kernel(v, depthwise="dwconv" in k)
        elif k.endswith(("grn.gamma", "grn.beta")):
            v = v.reshape(1, 1, 1, 1, -1)
        dense[k] = v
    return dense, dropped


def _check_and_load(
    module: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, *, allow_missing=()
) -> list[str]:
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:10])}")
        raise CheckpointError(f"{source}: checkpoint does not fit the model: " + " | ".join(parts))
    module.load_state_dict(sd, strict=False)
    return [k for k in own if k not in sd]


def read_checkpoint(path: str | Path, *, what: str = "checkpoint"):
    """``torch.load`` (weights only, on the CPU) with errors that name the file: missing or unreadable
    files raise :class:`CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: {what} not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for junk files
        raise CheckpointError(f"{p}: unreadable checkpoint ({exc})") from exc


def load_checkpoint(model: torch.nn.Module, src, *, strict: bool = True) -> LoadReport:
    """Load ``src`` (a path or an already loaded object) into ``model`` (a Classifier or a bare encoder).

    With ``strict`` (the default) every model key must come from the checkpoint -- except the head when
    an FCMAE pretraining checkpoint initialises a classifier's encoder, which is reported in
    ``not_in_checkpoint``. Raises :class:`CheckpointError` naming the file and listing the keys."""
    source = str(src) if isinstance(src, (str, Path)) else "checkpoint"
    obj = read_checkpoint(src, what="checkpoint file") if isinstance(src, (str, Path)) else src
    sd = _state_dict(obj)
    layout = detect_layout(sd)
    if layout != "fcmae" and isinstance(obj, dict) and "model" in obj and "meta" in obj:
        layout = "proqual"  # our own checkpoints (same key names as ProFound's classifier, plus meta/config)
    has_encoder = hasattr(model, "encoder") and hasattr(model, "head")
    if layout == "fcmae":
        dense, dropped = remap_fcmae(sd)
        target = model.encoder if has_encoder else model
        _check_and_load(target, dense, source)
        not_in = [f"head.{k}" for k in model.head.state_dict()] if has_encoder else []
        return LoadReport(layout, len(dense), dropped, not_in, source)
    if has_encoder and not any(k.startswith(("encoder.", "head.")) for k in sd):
        # an encoder-only checkpoint (e.g. our FCMAE-pretrained encoder) initialises the classifier's encoder
        _check_and_load(model.encoder, sd, source)
        return LoadReport("encoder", len(sd), [], [f"head.{k}" for k in model.head.state_dict()], source)
    if not has_encoder and any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    allow = () if strict else tuple(model.state_dict())
    not_in = _check_and_load(model, sd, source, allow_missing=allow)
    return LoadReport(layout, len(sd), [], not_in, source)


def save_checkpoint(
    model: torch.nn.Module, path: str | Path, *, meta: dict, config: dict | None = None, half: bool = False
) -> Path:
    """``{"model": state_dict, "meta": meta, "config": config}``, written atomically (temp + rename).

    ``half`` stores the floating-point tensors as float16 (half the file). ``load_state_dict`` copies
    them back into the model's float32 tensors, so loading needs nothing special; the model then
    computes in float32 with weights rounded to float16."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model": state, "meta": meta, "config": config or {}}, tmp)
    os.replace(tmp, p)
    return p


def checkpoint_version(path: str | Path) -> dict:
    """Identity of a checkpoint file: sha256 prefix, modification time (UTC) and size."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    st = p.stat()
    return {
        "path": str(p),
        "sha256": h.hexdigest()[:12],
        "mtime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds"),
        "bytes": st.st_size,
    }
