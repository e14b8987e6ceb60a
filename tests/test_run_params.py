"""Every run parameter a file or a document names exists in the COMPILED pipeline, with the right type; the
parameter table in docs/operations.md lists exactly the compiled inputs."""

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_PARAMS = sorted((REPO / "infra" / "k8s").rglob("run-params.json"))
KIND = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (int, float), "BOOLEAN": bool, "STRUCT": dict,
        "LIST": list}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, str]:
    """name -> parameterType of the real pipeline, compiled as `spf pipeline compile` does."""
    from pipelines.portrait import compile_pipeline

    path = compile_pipeline(str(tmp_path_factory.mktemp("c") / "p.yaml"), version="t")
    spec = next(yaml.safe_load_all(Path(path).read_text()))
    return {k: v["parameterType"] for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}


def _check(name: str, value, compiled: dict[str, str], where: str) -> None:
    assert name in compiled, f"{where}: {name!r} is not a parameter of the compiled pipeline"
    want = KIND[compiled[name]]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    assert ok, f"{where}: {name}={value!r} but the pipeline takes {compiled[name]}"


def test_there_are_run_params_files():
    assert len(RUN_PARAMS) >= 3


@pytest.mark.parametrize("path", RUN_PARAMS, ids=lambda p: str(p.relative_to(REPO)))
def test_run_params_file_matches_the_compiled_pipeline(path, compiled):
    for name, value in json.loads(path.read_text()).items():
        _check(name, value, compiled, str(path.relative_to(REPO)))


def documented_params() -> list[tuple[str, str, str | None]]:
    """(where, name, raw value or None) for every `-p NAME=VALUE` / `--param NAME=VALUE` in README and docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        for m in re.finditer(r"(?:-p|--param)\s+(['\"]?)([a-z_][a-z0-9_]*)=(.*?)\1(?=\s|$|`)", text, re.M):
            n = text[: m.start()].count("\n") + 1
            found.append((f"{doc.relative_to(REPO)}:{n}", m.group(2), m.group(3)))
    return found


def table_params() -> list[str]:
    """First-column names of the parameter table in docs/operations.md §3."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## 3. Pipeline parameters", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z][a-z0-9_]*)` \|", section, re.M)


DOCUMENTED = documented_params()


def test_docs_name_parameters():
    assert len(DOCUMENTED) >= 6 and len(table_params()) >= 15


@pytest.mark.parametrize(("where", "name", "raw"), DOCUMENTED, ids=[f"{w} {n}" for w, n, _ in DOCUMENTED])
def test_documented_parameter_exists(where, name, raw, compiled):
    from spf_lib.cli.pipeline import parse_params

    value = parse_params([f"{name}={raw}"])[name]  # exactly what `spf pipeline submit -p` would send
    if raw.startswith("$") or "SUBST" in raw or raw in ("...", ""):
        assert name in compiled, f"{where}: {name!r} is not a parameter of the compiled pipeline"
    else:
        _check(name, value, compiled, where)


def test_parameter_table_is_the_compiled_inputs(compiled):
    names = table_params()
    assert len(names) == len(set(names)), "a parameter is listed twice"
    assert set(names) == set(compiled), (f"in the table only: {sorted(set(names) - set(compiled))}; "
                                         f"compiled only: {sorted(set(compiled) - set(names))}")


def test_dict_parameters_get_their_integers_back():
    """KFP carries dict parameters as protobuf Structs (kfp.local too): `steps: 40` arrives as 40.0, which the
    configs would refuse ("expected an integer"). The stages turn whole floats back into ints."""
    from spf_lib.eval.config import EvalConfig
    from spf_lib.stages import parse_json_arg

    got = parse_json_arg({"num_inference_steps": 20.0, "guidance_scale": 4.5, "eval_set": {"seeds": [1000.0]}},
                         "eval_config")
    assert got == {"num_inference_steps": 20, "guidance_scale": 4.5, "eval_set": {"seeds": [1000]}}
    assert isinstance(got["num_inference_steps"], int) and isinstance(got["eval_set"]["seeds"][0], int)
    EvalConfig(base_model="b", adapter_dir="a", output_dir="o", num_inference_steps=got["num_inference_steps"])
