"""The Python API: `spf_lib` exports the stages lazily, with docstrings, and the README's notebook example runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import spf_lib

REPO = Path(__file__).resolve().parent.parent
STAGES = ["prepare_dataset", "PrepareConfig", "train_model", "TrainConfig", "evaluate_model", "EvalConfig",
          "register_model", "promote", "GateRules"]


def test_stages_are_exported_with_docstrings():
    assert set(STAGES) <= set(spf_lib.__all__) and set(STAGES) <= set(dir(spf_lib))
    for name in spf_lib.__all__[1:]:
        obj = getattr(spf_lib, name)
        assert (obj.__doc__ or "").strip(), f"spf_lib.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        spf_lib.nope  # noqa: B018


def test_import_is_cheap():
    code = ("import sys, spf_lib; heavy = [m for m in ('torch', 'diffusers', 'mlflow', 'kfp', 'dvc', "
            "'great_expectations', 'transformers') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python (a notebook)", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README lost its Python example"
    return m.group(1)


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPF_HOME", raising=False)  # the example's own default: ./.spf under the cwd
    exec(compile(readme_example(), "README.md (From Python)", "exec"), {})  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert re.search(r"^\d+ kept, \d+ rejected$", out, re.M)
    assert "models:/my-portraits/1" in out
    assert (tmp_path / ".spf" / "mlflow.db").is_file()
    assert (tmp_path / "work" / "eval" / "report.html").is_file()
