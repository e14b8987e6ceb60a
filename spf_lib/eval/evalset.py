"""The fixed, versioned evaluation set: which prompts and seeds every evaluation generates.

Scores are only comparable between two models when they were measured on the same prompts and seeds, so the set is
data with a version string and a content hash, both recorded in ``metrics.json``. Prompts follow the data stage's
caption convention: comma-separated phrases, the target attribute as the last phrase
(``a photo of a woman, blonde hair, blue shirt, curtain background, wearing round glasses``).

File format (YAML or JSON)::

    name: portrait-default
    version: "1"
    target: wearing round glasses        # appended as a phrase to each base prompt unless target_prompts is given
    seeds: [0, 1]                        # default seeds for every prompt
    base_prompts:                        # prompts WITHOUT the target attribute (pollution is measured here)
      - a photo of a woman, blonde hair, blue shirt, curtain background
      - {text: "a photo of a man, short black hair, grey suit, plain background", seeds: [3]}
    target_prompts: [...]                # optional, same forms; default: each base prompt + ", " + target
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.io import sha256_json

DEFAULT_TARGET = "wearing round glasses"
DEFAULT_BASE_PROMPTS: tuple[str, ...] = (
    "a photo of a woman, blonde hair, blue shirt, curtain background",
    "a photo of a man, short black hair, grey suit, plain background",
    "a photo of a young woman, curly brown hair, white sweater, brick wall background",
    "a photo of an old man, grey hair, beard, dark jacket, office background",
)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1)


@dataclass(frozen=True)
class EvalItem:
    """One generation: a prompt, a seed, and whether the prompt carries the target attribute."""

    kind: str  # "base" | "target"
    index: int  # prompt index within its kind
    prompt: str
    seed: int

    @property
    def key(self) -> str:
        """Stable file stem, e.g. ``base_00_s0``; identical for the original and the tuned image of a pair."""
        return f"{self.kind}_{self.index:02d}_s{self.seed}"


@dataclass(frozen=True)
class EvalSet:
    name: str
    version: str
    target: str
    items: tuple[EvalItem, ...]
    source: str = "builtin"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def hash(self) -> str:
        """sha256 of the resolved content (not of the file): reformatting a file keeps the hash."""
        return sha256_json({"name": self.name, "version": self.version, "target": self.target,
                            "items": [[i.kind, i.index, i.prompt, i.seed] for i in self.items]})

    def of_kind(self, kind: str) -> list[EvalItem]:
        return [i for i in self.items if i.kind == kind]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hash": self.hash, "target": self.target,
                "source": self.source, "n_base": len(self.of_kind("base")),
                "n_target": len(self.of_kind("target"))}


def default_eval_set() -> EvalSet:
    """The portrait default: 4 base prompts x 2 seeds, and the same prompts with ", wearing round glasses"."""
    return build_eval_set({"name": "portrait-default", "version": "1", "target": DEFAULT_TARGET,
                           "seeds": list(DEFAULT_SEEDS), "base_prompts": list(DEFAULT_BASE_PROMPTS)})


IDENTITY_METHODS = ("celeb-basis", "beyond-inserting")
IDENTITY_BASE_PROMPTS: tuple[str, ...] = (
    "a photo of a person, plain background",
    "a photo of a person, smiling, blue shirt, curtain background",
    "a photo of a person, dark jacket, office background",
    "a photo of a person, white sweater, brick wall background",
)


def identity_eval_set(trigger: str = "sks") -> EvalSet:
    """For identity methods the target is the learned person: the same prompts with ``<trigger> person``.

    Base prompts never contain the trigger, so they measure whether inserting the identity changed anything else.
    """
    base = list(IDENTITY_BASE_PROMPTS)
    target = [p.replace("a photo of a person", f"a photo of {trigger} person", 1) for p in base]
    return build_eval_set({"name": "identity-default", "version": "1", "target": f"{trigger} person",
                           "seeds": list(DEFAULT_SEEDS), "base_prompts": base, "target_prompts": target})


def default_for_adapter(info: dict) -> EvalSet:
    """The default set that fits the adapter's method (``adapter_info.json``)."""
    if info.get("method") in IDENTITY_METHODS:
        trigger = info.get("trigger") or next((i.get("trigger") for i in info.get("identities") or []), None)
        return identity_eval_set(str(trigger or "sks"))
    return default_eval_set()


def _prompts(raw: Any, field_name: str, seeds: list[int], where: str) -> list[tuple[str, list[int]]]:
    if not isinstance(raw, list) or not raw:
        raise SpfError(f"{where}: {field_name} must be a non-empty list of prompts")
    out = []
    for n, p in enumerate(raw):
        if isinstance(p, str):
            text, s = p, seeds
        elif isinstance(p, dict) and isinstance(p.get("text"), str):
            text, s = p["text"], p.get("seeds", seeds)
        else:
            raise SpfError(f"{where}: {field_name}[{n}] must be a string or {{text, seeds}}, got {p!r}")
        if not text.strip():
            raise SpfError(f"{where}: {field_name}[{n}] is empty")
        out.append((text.strip(), _seeds(s, f"{field_name}[{n}].seeds", where)))
    return out


def _seeds(raw: Any, field_name: str, where: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                       for s in raw):
        raise SpfError(f"{where}: {field_name} must be a non-empty list of non-negative integers, got {raw!r}")
    return list(raw)


def build_eval_set(data: dict, where: str = "eval set") -> EvalSet:
    """Validate a mapping (as read from YAML/JSON) into an EvalSet; errors name the field."""
    if not isinstance(data, dict):
        raise SpfError(f"{where}: expected a mapping with name, version, base_prompts")
    for key in ("name", "version"):
        if not isinstance(data.get(key), (str, int, float)) or not str(data.get(key)).strip():
            raise SpfError(f"{where}: {key} is required (a non-empty string)")
    target = data.get("target", "")
    if not isinstance(target, str):
        raise SpfError(f"{where}: target must be a string, got {target!r}")
    seeds = _seeds(data.get("seeds", list(DEFAULT_SEEDS)), "seeds", where)
    base = _prompts(data.get("base_prompts"), "base_prompts", seeds, where)
    if data.get("target_prompts") is not None:
        target_p = _prompts(data["target_prompts"], "target_prompts", seeds, where)
    elif target.strip():
        target_p = [(f"{text}, {target.strip()}", s) for text, s in base]
    else:
        raise SpfError(f"{where}: give target (a phrase) or target_prompts")
    if target.strip():
        for text, _ in base:
            if target.strip().lower() in text.lower():
                raise SpfError(f"{where}: base prompt {text!r} already contains the target {target!r}")
    items = [EvalItem(kind, i, text, seed)
             for kind, plist in (("base", base), ("target", target_p))
             for i, (text, s) in enumerate(plist) for seed in s]
    return EvalSet(name=str(data["name"]).strip(), version=str(data["version"]).strip(), target=target.strip(),
                   items=tuple(items), source=where)


def load_eval_set(path: str | Path) -> EvalSet:
    """Read an eval set from a .yaml/.yml/.json file."""
    p = Path(path)
    if not p.is_file():
        raise SpfError(f"eval set {p}: file does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise SpfError(f"eval set {p}: cannot parse ({str(e).splitlines()[0]})") from e
    except Exception as e:  # yaml.YAMLError
        raise SpfError(f"eval set {p}: cannot parse ({str(e).splitlines()[0]})") from e
    return build_eval_set(data, where=f"eval set {p}")


def resolve_eval_set(spec: str | Path | dict | EvalSet | None, adapter_info: dict | None = None) -> EvalSet:
    if spec is None:
        return default_for_adapter(adapter_info or {})
    if isinstance(spec, EvalSet):
        return spec
    if isinstance(spec, dict):
        return build_eval_set(spec)
    return load_eval_set(spec)
