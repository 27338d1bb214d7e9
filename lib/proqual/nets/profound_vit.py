"""ProFound-ViT: a 3D ViT encoder in the MAE layout (timm-style parameter names).

Patches of 16 x 32 x 32 voxels (D, H, W) over a 64 x 256 x 256 input give 4 x 8 x 8 = 256 tokens; a class
token and fixed 3D sine-cosine position embeddings (as in MAE) are added; ``blocks.{i}`` are pre-norm
transformer blocks (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) and
``norm`` the final LayerNorm. ``forward_features`` returns the normalised class token (B, dim).
Presets: ``base`` (ViT-B: dim 768, depth 12, 12 heads) and ``tiny`` (tests: dim 64, depth 2, 2 heads,
input 16 x 64 x 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from proqual.errors import ValidationError


@dataclass(frozen=True)
class ViTPreset:
    dim: int
    depth: int
    heads: int
    input_size: tuple[int, int, int]
    patch: tuple[int, int, int] = (16, 32, 32)


PRESETS = {
    "base": ViTPreset(768, 12, 12, (64, 256, 256)),
    "tiny": ViTPreset(64, 2, 2, (16, 64, 64)),
}


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed (N, dim) sine-cosine embedding of a 3D token grid (dim split over the three axes)."""
    per_axis = (dim // 6) * 2
    axes = []
    for n in grid:
        pos = torch.arange(n, dtype=torch.float64)
        omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis / 2))
        out = pos[:, None] * omega[None]
        axes.append(torch.cat([out.sin(), out.cos()], 1))
    d, h, w = grid
    emb = torch.cat(
        [
            axes[0][:, None, None].expand(d, h, w, -1),
            axes[1][None, :, None].expand(d, h, w, -1),
            axes[2][None, None, :].expand(d, h, w, -1),
        ],
        -1,
    ).reshape(d * h * w, -1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ProFoundViT(nn.Module):
    def __init__(self, preset: ViTPreset, *, in_chans: int = 3):
        super().__init__()
        self.preset = preset
        self.grid = tuple(s // p for s, p in zip(preset.input_size, preset.patch, strict=True))
        self.patch_embed = PatchEmbed(in_chans, preset.dim, preset.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, preset.dim))
        n = self.grid[0] * self.grid[1] * self.grid[2]
        pos = torch.cat([torch.zeros(1, preset.dim), sincos_3d(self.grid, preset.dim)])[None]
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList([Block(preset.dim, preset.heads) for _ in range(preset.depth)])
        self.norm = nn.LayerNorm(preset.dim, eps=1e-6)
        self.out_dim = preset.dim
        self.n_tokens = n
        nn.init.normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.preset.input_size:
            raise ValidationError(
                "input", f"ProFound-ViT expects (B, C, {self.preset.input_size}), got {tuple(x.shape)}"
            )
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]

    def forward(self, x):
        return self.forward_features(x)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        first = [self.cls_token, *self.patch_embed.parameters()]
        return [
            first,
            *[list(b.parameters()) for b in self.blocks[:-1]],
            [*self.blocks[-1].parameters(), *self.norm.parameters()],
        ]


def profound_vit(preset: str = "base", *, in_chans: int = 3) -> ProFoundViT:
    if preset not in PRESETS:
        raise ValidationError(
            "preset", f"unknown ProFound-ViT preset {preset!r}; choose from {', '.join(PRESETS)}"
        )
    return ProFoundViT(PRESETS[preset], in_chans=in_chans)
