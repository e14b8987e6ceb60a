"""How each adapter format becomes an MLflow model: the diffusers flavor for LoRA, a code-based pyfunc otherwise.

Both take an explicit ``pip_requirements`` (inference costs ~6 s per log_model and guesses), an input example and a
signature whose defaults fit the base model (a 64 px demo model is not asked for 512 px images). The input example
carries few inference steps because MLflow validates it by loading the model and predicting once at log time.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

EXAMPLE_PROMPT = "a portrait photo of a person"
EXAMPLE_STEPS = 2
_RUNTIME = ("diffusers", "transformers", "torch", "peft", "safetensors", "accelerate")


def pinned(packages: tuple[str, ...] | list[str]) -> list[str]:
    """``name==version`` of what is installed here; local build tags (``+cpu``) dropped so a CUDA image can match."""
    out = []
    for p in packages:
        try:
            out.append(f"{p}=={metadata.version(p).split('+')[0]}")
        except metadata.PackageNotFoundError:
            log.warning("pip requirement %s: not installed here; left unpinned", p)
            out.append(p)
    return out


def native_resolution(base_ref: str, default: int = 512) -> int:
    """Image size the base model was built for: UNet/transformer sample_size x VAE downscale (local folder configs)."""
    root = Path(base_ref)
    try:
        vae = json.loads((root / "vae" / "config.json").read_text())
        denoiser = root / "unet" if (root / "unet").is_dir() else root / "transformer"  # SD/SDXL, SD3
        return int(json.loads((denoiser / "config.json").read_text())["sample_size"]) * \
            2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        return default


def signature(base_ref: str, *, with_seed: bool = False):
    from mlflow.models import ModelSignature
    from mlflow.types import DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import ColSpec

    size = native_resolution(base_ref)
    extra = [ParamSpec(name="seed", dtype=DataType.integer, default=-1)] if with_seed else []
    return ModelSignature(
        inputs=Schema([ColSpec(type=DataType.string, name="prompt")]),
        outputs=Schema([ColSpec(type=DataType.binary, name="image")]),
        params=ParamSchema([
            ParamSpec(name="num_inference_steps", dtype=DataType.integer, default=30),
            ParamSpec(name="guidance_scale", dtype=DataType.double, default=7.5),
            ParamSpec(name="height", dtype=DataType.integer, default=size),
            ParamSpec(name="width", dtype=DataType.integer, default=size),
            ParamSpec(name="negative_prompt", dtype=DataType.string, default=""),
            *extra,
        ]),
    )


def input_example():
    import pandas as pd

    return pd.DataFrame({"prompt": [EXAMPLE_PROMPT]}), {"num_inference_steps": EXAMPLE_STEPS}


def validate_example() -> bool:
    """Whether MLflow should load the logged model and predict its input example at log time.

    That check catches a broken adapter before it is registered, but it loads the base model in the register step
    (seconds on the demo model, minutes and GBs of RAM for SD 1.5 on a CPU pod): ``SPF_REGISTER_VALIDATE=0`` skips it.
    """
    return os.environ.get("SPF_REGISTER_VALIDATE", "1").strip().lower() not in ("0", "false", "no", "off")


class _Flavor:
    """Model.log hands its extra kwargs to ``flavor.save_model``; mlflow.diffusers.save_model rejects the
    ``validate_serving_input`` switch that only Model.log reads, so this forwards everything else."""

    def __init__(self, module) -> None:
        self._module = module
        self.__name__ = module.__name__

    def save_model(self, *args, validate_serving_input: bool = True, **kwargs):
        return self._module.save_model(*args, **kwargs)


def log_lora(adapter_dir: Path, base_ref: str, run_id: str, name: str) -> str:
    """mlflow.diffusers: only the LoRA safetensors (+ adapter_info.json) travel; the base is a reference."""
    import mlflow.diffusers
    from mlflow.models import Model

    common = {"name": name, "run_id": run_id, "pip_requirements": pinned(_RUNTIME),
              "signature": signature(base_ref), "input_example": input_example()}
    if validate_example():
        info = mlflow.diffusers.log_model(str(adapter_dir), base_ref, adapter_type="lora", **common)
    else:  # the call mlflow.diffusers.log_model wraps, with the one switch it cannot pass through
        info = Model.log(artifact_path=None, flavor=_Flavor(mlflow.diffusers), adapter_path=str(adapter_dir),
                         base_model=base_ref, adapter_type="lora", validate_serving_input=False, **common)
    return info.model_uri


def log_identity(adapter_dir: Path, base_ref: str, run_id: str, name: str) -> str:
    """A pyfunc from code (no pickle): loads the base pipeline and our adapter loader at serving time."""
    import mlflow.pyfunc
    from mlflow.models import Model

    entry = Path(__file__).with_name("pyfunc_entry.py")
    # Model.log is what pyfunc.log_model calls; it is used directly because only it accepts run_id
    # (we log into a run without making it the process's active run).
    info = Model.log(
        artifact_path=None, flavor=_Flavor(mlflow.pyfunc), name=name, python_model=str(entry),
        validate_serving_input=validate_example(), artifacts={"adapter": str(adapter_dir)},
        model_config={"base_model": base_ref}, run_id=run_id,
        pip_requirements=[*pinned(_RUNTIME), *pinned(["spf-portrait"])],
        signature=signature(base_ref, with_seed=True), input_example=input_example(),
    )
    return info.model_uri
