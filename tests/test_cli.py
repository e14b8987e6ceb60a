"""The `spf` command: every subcommand explains itself; bad arguments get one line and a non-zero exit."""

import subprocess
import sys

import pytest

SUBCOMMANDS = [
    [], ["demo"], ["data"], ["train"], ["evaluate"], ["register"], ["promote"], ["rollback"], ["lineage"],
    ["pipeline"], ["pipeline", "compile"], ["pipeline", "run"], ["bench"],
]


def spf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spf_lib.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a) or "spf")
def test_help(args):
    r = spf(*args, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_unknown_command_is_one_clear_error():
    r = spf("bogus")
    assert r.returncode == 2
    assert "No such command 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr


def test_spf_error_is_one_line():
    r = spf("pipeline", "run", "--data-repo", "x", "--base-model", "y", "--method", "naive")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: --method 'naive': expected one of lora, spf, celeb-basis, "
                                             "beyond-inserting"]


def test_cli_startup_does_not_import_heavy_libraries():
    code = ("import sys; import spf_lib.cli.main; "
            "print(sorted(m for m in ('torch','diffusers','mlflow','kfp','great_expectations','dvc') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_bench_table_too_wide_for_the_terminal_prints_every_cell_whole(monkeypatch, capsys):
    from spf_lib.cli.bench import print_result

    monkeypatch.setenv("COLUMNS", "60")
    cell = "0.123 ± 0.010 (1 not reached)"
    print_result({"title": "frontier", "columns": ["method", "pollution @ LoRA's target (× LoRA)", "final target"],
                  "rows": [["spf w/o SFCM", cell, 0.5]]})
    out = capsys.readouterr().out
    assert cell in out and "spf w/o SFCM" in out and "pollution @ LoRA's target (× LoRA)" in out
    assert "…" not in out
