"""The one error type for failures a user can act on, and the exit codes.

Library code raises ToolError; only each script's main() turns it into a message on
stderr and an exit code. Stdlib only: common/topas ships to reducer nodes with it.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the campaign failed: tasks failed, timeout, unverified download
EXIT_USAGE = 2  # bad configuration or command line; nothing was created or deleted
EXIT_INTERRUPTED = 130


class ToolError(Exception):
    """A user-facing failure: one or more one-line messages and the exit code to end with."""

    def __init__(self, *lines: str, exit_code: int = EXIT_FAILED) -> None:
        if not lines:
            raise ValueError("ToolError needs at least one message line")
        super().__init__("\n".join(lines))
        self.lines: tuple[str, ...] = tuple(lines)
        self.exit_code = exit_code


def usage_error(*lines: str) -> ToolError:
    """Bad configuration or arguments: exit code 2."""
    return ToolError(*lines, exit_code=EXIT_USAGE)
