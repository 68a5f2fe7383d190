"""The one error type of the sweep package."""


class SweepError(ValueError):
    """A sweep file, cluster profile or run layout is invalid, or a submission failed.

    The message names the file and key, the bad value, and what would be valid.
    """
