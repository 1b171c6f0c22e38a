"""Errors a user can cause; the CLI turns them into one clear line and a non-zero exit."""


class SisaError(Exception):
    """Bad input or a workdir that cannot be used as asked; nothing was changed.

    `kind`: a short, stable word for `--json` failures ("corrupted", "environment", ...);
    None lets the CLI tell it from the error's class."""

    def __init__(self, message: str = "", *, kind: str | None = None):
        super().__init__(message)
        self.kind = kind
