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
    token_rows: list = field(default_factory=list)  # SPF's learned target-token rows (TokenRows), one per encoder
    _enabled: bool = field(default=True, init=False)

    def enable(self) -> None:
        self.pipe.enable_lora()
        for r in self.token_rows:
            r.write(True)
        self._enabled = True

    def disable(self) -> None:
        self.pipe.disable_lora()
        for r in self.token_rows:
            r.write(False)
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
    if info.get("format") != "lora":
        _resolve_loader(path, info.get("loader"))
    for st in sorted(Path(adapter_dir).glob("*.safetensors")):
        check_safetensors(st)
    return info


def _resolve_loader(path: Path, loader: Any):
    """The loader function an adapter names, checked before any model is loaded (only spf_lib.methods.*)."""
    import importlib

    if not isinstance(loader, str) or loader.count(":") != 1:
        raise SpfError(f"{path}: loader {loader!r} must be 'spf_lib.methods.<module>:<function>'")
    module, _, func = loader.partition(":")
    if not module.startswith("spf_lib.methods.") or not func.isidentifier():
        raise SpfError(f"{path}: loader {loader!r} is outside spf_lib.methods")
    try:
        fn = getattr(importlib.import_module(module), func, None)
    except ImportError:
        fn = None
    if not callable(fn):
        raise SpfError(f"{path}: unknown loader {loader!r} (no such function in this spf version)")
    return fn


def check_safetensors(path: Path) -> None:
    """Header and size of a safetensors file, read without loading it: a corrupt or truncated file is one line
    here instead of a traceback after the base model was loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_slice(k).get_shape()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SpfError(f"{path}: not a readable safetensors file ({(str(e).splitlines() or ['?'])[0][:200]})") \
            from None


def load_adapter(pipe: Any, adapter_dir: str | Path) -> AdapterHandle:
    """Load the adapter in ``adapter_dir`` into ``pipe`` (safetensors only) and return a handle, enabled."""
    info = read_adapter_info(adapter_dir)
    if info["format"] == "lora":
        weights = Path(adapter_dir) / LORA_WEIGHTS
        if not weights.is_file():
            raise SpfError(f"{weights}: missing LoRA weights")
        from safetensors import SafetensorError

        try:
            pipe.load_lora_weights(str(adapter_dir), weight_name=LORA_WEIGHTS, adapter_name="spf")
        except (SafetensorError, ValueError, KeyError, RuntimeError, OSError, TypeError, IndexError) as e:
            raise SpfError(f"{weights}: does not load into this base model ({type(e).__name__}: "
                           f"{(str(e).splitlines() or ['?'])[0][:200]})") from None
        rows = []
        if info.get("target_tokens"):
            from spf_lib.methods.spf.target_tokens import load_token_rows

            rows = load_token_rows(pipe, Path(adapter_dir), info["target_tokens"])
        handle = AdapterHandle(pipe=pipe, info=info, token_rows=rows)
        handle.enable()
        return handle
    fn = _resolve_loader(Path(adapter_dir) / ADAPTER_INFO, info["loader"])
    from safetensors import SafetensorError

    try:
        return fn(pipe, Path(adapter_dir), info)
    except (SafetensorError, KeyError, ValueError, RuntimeError, IndexError) as e:
        raise SpfError(f"{adapter_dir}: adapter does not load into this base model ({type(e).__name__}: "
                       f"{(str(e).splitlines() or ['?'])[0][:200]})") from None
