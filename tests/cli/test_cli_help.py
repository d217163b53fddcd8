"""Every command's --help ends with examples, and every example parses with the real parser (for that
command), so the help cannot drift from the options."""

from __future__ import annotations

import shlex

import pytest

from agentmesh.cli.main import build_parser
from agentmesh.cli.usage import walk


def _commands() -> list[tuple[tuple[str, ...], str | None]]:
    return [(path, parser.epilog) for path, parser in walk(build_parser())]


def _example_argv(line: str) -> list[str]:
    """``echo "$T" | agentmesh token inspect - --ca d`` -> ``["token", "inspect", "-", "--ca", "d"]`` (the
    command of a pipeline that is agentmesh; a redirection after it is not an argument)."""
    for command in line.split(" | "):
        words = shlex.split(command.partition(" > ")[0])
        if words[:1] == ["agentmesh"]:
            return words[1:]
    raise AssertionError(f"not an agentmesh command: {line}")


def test_every_command_has_examples() -> None:
    missing = [" ".join(path) or "agentmesh" for path, epilog in _commands()
               if not (epilog or "").startswith("examples:\n")]
    assert not missing, f"commands without examples: {missing}"


@pytest.mark.parametrize(("path", "epilog"), [c for c in _commands() if c[1]], ids=lambda v: " ".join(v)
                         if isinstance(v, tuple) else None)
def test_examples_parse(path: tuple[str, ...], epilog: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [line.strip() for line in epilog.splitlines()[1:] if line.strip()]
    assert lines, "an examples section with no example"
    for line in lines:
        argv = _example_argv(line)
        assert tuple(argv[:len(path)]) == path or (path == () and argv), f"{line!r} is not an example of {path}"
        if argv == ["--version"]:
            with pytest.raises(SystemExit) as done:
                build_parser().parse_args(argv)
            assert done.value.code == 0
            continue
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"example does not parse: {line}\n{capsys.readouterr().err}")
        assert callable(args.func), line


def test_help_shows_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["token", "inspect", "--help"])
    out = capsys.readouterr().out
    assert "examples:\n  agentmesh token inspect" in out
    assert "It never prints the signature." in out


def test_token_help_lists_only_real_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["token", "--help"])
    out = capsys.readouterr().out
    assert "publish" not in out
    listed = {line.split()[0] for line in out.split("positional arguments:")[1].split("options:")[0].splitlines()[2:]
              if line.startswith("    ") and not line.startswith("     ")}
    assert listed == {"init", "issue", "inspect", "jwks", "revoke"}
