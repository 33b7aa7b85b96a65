"""The one exception type for bad user input.

Anything a user can get wrong (a missing file, a column that is not there, a config key that does not exist)
raises `UserError` with a single line that names the file, line or key. `train.py` prints that line and exits
non-zero instead of showing a traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message is one line that says what and where."""
