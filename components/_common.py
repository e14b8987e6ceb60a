"""What every component shares: the one image they run in.

Components are lightweight KFP components whose base image is the project image with this package installed;
locally (SubprocessRunner, use_venv=False) they run in the current environment.
"""

from __future__ import annotations

import os

from spf_lib import __version__

IMAGE_REPO = os.environ.get("SPF_IMAGE_REPO", "ghcr.io/spf-portrait/spf")
IMAGE_TAG = os.environ.get("SPF_IMAGE_TAG", __version__)
CPU_IMAGE = os.environ.get("SPF_IMAGE", f"{IMAGE_REPO}:{IMAGE_TAG}")
GPU_IMAGE = os.environ.get("SPF_GPU_IMAGE", f"{IMAGE_REPO}:{IMAGE_TAG}-cuda")
