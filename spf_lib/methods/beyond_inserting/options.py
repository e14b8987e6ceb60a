"""Beyond Inserting options (``TrainConfig.beyond_inserting``); errors name the field and the bad value."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spf_lib.methods.celeb_basis.options import Trigger


class BeyondInsertingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_stages: int = Field(5, ge=1, le=16, description="(K, V) token pairs = UNet stages (paper: 5); clipped to the "
                                                       "number of cross-attention layers")
    attn_weight: float = Field(0.003, ge=0, description="λ of the face-wise attention loss (paper: 0.003)")
    value_mode: Literal["direct", "encoded"] = Field(
        "direct", description="direct: V token used as the value input at V*'s position (V → W_v); encoded: V "
                              "token also goes through the frozen text transformer")
    trigger: Trigger = Field("sks", description="Prompt word that stands for the identity")
    template: str = Field("a photo of the face of {}", description="Learned prompt; {} becomes V*")
    reference_prompt: str = Field("a photo of the face of person", description="Prompt whose word maps supervise V*")
    reference_word: str = Field("person", description="Word of the reference prompt V*'s maps are aligned with")
    heads: int = Field(4, ge=1, description="Heads of the token module's self-attention (must divide the width)")
    layers: int = Field(1, ge=1, le=4, description="Self-attention layers in the token module")

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError(f"template={v!r}: needs exactly one {{}}")
        return v
