"""Errors a user can cause; the CLI turns them into one clear line and a non-zero exit."""


class SisaError(Exception):
    """Bad input or a workdir that cannot be used as asked; nothing was changed."""
