"""``train(cfg) -> TrainResult``: the one training loop every method runs in.

Order of work matters for honesty of resume: data order is a function of (seed, step), noise/timesteps come from a
generator whose state is checkpointed, and a checkpoint is only ever written at an optimizer-step boundary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.io import atomic_dir, write_json_atomic
from spf_lib.methods import ADAPTER_INFO
from spf_lib.train.config import TrainConfig

log = logging.getLogger(__name__)
DTYPES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}
# methods written against TrainContext.condition/denoise (every architecture); the others call the SD UNet directly
ARCH_NEUTRAL_METHODS = ("lora", "spf")


@dataclass
class TrainResult:
    output_dir: str
    adapter_dir: str
    method: str
    steps: int                                   # optimizer steps completed in total (resumed runs included)
    start_step: int                              # 0, or the checkpoint step this invocation resumed from
    final_loss: float | None
    losses: list[float]                          # total loss per optimizer step, from step 1
    loss_terms: dict[str, list[float]]           # each logged term per step (loss_diffusion, loss_text, ...)
    config_hash: str
    mlflow_run_id: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Holds the models, the method and the optimizer. ``train()`` is the public entry; tests and the benchmark
    use ``Trainer`` directly to step and inspect the model."""

    def __init__(self, cfg: TrainConfig, pipe: Any = None) -> None:
        """``pipe``: an already built SD / SDXL pipeline (benchmarks and tests on a random-init published
        architecture); default: ``load_pipeline(cfg.base_model)``."""
        import torch
        from spf_lib.methods.base import TrainContext, get_method
        from spf_lib.models.backbone import backbone_for
        from spf_lib.models.loading import load_pipeline
        from spf_lib.settings import quiet_third_parties
        from spf_lib.train.data import BatchSource, read_manifest

        quiet_third_parties()
        self.cfg = cfg
        from spf_lib.devices import check_device

        examples = read_manifest(cfg.data_dir, allow_failed_qa=cfg.allow_failed_qa)  # before the slow model load
        device = check_device(cfg.device)
        if cfg.mixed_precision == "fp16" and not device.startswith("cuda"):
            raise SpfError(f"mixed_precision='fp16' needs a CUDA device (device={device!r}); use 'bf16' or 'no'")
        self.accelerator = _accelerator(cfg, device)
        torch.manual_seed(cfg.seed)
        pipe = load_pipeline(cfg.base_model, dtype="float32", device=device) if pipe is None else pipe.to(device)
        weight_dtype = getattr(torch, DTYPES[cfg.mixed_precision])
        backbone = backbone_for(pipe)
        if backbone.kind != "sd" and cfg.method not in ARCH_NEUTRAL_METHODS:
            raise SpfError(f"method={cfg.method!r}: supports SD 1.x/2.x base models only; {cfg.base_model} is "
                           f"{backbone.kind} (use one of {', '.join(ARCH_NEUTRAL_METHODS)})")
        self.frozen = backbone.frozen_modules()
        for name, m in self.frozen.items():
            m.requires_grad_(False)
            if weight_dtype != torch.float32:
                m.to(dtype=weight_dtype)
            if name != backbone.denoiser_name:
                m.eval()
        self.ctx = TrainContext(
            cfg=cfg, pipe=pipe, unet=backbone.denoiser, vae=pipe.vae, text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer, noise_scheduler=backbone.training_scheduler(),
            accelerator=self.accelerator, device=torch.device(device), weight_dtype=weight_dtype,
            generator=torch.Generator(device="cpu").manual_seed(cfg.seed), extras={"examples": examples},
            backbone=backbone,
        )
        self.method = get_method(cfg.method, cfg)
        self.params = self.method.setup(self.ctx)
        self._check_trainable()
        if cfg.gradient_checkpointing:
            backbone.denoiser.enable_gradient_checkpointing()
        backbone.denoiser.train()
        # a method may ask for a multiple of the configured lr (SPF: its constraints slow the target down)
        lr = cfg.lr * float(getattr(self.method, "lr_scale", 1.0))
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=cfg.adam_weight_decay)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.steps)
        self.optimizer = self.accelerator.prepare(self.optimizer)
        self.source = BatchSource(examples, resolution=cfg.resolution, batch_size=cfg.batch_size,
                                  grad_accum=cfg.grad_accum, seed=cfg.seed, center_crop=cfg.center_crop,
                                  random_flip=cfg.random_flip)
        self.step = 0
        self.history: dict[str, list[float]] = {"loss": []}
        self.config_hash = cfg.config_hash()

    def _check_trainable(self) -> None:
        """Gradients may reach only what the method declared trainable (and those must be fp32)."""
        mine = {id(p) for p in self.params}
        for mod_name, module in self.frozen.items():
            for n, p in module.named_parameters():
                if p.requires_grad and id(p) not in mine:
                    raise RuntimeError(f"{mod_name}.{n} requires grad but the method did not declare it trainable")
        if not self.params:
            raise SpfError(f"method={self.cfg.method!r}: no trainable parameters (check lora.target_modules)")

    # -- one optimizer step -----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        import torch

        acc = self.accelerator
        logs: dict[str, float] = {}
        total = 0.0
        for micro in range(self.cfg.grad_accum):
            batch = self.source.batch(self.step, micro)
            for loss, parts in self._loss_parts(batch):
                if not torch.isfinite(loss):
                    raise SpfError(f"step {self.step + 1}: loss is {float(loss)} (lower lr or use "
                                   "mixed_precision='no')")
                acc.backward(loss)
                total += float(loss.detach()) / self.cfg.grad_accum
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + v / self.cfg.grad_accum
        grad_norm = acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        logs.update(loss=total, lr=self.lr_scheduler.get_last_lr()[0], grad_norm=float(grad_norm))
        for k, v in logs.items():
            if k not in ("lr", "grad_norm"):
                self.history.setdefault(k, []).append(v)
        return logs

    def _loss_parts(self, batch):
        """(loss, logs) parts of one micro-batch, each computed under autocast and back-propagated before the next
        is computed: a method with ``loss_chunks`` (SPF) frees one graph before building the next; any other
        method is one part, ``compute_loss``."""
        acc = self.accelerator
        chunks = getattr(self.method, "loss_chunks", None)
        if chunks is None:
            with acc.autocast():
                part = self.method.compute_loss(self.ctx, batch, self.step)
            yield part  # outside autocast: the backward runs as it always did
            return
        it = chunks(self.ctx, batch, self.step)
        while True:
            with acc.autocast():
                part = next(it, None)
            if part is None:
                return
            yield part

    # -- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, mlflow_run_id: str | None) -> Path:
        from spf_lib.train.checkpoint import TrainState, save_checkpoint

        state = TrainState(step=self.step, scheduler=_jsonable(self.lr_scheduler.state_dict()), history=self.history,
                           config_hash=self.config_hash, mlflow_run_id=mlflow_run_id,
                           resume_hash=self.cfg.resume_hash())
        return save_checkpoint(self.cfg.output_dir, state=state, trainable=self.method.state_dict(),
                               optimizer_state=self.optimizer.state_dict(), generator=self.ctx.generator,
                               total_limit=self.cfg.checkpoints_total_limit)

    def resume(self, path: Path) -> str | None:
        from spf_lib.train.checkpoint import load_checkpoint

        state, trainable, opt = load_checkpoint(path, self.ctx.generator)
        if state.step > self.cfg.steps:
            raise SpfError(f"{path}: checkpoint is at step {state.step} but steps={self.cfg.steps}; raise --steps "
                           "or train into a new --output")
        if state.resume_hash != self.cfg.resume_hash():
            log.warning("resuming %s written with a different config (more than steps/checkpointing/validation "
                        "changed): the result is not the continuation of that run", path)
        try:
            self.method.load_state_dict(trainable)
            self.optimizer.load_state_dict(opt)
            self.lr_scheduler.load_state_dict(state.scheduler)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            raise SpfError(f"{path}: checkpoint does not fit this model/config "
                           f"({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
        self.step = state.step
        self.history = {k: list(v) for k, v in state.history.items()}
        log.info("resumed from %s at step %d", path, self.step)
        return state.mlflow_run_id

    # -- outputs ----------------------------------------------------------------------------------------------
    def save_adapter(self) -> Path:
        out = Path(self.cfg.output_dir) / "adapter"
        with atomic_dir(out, owned_if=(ADAPTER_INFO,), flag="--output") as tmp:
            info = self.method.save_adapter(self.ctx, tmp)
            if "method" not in info or "format" not in info:
                raise RuntimeError(f"method {self.cfg.method}: save_adapter must return 'method' and 'format'")
            info.update(base_model=self.cfg.base_model, steps=self.step, config_hash=self.config_hash)
            write_json_atomic(tmp / ADAPTER_INFO, info)
        return out

    def validation_grid(self, tracker) -> Path | None:
        if not self.cfg.validation.enabled or not self.cfg.validation.prompts:
            return None
        from spf_lib.train.validation import render_grid

        path = render_grid(self.ctx, self.method, Path(self.cfg.output_dir) / "samples" / f"step-{self.step:06d}.png",
                           step=self.step)
        tracker.log_image(path, key="validation_grid", step=self.step)
        return path


def _accelerator(cfg: TrainConfig, device: str):
    """A fresh Accelerator per run. accelerate keeps process-wide singleton state, so a second ``train(cfg)`` in
    the same process (ablation sweeps, benchmarks) with another precision would otherwise fail; in a single process
    that state holds nothing worth keeping. Distributed launches are left alone."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if not (PartialState._shared_state and PartialState().use_distributed):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                       cpu=device == "cpu")


def _jsonable(d: Any) -> Any:
    """Scheduler state minus callables (LambdaLR keeps its lambdas as None in state_dict already)."""
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items() if not callable(v)}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if hasattr(d, "item"):
        return d.item()
    return d


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training run described by ``cfg`` and write the output folder (docs/internals.md §2).

    The output folder is locked for the whole run: a second ``spf train`` on it gets one line instead of two runs
    overwriting each other's checkpoints. Leftover temporaries of killed saves are removed at the start.
    """
    from spf_lib.io import check_output_target, output_lock, sweep_stale_temps
    from spf_lib.train.checkpoint import checkpoint_root

    out = Path(cfg.output_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SpfError(f"--output {out}: exists and is not a folder")
    check_output_target(out / "adapter", owned_if=(ADAPTER_INFO,), flag="--output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpfError(f"--output {out}: cannot create it ({e.strerror or e})") from None
    with output_lock(out, what="--output"):
        for folder in (out, checkpoint_root(out)):
            sweep_stale_temps(folder, all_temps=True)
        return _train_locked(cfg, out)


def _train_locked(cfg: TrainConfig, out: Path) -> TrainResult:
    from tqdm.auto import tqdm

    from spf_lib.devices import oom_as_error
    from spf_lib.train.checkpoint import list_checkpoints, resume_candidates
    from spf_lib.train.tracking import Tracker

    t0 = time.perf_counter()
    candidates = resume_candidates(out, cfg.resume)
    advice = (f"lower --batch-size (now {cfg.batch_size}) or --resolution (now {cfg.resolution}), or turn on "
              "gradient_checkpointing / mixed precision")
    with oom_as_error(f"loading {cfg.base_model}", "use a smaller model or a device with more memory"):
        trainer = Trainer(cfg)
    resume_from, run_id = None, None
    for i, path in enumerate(candidates):
        try:
            run_id = trainer.resume(path)
            resume_from = path
            if i:
                log.warning("resume=latest: resumed from %s, the newest checkpoint that loads", path)
            break
        except SpfError as e:
            if cfg.resume != "latest" or i == len(candidates) - 1:
                raise
            log.warning("resume=latest: %s; trying the previous checkpoint", e)
    start = trainer.step
    write_json_atomic(out / "train_config.json", cfg.to_json_dict())
    tracker = Tracker(cfg.mlflow, run_id=run_id, run_name=f"train-{cfg.method}")
    ok = False
    samples: list[str] = []
    try:
        tracker.log_params(cfg.to_json_dict())
        tracker.set_tags({"method": cfg.method, "config_hash": trainer.config_hash, "base_model": cfg.base_model})
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.method}", unit="step", dynamic_ncols=True)
        while trainer.step < cfg.steps:
            with oom_as_error(f"step {trainer.step + 1}", advice):
                logs = trainer.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
                tracker.log_metrics(logs, step=trainer.step)
            if cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0 and trainer.step < cfg.steps:
                trainer.save_checkpoint(tracker.run_id)
            due = cfg.validation.every and trainer.step % cfg.validation.every == 0 and trainer.step < cfg.steps
            if due and (p := trainer.validation_grid(tracker)) is not None:
                samples.append(str(p))
        bar.close()
        if not resume_from or trainer.step > start:
            trainer.save_checkpoint(tracker.run_id)
        adapter = trainer.save_adapter()
        with oom_as_error("validation grid", "disable validation or lower --resolution"):
            if (p := trainer.validation_grid(tracker)) is not None:
                samples.append(str(p))
        losses = trainer.history.get("loss", [])
        result = TrainResult(
            output_dir=str(out), adapter_dir=str(adapter), method=cfg.method, steps=trainer.step, start_step=start,
            final_loss=losses[-1] if losses else None, losses=losses,
            loss_terms={k: v for k, v in trainer.history.items() if k != "loss"}, config_hash=trainer.config_hash,
            mlflow_run_id=tracker.run_id, checkpoints=[str(p) for p in list_checkpoints(out)], samples=samples,
            wall_s=time.perf_counter() - t0,
        )
        write_json_atomic(out / "train_summary.json", result.to_dict())
        tracker.log_artifact(out / "train_summary.json")
        tracker.log_artifact(out / "train_config.json")
        ok = True
        return result
    finally:
        tracker.finish(ok)
