"""How the data layer speaks to the user, in a module of its own so every data module can use it: DataError stops
the run with one line; notice tells, in one line, what was done with the data and goes on."""

import logging

log = logging.getLogger("tinyldm.data")


class DataError(ValueError):
    """A problem with the user's data, stated in one line that names the file or value and what to do."""


def notice(message):
    """One-line notice to the user (skipped files, resizing, value ranges); printed and logged."""
    print(f"notice: {message}", flush=True)
    log.info(message)
