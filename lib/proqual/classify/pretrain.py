"""FCMAE-style masked-reconstruction pretraining of a ProFound-Conv encoder (the "pretrained" arm of the
phantom experiment; the official weights were pretrained the same way on clinical data).

Dense approximation of FCMAE: a random 60 % of the encoder's output cells are masked; their input
patches are zeroed (FCMAE uses sparse convolutions so that masked voxels never leak; zeroing is the usual
dense stand-in), the encoder runs on the masked input, and a light decoder (1x1x1 conv, one depth-wise
block, 1x1x1 conv to patch voxels) reconstructs the per-patch-normalised voxels of the masked patches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch
import torch.nn.functional as F
from torch import nn


def feature_map(encoder, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last feature map (B, C, d, h, w), before pooling."""
    for down, stage in zip(encoder.downsample_layers, encoder.stages, strict=True):
        x = stage(down(x))
    return x


def patch_size(encoder, input_shape: Seq[int]) -> tuple[int, int, int]:
    with torch.no_grad():
        fm = feature_map(encoder, torch.zeros(1, *input_shape))
    return tuple(int(i // f) for i, f in zip(input_shape[1:], fm.shape[2:], strict=True))


class FCMAEDecoder(nn.Module):
    def __init__(self, in_dim: int, patch: tuple[int, int, int], channels: int = 3, dim: int = 64):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_dim, dim, 1)
        self.dw = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.out = nn.Conv3d(dim, channels * patch[0] * patch[1] * patch[2], 1)

    def forward(self, fm: torch.Tensor) -> torch.Tensor:
        x = self.proj(fm)
        x = x + F.gelu(self.norm(self.dw(x)))
        return self.out(x)


def _patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, d, h, w, C * pd * ph * pw)."""
    b, c, d, h, w = x.shape
    pd, ph, pw = patch
    x = x.reshape(b, c, d // pd, pd, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, d // pd, h // ph, w // pw, -1)


def masked_loss(
    encoder, decoder: FCMAEDecoder, x: torch.Tensor, *, mask_ratio: float, generator: torch.Generator
):
    b = x.shape[0]
    grid = [s // p for s, p in zip(x.shape[2:], decoder.patch, strict=True)]
    n = grid[0] * grid[1] * grid[2]
    keep = int(round(n * (1 - mask_ratio)))
    noise = torch.rand(b, n, generator=generator)
    mask = torch.ones(b, n)
    mask.scatter_(1, noise.argsort(1)[:, :keep], 0.0)  # 1 = masked
    mask = mask.reshape(b, *grid).to(x.device)
    up = mask.repeat_interleave(decoder.patch[0], 1).repeat_interleave(decoder.patch[1], 2)
    up = up.repeat_interleave(decoder.patch[2], 3)[:, None]
    pred = decoder(feature_map(encoder, x * (1 - up)))  # (B, P, d, h, w)
    pred = pred.permute(0, 2, 3, 4, 1)
    target = _patchify(x, decoder.patch)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def pretrain_fcmae(
    encoder,
    images: Seq[torch.Tensor],
    *,
    epochs: int = 10,
    batch_size: int = 4,
    lr: float = 1.5e-3,
    mask_ratio: float = 0.6,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Pretrain ``encoder`` in place on preprocessed inputs (3, D, H, W); returns the loss history."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    patch = patch_size(encoder, images[0].shape)
    decoder = FCMAEDecoder(encoder.out_dim, patch, channels=images[0].shape[0]).to(device)
    encoder.to(device).train()
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    history = []
    for epoch in range(epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(images), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            x = torch.stack([images[j] for j in order[i : i + batch_size]]).to(device)
            loss = masked_loss(encoder, decoder, x, mask_ratio=mask_ratio, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            n += len(x)
        row = {"epoch": epoch + 1, "loss": total / n, "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        if progress:
            progress(row)
    return {"history": history, "patch": list(patch), "mask_ratio": mask_ratio, "n_images": len(images)}
