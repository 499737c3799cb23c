"""How console scripts report user errors: one paragraph on stderr, no traceback, exit status 1.

A `PromptlabError` carries a complete message (what is wrong, what to do), so a traceback would only
bury it. Every other exception is a bug and propagates untouched, traceback included. Setting
HYDRA_FULL_ERROR=1 (the variable Hydra already reads for the same purpose) re-raises user errors too,
for debugging.

    @exit_on_user_error("promptlab-analyze")          # argparse scripts: decorator or `with` block
    def main(argv=None) -> int: ...

    @hydra.main(...)                                  # Hydra scripts: inside the task function, since
    def main(cfg):                                    # hydra.main reports exceptions itself
        with user_errors_in_hydra_job("promptlab-train"):
            ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from promptlab.errors import PromptlabError

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
EXIT_USER_ERROR = 1


def full_error_requested() -> bool:
    """True when HYDRA_FULL_ERROR=1: user errors are re-raised with their traceback (Hydra's own test)."""
    return os.environ.get(FULL_ERROR_ENV) == "1"


def format_user_error(prog: str, err: BaseException) -> str:
    """`<prog>: error: <message>` as one paragraph: blank lines dropped, indentation of lines kept.

    Messages may span lines (e.g. an expected dataset layout); only the blank lines, which would split
    the report into paragraphs, are removed.
    """
    message = str(err).strip() or type(err).__name__
    lines = [line.rstrip() for line in message.splitlines() if line.strip()]
    return f"{prog}: error: " + "\n".join(lines)


def print_user_error(prog: str, err: BaseException, file: TextIO | None = None) -> None:
    """Write `format_user_error(prog, err)` to `file` (default: stderr)."""
    stream = file if file is not None else sys.stderr
    # stdout first: what the script printed before the error stays above the error, also when both
    # streams go to the same pipe.
    sys.stdout.flush()
    print(format_user_error(prog, err), file=stream, flush=True)


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn a `PromptlabError` into `<prog>: error: <message>` on stderr and exit status 1.

    Usable as `with exit_on_user_error(prog):` or as a decorator `@exit_on_user_error(prog)`.
    With HYDRA_FULL_ERROR=1 the error is re-raised unchanged; any other exception propagates untouched.
    """
    try:
        yield
    except PromptlabError as err:
        if full_error_requested():
            raise
        print_user_error(prog, err)
        raise SystemExit(EXIT_USER_ERROR) from None


def _hydra_mode() -> str | None:
    """"RUN" or "MULTIRUN" inside a job started by hydra.main; None outside one (e.g. a test calling the
    task function with a config)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    mode = HydraConfig.get().mode
    return None if mode is None else str(getattr(mode, "name", mode))


@contextmanager
def user_errors_in_hydra_job(prog: str) -> Iterator[None]:
    """`exit_on_user_error` for the body of a `@hydra.main` task function.

    hydra.main runs the task in `run_and_report`, which prints any Exception with a (trimmed) traceback,
    so the error has to be handled inside the task:
    - single run: print the paragraph and raise SystemExit(1), which Hydra lets through untouched;
    - multirun (-m): the other jobs of the sweep must still run, so the error becomes Hydra's
      `CompactHydraException` (an Exception: Hydra records the job as failed and goes on); Hydra
      then prints its message, without traceback, when the sweep ends;
    - HYDRA_FULL_ERROR=1, or no Hydra job (the task function called directly): re-raised unchanged.
    """
    try:
        yield
    except PromptlabError as err:
        mode = None if full_error_requested() else _hydra_mode()
        if mode == "RUN":
            print_user_error(prog, err)
            raise SystemExit(EXIT_USER_ERROR) from None
        if mode == "MULTIRUN":
            from hydra.errors import CompactHydraException

            raise CompactHydraException(format_user_error(prog, err)) from err
        raise
