"""Deterministic demo / world data: portraits rendered from shipped faces, with captions and exact labels.

Same arguments → byte-identical files (PNG without metadata, fixed compression, sorted JSON keys), so the DVC hash
of a regenerated folder does not change and the demo's data revision is reproducible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)


def _png_bytes(image) -> bytes:
    """PNG with no ancillary chunks (no time, no text): the bytes depend only on the pixels."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def synth_records(
    n: int, seed: int = 0, *, target_fraction: float = 0.5, fixed_for_target: dict[str, str] | None = None,
    fixed: dict[str, str] | None = None,
):
    """Yield (index, Attributes, Layout) for ``n`` images; ``fixed_for_target`` pins attributes of target images.

    WHY a per-image SeedSequence: image i does not depend on n, so a larger set extends a smaller one.
    Exactly round(n * target_fraction) images show the target, spread evenly (not by chance), so small sets are
    still balanced.
    """
    import numpy as np

    from spf_lib.world.attributes import sample_attributes
    from spf_lib.world.render import Layout

    if n < 1:
        raise SpfError(f"n={n}: need at least one image")
    if not 0.0 <= target_fraction <= 1.0:
        raise SpfError(f"target_fraction={target_fraction}: expected a number in [0, 1]")
    n_target = round(n * target_fraction)
    target_idx = {int(i) for i in np.floor(np.arange(n_target) * n / max(n_target, 1))} if n_target else set()
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        glasses = i in target_idx
        pins = dict(fixed or {})
        if glasses and fixed_for_target:
            pins.update(fixed_for_target)
        attrs = sample_attributes(rng, glasses=glasses, fixed=pins)
        yield i, attrs, Layout.sample(rng)


def synth_dataset(
    out_dir: str | Path, n: int = 24, seed: int = 0, *, target_fraction: float = 0.5, size: int = 256,
    fixed_for_target: dict[str, str] | None = None, fixed: dict[str, str] | None = None,
) -> Path:
    """Write ``images/*.png``, ``captions.jsonl`` and ``labels.jsonl`` into ``out_dir`` (atomically) and return it.

    ``captions.jsonl``: ``{"file": "images/00000.png", "caption": "..."}`` per line (the data contract);
    ``labels.jsonl``: the same ``file`` plus every attribute and the geometry jitter, for probes and benchmarks.
    """
    from tqdm import tqdm

    from spf_lib.io import atomic_dir
    from spf_lib.world.render import render_portrait

    out = Path(out_dir)
    records = list(synth_records(n, seed, target_fraction=target_fraction, fixed_for_target=fixed_for_target,
                                 fixed=fixed))
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        captions, labels = [], []
        for i, attrs, layout in tqdm(records, desc="synth", unit="img", disable=n < 50):
            rel = f"images/{i:05d}.png"
            (tmp / rel).write_bytes(_png_bytes(render_portrait(attrs, size, layout)))
            captions.append(json.dumps({"file": rel, "caption": attrs.caption()}, sort_keys=True))
            labels.append(json.dumps({"file": rel, **attrs.to_dict(), "layout": layout.__dict__}, sort_keys=True))
        (tmp / "captions.jsonl").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (tmp / "labels.jsonl").write_text("\n".join(labels) + "\n", encoding="utf-8")
    log.info("wrote %d images to %s", n, out)
    return out
