"""V* → per-stage (K, V) tokens: the only trainable part of Beyond Inserting.

A learned V* embedding and 2·S learned query slots pass through a small pre-norm self-attention stack; each slot's
output, through a zero-initialised head, is added to an anchor. Zero heads make step 0 exactly "V* = person": K
tokens start at the word "person"'s table row, V tokens at the frozen encoder's hidden state of "person" in the
reference prompt, so the identity starts where the attention loss wants it and training only has to add identity.
"""

from __future__ import annotations

import torch
from torch import nn


class KVTokenGenerator(nn.Module):
    def __init__(self, dim: int, n_stages: int, init_token: torch.Tensor, anchor_v: torch.Tensor, heads: int = 4,
                 layers: int = 1) -> None:
        super().__init__()
        if dim % heads:
            heads = max(h for h in range(1, heads + 1) if dim % h == 0)
        self.n_stages = n_stages
        self.v_star = nn.Parameter(init_token.detach().float().clone())
        self.slots = nn.Parameter(torch.randn(2 * n_stages, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head_k = nn.Linear(dim, dim)
        self.head_v = nn.Linear(dim, dim)
        for h in (self.head_k, self.head_v):
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)
        self.register_buffer("anchor_v", anchor_v.detach().float().clone())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (k_tokens, v_tokens), each (S, D): K in token-embedding space, V in text-hidden space."""
        seq = torch.cat([self.v_star[None], self.v_star[None] + self.slots], dim=0)[None]
        out = self.encoder(seq)[0, 1:]
        s = self.n_stages
        return self.v_star + self.head_k(out[:s]), self.anchor_v + self.head_v(out[s:])
