"""Building a component from its configured name, with one error style for unknown names and parameters."""
from src.utils.errors import InputError


def build_named(config_key, what, registry, name, params, aliases=None):
    """``registry[aliases.get(name, name)](**params)``; a bad name or parameters -> InputError on ``config_key``."""
    aliases = aliases or {}
    cls = registry.get(aliases.get(name, name))
    if cls is None:
        known = ", ".join(list(aliases) + list(registry))
        raise InputError(config_key, f"unknown {what} {name!r} (known: {known})")
    try:
        return cls(**params)
    except TypeError as exc:
        raise InputError(config_key, f"bad parameters for {cls.__name__}: {exc}") from None
