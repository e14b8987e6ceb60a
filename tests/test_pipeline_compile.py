"""The pipeline compiles to a KFP IR YAML with the four stages wired in order."""

import yaml

from pipelines.portrait import compile_pipeline


def test_pipeline_compiles(tmp_path):
    out = compile_pipeline(str(tmp_path / "p.yaml"), version="9.9.9+gtest")
    spec, *platform = list(yaml.safe_load_all(open(out)))
    assert platform, "kubernetes platform settings are compiled into a second document"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare-data", "train-model", "evaluate-model", "register-model", "condition-branches-1"}
    assert tasks["train-model"]["dependentTasks"] == ["prepare-data"]
    assert set(tasks["register-model"]["dependentTasks"]) == {"evaluate-model", "train-model"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["pipeline_version"]["defaultValue"] == "9.9.9+gtest"
    assert {"data_repo", "data_rev", "base_model", "method"} <= set(params)
    assert "baseline_method" in params and params["baseline_method"]["defaultValue"] == ""
    # the baseline branch: its own train + evaluate on the same prepared data and eval config, then the picture;
    # without a baseline only the picture of the chosen method
    comps = spec["components"]
    with_b = comps["comp-condition-2"]["dag"]["tasks"]
    assert set(with_b) == {"train-model-2", "evaluate-model-2", "compare-models"}
    assert with_b["train-model-2"]["inputs"]["parameters"]["method"]["componentInputParameter"] == \
        "pipelinechannel--baseline_method"
    assert with_b["train-model-2"]["inputs"]["artifacts"]["prepared"]["componentInputArtifact"] == \
        "pipelinechannel--prepare-data-prepared"
    assert with_b["evaluate-model-2"]["inputs"]["parameters"]["eval_config"]["componentInputParameter"] == \
        "pipelinechannel--eval_config"
    # resource settings reach the branch's sub-DAG (kfp does not pass them down by itself)
    assert {"pipelinechannel--accelerator_type", "pipelinechannel--accelerator_count"} <= set(
        comps["comp-condition-2"]["inputDefinitions"]["parameters"])
    assert set(comps["comp-condition-3"]["dag"]["tasks"]) == {"compare-models-2"}
    assert "comparison" in spec["root"]["outputDefinitions"]["parameters"]
    # no task installs packages at run time
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(ex["container"]["command"])
