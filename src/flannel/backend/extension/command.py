"""How the extension backend runs its commands, exactly as upstream does today, plus timeouts.

Upstream (since "Don't use shell invocations") splits the command on whitespace (Go's
``strings.Fields``), expands ``$VAR`` and ``${VAR}`` in each word (Go's ``os.Expand``) against the
process environment plus the backend's variables, and executes the first word directly: no shell,
so ``;``, ``&&``, ``|`` and ``$(…)`` are plain characters, and ``sh -c '…'`` does not work either
(the quotes do not group words). Shell logic belongs in a script: ``sh /etc/flannel/add.sh``. Stdin
is the data plus a newline; the result is the combined stdout and stderr, trimmed.

pyflannel adds a timeout to every command, so a hung command cannot freeze the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flannel.errors import BackendError

_SPECIAL = set("*#$@!?-0123456789")


def _is_name_char(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def _shell_name(s: str) -> tuple[str, int]:
    """Go's getShellName: (name, characters consumed after the '$')."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SPECIAL and s[2] == "}":
            return s[1], 3
        end = s.find("}", 1)
        if end == -1:
            return "", 1  # bad syntax: eat "${"
        if end == 1:
            return "", 2  # bad syntax: eat "${}"
        return s[1:end], end + 1
    if s[0] in _SPECIAL:
        return s[0], 1
    i = 0
    while i < len(s) and _is_name_char(s[i]):
        i += 1
    return s[:i], i


def expand(word: str, lookup: Callable[[str], str]) -> str:
    """Go's os.Expand: ``$NAME``/``${NAME}`` replaced; a ``$`` before no name is kept."""
    out: list[str] = []
    i = j = 0
    while j < len(word):
        if word[j] == "$" and j + 1 < len(word):
            out.append(word[i:j])
            name, width = _shell_name(word[j + 1 :])
            if name:
                out.append(lookup(name))
            elif width == 0:
                out.append("$")
            j += width
            i = j + 1
        j += 1
    out.append(word[i:])
    return "".join(out)


def command_argv(command: str, env: Mapping[str, str]) -> list[str]:
    """The argv upstream executes for ``command`` with ``env`` (process env + backend vars)."""
    return [expand(word, lambda name: env.get(name, "")) for word in command.split()]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A finished command: its exit code and trimmed combined output."""

    argv: tuple[str, ...]
    exit_code: int
    output: str


class CommandFailed(BackendError):
    """A command exited non-zero, could not start, or ran past its timeout."""

    def __init__(self, command: str, reason: str, output: str = "") -> None:
        super().__init__(f"failed to run command: {command} Err: {reason} Output: {output}")
        self.command = command
        self.reason = reason
        self.output = output


async def run_command(
    command: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    stdin: str = "",
    timeout: float = 30.0,
) -> CommandResult:
    """Run one configured command as upstream does; CommandFailed (upstream's text) on failure."""
    env = {**os.environ, **(extra_env or {})}
    argv = command_argv(command, env)
    if not argv:
        raise CommandFailed(command, "the command is empty")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandFailed(command, f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            raw, _ = await proc.communicate((stdin + "\n").encode())
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandFailed(command, f"timed out after {timeout:g}s (CommandTimeout)") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    output = raw.decode(errors="replace").strip()
    code = proc.returncode if proc.returncode is not None else -1
    if code != 0:
        raise CommandFailed(command, f"exit status {code}", output)
    return CommandResult(tuple(argv), code, output)
