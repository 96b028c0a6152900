"""One small error hierarchy. Every message says what happened and what to do next.

The MCP edge (`server.py`) turns any `AutoexpError` into a `ToolError`, the only kind of
exception whose text reaches the agent; the CLI turns it into a message and an exit code.
"""

from __future__ import annotations


class AutoexpError(Exception):
    """Base class: a failure the user or the agent can act on."""

    exit_code = 1


class ConfigError(AutoexpError):
    """autoexp.toml is missing, unreadable or invalid."""

    exit_code = 2


class GitError(AutoexpError):
    """The repository is not in a state the server can work with."""


class DirtyTreeError(GitError):
    """Tracked files differ from HEAD when the server needs a clean tree."""


class GuardError(AutoexpError):
    """An edit, path or argument was refused to protect the target, harness or ledger."""


class IntegrityError(GuardError):
    """Something other than the target changed behind the server's back."""

    def __init__(self, message: str, files: list[str] | None = None) -> None:
        super().__init__(message)
        self.files = files or []


class OrderError(AutoexpError):
    """A tool was called in a phase where it is not allowed."""

    def __init__(self, message: str, next_tool: str) -> None:
        super().__init__(message)
        self.next_tool = next_tool


class BudgetExhausted(AutoexpError):
    """The run's budget is spent; no further experiment may start."""


class LockError(AutoexpError):
    """Another server process already drives this experiment."""


class EvalError(AutoexpError):
    """The eval command could not be started at all."""
