"""The exception types that end a command with one line instead of a traceback.

Anything a user can get wrong (a missing file, a column that is not there, a config key that does not exist)
raises `UserError` with a single line that names the file, line or key. `train.py` prints that line and exits
non-zero instead of showing a traceback. `StorageError`, a `UserError`, is the machine refusing a write (a
full disk, a read-only filesystem, no permission): its line names the path and the OS reason.
"""


class UserError(Exception):
    """Bad input from the user: the message is one line that says what and where."""


class StorageError(UserError):
    """A write the machine refused (ENOSPC, EROFS, EACCES, ...): one line with the path and the reason."""
