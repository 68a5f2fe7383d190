"""Start-up output a user can read: library warnings hidden unless --verbose.

megatron-core warns at import time that Transformer Engine and Apex are absent (the local layers
need neither) and about its own deprecations; torch and friends add theirs. None of it is about
the user's run, and a dozen lines of it bury the lines that are (the plan, notes about flags, the
resume decision). With --verbose everything is shown as before.
"""
import logging
import warnings

# Packages whose import-time warnings are about themselves, not about the run.
_LIBRARIES = r"(megatron|torch|transformer_engine|apex|tensorboard|google|numpy|sympy)(\.|$)"


def quiet_startup(verbose: bool) -> None:
    """Hide library warnings and megatron's log chatter below errors, unless ``verbose``."""
    if verbose:
        warnings.simplefilter("default")
        return
    for category in (UserWarning, DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    # Raised with a stacklevel that points outside megatron: match the text too.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).* not installed.*")
    logging.getLogger("megatron").setLevel(logging.ERROR)
