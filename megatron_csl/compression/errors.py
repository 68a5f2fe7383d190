"""The one error type of the compression package."""


class SpecError(ValueError):
    """A compression spec (or a tensor shape for it) is invalid.

    The message always names the offending part of the spec and lists the valid choices.
    """
