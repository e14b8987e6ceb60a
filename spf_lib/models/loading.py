"""Load a base text-to-image model from a local folder, a model-hub id or an s3:// prefix.

The same function serves the demo's tiny model and SD 1.5 / SDXL / SD3 in production: only the reference changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)


def resolve_model_ref(ref: str, cache_dir: str | Path | None = None) -> str:
    """Turn ``ref`` into something ``from_pretrained`` accepts offline where possible.

    - local folder: returned as an absolute path (must contain model_index.json or config.json);
    - ``s3://bucket/prefix``: mirrored into ``cache_dir`` with boto3 (endpoint/credentials from the environment);
    - anything else is treated as a hub id and returned unchanged.
    """
    if not ref or not ref.strip():
        raise SpfError("base model reference is empty: give a local folder, a hub id or s3://bucket/prefix")
    if ref.startswith("s3://"):
        return str(download_s3_prefix(ref, cache_dir))
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise SpfError(f"base model {ref}: is a file, expected a diffusers/transformers model folder")
        if not ((p / "model_index.json").exists() or (p / "config.json").exists()):
            raise SpfError(f"base model {ref}: no model_index.json or config.json in this folder")
        for name in ("model_index.json", "config.json"):
            if (p / name).is_file():  # a broken index fails deep in from_pretrained otherwise
                from spf_lib.io import read_json_object

                read_json_object(p / name, label=f"base model {ref}: {name}")
        return str(p.resolve())
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").split("/", 2)[-1]:
        raise SpfError(f"base model {ref}: folder does not exist")
    return ref


def s3_client():
    """A boto3 S3 client honouring AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL (MinIO, moto) from the environment."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get(
        "MLFLOW_S3_ENDPOINT_URL"
    )
    return boto3.client("s3", endpoint_url=endpoint or None)


def download_s3_prefix(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Mirror ``s3://bucket/prefix`` into a local cache folder (skips files whose size already matches)."""
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise SpfError(f"base model {uri}: no bucket in the s3 URI")
    root = Path(cache_dir or os.environ.get("SPF_CACHE", Path.home() / ".cache" / "spf")) / "s3" / bucket / prefix
    client = s3_client()
    paginator = client.get_paginator("list_objects_v2")
    n = 0
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/" if prefix else ""):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            if not rel or rel.endswith("/"):
                continue
            dest = (root / rel).resolve()
            if root.resolve() not in dest.parents:
                raise SpfError(f"base model {uri}: object key {obj['Key']!r} escapes the model folder")
            if dest.exists() and dest.stat().st_size == obj["Size"]:
                n += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            client.download_file(bucket, obj["Key"], str(tmp))
            os.replace(tmp, dest)
            n += 1
    if n == 0:
        raise SpfError(f"base model {uri}: no objects under this prefix")
    return root


# The pipelines training and evaluation know (spf_lib.models.backbone); anything else is refused by name up front.
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline")


def pipeline_class(path: str, ref: str, local: bool) -> str:
    """The pipeline class a model declares in its model_index.json (read before loading any weights)."""
    if local:
        from spf_lib.io import read_json_object

        index = Path(path) / "model_index.json"
        if not index.is_file():
            raise SpfError(f"base model {ref}: no model_index.json; not a diffusers pipeline folder")
        name = read_json_object(index, label=f"base model {ref}: model_index.json").get("_class_name")
    else:
        from diffusers import DiffusionPipeline

        try:
            name = DiffusionPipeline.load_config(path, local_files_only=_offline()).get("_class_name")
        except OSError as e:
            raise SpfError(f"base model {ref}: cannot load ({str(e).splitlines()[0]})") from e
    if name not in PIPELINE_CLASSES:
        raise SpfError(f"base model {ref}: cannot load _class_name={name!r} (model_index.json); expected one of "
                       f"{', '.join(PIPELINE_CLASSES)}")
    return name


def load_pipeline(ref: str, *, dtype: str = "float32", device: str = "cpu", cache_dir: str | Path | None = None):
    """Return the SD 1.x/2.x, SDXL or SD3 pipeline ``ref`` declares (safetensors only; no pickle); SD's safety
    checker off."""
    import diffusers
    import torch

    path = resolve_model_ref(ref, cache_dir)
    torch_dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                   "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise SpfError(f"dtype={dtype!r}: expected one of float32, float16, bfloat16")
    local = Path(path).exists()
    name = pipeline_class(path, ref, local)
    extra = {"safety_checker": None, "requires_safety_checker": False} if name == "StableDiffusionPipeline" else {}
    try:
        pipe = getattr(diffusers, name).from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, local_files_only=local or _offline(), **extra,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        from spf_lib.devices import is_oom

        if is_oom(e):
            raise
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise SpfError(f"base model {ref}: cannot load ({type(e).__name__}: {first})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
