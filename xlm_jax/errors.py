"""The one exception type for mistakes a user can fix.

`main.py` and the command-line tools catch `UserError`, print its message as one sentence on stderr and exit with a
non-zero status; no traceback is shown for these. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input: a missing file, an unknown language, a mistyped config field, a mismatched checkpoint...

  The message names the culprit (file, line, field or language) and says what to do.
  """
