"""What every component shares: the one image they run in.

Components are lightweight KFP components whose base image is the project image with this package installed;
locally (SubprocessRunner, use_venv=False) they run in the current environment.

KFP fixes ``base_image`` when ``@dsl.component`` runs, i.e. at import. So the decoration uses the defaults below
(``SPF_IMAGE_REPO``/``SPF_IMAGE_TAG``/``SPF_IMAGE``/``SPF_GPU_IMAGE`` still override them for scripts), and a
compile-time choice (``spf pipeline compile --image REPO[:TAG]``) rewrites the compiled spec's executor images with
``retarget_images``: whichever executor ran in the default CPU image gets the new CPU image, the GPU ones
``<image>-cuda``.

The default tag is ``<package version>-g<git sha>`` (``-dirty`` for uncommitted changes), so a compiled pipeline
names the exact code its image must hold; ``spf pipeline image`` prints it for ``docker build -t``.
"""

from __future__ import annotations

import os
import re

from spf_lib import __version__

DEFAULT_REPO = "ghcr.io/spf-portrait/spf"
GPU_SUFFIX = "-cuda"

# Docker reference grammar, reduced: [host[:port]/]path[:tag]; path components lowercase.
_PART = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
_REPO_RE = re.compile(rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_PART}(?:/{_PART})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def default_tag() -> str:
    """``<version>-g<12-char sha>[-dirty]``; just ``<version>`` outside a git checkout (e.g. inside the image)."""
    from spf_lib.lineage import code_revision

    rev = code_revision()
    if rev == "unknown":
        return __version__
    sha, dirty = rev.split("-")[0][:12], rev.endswith("-dirty")
    return f"{__version__}-g{sha}" + ("-dirty" if dirty else "")


def split_image(ref: str, *, flag: str = "--image") -> tuple[str, str | None]:
    """``REPO[:TAG]`` -> (repo, tag or None), naming the flag when the reference is not a Docker image name."""
    ref = ref.strip()
    if "@" in ref:
        raise _error(f"{flag} {ref!r}: give REPO[:TAG], not a digest (the pipeline needs a CPU image and its "
                     f"'{GPU_SUFFIX}' sibling)")
    last = ref.rsplit("/", 1)[-1]
    repo, tag = (ref.rsplit(":", 1)[0], ref.rsplit(":", 1)[1]) if ":" in last else (ref, None)
    if not _REPO_RE.match(repo):
        raise _error(f"{flag} {ref!r}: {repo!r} is not an image repository (lowercase [host/]path, e.g. "
                     f"ghcr.io/org/spf)")
    if tag is not None and not _TAG_RE.match(tag):
        raise _error(f"{flag} {ref!r}: tag {tag!r} is not a Docker tag ([A-Za-z0-9_.-], at most 128)")
    return repo, tag


def image_pair(ref: str | None = None) -> tuple[str, str]:
    """(CPU image, GPU image) for ``REPO[:TAG]``; the tag defaults to ``default_tag()``, the repo to ours."""
    repo, tag = split_image(ref) if ref else (os.environ.get("SPF_IMAGE_REPO", DEFAULT_REPO), None)
    tag = tag or os.environ.get("SPF_IMAGE_TAG") or default_tag()
    return f"{repo}:{tag}", f"{repo}:{tag}{GPU_SUFFIX}"


def _error(message: str) -> Exception:
    from spf_lib.errors import SpfError

    return SpfError(message)


IMAGE_REPO = os.environ.get("SPF_IMAGE_REPO", DEFAULT_REPO)
IMAGE_TAG = os.environ.get("SPF_IMAGE_TAG") or default_tag()
CPU_IMAGE = os.environ.get("SPF_IMAGE", f"{IMAGE_REPO}:{IMAGE_TAG}")
GPU_IMAGE = os.environ.get("SPF_GPU_IMAGE", f"{IMAGE_REPO}:{IMAGE_TAG}{GPU_SUFFIX}")


def retarget_images(spec: dict, cpu_image: str, gpu_image: str) -> dict[str, str]:
    """Point the compiled pipeline spec's executors at other images, in place; returns {executor: new image}.

    Executors built on ``CPU_IMAGE`` get ``cpu_image``, those on ``GPU_IMAGE`` get ``gpu_image``; any other image
    (a component someone added with its own image) is left alone."""
    mapping = {CPU_IMAGE: cpu_image, GPU_IMAGE: gpu_image}
    changed: dict[str, str] = {}
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for name, executor in executors.items():
        container = executor.get("container") or {}
        if container.get("image") in mapping:
            container["image"] = mapping[container["image"]]
            changed[name] = container["image"]
    return changed
