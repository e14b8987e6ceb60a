"""Load a Beyond Inserting adapter: ``spf_lib.methods.load_adapter`` calls ``load`` via adapter_info.

Generation uses the saved per-stage tokens directly (no token module needed); the handle installs the stage
processors and the text-encoder packing hook on enable and restores the pipeline's own processors on disable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.methods import AdapterHandle


@dataclass
class BeyondInsertingHandle(AdapterHandle):
    injector: Any = None
    k_tokens: Any = None
    v_tokens: Any = None

    def enable(self) -> None:
        self.injector.install((self.k_tokens, self.v_tokens), hook=True)
        self._enabled = True

    def disable(self) -> None:
        self.injector.remove()
        self._enabled = False

    def prompt(self, text: str) -> str:
        from spf_lib.methods.tokens import replace_trigger

        return replace_trigger(text, self.info["trigger"], self.info["token"]) if self._enabled else text


def load(pipe: Any, adapter_dir: Path, info: dict) -> BeyondInsertingHandle:
    from safetensors.torch import load_file

    from spf_lib.methods.beyond_inserting.inject import Injector, cross_attention_layers
    from spf_lib.methods.tokens import add_placeholder_tokens, write_token_rows

    path = Path(adapter_dir) / info.get("weights_file", "beyond_inserting.safetensors")
    if not path.is_file():
        raise SpfError(f"{path}: missing Beyond Inserting weights")
    t = load_file(str(path))
    for key in ("k_tokens", "v_tokens"):
        if key not in t:
            raise SpfError(f"{path}: tensor {key!r} missing")
    k, v = t["k_tokens"], t["v_tokens"]
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    n = int(info.get("n_stages", k.shape[0]))
    if k.shape != (n, dim) or v.shape != (n, dim):
        raise SpfError(f"{path}: token shapes {tuple(k.shape)}/{tuple(v.shape)} != ({n}, {dim}) for this model")
    stage_of = dict(info.get("stage_of_layer") or {})
    missing = sorted(set(stage_of) - set(cross_attention_layers(pipe.unet)))
    if missing or not stage_of:
        raise SpfError(f"{adapter_dir}/adapter_info.json: stage_of_layer names layers this UNet lacks: {missing[:2]}")
    token_id = add_placeholder_tokens(pipe.tokenizer, pipe.text_encoder, [info["token"]])[0]
    if "module.v_star" in t:
        write_token_rows(pipe.text_encoder, [token_id], t["module.v_star"][None])
    dev = pipe.text_encoder.device
    injector = Injector(pipe.unet, pipe.text_encoder, stage_of, n, pipe.tokenizer.model_max_length, token_id,
                        info.get("value_mode", "direct"))
    handle = BeyondInsertingHandle(pipe=pipe, info=info, adapter_name="beyond-inserting", injector=injector,
                                   k_tokens=k.to(dev), v_tokens=v.to(dev))
    handle.enable()
    return handle
