"""The training-method plugin interface: what the shared loop in ``spf_lib.train`` asks of each method.

The loop owns everything that is the same for every method (data order, accelerate, mixed precision, gradient
accumulation, clipping, LR schedule, checkpoints, resume, MLflow, validation grids). A method owns only what differs:
which parameters train, the loss of one micro-batch, and how its adapter is written and switched on/off. Keeping
that boundary narrow is what lets LoRA, SPF, Celeb Basis and Beyond Inserting share one resumable, tested loop.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from spf_lib.errors import SpfError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from spf_lib.train.config import TrainConfig


@dataclass
class TrainContext:
    """Everything a method may use. Models are already on ``device``; frozen weights in ``weight_dtype``."""

    cfg: TrainConfig
    pipe: Any                      # SD / SDXL pipeline (one copy of the weights; validation reuses it)
    unet: Any                      # the denoiser (a UNet; SD3's transformer)
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any           # the training scheduler (DDPM; SD3: flow matching) from the pipeline's config
    accelerator: Any
    device: Any
    weight_dtype: Any
    generator: Any                 # torch.Generator for noise/timesteps; its state is checkpointed
    extras: dict[str, Any] = field(default_factory=dict)
    backbone: Any = None           # spf_lib.models.backbone: what differs per architecture; None = from ``pipe``

    def __post_init__(self) -> None:
        if self.backbone is None and self.pipe is not None:
            from spf_lib.models.backbone import backbone_for

            self.backbone = backbone_for(self.pipe)

    # -- helpers every method needs, so none re-implements them differently -------------------------------------
    def tokenize(self, texts: list[str]):
        return self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)

    def encode_text(self, texts: list[str]):
        """CLIP text hidden states (B, 77, D) from the frozen text encoder."""
        import torch

        with torch.no_grad():
            return self.text_encoder(self.tokenize(texts))[0]

    def condition(self, texts: list[str], grad: bool = False):
        """The denoiser's text conditioning for ``texts`` (a ``Conditioning``; frozen text encoders; ``grad``: keep
        the graph, for rows of the embedding table a method trains). Methods that use this and ``denoise`` run on
        every architecture the backbone knows; ``encode_text`` is SD 1.x only."""
        return self.backbone.encode(list(texts), device=self.device, resolution=self.cfg.resolution, grad=grad)

    def denoise(self, noisy, t, cond):
        """The denoiser's prediction for (z_t, t, conditioning), with whatever it is currently switched to."""
        return self.backbone.denoise(noisy, t, cond)

    def encode_images(self, pixel_values):
        """Pixels in [-1, 1] → scaled VAE latents (sampled with ``generator`` so runs are reproducible)."""
        import torch

        with torch.no_grad():
            dist = self.vae.encode(pixel_values.to(self.device, self.weight_dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=self.generator, device="cpu").to(dist.mean)
            lat = dist.mean + dist.std * eps
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift:  # SD3's VAE centres its latents before scaling
            lat = lat - shift
        return lat * self.vae.config.scaling_factor

    def add_noise(self, latents):
        """Sample ε and t (from ``generator``) → (z_t, ε, t, target) with the scheduler's prediction type
        (flow-matching backbones: their own noising and velocity target)."""
        import torch

        if self.backbone is not None and self.backbone.flow_matching:
            return self.backbone.add_noise(latents, self.generator, self.noise_scheduler)

        noise = torch.randn(latents.shape, generator=self.generator, device="cpu").to(latents)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                          generator=self.generator, device="cpu").to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return noisy, noise, t, target

    def predict_x0(self, noisy, pred, t):
        """One-step x̂0 from z_t and the denoiser's output (ε / v on DDPM schedules; velocity under flow matching)."""
        if self.backbone is not None and self.backbone.flow_matching:
            return self.backbone.predict_x0(noisy, pred, t)
        ac = self.noise_scheduler.alphas_cumprod.to(noisy.device).float()[t].view(-1, 1, 1, 1)
        z, out = noisy.float(), pred.float()
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return ac.sqrt() * z - (1 - ac).sqrt() * out
        return (z - (1 - ac).sqrt() * out) / ac.sqrt()


@runtime_checkable
class TrainingMethod(Protocol):
    """One training method. The loop calls, in order:

    1. ``setup(ctx)`` once: add adapters/modules, return the trainable parameters (fp32; the loop builds the
       optimizer over exactly these and checks that nothing else has ``requires_grad``). Optional attribute
       ``lr_scale``: the optimizer's lr is ``cfg.lr × lr_scale`` (SPF's ``spf.lr_scale``).
    2. ``compute_loss(ctx, batch, step)`` per micro-batch, inside ``accelerator.autocast()`` and
       ``accelerator.accumulate(unet)``: return ``(loss, logs)``; logs are floats (each loss term, for MLflow).
       ``step`` is the 0-based optimizer step, so multi-stage methods (SPF) pick their stage from it.
       Optional ``loss_chunks(ctx, batch, step)``: an iterator of ``(loss, logs)`` parts whose sum is
       ``compute_loss``; the loop back-propagates each part before asking for the next (one graph alive at once).
    3. ``state_dict()`` / ``load_state_dict(sd)``: the trainable tensors (checkpointed as safetensors; resume).
    4. ``set_enabled(ctx, bool)``: switch the SAME model between original and tuned (validation grids).
    5. ``prompt(text)``: rewrite a validation prompt (identity methods insert their placeholder).
    6. ``save_adapter(ctx, out_dir)``: write the adapter files into ``out_dir`` and return the
       ``adapter_info.json`` dict (must hold ``method`` and ``format``; non-LoRA formats add
       ``"loader": "spf_lib.methods.<name>.<module>:<func>"`` that ``spf_lib.methods.load_adapter`` calls).
    """

    name: str

    def setup(self, ctx: TrainContext) -> list[torch.nn.Parameter]: ...

    def compute_loss(self, ctx: TrainContext, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None: ...

    def set_enabled(self, ctx: TrainContext, enabled: bool) -> None: ...

    def prompt(self, text: str) -> str: ...

    def save_adapter(self, ctx: TrainContext, out_dir: Path) -> dict[str, Any]: ...


# Lazy registry: importing a method module pulls torch/diffusers, so only the chosen one is imported.
METHOD_CLASSES: dict[str, str] = {
    "lora": "spf_lib.methods.lora.method:LoraMethod",
    "spf": "spf_lib.methods.spf.method:SpfMethod",
    "celeb-basis": "spf_lib.methods.celeb_basis.method:CelebBasisMethod",
    "beyond-inserting": "spf_lib.methods.beyond_inserting.method:BeyondInsertingMethod",
}


def get_method(name: str, cfg: TrainConfig) -> TrainingMethod:
    """Instantiate the plugin for ``name`` (constructor takes the TrainConfig)."""
    if name not in METHOD_CLASSES:
        raise SpfError(f"method={name!r}: expected one of {', '.join(METHOD_CLASSES)}")
    module, _, cls = METHOD_CLASSES[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise SpfError(f"method={name!r}: not implemented yet ({module} is missing)") from None
        raise
    return getattr(mod, cls)(cfg)


def diffusion_loss(pred, target, reduction: str = "mean"):
    """Plain ε/v-prediction MSE in fp32 (the loss every method starts from)."""
    import torch.nn.functional as F

    return F.mse_loss(pred.float(), target.float(), reduction=reduction)
