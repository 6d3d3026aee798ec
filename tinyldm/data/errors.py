"""The one exception type of the data layer, in a module of its own so every data module can raise it."""


class DataError(ValueError):
    """A problem with the user's data, stated in one line that names the file or value and what to do."""
