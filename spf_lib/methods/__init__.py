"""Training methods, one folder each, and a single way to put any trained adapter into a pipeline.

``load_adapter(pipe, adapter_dir)`` reads ``adapter_info.json`` to pick the format. The returned handle switches the
SAME pipeline between original (adapter disabled) and tuned, so evaluation never loads a second copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.io import read_json_object

METHODS = ("lora", "spf", "celeb-basis", "beyond-inserting")
ADAPTER_INFO = "adapter_info.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class AdapterHandle:
    """Enable/disable a loaded adapter; ``prompt`` rewrites a prompt for methods that use a placeholder token."""

    pipe: Any
    info: dict
    adapter_name: str = "spf"
    _enabled: bool = field(default=True, init=False)

    def enable(self) -> None:
        self.pipe.enable_lora()
        self._enabled = True

    def disable(self) -> None:
        self.pipe.disable_lora()
        self._enabled = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    def prompt(self, text: str) -> str:
        return text


def read_adapter_info(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_INFO
    if not path.is_file():
        raise SpfError(f"{path}: missing; not an adapter folder written by `spf train`")
    info = read_json_object(path)
    if info.get("format") not in ("lora",) and not info.get("loader"):
        raise SpfError(f"{path}: unknown adapter format {info.get('format')!r}")
    return info


def load_adapter(pipe: Any, adapter_dir: str | Path) -> AdapterHandle:
    """Load the adapter in ``adapter_dir`` into ``pipe`` (safetensors only) and return a handle, enabled."""
    info = read_adapter_info(adapter_dir)
    if info["format"] == "lora":
        weights = Path(adapter_dir) / LORA_WEIGHTS
        if not weights.is_file():
            raise SpfError(f"{weights}: missing LoRA weights")
        pipe.load_lora_weights(str(adapter_dir), weight_name=LORA_WEIGHTS, adapter_name="spf")
        handle = AdapterHandle(pipe=pipe, info=info)
        handle.enable()
        return handle
    import importlib

    module, _, func = info["loader"].partition(":")
    if not module.startswith("spf_lib.methods."):
        raise SpfError(f"{adapter_dir}/{ADAPTER_INFO}: loader {info['loader']!r} is outside spf_lib.methods")
    return getattr(importlib.import_module(module), func)(pipe, Path(adapter_dir), info)
