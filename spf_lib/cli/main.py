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
    """Entry point: bad input ends with one line on stderr and exit code 2, never a traceback.

    Besides SpfError, the failures an operator causes and can fix (a pydantic field error, a file that cannot be
    read or written, a full disk, memory) are one line too; set SPF_DEBUG=1 to see the traceback instead. Every
    line printed or logged has credentials removed (a URL with user:password@ comes from a flag or a library).
    """
    import os

    _scrub_logs()
    debug = os.environ.get("SPF_DEBUG", "") not in ("", "0")
    try:
        code = app(args=argv, prog_name="spf", standalone_mode=False)
    except SpfError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - classified below; anything else keeps its traceback
        _click_exit(e)
        line = None if debug else _one_line(e)
        if line is None:
            raise
        _fail(line, 2)
    else:  # like click's standalone mode: a finished command exits (0), callers in-process see SystemExit
        sys.exit(code if isinstance(code, int) else 0)


def _click_exit(e: BaseException) -> None:
    """Click's own errors (typer vendors click, so matched by class name): a usage error is one line naming the
    command; a bare group prints its help; Abort is an interrupt."""
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:
        e.show()  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    if "Abort" in names:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    if "UsageError" in names:
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "spf"
        _fail(f"{cmd}: {e.format_message()} (see '{cmd} --help')", getattr(e, "exit_code", 2))  # type: ignore
    if "ClickException" in names:
        _fail(e.format_message(), getattr(e, "exit_code", 1))  # type: ignore[attr-defined]


def _fail(message: str, code: int) -> None:
    from spf_lib.errors import redact_text

    typer.secho(f"error: {redact_text(' '.join(message.split()) if chr(10) in message else message)}",
                err=True, fg="red")
    sys.exit(code)


def _one_line(e: BaseException) -> str | None:
    """The one-line form of an operator-fixable failure, or None for a bug (which keeps its traceback)."""
    import errno

    if type(e).__name__ == "ValidationError" and type(e).__module__.startswith("pydantic"):
        parts = []
        for err in e.errors():  # type: ignore[attr-defined]
            loc = ".".join(str(x) for x in err["loc"]) or "config"
            inp = err.get("input")
            parts.append(f"{loc}{'' if isinstance(inp, dict) else f'={inp!r}'}: {err['msg']}")
        return f"{e.title}: " + "; ".join(parts)  # type: ignore[attr-defined]
    if isinstance(e, MemoryError):
        return "out of memory; lower the batch size or resolution, or use a machine with more memory"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.ENOENT,
                                              errno.EISDIR, errno.ENOTDIR, errno.EBUSY, errno.EXDEV, errno.EDQUOT,
                                              errno.ENAMETOOLONG, errno.EIO):
        where = e.filename if e.filename is not None else ""
        return f"{where}: {e.strerror or e}" if where else f"{e.strerror or e}"
    return None


def _scrub_logs() -> None:
    """Log records are formatted eagerly and redacted, whatever handler later prints them."""
    from spf_lib.errors import install_log_redaction

    install_log_redaction()


if __name__ == "__main__":
    main()
