"""`spf bench NAME`: benchmarks live in ``bench/<name>.py`` (dashes become underscores).

Each module exposes ``run(options: dict[str, str]) -> dict`` returning
``{"title": str, "columns": [...], "rows": [[...]], "figures": {...}, "notes": [...]}``; this command prints the
table and, with ``--json PATH``, writes the whole dict. Ratios are measured side by side in one run.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError

app = typer.Typer(no_args_is_help=True, help="Benchmarks (step time, memory, throughput, method fidelity).")


def _available() -> list[str]:
    import bench

    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(bench.__path__)
                  if not m.name.startswith("_") and m.name != "common")


@app.command("list")
def list_benches() -> None:
    """List the benchmarks."""
    for name in _available():
        typer.echo(name)


@app.command("run", context_settings={"allow_extra_args": False})
def run_bench(
    name: Annotated[str, typer.Argument(help="benchmark name, see `spf bench list`")],
    json_path: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON here")] = None,
    option: Annotated[list[str] | None, typer.Option("-o", "--option", help="KEY=VALUE passed to the benchmark")] = None,
) -> None:
    """Run one benchmark, print its table, optionally write JSON."""
    run_named(name, json_path, option or [])


def run_named(name: str, json_path: Path | None, option: list[str]) -> dict:
    if name not in _available():
        raise SpfError(f"unknown benchmark {name!r}; available: {', '.join(_available()) or 'none'}")
    opts: dict[str, str] = {}
    for kv in option:
        if "=" not in kv:
            raise SpfError(f"--option {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        opts[k.strip()] = v.strip()
    mod = importlib.import_module(f"bench.{name.replace('-', '_')}")
    result = mod.run(opts)
    print_result(result)
    if json_path:
        from spf_lib.io import write_json_atomic

        write_json_atomic(json_path, result)
        typer.echo(f"wrote {json_path}")
    return result


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = [str(c) for c in result.get("columns", [])]
    rows = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in result.get("rows", [])]
    table = Table(title=result.get("title", "benchmark"))
    for col in cols:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console = Console()
    need = sum(max(len(c) for c in col) for col in zip(cols, *rows)) + 3 * len(cols) + 1 if cols else 0
    if need > console.width:
        # a boxed table squeezed into the terminal truncates every cell ("poll…"): a Markdown table keeps every
        # figure whole (the terminal wraps long lines) and pastes into the README as it is
        console.print(f"[bold]{result.get('title', 'benchmark')}[/bold]")
        for line in [cols, ["---"] * len(cols), *rows]:
            console.print("| " + " | ".join(line) + " |", markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(table)
    for note in result.get("notes", []):
        console.print(f"- {note}")


def _make_shortcut(bench_name: str):
    def _cmd(
        json_path: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON here")] = None,
        option: Annotated[list[str] | None, typer.Option("-o", "--option", help="KEY=VALUE")] = None,
    ) -> None:
        run_named(bench_name, json_path, option or [])

    _cmd.__doc__ = f"Run the {bench_name} benchmark (see bench/{bench_name.replace('-', '_')}.py)."
    return _cmd


try:  # `spf bench NAME` as a shortcut for `spf bench run NAME`
    for _name in _available():
        app.command(_name)(_make_shortcut(_name))
except Exception:  # pragma: no cover - listing must never break the CLI
    pass
