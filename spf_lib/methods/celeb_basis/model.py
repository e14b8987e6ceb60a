"""Face vector → coefficients → two token embeddings: the only trainable part of Celeb Basis."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spf_lib.methods.celeb_basis.basis import embed_coefficients


class CelebBasisMLP(nn.Module):
    """One linear layer + LeakyReLU, reshaped to (2, k) and L2-normalised per column (the official recipe).

    The basis is a non-persistent buffer: it is a function of the base model and the names list, and is saved once
    in the adapter, not in every checkpoint.
    """

    def __init__(self, face_dim: int, basis: Any, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.k = int(basis.shape[1]) - 1
        self.linear = nn.Linear(face_dim, 2 * self.k)
        self.act = nn.LeakyReLU(negative_slope)
        self.register_buffer("basis", basis.detach().float().clone(), persistent=False)

    def coefficients(self, face: torch.Tensor) -> torch.Tensor:
        """(N, F) L2-normalised face vectors → (N, 2, k) unit-norm coefficient rows (the per-identity code)."""
        c = self.act(self.linear(face.float())).view(-1, 2, self.k)
        return nn.functional.normalize(c, dim=-1)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """(N, F) → (N, 2, D) token embeddings."""
        return embed_coefficients(self.coefficients(face), self.basis)
