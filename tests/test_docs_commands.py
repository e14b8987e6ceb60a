"""Every `spf ...` command shown in README.md and docs/*.md parses against the real CLI.

Fenced code lines are parsed in full by click's own parser (the typer app turned into its click command, each
subcommand's ``make_context``): unknown commands or options, missing required options and bad values fail. Inline
code spans (`spf train --method ...` in prose) are checked by name: the subcommand path and every option named
must exist. Nothing is executed.
"""

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer._click import exceptions as cx  # typer >= 0.29 carries its own click; the CLI is built on this one

from spf_lib.cli.main import app

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SPF = re.compile(r"(?:^|(?<=[\s(;&|]))(?:\S*/)?spf(?=\s|$)")


def _fenced_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) inside ``` fences, backslash continuations joined."""
    out, fence, buf, start = [], False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence, buf = not fence, ""
            continue
        if not fence:
            continue
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    return out


def _commands_in(line: str) -> list[str]:
    """The spf invocations in one shell line: after env assignments, inside $(...), between | && ; separators."""
    line = re.sub(r"(?<=\s)#.*$", "", line.strip())  # a trailing comment
    line = line.removeprefix("$ ")
    pieces = re.findall(r"\$\(([^()]*)\)", line)
    line = re.sub(r"\$\([^()]*\)", "SUBST", line)
    pieces.append(line)
    cmds = []
    for piece in pieces:
        for part in re.split(r"\s(?:\|\|?|&&|;)\s", piece):
            part = re.sub(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+", "", part.strip())  # FOO=bar spf ...
            m = re.match(r"^(?:\S*/)?spf(?:\s|$)", part)
            if m:
                cmds.append(part)
    return cmds


def _argv(cmd: str) -> list[str]:
    cmd = re.sub(r"\[([^\[\]]*)\]", r"\1", cmd)  # [--resume latest]: an optional part, shown filled in
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars="<>")
    lexer.whitespace_split = True
    if any(tok in ("<", ">", "<<", ">>") for tok in lexer):  # `-p rev=<sha>` would be a shell redirect
        return ["--shell-redirect-in-a-documented-command"]
    return shlex.split(cmd)[1:]


def fenced_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for n, line in _fenced_lines(doc.read_text()):
            for cmd in _commands_in(line):
                found.append((f"{doc.relative_to(REPO)}:{n}: {cmd}", _argv(cmd)))
    return found


def inline_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for m in re.finditer(r"`((?:\S*/)?spf [^`]*)`", text):
            n = text[: m.start()].count("\n") + 1
            found.append((f"{doc.relative_to(REPO)}:~{n}: {m.group(1)}", m.group(1)))
    return found


def _is_group(cmd) -> bool:
    return hasattr(cmd, "list_commands")


def _sub(cmd, name: str):
    return cmd.get_command(cmd.context_class(cmd), name)


def parse(argv: list[str]) -> None:
    """Parse exactly as `spf` would, down to the leaf command; raise click's error on anything wrong."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("spf", list(argv))
    while _is_group(cmd):
        protected = getattr(ctx, "_protected_args", None)
        rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        if not rest:
            return
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)


def check_names(span: str) -> None:
    """The command path and the options a prose mention names exist (placeholders and values are skipped)."""
    first, *siblings = [s.strip() for s in span.split(" / ")]
    tokens = first.split()[1:]
    cmd = typer.main.get_command(app)
    parent = None
    while _is_group(cmd) and tokens and not tokens[0].startswith("-"):
        word = tokens[0]
        sub = _sub(cmd, word)
        if sub is None:
            if re.fullmatch(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*", word):  # a name, not a placeholder
                for alt in word.split("|"):
                    if _sub(cmd, alt) is None:
                        raise cx.UsageError(f"no command {alt!r} under {cmd.name!r}")
            return
        parent, cmd, tokens = cmd, sub, tokens[1:]
    for sib in siblings:
        if parent is None or _sub(parent, sib.split()[0]) is None:
            raise cx.UsageError(f"no command {sib!r} beside {cmd.name!r}")
    names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for tok in tokens:
        if tok.startswith("-") and tok != "-" and tok.split("=")[0] not in names:
            raise cx.NoSuchOption(tok.split("=")[0])


FENCED = fenced_commands()
INLINE = inline_commands()


def test_docs_show_commands():
    # a broken extractor must not pass vacuously
    assert len(FENCED) >= 25 and len(INLINE) >= 15, (len(FENCED), len(INLINE))


@pytest.mark.parametrize(("where", "argv"), FENCED, ids=[w for w, _ in FENCED])
def test_fenced_command_parses(where, argv, capsys):
    try:
        parse(argv)
    except typer.Exit as e:  # --help
        assert e.exit_code == 0, where
    except cx.ClickException as e:
        pytest.fail(f"{where}\n  -> {e.format_message()}")


@pytest.mark.parametrize(("where", "span"), INLINE, ids=[w for w, _ in INLINE])
def test_inline_command_names_exist(where, span):
    try:
        check_names(span)
    except cx.ClickException as e:
        pytest.fail(f"{where}\n  -> {e.format_message()}")
