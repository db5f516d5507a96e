"""Errors of the conversion tools."""


class ConversionError(Exception):
    """A published weight file does not match the module it is converted into."""
