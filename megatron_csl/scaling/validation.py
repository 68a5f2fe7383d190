"""Checks of fit_laws.py's arguments that run before any fit (a bad value must not cost a fit and
a bootstrap first)."""
from __future__ import annotations

from .laws import DENSE
from .predict import not_fitted_message

# argparse reads a value starting with '-' as an option unless it is a plain number, so
# "--predict -1e8,2e9,w4" would fail with "expected at least one argument"; such values are turned
# into "--predict=VALUE" first, and parse_predict_arg then names the negative N.
_PREDICT = "--predict"


def predict_values_as_options(argv) -> list[str]:
    """Rewrite ``--predict A B C`` as ``--predict=A --predict=B --predict=C``; a value is every
    following token up to the next option (a token starting with '--', or '-' and a letter)."""
    out, i, argv = [], 0, list(argv)
    while i < len(argv):
        tok = argv[i]
        if tok != _PREDICT:
            out.append(tok)
            i += 1
            continue
        i += 1
        values = []
        while i < len(argv) and not _is_option(argv[i]):
            values.append(argv[i])
            i += 1
        if not values:
            out.append(tok)   # argparse reports the missing value
        out.extend(f"{_PREDICT}={v}" for v in values)
    return out


def _is_option(tok: str) -> bool:
    return tok.startswith("--") or (len(tok) > 1 and tok[0] == "-" and tok[1].isalpha())


def check_predictions(law: str, runs, predictions) -> None:
    """Every --predict format must be predictable by ``law`` from these runs."""
    formats = runs.format_names()
    for N, D, spec, text in predictions:
        if spec in formats:
            continue
        if law == "capacity":
            from .formats import gmse_parts
            for g in gmse_parts(spec):
                if g is not None and not (0.0 <= g < 1.0):
                    raise ValueError(f"--predict {text!r}: format {spec!r} has Gaussian MSE {g}; "
                                     "the capacity law predicts only formats with 0 <= GMSE < 1")
            continue
        if law == "precision":
            continue   # any parsed spec has bits
        if law == "chinchilla" or spec == DENSE:
            raise ValueError(f"--predict {text!r}: format {spec!r} has no runs in the data "
                             f"(formats: {', '.join(formats)})")
        raise ValueError(f"--predict {text!r}: " + not_fitted_message(spec, formats))


def check_laws(names, runs) -> None:
    """Every --compare-laws law can be built for these runs (dense present, one format for
    chinchilla, GMSE < 1 for capacity), checked before any fit."""
    from .formats import law_inputs
    from .laws import make_law

    formats = runs.format_names()
    for name in names:
        try:
            make_law(name, formats, **law_inputs(name, formats))
        except ValueError as e:
            raise ValueError(f"--compare-laws: {name}: {e}") from None
