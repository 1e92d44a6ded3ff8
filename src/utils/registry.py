"""Components chosen by name (samplers, image-score policies, runners, synthesizers, task generators, backbones):
one lookup, one error style for unknown names and bad parameters, and the names a command line offers."""
from src.utils.errors import InputError


class Registry:
    """``entries``: {name: class or factory}; ``aliases``: {other name: name} (old or HiAD names); errors name
    ``config_key`` and say what kind of component (``what``) was asked for."""

    def __init__(self, config_key, what, entries, aliases=None):
        self.config_key, self.what = config_key, what
        self.entries, self.aliases = dict(entries), dict(aliases or {})

    @property
    def names(self):
        """The registered names, in registration order (a command line's choices)."""
        return tuple(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __contains__(self, name):
        return self.aliases.get(name, name) in self.entries

    def canonical(self, name):
        """The registered name ``name`` is or stands for; InputError when unknown."""
        canonical = self.aliases.get(name, name)
        if canonical not in self.entries:
            known = ", ".join(self.names + tuple(self.aliases))
            raise InputError(self.config_key, f"unknown {self.what} {name!r} (known: {known})")
        return canonical

    def lookup(self, name):
        """The class or factory registered as ``name`` (or an alias of it); InputError when unknown."""
        return self.entries[self.canonical(name)]

    __getitem__ = lookup

    def build(self, name, *args, **params):
        """``lookup(name)(*args, **params)``; parameters it does not take -> InputError."""
        factory = self.lookup(name)
        try:
            return factory(*args, **params)
        except TypeError as exc:
            raise InputError(self.config_key, f"bad parameters for {self.what} {name!r}: {exc}") from None
