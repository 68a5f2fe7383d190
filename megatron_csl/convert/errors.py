"""The one exception type the converter raises for bad input (the CLI turns it into exit code 2)."""


class ConversionError(ValueError):
    """A checkpoint, a target layout or an option the converter cannot handle.

    The message names the bad value and what would be valid; nothing has been written when it is
    raised (outputs are staged in a temporary directory that is removed on failure).
    """
