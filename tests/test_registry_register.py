"""Registration against the embedded sqlite default: the version loads through pyfunc and generates an image."""

from __future__ import annotations

import io

import pytest

from spf_lib.errors import SpfError
from spf_lib.registry import register_model
from tests._registry_helpers import embedded, generate, lora_adapter, tiny_base  # noqa: F401

LINEAGE = {"data_rev": "abc123", "data_hash": "d41d8cd98f00b204e9800998ecf8427e", "kfp_run_id": "run-1",
           "pipeline_name": "spf-portrait", "pipeline_version": "v1", "config_hash": "f" * 64}


def test_register_lora_then_generate(embedded, lora_adapter, tiny_base):
    import mlflow
    from PIL import Image

    rv = register_model(lora_adapter, str(tiny_base), metrics={"pollution": 0.1, "clip_t": 0.3},
                        lineage=LINEAGE, model_name="portrait")
    assert (rv.name, rv.version, rv.aliases) == ("portrait", "1", ("challenger",))
    assert (embedded / "mlflow.db").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{embedded / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("portrait", "challenger")
    assert str(mv.version) == rv.version and mv.tags["data_rev"] == "abc123"
    assert mv.tags["metric.pollution"] == "0.1" and mv.tags["method"] == "lora"
    png = generate("models:/portrait@challenger")
    img = Image.open(io.BytesIO(png))
    assert img.size == (64, 64)


def test_bad_adapter_folder_is_one_line_error(embedded, tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(SpfError, match="adapter_info.json"):
        register_model(tmp_path / "a", "x/y", metrics={}, lineage={})
