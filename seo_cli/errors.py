"""The one exception type for user mistakes, and how an entrypoint ends on one."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in the user's config, data or files.

    The message is one sentence naming what was wrong (key, file, column, row) and how to fix it.
    Entrypoints print it and exit with status 1, without a traceback; any other exception is our bug.
    """


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Log a ``UserError`` as its sentence and exit 1; let anything else keep its traceback."""
    try:
        yield
    except UserError as err:
        logging.getLogger("seo_cli").error("%s", err)
        sys.exit(1)
