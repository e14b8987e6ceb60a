"""The training configuration: one validated object that fully determines a run (with the data and the base model).

It is written resolved to ``train_config.json`` and hashed into the ``config_hash`` lineage key, so every field that
changes the result lives here, including each SPF loss weight and on/off switch (the paper's ablation rows are config
edits, not code edits). Validation errors are SpfError lines that name the field and the bad value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spf_lib.errors import SpfError

MethodName = Literal["lora", "spf", "celeb-basis", "beyond-inserting"]
ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraOptions(_Strict):
    """LoRA on the UNet (stage 1 of SPF, and the LoRA baseline)."""

    rank: int = Field(4, ge=1, le=1024, description="LoRA rank r")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; None = rank (scale 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ATTN_TARGETS),
                                      description="Linear layer names (suffixes) inside the UNet to adapt")
    cross_attention_only: bool = Field(False, description="Adapt only attn2 (cross-attention), as in SPF v1's figure")
    init_seed: int | None = Field(None, description="Seed for LoRA init; None = the run seed")

    @field_validator("target_modules")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v or any(not s.strip() for s in v):
            raise ValueError(f"target_modules={v!r}: need at least one non-empty module name")
        return v


# What `spf.preset` sets (docs/method.md): fields given explicitly always win over the preset.
SPF_PRESETS: dict[str, dict[str, Any]] = {
    # our best measured configuration = the field defaults below
    "spf": {},
    # the paper's loss set and two-stage schedule as we read it: stage 1 = plain fine-tuning for half the steps,
    # stage 2 = L_diff + L_text (base tokens and padding) + L_fine + L_enh (when a CLIP is configured), SFCM-gated
    "spf-paper": {"stage1_steps": None, "use_out": False, "use_preserve": False, "preserve_in_stage1": False,
                  "text_include_special": True, "text_without_target": False, "lr_scale": 1.0,
                  "target_tokens": False, "sfcm_blur": 0, "sfcm_phrase_share": False},
}


class SpfOptions(_Strict):
    """SPF-Portrait stage 2 (dual-path alignment). Every loss and the SFCM can be switched off (ablation rows)."""

    preset: Literal["spf", "spf-paper"] = Field(
        "spf", description="spf = our best measured configuration (the defaults); spf-paper = the paper's loss set "
        "and two-stage schedule as we read it. Fields given explicitly override the preset (docs/method.md)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in SPF_PRESETS:
            return {**SPF_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _enhanced_needs_clip(self) -> SpfOptions:
        # L_enh supervises a direction in CLIP space; with no CLIP there is nothing meaningful to supervise, so the
        # resolved config records it as off rather than training a stand-in
        if self.use_enhanced and not self.image_embedder:
            object.__setattr__(self, "use_enhanced", False)
        return self

    @model_validator(mode="before")
    @classmethod
    def _legacy_preserve_flags(cls, data: Any) -> Any:
        # configs written before preserve_schedule (run configs in MLflow, checkpoints, saved adapters) named the
        # schedule with two booleans: read them as the schedule they meant, and refuse a contradiction
        if not isinstance(data, dict) or not {"preserve_split", "preserve_instead"} & set(data):
            return data
        data = dict(data)
        split, instead = data.pop("preserve_split", False), data.pop("preserve_instead", True)
        meant = "split" if split else "instead" if instead else "beside"
        if data.setdefault("preserve_schedule", meant) != meant:
            raise ValueError(f"spf.preserve_schedule={data['preserve_schedule']!r} contradicts the older "
                             f"spf.preserve_split={split!r} / spf.preserve_instead={instead!r} (= {meant!r}): "
                             "give preserve_schedule alone")
        return data

    @model_validator(mode="after")
    def _instead_leaves_a_response(self) -> SpfOptions:
        if self.use_preserve and self.preserve_schedule == "instead" and self.preserve_frac >= 1:
            raise ValueError(f"spf.preserve_frac={self.preserve_frac} with spf.preserve_schedule='instead' leaves no "
                             "sample for the response path (nothing would learn the target): set "
                             "spf.preserve_schedule='beside' to run L_preserve beside the response path on every "
                             "sample")
        return self

    stage1_steps: int | None = Field(
        0, ge=0, description="Optimizer steps of plain LoRA fine-tuning before stage 2; None = half of `steps` "
        "(the paper's v3: fine-tune, then align); default 0 = align from the start (docs/method.md, measured)")
    w_diffusion: float = Field(1.0, ge=0)
    lr_scale: float = Field(2.0, gt=0, le=100, description="SPF's optimizer lr = lr × this (default 2: the "
                            "alignment losses hold the adapter back, and at LoRA's lr SPF's target was still rising "
                            "at the step budget; measured on the frontier, docs/method.md). 1 = the configured lr")
    use_text: bool = True
    w_text: float = Field(1.0, ge=0, description="λ for L_text-consistent")
    text_without_target: bool = Field(
        True, description="Our change to L_text: the response path's base-token attention is compared as if the "
        "target's tokens were not in its softmax (divided by 1 − their attention share), so the target taking its "
        "share of a pixel's attention is not read as the base tokens' attention moving; off = the raw maps (the "
        "paper; issue 15's ninth round: the raw maps held the target back, docs/method.md)")
    use_fine: bool = True
    w_fine: float = Field(0.1, ge=0, description="λ for L_fine-grained")
    use_enhanced: bool = Field(True, description="L_enhanced; resolved to false when no image_embedder (CLIP) is "
                               "configured: it has no meaning without one")
    w_enhanced: float = Field(5e-4, ge=0, description="λ for L_enhanced (its CLIP gradient is ~100x L_diff's)")
    use_out: bool = Field(True, description="Our addition: SFCM-gated alignment of the response path's noise "
                          "prediction with the reference's (L_fine at the output, docs/method.md)")
    w_out: float = Field(2.0, ge=0, description="λ for L_out (1.0 until issue 15's frontier runs, 0.5 in its ninth "
                         "and tenth rounds; 2 since the eleventh, with sfcm_phrase_share: docs/method.md)")
    align_warmup: int = Field(0, ge=0, description="Our addition: the SFCM-gated alignment losses (L_text, L_fine, "
                              "L_out) ramp linearly from 0 to their λ over the first N stage-2 steps, so the response "
                              "the SFCM localises exists before alignment holds it (docs/method.md); 0 = full from "
                              "the start")
    use_preserve: bool = Field(True, description="Our addition: tuned model on the BASE text matches the original "
                               "(docs/method.md, measured in the small world)")
    w_preserve: float = Field(5.0, ge=0, description="λ for L_preserve")
    preserve_in_stage1: bool = Field(True, description="Apply L_preserve during stage 1 too (docs/method.md)")
    preserve_schedule: Literal["instead", "beside", "split"] = Field(
        "instead", description="Cost: which samples L_preserve runs on, and how. instead = the preserve_frac share of "
        "the samples runs L_preserve INSTEAD of the response path, batched into the dual path's two forward passes "
        "(a step costs what the dual path costs; the default since issue 15's seventh round); beside = on that share "
        "BESIDE the response path (one more forward and backward per preserved sample); split = the first half of "
        "each batch takes the response path, the rest L_preserve (preserve_frac unused) — docs/method.md")
    preserve_frac: float = Field(0.125, gt=0, le=1, description="Cost: share of the samples that run "
                                 "L_preserve under preserve_schedule instead | beside (spread evenly over the run's "
                                 "batches; 1 = every sample, the default until issue 15's fifth round: "
                                 "docs/method.md)")
    preserve_uncond_frac: float = Field(0.5, ge=0, le=1, description="Fraction of the L_preserve batch fed the "
                                        "empty prompt (classifier-free guidance's unconditional branch)")
    preserve_prior: int = Field(0, ge=0, le=4096, description="Our addition: L_preserve on this many images the "
                                "ORIGINAL model samples at setup from the set's base texts, instead of on the "
                                "fine-tuning images (0 = off; docs/method.md)")
    preserve_prior_steps: int = Field(20, ge=1, le=200, description="Sampler steps for those images")
    preserve_prior_guidance: float = Field(4.0, ge=0, description="Guidance scale for those images")
    target_tokens: bool = Field(True, description="Our addition: learn the input-embedding rows of the target "
                                "phrase's own tokens (in no base phrase) with the adapter; prompts without the target "
                                "never read them (docs/method.md \"target tokens\")")
    use_sfcm: bool = Field(True, description="False = gate 1 everywhere (the paper's over-alignment ablation)")
    capture_layers: list[str] = Field(default_factory=lambda: ["*attn2"],
                                      description="fnmatch patterns over UNet attention module names to capture")
    text_include_special: bool = Field(False, description="Align BOS/EOS/padding maps too (the paper: 'and padding'); "
                                      "off: after the target phrase they encode the target (docs/method.md)")
    sfcm_phrase_weighting: Literal["distance", "uniform"] = "distance"
    sfcm_phrase_share: bool = Field(True, description="SFCM: each base phrase's map subtracts only its share of the "
                                    "phrases' attention at a pixel (Σ_p D_p·A_p²/Σ_q A_q) instead of all of it; "
                                    "summed, the person, skin and hair maps that all cover the face held most of the "
                                    "glasses (issue 15, eleventh round: docs/method.md); false = the paper's sum; the "
                                    "robust map only (sfcm_norm quantile/minmax keep issue 9's sum)")
    sfcm_blur: int = Field(1, ge=0, le=7, description="Box-blur radius (latent pixels) of the noise difference the "
                           "SFCM is computed from (1 since issue 15's tenth round: a thin target such as a glasses "
                           "frame responds on scattered pixels, and unblurred most of its cells stay held; 0 = the "
                           "paper's map, docs/method.md)")
    sfcm_gate_pool: Literal["area", "max"] = Field("max", description="sfcm_norm=quantile|minmax: how the latent "
                                                   "SFCM is downsampled to a low-resolution layer: cell mean or max")
    sfcm_norm: Literal["robust", "quantile", "minmax"] = Field(
        "robust", description="SFCM normalisation: robust = per layer resolution, cells that stand out of the map's "
        "own noise (median/MAD z-score between sfcm_z_low and sfcm_z_high); quantile / minmax = issue 9's map at "
        "latent resolution, resized per layer by sfcm_gate_pool (docs/method.md)")
    sfcm_z_low: float = Field(2.0, ge=0, description="robust SFCM: z-score where release starts (M = 0 below)")
    sfcm_z_high: float = Field(4.0, gt=0, description="robust SFCM: z-score of full release (M = 1 above)")
    sfcm_quantile: float | None = Field(0.9, gt=0, lt=1, description="sfcm_norm=quantile: divide by this per-sample "
                                        "quantile and clip at 1")
    image_embedder: str | None = Field(
        None, description="CLIP model folder/hub id for L_enhanced; None = no CLIP, L_enhanced off")
    enh_direction: Literal["auto", "image", "text"] = Field(
        "auto", description="Supervision direction: ground-truth image shift, or CLIP text shift (needs CLIPModel); "
        "auto = text when image_embedder has a text tower, else image (docs/method.md: the image shift also carries "
        "the fine-tuning set's spurious attributes)")
    enh_max_timestep: int = Field(700, ge=1, le=1000, description="L_enhanced only where t < this (x̂0 is noise above)")


class ValidationOptions(_Strict):
    prompts: list[str] = Field(default_factory=lambda: ["a photo of a woman", "a photo of a man with glasses"])
    seeds: list[int] = Field(default_factory=lambda: [0])
    every: int = Field(0, ge=0, description="Also render a grid every N steps (0 = only at the end)")
    num_inference_steps: int = Field(20, ge=1, le=200)
    guidance_scale: float = Field(7.5, ge=0)
    enabled: bool = True


class TrainConfig(_Strict):
    """One training run. Strict: an unknown or misspelt field is an error naming it, never a silent default."""

    method: MethodName = "lora"
    base_model: str = Field(..., min_length=1, description="local folder, hub id or s3://bucket/prefix")
    data_dir: str = Field(..., min_length=1, description="a `spf data prepare` output folder (manifest.parquet)")
    output_dir: str = Field(..., min_length=1)
    steps: int = Field(100, ge=1, description="Optimizer steps in total (all stages)")
    seed: int = 0
    lr: float = Field(1e-4, gt=0, lt=1)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    adam_weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    rank: int | None = Field(None, ge=1, description="Shortcut for lora.rank")
    resolution: int = Field(512, ge=8)
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    center_crop: bool = True
    random_flip: bool = False
    checkpoint_every: int = Field(0, ge=0, description="Write a resumable checkpoint every N steps (0 = only at end)")
    checkpoints_total_limit: int | None = Field(2, ge=1)
    resume: str | None = Field(None, description="'latest' or a checkpoint folder name/path")
    device: str | None = Field(None, pattern=r"^(cpu|cuda|cuda:\d+|mps)$",
                               description="cpu | cuda | cuda:N | mps; None = cuda if available else cpu")
    allow_failed_qa: bool = Field(False, description="Train on a prepare output whose QA failed (logged)")
    mlflow: bool = False
    log_every: int = Field(1, ge=1)
    validation: ValidationOptions = Field(default_factory=ValidationOptions)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    spf: SpfOptions = Field(default_factory=SpfOptions)
    celeb_basis: dict[str, Any] = Field(default_factory=dict, description="Options of the celeb-basis plugin")
    beyond_inserting: dict[str, Any] = Field(default_factory=dict, description="Options of the beyond-inserting plugin")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.rank is not None and self.rank != self.lora.rank:
            object.__setattr__(self, "lora", self.lora.model_copy(update={"rank": self.rank}))
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution}: must be a multiple of 8 (VAE factor)")
        if self.spf.stage1_steps is None:
            object.__setattr__(self, "spf", self.spf.model_copy(update={"stage1_steps": self.steps // 2}))
        if self.method == "spf" and self.spf.stage1_steps > self.steps:
            raise ValueError(f"spf.stage1_steps={self.spf.stage1_steps} exceeds steps={self.steps}")
        return self

    # -- construction helpers that turn pydantic errors into one SpfError line ---------------------------------
    @classmethod
    def build(cls, source: str = "config", **values: Any) -> TrainConfig:
        try:
            return cls(**values)
        except ValidationError as e:
            raise SpfError(f"{source}: {format_validation_error(e)}") from None

    @classmethod
    def from_file(cls, path: str | Path, spf_preset: str | None = None, **overrides: Any) -> TrainConfig:
        """Read JSON or YAML, then apply CLI overrides (None values are ignored); ``spf_preset`` sets
        ``spf.preset`` (fields the file sets in ``spf`` still win over the preset)."""
        p = Path(path)
        if not p.is_file():
            raise SpfError(f"{p}: config file does not exist")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001 - any parse error is bad input
            raise SpfError(f"{p}: cannot parse ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise SpfError(f"{p}: top level must be a mapping of TrainConfig fields")
        data.update({k: v for k, v in overrides.items() if v is not None})
        if spf_preset is not None:
            spf = data.get("spf") or {}
            if not isinstance(spf, dict):
                raise SpfError(f"{p}: spf must be a mapping of SPF options")
            data["spf"] = {**spf, "preset": spf_preset}
        return cls.build(str(p), **data)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_hash(self, ignore: tuple[str, ...] = ()) -> str:
        """sha256 of the resolved config minus fields that do not change the result (paths, resume, tracking)."""
        from spf_lib.io import sha256_json

        d = self.to_json_dict()
        for k in ("output_dir", "resume", "mlflow", "device", "log_every", "allow_failed_qa", *ignore):
            d.pop(k, None)
        return sha256_json(d)

    def resume_hash(self) -> str:
        """What must match for a resume to continue the same trajectory (extending ``steps`` is allowed)."""
        return self.config_hash(ignore=("steps", "checkpoint_every", "checkpoints_total_limit", "validation"))


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        inp = err.get("input")
        shown = "" if isinstance(inp, dict) else f"={inp!r}"
        parts.append(f"{loc}{shown}: {err['msg']}")
    return "; ".join(parts)
