"""Key errors carry a one-line, user-facing message (the CLI prints it as is)."""


class KeyFileError(Exception):
    """A key file is missing, unreadable, corrupt, or would be overwritten."""
