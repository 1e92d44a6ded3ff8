"""Checks of single settings shared by the config, the components and the command lines."""
from src.utils.errors import InputError


def positive_int(value, name, optional=False):
    """``value`` if it is a positive int (or None, when ``optional``); InputError on ``name`` otherwise."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(name, f"must be a positive integer{' or null' if optional else ''}, got {value!r}")
    return value
