"""The whole registry story on the embedded default (sqlite under SPF_HOME) and through the `spf` CLI."""

from __future__ import annotations

import json

import pytest

from spf_lib.cli.main import main
from tests._registry_helpers import (  # noqa: F401
    WORSE,
    embedded,
    embedded_store,
    generate,
    lineage_for,
    lora_adapter,
    promotion_scenario,
    tiny_base,
)

pytestmark = pytest.mark.slow  # the full story twice (library + CLI): ~35 s of CPU, more on a shared machine


def test_embedded_register_promote_refuse_rollback(embedded, lora_adapter, tiny_base):
    promotion_scenario("portrait-embedded", lora_adapter, tiny_base)
    assert (embedded / "mlflow.db").is_file() and any((embedded / "mlartifacts").iterdir())


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_cli_register_promote_lineage_rollback(embedded, lora_adapter, tiny_base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPF_REGISTER_VALIDATE", "0")  # the library test above covers log-time validation
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"pollution": 0.2, "clip_t": 0.3, "id_sim": 0.8, "clip_t_gain": 0.05}))
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(WORSE))
    lin = [f"--lineage={k}={v}" for k, v in lineage_for("cli", 1, "rev-cli-1").items()]
    code, out, _ = run_cli(capsys, "register", "--adapter", str(lora_adapter), "--base-model", str(tiny_base),
                           "--metrics", str(good), "--name", "cli-model", *lin, "--json")
    assert code == 0 and json.loads(out)["aliases"] == ["challenger"]
    code, out, _ = run_cli(capsys, "promote", "cli-model")
    assert code == 0 and "version 1 promoted to champion (first champion)" in out

    lin2 = [f"--lineage={k}={v}" for k, v in lineage_for("cli", 2, "rev-cli-2").items()]
    code, out, _ = run_cli(capsys, "register", "--adapter", str(lora_adapter), "--base-model", str(tiny_base),
                           "--metrics", str(worse), "--name", "cli-model", *lin2)
    assert code == 0 and "cli-model version 2 registered" in out
    code, out, err = run_cli(capsys, "promote", "cli-model")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "gate failed for version 2" in err and "pollution" in err
    code, out, err = run_cli(capsys, "promote", "cli-model", "--pollution-eps", "0.5")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "lineage", "models:/cli-model@champion")
    assert code == 0 and "rev-cli-2" in out and "data_rev" in out
    code, out, _ = run_cli(capsys, "rollback", "cli-model")
    assert code == 0 and "rolled back from version 2 to version 1" in out
    code, out, _ = run_cli(capsys, "lineage", "models:/cli-model@champion", "--json")
    assert json.loads(out)["lineage"]["data_rev"] == "rev-cli-1"
    assert generate("models:/cli-model@champion")[:8] == b"\x89PNG\r\n\x1a\n"  # unvalidated logging still serves
    code, _, err = run_cli(capsys, "rollback", "cli-model")
    assert code == 2 and "no previous champion" in err
    code, _, err = run_cli(capsys, "lineage", "models:/nope@champion")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "register", "--adapter", str(lora_adapter), "--base-model", str(tiny_base),
                           "--lineage", "no-equals-sign")
    assert code == 2 and "--lineage 'no-equals-sign': expected KEY=VALUE" in err
