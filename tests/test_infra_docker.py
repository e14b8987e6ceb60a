"""The component Dockerfiles, linted by parsing them (no Docker engine here)."""

import re
import tomllib
from pathlib import Path

import pytest

from tests._kube_helpers import REPO

DOCKER = REPO / "infra" / "docker"
FILES = ["Dockerfile.cpu", "Dockerfile.cuda"]
SECRETISH = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY)", re.IGNORECASE)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        op, _, args = buf.strip().partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


@pytest.mark.parametrize("name", FILES)
def test_base_image_is_pinned(name):
    froms = [a for op, a in instructions(DOCKER / name) if op == "FROM"]
    assert froms, "no FROM"
    for ref in froms:
        image = ref.split()[0]
        assert "@sha256:" in image or re.search(r":[\w.\-]*\d[\w.\-]*$", image), f"{image}: tag not pinned"
        assert not image.endswith(":latest")


@pytest.mark.parametrize("name", FILES)
def test_runs_as_non_root_without_entrypoint(name):
    ins = instructions(DOCKER / name)
    users = [a for op, a in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "last USER must be non-root"
    assert ins[-1][0] in ("USER", "WORKDIR", "ENV"), "nothing may run after dropping to the non-root user"
    assert not [op for op, _ in ins if op in ("ENTRYPOINT", "CMD")], "KFP supplies the command"
    assert any(op == "RUN" and "useradd" in a and "--uid 1000" in a for op, a in ins)


@pytest.mark.parametrize("name", FILES)
def test_no_secrets_baked_in(name):
    for op, args in instructions(DOCKER / name):
        if op in ("ENV", "ARG", "LABEL"):
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                assert not SECRETISH.search(key), f"{name}: {op} {key} looks like a credential"
        if op in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|config\.local|\.aws|kubeconfig|\.pem|id_rsa", args), args
            assert "http" not in args, f"{name}: ADD from a URL"
    ignore = (DOCKER / f"{name}.dockerignore").read_text().split()
    for must in ("**/.env", "**/.dvc/config.local", "**/.git", "**/.venv"):
        assert must in ignore


@pytest.mark.parametrize("name", FILES)
def test_installs_this_package_with_the_right_torch(name):
    ins = instructions(DOCKER / name)
    runs = " ".join(a for op, a in ins if op == "RUN")
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    assert re.search(r"pip install \.( |$)", runs), "the package itself must be installed"
    assert 'torch==${TORCH_VERSION}' in runs
    copied = [a.split()[0] for op, a in ins if op == "COPY"]
    for src in copied:
        if "[" not in src:
            assert (REPO / src).exists(), f"COPY source {src} missing from the repository"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pkgs = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in pkgs} <= set(copied), "every packaged folder must be copied in"
    assert any(d.startswith("accelerate") for d in pyproject["project"]["dependencies"])
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    lo, hi = re.findall(r"[\d.]+", torch_pin)[:2]
    version = tuple(int(x) for x in args["TORCH_VERSION"].split("."))
    assert tuple(int(x) for x in lo.split(".")) <= version < tuple(int(x) for x in hi.split(".")), torch_pin
    if name.endswith(".cpu"):
        assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    else:
        assert "cpu" not in args["TORCH_INDEX_URL"] and "cuda" in ins[0][1]


def test_image_names_match_component_constants():
    from components import _common

    assert _common.GPU_IMAGE.endswith("-cuda") and _common.CPU_IMAGE.rsplit(":", 1)[0] == _common.IMAGE_REPO
