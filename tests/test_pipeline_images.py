"""`spf pipeline compile --image REPO[:TAG]`: the compiled executors name the chosen images; the default tag names
the package version AND the git revision."""

import subprocess

import pytest
import yaml

from components import _common
from spf_lib import __version__
from spf_lib.cli.main import main
from tests._kube_helpers import REPO

GPU_STEPS = ("exec-train-model", "exec-evaluate-model")  # and the baseline branch's -2 copies


def _gpu(name: str) -> bool:
    return name.startswith(GPU_STEPS)


def _compile(tmp_path, name, *extra) -> list[dict]:
    out = tmp_path / name
    try:
        main(["pipeline", "compile", "-o", str(out), "--version", "9.9.9", *extra])
    except SystemExit as e:
        assert e.code in (0, None)
    return list(yaml.safe_load_all(out.read_text()))


def _images(spec: dict) -> dict[str, str]:
    return {k: v["container"]["image"] for k, v in spec["deploymentSpec"]["executors"].items()}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    mine = _compile(tmp, "mine.yaml", "--image", "registry.example.com:5000/team/spf:v7")
    return _compile(tmp, "default.yaml"), mine, tmp / "mine.yaml"


def test_image_flag_rewrites_every_executor(compiled):
    (default, *default_platform), (mine, *mine_platform), _ = compiled
    images = _images(mine)
    assert set(images) >= {*GPU_STEPS, "exec-prepare-data", "exec-register-model"}
    for name, image in images.items():
        want = "registry.example.com:5000/team/spf:v7" + ("-cuda" if _gpu(name) else "")
        assert image == want, name
    # nothing else changed: same spec once the images are put back
    for name, executor in mine["deploymentSpec"]["executors"].items():
        executor["container"]["image"] = _images(default)[name]
    assert mine == default and mine_platform == default_platform


def test_retargeted_package_still_loads_in_kfp(compiled):
    from kfp import components

    comp = components.load_component_from_file(str(compiled[2]))
    assert "data_repo" in comp.component_spec.inputs


def test_default_tag_is_version_plus_git_revision(compiled):
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert _common.default_tag().startswith(f"{__version__}-g{sha}")
    for name, image in _images(compiled[0][0]).items():
        assert image == (_common.GPU_IMAGE if _gpu(name) else _common.CPU_IMAGE)
        assert f":{__version__}-g{sha}" in image


def test_image_without_tag_gets_the_default_tag():
    cpu, gpu = _common.image_pair("ghcr.io/me/spf")
    assert cpu == f"ghcr.io/me/spf:{_common.default_tag()}" and gpu == cpu + "-cuda"


@pytest.mark.parametrize(("ref", "message"), [
    ("Ghcr.io/Me/SPF:v1", "is not an image repository"),
    ("ghcr.io/me/spf:bad tag", "is not a Docker tag"),
    ("ghcr.io/me/spf@sha256:abc", "not a digest"),
])
def test_bad_image_is_one_line_and_writes_nothing(ref, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "compile", "-o", str(tmp_path / "p.yaml"), "--image", ref])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.yaml").exists()
