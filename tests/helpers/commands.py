"""The console scripts seo-train, seo-eval and seo-predict run in this process, as a user types them.

A subprocess spends 4-5 s importing torch, pandas and scikit-learn before it does anything; here the
command costs only its own work. ``seo_cli.cli``'s functions are the console scripts themselves
(pyproject.toml names them), so the arguments go through Hydra's command line exactly as typed. A few
tests start real processes instead, where the process is the point: exit codes and "no traceback" at
the command line, SIGKILL, torchrun, a wheel installed elsewhere.
"""

import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import seo_cli.cli

# What a command may change in this process and must not leave behind: Hydra configures the root logger
# (a handler on a stream that is closed afterwards, another on the run's log file); DDP's elastic
# launcher installs its own handlers for these signals in the main thread and sets environment variables.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
LOGGERS = ("", "hydra")


@dataclass
class Done:
    code: int
    output: str  # stdout and stderr as one file saw them, the lines of DDP workers started here included


def run_command(entry_point: str, *argv: str) -> Done:
    """``seo-train argv...`` (``train``), ``seo-eval`` (``evaluate``) or ``seo-predict`` (``predict``).

    Returns the exit code (0 when the command returns, as the console script would exit) and the output.
    """
    saved_argv = sys.argv
    sys.argv = [f"seo-{entry_point}", *argv]
    try:
        return run_captured(getattr(seo_cli.cli, entry_point))
    finally:
        sys.argv = saved_argv


def run_captured(main: Callable[[], object]) -> Done:
    """``main()`` with its output captured at the file descriptors, so processes it starts write into it
    too, and to a file, not a terminal, as in CI; the environment, the root and ``hydra`` loggers and the
    handlers of SIGTERM, SIGINT, SIGHUP and SIGQUIT are put back afterwards. A SystemExit is the exit code."""
    loggers = {name: _logger_state(logging.getLogger(name)) for name in LOGGERS}
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    environ = dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    code, failure = 0, None
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        stream = open(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            with redirect_stdout(stream), redirect_stderr(stream):
                main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException as err:  # noqa: BLE001 - a bug: raised again below with the output shown
            failure = err
        finally:
            stream.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            for name, state in loggers.items():
                _restore_logger(logging.getLogger(name), state)
            stream.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if dict(os.environ) != environ:
                os.environ.clear()
                os.environ.update(environ)
        captured.seek(0)
        output = captured.read().decode("utf-8", errors="replace")
    if failure is not None:
        print(output[-5000:])  # pytest shows it with the error
        raise failure
    return Done(code, output)


def _logger_state(logger: logging.Logger) -> tuple:
    return list(logger.handlers), logger.level, logger.propagate, logger.disabled


def _restore_logger(logger: logging.Logger, state: tuple) -> None:
    handlers, level, propagate, disabled = state
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate, logger.disabled = propagate, disabled
