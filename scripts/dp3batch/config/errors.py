"""The configuration error type, in a module of its own so that every config stage can
raise it without importing the others."""


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user."""
