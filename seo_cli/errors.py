"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake in the user's config, data or files.

    The message is one sentence naming what was wrong (key, file, column, row) and how to fix it.
    Entrypoints print it and exit with status 1, without a traceback; any other exception is our bug.
    """
