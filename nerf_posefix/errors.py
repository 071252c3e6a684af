"""Errors raised on bad user input.

The command line prints an :class:`InputError` as one line (no traceback) and exits with code 2.
"""


class InputError(ValueError):
    """Bad input from the user: a missing or malformed file, inconsistent data, bad options.

    The message must name the offending file / frame / option so the user can fix it.
    """
