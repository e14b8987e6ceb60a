"""The pipeline compiles to a KFP IR YAML with the four stages wired in order."""

import yaml

from pipelines.portrait import compile_pipeline


def test_pipeline_compiles(tmp_path):
    out = compile_pipeline(str(tmp_path / "p.yaml"), version="9.9.9+gtest")
    spec, *platform = list(yaml.safe_load_all(open(out)))
    assert platform, "kubernetes platform settings are compiled into a second document"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare-data", "train-model", "evaluate-model", "register-model"}
    assert tasks["train-model"]["dependentTasks"] == ["prepare-data"]
    assert set(tasks["register-model"]["dependentTasks"]) == {"evaluate-model", "train-model"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["pipeline_version"]["defaultValue"] == "9.9.9+gtest"
    assert {"data_repo", "data_rev", "base_model", "method"} <= set(params)
    # no task installs packages at run time
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(ex["container"]["command"])
