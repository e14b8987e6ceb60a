"""The Celeb Basis: mean + principal directions of celebrity-name token embeddings, one set per name column.

Why raw token-embedding rows (before positional embeddings and the transformer): a placeholder token is written into
exactly that table, so the basis must live in the same space; the text transformer then treats the two new rows like
any first-name/surname pair it has seen. Why per column: first names and surnames occupy different regions of the
table, so one mean and one set of directions per position keeps each new token near its own kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)
DEFAULT_K = 512
MultiToken = Literal["mean", "first", "skip"]


def names_path() -> Path:
    return Path(str(resources.files("spf_lib") / "assets" / "celeb_names.txt"))


def load_names(path: str | Path | None = None) -> list[str]:
    """Read a names file: one "First Last" per line, ``#`` comments; duplicates (case-insensitive) dropped."""
    p = Path(path) if path else names_path()
    if not p.is_file():
        raise SpfError(f"{p}: names file does not exist")
    out: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line.split()) < 2:
            raise SpfError(f"{p}:{n}: {line!r} needs a first name and a surname")
        if line.lower() not in seen:
            seen.add(line.lower())
            out.append(line)
    if len(out) < 2:
        raise SpfError(f"{p}: needs at least 2 names, found {len(out)}")
    return out


def word_vector(tokenizer: Any, table: Any, word: str, multi_token: MultiToken) -> Any | None:
    """The token-embedding vector of one name word; multi-token words are averaged, cut to the first, or skipped.

    Official Celeb Basis keeps names whose words are single CLIP tokens. Our DECIDE: average the word's tokens by
    default, so the same list works with any tokenizer (the tiny test tokenizer splits names into byte pieces).
    """
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        return None
    if len(ids) > 1 and multi_token == "skip":
        return None
    rows = table[ids[:1]] if multi_token == "first" else table[ids]
    return rows.mean(dim=0)


@dataclass
class CelebBasis:
    basis: Any              # (2, k+1, D): row 0 = column mean, rows 1..k = orthonormal components
    n_names: int            # names that contributed
    n_multi_token: int      # of those, how many had a word of more than one token

    @property
    def k(self) -> int:
        return int(self.basis.shape[1]) - 1

    @property
    def dim(self) -> int:
        return int(self.basis.shape[2])


def build_basis(tokenizer: Any, table: Any, names: list[str], k: int = DEFAULT_K,
                multi_token: MultiToken = "mean") -> CelebBasis:
    """Centre each column's name vectors, SVD, keep mean + top-k right-singular vectors.

    ``k`` is clipped to min(k, D, n_names) so tiny models work; SVD runs in float64 so the components are
    orthonormal to ~1e-12 whatever the table's dtype.
    """
    import torch

    if k < 1:
        raise SpfError(f"celeb_basis.k={k}: must be >= 1")
    table = table.detach().to("cpu", torch.float64)
    cols: list[list[Any]] = [[], []]
    n_multi = 0
    for name in names:
        words = name.split()
        vecs = [word_vector(tokenizer, table, w, multi_token) for w in (words[0], words[-1])]
        if any(v is None for v in vecs):
            continue
        n_multi += any(len(tokenizer(w, add_special_tokens=False).input_ids) > 1 for w in (words[0], words[-1]))
        cols[0].append(vecs[0])
        cols[1].append(vecs[1])
    n = len(cols[0])
    if n < 2:
        raise SpfError(f"celeb_basis: only {n} usable names (multi_token={multi_token!r}); need at least 2")
    dim = int(table.shape[1])
    kk = min(k, dim, n)
    if kk < k:
        log.info("celeb basis: k=%d clipped to %d (dim=%d, names=%d)", k, kk, dim, n)
    out = torch.empty(2, kk + 1, dim, dtype=torch.float64)
    for c in range(2):
        x = torch.stack(cols[c])
        mean = x.mean(dim=0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        out[c, 0] = mean
        out[c, 1:] = vh[:kk]
    return CelebBasis(basis=out.float(), n_names=n, n_multi_token=n_multi)


def basis_from_text_encoder(tokenizer: Any, text_encoder: Any, k: int = DEFAULT_K, names_file: str | None = None,
                            multi_token: MultiToken = "mean") -> CelebBasis:
    table = text_encoder.get_input_embeddings().weight
    return build_basis(tokenizer, table, load_names(names_file), k=k, multi_token=multi_token)


def embed_coefficients(coef: Any, basis: Any) -> Any:
    """coef (..., 2, k) → token embeddings (..., 2, D): e_c = coef_c · components_c + mean_c."""
    import torch

    return torch.einsum("...ck,ckd->...cd", coef, basis[:, 1:].to(coef)) + basis[:, 0].to(coef)
