"""Errors that reach the user.

Every error raised on purpose by audiotag is an :class:`AudiotagError`: it carries a message that
names the offending input (file, row, key, value) and a ``hint`` that says what to do. The CLI
prints both and exits with :attr:`exit_code`; nothing else should ever reach the user as a
traceback.
"""

from __future__ import annotations


class AudiotagError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(AudiotagError):
    """A configuration file or override is invalid (unknown key, wrong type, out of range)."""

    DEFAULT_HINT = ("`audiotag config` prints every setting with its value; src/audiotag/configs/default.yaml "
                    "says why each default is what it is")

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint or self.DEFAULT_HINT)


class DataError(AudiotagError):
    """A dataset cannot be read at all (missing CSV, missing columns, no audio folder...)."""


class AudioError(AudiotagError):
    """One audio file cannot be decoded or is unusable (empty, truncated, silent, non-finite)."""

    def __init__(self, detail: str, *, code: str, path: str | None = None, hint: str | None = None):
        super().__init__(f"{path}: {detail}" if path else detail, hint=hint)
        self.detail = detail
        self.code = code
        self.path = path


class ValidationFailed(AudiotagError):
    """Dataset validation found problems and ``skip_bad`` was not requested."""

    exit_code = 1

    def __init__(self, report):
        n = len(report.errors)
        super().__init__(
            f"the dataset has {n} problem{'s' if n != 1 else ''}:\n{report.format(limit=50)}",
            hint="fix them, or pass --skip-bad to leave the bad clips out (they are listed in the run)",
        )
        self.report = report
