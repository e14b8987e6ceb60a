"""Serving wrapper for adapters that need our own loader (Celeb Basis, Beyond Inserting, ...).

Mirrors mlflow.diffusers' wrapper (prompt column in, PNG bytes out) so both flavors are called the same way, but
loads through ``spf_lib.methods.load_adapter`` which also rewrites prompts for placeholder-token methods.
"""

from __future__ import annotations

import io
import logging

import mlflow.pyfunc

log = logging.getLogger(__name__)


def prompts_from(data) -> list[str]:
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        col = "prompt" if "prompt" in data.columns else data.columns[0]
        raw = data[col].tolist()
    elif isinstance(data, dict):
        raw = data.get("prompt", [])
    elif isinstance(data, str):
        raw = [data]
    else:
        raw = list(data)
    flat: list[str] = []
    for item in [raw] if isinstance(raw, str) else raw:
        flat.extend(item if isinstance(item, list) else [item])
    if not flat or any(not isinstance(p, str) for p in flat):
        raise mlflow.exceptions.MlflowException("input must contain a non-empty 'prompt' column of strings")
    return flat


def generation_kwargs(params: dict | None) -> dict:
    import torch

    params = dict(params or {})
    kw = {k: params[k] for k in ("num_inference_steps", "guidance_scale", "height", "width") if k in params}
    if params.get("negative_prompt"):
        kw["negative_prompt"] = params["negative_prompt"]
    if int(params.get("seed", -1)) >= 0:
        kw["generator"] = torch.Generator("cpu").manual_seed(int(params["seed"]))
    return kw


class SpfAdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from spf_lib.methods import load_adapter
        from spf_lib.models.loading import load_pipeline

        base = (context.model_config or {}).get("base_model")
        self.pipe = load_pipeline(base)
        self.handle = load_adapter(self.pipe, context.artifacts["adapter"])

    def predict(self, context, model_input, params: dict | None = None) -> list[bytes]:
        prompts = [self.handle.prompt(p) for p in prompts_from(model_input)]
        images = self.pipe(prompt=prompts, **generation_kwargs(params)).images
        out = []
        for image in images:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
