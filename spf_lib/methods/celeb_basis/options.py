"""Celeb Basis options (``TrainConfig.celeb_basis``), validated with errors that name the field and value."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from spf_lib.errors import SpfError

TRIGGER_RE = re.compile(r"^[a-z][a-z0-9]*$")


def check_trigger(v: str) -> str:
    """A trigger is one lower-case word, so prompts can find and rewrite it unambiguously."""
    if not TRIGGER_RE.match(v):
        raise ValueError(f"trigger={v!r}: must be one lower-case word of letters/digits")
    return v


Trigger = Annotated[str, AfterValidator(check_trigger)]
DEFAULT_TEMPLATES = ["a photo of {}", "a portrait of {}", "a close up photo of {}", "a photo of the face of {}"]


class CelebBasisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(512, ge=1, description="Principal components per column (clipped to min(k, D, n_names))")
    names_file: str | None = Field(None, description="Names list; None = spf_lib/assets/celeb_names.txt")
    multi_token: Literal["mean", "first", "skip"] = Field(
        "mean", description="Name words that are several tokens: average them, take the first, or drop the name")
    face_encoder: str = Field("dlib", description="'dlib', a path to an ArcFace/CosFace .onnx, or a registered name")
    negative_slope: float = Field(0.2, ge=0, description="LeakyReLU slope after the linear layer")
    mlp_init: Literal["official", "torch"] = Field(
        "official", description="official: EqualLinear weights N(0, 1), bias 0, scaled by lr_mul at run time (the "
                                "official code); torch: nn.Linear's default uniform(±1/sqrt(F)) init")
    lr_mul: float = Field(1.0, gt=0, description="EqualLinear runtime scale of weight and bias (official: 1.0)")
    coef_momentum: float = Field(
        0.99, ge=0, lt=1, description="Export a running average of each identity's coefficients, updated at every "
                                      "forward with this momentum (official: 0.99); 0 = export the last MLP output")
    trigger: Trigger = Field("sks", description="Prompt word of the identity when the manifest has no identity column")
    identity_column: str = Field("identity", description="Manifest column naming each row's identity (optional)")
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES),
                                 description="Training prompts; {} becomes the identity's two placeholder tokens")

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        if not v or any(t.count("{}") != 1 for t in v):
            raise ValueError(f"templates={v!r}: need at least one, each with exactly one {{}}")
        return v


def parse_options(values: dict[str, Any], model: type[BaseModel] = CelebBasisOptions, field: str = "celeb_basis"):
    try:
        return model(**(values or {}))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise SpfError(f"{field}.{loc}: {err['msg']}") from None
