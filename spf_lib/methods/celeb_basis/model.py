"""Face vector → coefficients → two token embeddings: the only trainable part of Celeb Basis."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spf_lib.methods.celeb_basis.basis import embed_coefficients


class CelebBasisMLP(nn.Module):
    """One linear layer + LeakyReLU, reshaped to (2, k) and L2-normalised per column (the official recipe).

    ``init="official"`` is the official code's EqualLinear: weights drawn N(0, 1), bias 0, both multiplied by
    ``lr_mul`` at run time. Why it matters although the output is L2-normalised: Adam moves each weight by ~lr per
    step whatever its scale, so the RELATIVE change per step is lr / |w|. nn.Linear's default init (|w| ~ 1/sqrt(3F))
    makes the paper's lr ~40x more aggressive at F=512. The basis is a non-persistent buffer: it is a function of the
    base model and the names list, saved once in the adapter, not in every checkpoint.
    """

    def __init__(self, face_dim: int, basis: Any, negative_slope: float = 0.2, init: str = "official",
                 lr_mul: float = 1.0) -> None:
        super().__init__()
        self.k = int(basis.shape[1]) - 1
        self.linear = nn.Linear(face_dim, 2 * self.k)
        self.lr_mul = float(lr_mul)
        if init == "official":
            with torch.no_grad():
                self.linear.weight.normal_(0.0, 1.0)
                self.linear.bias.zero_()
        elif init != "torch":
            raise ValueError(f"init={init!r}: expected 'official' or 'torch'")
        self.act = nn.LeakyReLU(negative_slope)
        self.register_buffer("basis", basis.detach().float().clone(), persistent=False)

    def coefficients(self, face: torch.Tensor) -> torch.Tensor:
        """(N, F) L2-normalised face vectors → (N, 2, k) unit-norm coefficient rows (the per-identity code)."""
        w, b = self.linear.weight, self.linear.bias
        if self.lr_mul != 1.0:
            w, b = w * self.lr_mul, b * self.lr_mul
        c = self.act(nn.functional.linear(face.float(), w, b)).view(-1, 2, self.k)
        return nn.functional.normalize(c, dim=-1)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """(N, F) → (N, 2, D) token embeddings."""
        return embed_coefficients(self.coefficients(face), self.basis)
