"""SD3.5 Medium's architecture on the meta device (no memory): the layout SPF's joint-attention capture and the
SD3 LoRA targets are written against. Its 2.2B-parameter transformer (9 GB fp32) and T5-XXL (19 GB) are not
stepped on the CI machine; the tiny SD3 in tests/test_sd3.py runs the same code paths."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.arch


def test_sd35_medium_layout_capture_and_lora_targets():
    import re

    import torch
    from diffusers import SD3Transformer2DModel

    from spf_lib.models.architectures import SD35M_TRANSFORMER
    from spf_lib.models.backbone import Sd3Backbone

    with torch.device("meta"):
        tr = SD3Transformer2DModel(**SD35M_TRANSFORMER)
    procs = [k.removesuffix(".processor") for k in tr.attn_processors]
    joint = [n for n in procs if n.endswith(".attn")]
    image_only = [n for n in procs if n.endswith(".attn2")]
    assert len(joint) == 24 and len(image_only) == 13  # SD3.5's MMDiT-X: extra self-attention in blocks 0-12
    assert tr.transformer_blocks[-1].attn.context_pre_only  # last block: text keys/values only
    assert tr.transformer_blocks[0].attn.heads == 24 and tr.transformer_blocks[0].attn.inner_dim == 1536
    rx = re.compile(Sd3Backbone.lora_target(["to_q", "to_k", "to_v", "to_out.0"], True))
    targets = [n for n, _ in tr.named_modules() if rx.fullmatch(n)]
    # 23 blocks x 8 projections + the last block's 7 (no to_add_out: its text output is discarded)
    assert len(targets) == 23 * 8 + 7
    assert sum(p.numel() for p in tr.parameters()) > 2_000_000_000
