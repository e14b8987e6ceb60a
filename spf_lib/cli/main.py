"""The `spf` command. Subcommands live in sibling modules; each imports heavy libraries only when it runs."""

from __future__ import annotations

import sys

import typer

from spf_lib.cli import bench, data, demo, evaluate, pipeline, registry, train
from spf_lib.errors import SpfError

app = typer.Typer(
    name="spf",
    help="Customize text-to-image portrait models without semantic pollution: data → train → evaluate → register, "
    "locally or on Kubeflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(bench.app, name="bench")
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("register")(registry.register)
app.command("promote")(registry.promote)
app.command("rollback")(registry.rollback)
app.command("lineage")(registry.lineage)
app.command("ui")(registry.ui)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2, never a traceback."""
    try:
        app(args=argv, prog_name="spf")
    except SpfError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
