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
    """Log a ``UserError`` as its sentence (or a required key left unset as one) and exit 1; let
    anything else keep its traceback."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except UserError as err:
        logging.getLogger("seo_cli").error("%s", err)
        sys.exit(1)
    except MissingMandatoryValue as err:  # a ??? key of the command's config, left unset
        key = err.full_key or "a required key"
        logging.getLogger("seo_cli").error("%s has no value; give %s=... on the command line.", key, key)
        sys.exit(1)


def require(condition: bool, message: str) -> None:
    """How a constructor refuses a value outside its range: ``message`` names the key and the fix.

    Raises:
        UserError: ``condition`` is false.
    """
    if not condition:
        raise UserError(message)


def positive_ints(key: str, value: object) -> None:
    """A size (or list of sizes): whole numbers of at least 1.

    Raises:
        UserError: naming ``key`` and the value.
    """
    values = list(value) if isinstance(value, list | tuple) else [value]
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    require(ok, f"{key}={value} must be {'a list of ' if isinstance(value, list | tuple) else ''}whole numbers of at least 1.")


def dropout_rate(key: str, value: float) -> None:
    """Raises:
    UserError: ``value`` is not in [0, 1).
    """
    require(0 <= value < 1, f"{key}={value} must be at least 0 and below 1, e.g. 0.1.")
