"""The attribute vocabulary of the small world, and captions built from it.

Every image in the world is described by an ``Attributes`` record; the caption is a pure function of it, so the
label of every phrase is known exactly. That is what makes pollution measurable here: probes read the attributes
back from generated images and drift is counted attribute by attribute.

Caption convention (shared with the data stage): comma-separated phrases, the first names the subject, the target
phrase is exactly ``wearing round glasses`` and appears only on images that show it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from spf_lib.errors import SpfError

TARGET_PHRASE = "wearing round glasses"

# Ordered choices per attribute; the index is the probe's class id, so never reorder (append only).
CHOICES: dict[str, tuple[str, ...]] = {
    "person": ("young", "old"),
    "hair": ("blonde", "black", "brown", "red", "grey"),
    "clothing": ("white", "black", "blue", "green", "orange"),
    "background": ("red", "blue", "green", "yellow", "curtain", "brick"),
    "expression": ("smiling", "neutral"),
    "skin": ("pale", "tan", "dark"),
}
BASE_ATTRIBUTES: tuple[str, ...] = tuple(CHOICES)

_BACKGROUND_PHRASE = {"brick": "brick wall background"}
_EXPRESSION_PHRASE = {"smiling": "smiling", "neutral": "neutral expression"}


@dataclass(frozen=True)
class Attributes:
    """One portrait's labels. ``glasses`` is the target attribute the base world never shows."""

    person: str
    hair: str
    clothing: str
    background: str
    expression: str
    skin: str
    glasses: bool = False

    def __post_init__(self) -> None:
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise SpfError(f"Attributes.{name}={value!r}: expected one of {', '.join(options)}")

    def phrases(self) -> list[str]:
        """Caption phrases in a fixed order (subject first, target last)."""
        out = [
            f"a photo of {'a young' if self.person == 'young' else 'an old'} woman",
            f"{self.hair} hair",
            f"{self.clothing} shirt",
            _BACKGROUND_PHRASE.get(self.background, f"{self.background} background"),
            _EXPRESSION_PHRASE[self.expression],
            f"{self.skin} skin",
        ]
        if self.glasses:
            out.append(TARGET_PHRASE)
        return out

    def caption(self) -> str:
        return ", ".join(self.phrases())

    def to_dict(self) -> dict:
        return asdict(self)

    def class_ids(self) -> dict[str, int]:
        """Probe targets: class index per base attribute, plus glasses as 0/1."""
        ids = {name: CHOICES[name].index(getattr(self, name)) for name in BASE_ATTRIBUTES}
        ids["glasses"] = int(self.glasses)
        return ids

    @classmethod
    def from_dict(cls, d: dict) -> Attributes:
        names = {f.name for f in fields(cls)}
        missing = names - set(d) - {"glasses"}
        if missing:
            raise SpfError(f"attributes record lacks {', '.join(sorted(missing))}")
        return cls(**{k: d[k] for k in names if k in d})


def sample_attributes(
    rng: np.random.Generator, *, glasses: bool = False, fixed: dict[str, str] | None = None
) -> Attributes:
    """Draw base attributes uniformly; ``fixed`` pins some (used to build spurious correlations)."""
    fixed = fixed or {}
    for k in fixed:
        if k not in CHOICES:
            raise SpfError(f"fixed attribute {k!r}: expected one of {', '.join(CHOICES)}")
    values = {name: options[int(rng.integers(len(options)))] for name, options in CHOICES.items()}
    values.update(fixed)
    return Attributes(**values, glasses=glasses)
