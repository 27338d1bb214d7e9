"""Classifier = encoder + ProFound's head: Linear(C, 256) - BatchNorm1d - ReLU - Linear(256, n).

Parameter names ``encoder.*`` and ``head.{0,1,3}.*`` match ProFound's finetuned classifier checkpoints.
"""

from __future__ import annotations

from torch import nn


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int, *, hidden: int = 256):
        super().__init__()
        self.encoder = encoder
        self.n_classes = n_classes
        self.head = nn.Sequential(
            nn.Linear(encoder.out_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.head(self.encoder.forward_features(x))

    def freeze_encoder(self) -> None:
        """Linear probing: the encoder's weights stop learning and it stays in eval mode."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups from the stem to the head (layer-wise learning-rate decay)."""
        return [*self.encoder.layer_groups(), list(self.head.parameters())]
