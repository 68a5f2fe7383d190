"""parse_spec: spec string -> CompressionSpec, with errors that name the bad part.

Grammar (docs/formats.md has the full description):
    spec      := "dense" | "bf16" | component ("+" component)*
    component := head [":" option ("," option)*]
    head      := "w<b>" | "w<b>a<c>" | "a<c>"          integer weights / activations, b, c in 1..8 or 1.58
               | "fp<x>" | "fp<x>a<y>" | "afp<y>"     float weights / activations, x, y in 4, 6, 8
               | "vq<d>"                               vector-quantized weights (first option: bits)
               | "s<p>"                                sparsity, 0 < p < 100 percent pruned
               | "as<p>"                               activation sparsity, p percent per token
    component := "noise:" weight-spec                  Gaussian noise with that format's GMSE
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from functools import lru_cache

from . import floats
from .errors import SpecError
from .quantizers import TERNARY, FloatQuant, IntQuant
from .vector import VectorQuant
from . import vector
from .activation_sparsity import ActivationSparsity
from .noise import NoiseInjection
from .sparsity import Sparsity
from .spec import CompressionSpec

VALID_HEADS = ("dense, bf16, w<b>, w<b>a<c>, a<c> (b, c in 1..8 or 1.58), fp<x>, fp<x>a<y>, "
               "afp<y> (x, y in 4, 6, 8), vq<d>:<bits> (" + vector.valid_formats() + "), "
               "noise:<weight format>, s<p> (0 < p < 100), as<p> (0 < p < 100)")
INT_OPTIONS = ("sym, zero, rms, absmax, absmean, row, tensor, g<size>, had, had<size>, out<p>, "
               "ste, trust, lsq, pact")
FLOAT_OPTIONS = ("e4m3, e5m2 (fp8), e2m3, e3m2 (fp6), e2m1 (fp4), row, tensor, mx, nv, had, "
                 "had<size>, ste, trust")
VECTOR_OPTIONS = "<bits> first, then had, had<size>, ste, trust"
SPARSE_OPTIONS = "row, tensor, nm<N>/<M>, rbbm<p>"
OUTLIER_MAX_PERCENT = 50

_HEADS = [
    ("int", re.compile(r"w(?P<w>[0-9.]+)(?:a(?P<a>[0-9.]+))?")),
    ("int", re.compile(r"a(?P<a>[0-9.]+)")),
    ("float", re.compile(r"fp(?P<w>[0-9]+)(?:a(?P<a>[0-9]+))?")),
    ("float", re.compile(r"afp(?P<a>[0-9]+)")),
    ("sparse", re.compile(r"s(?P<p>[0-9.]+)")),
    ("vector", re.compile(r"vq(?P<d>[0-9]+)")),
    ("activation sparsity", re.compile(r"as(?P<p>[0-9.]+)")),
]


class _Ctx:
    """The spec text and the component being parsed, for error messages."""

    def __init__(self, text: str, part: str = ""):
        self.text, self.part = text, part

    def error(self, message: str) -> SpecError:
        where = f"'{self.part}' in " if self.part and self.part != self.text else ""
        return SpecError(f"invalid compression spec {where}'{self.text}': {message}")


def parse_spec(text) -> CompressionSpec:
    """Parse a spec string ("w4", "s50:nm2/4+w4a8", "fp4:nv", ...) into a CompressionSpec."""
    if isinstance(text, CompressionSpec):
        return text
    if not isinstance(text, str):
        raise SpecError(f"a compression spec must be a string, got {type(text).__name__}: {text!r}")
    return _parse_text(text)


@lru_cache(maxsize=1024)  # specs are immutable; layers parse the same string many times
def _parse_text(text: str) -> CompressionSpec:
    spec_text = text.strip().lower()
    ctx = _Ctx(text)
    if spec_text != text:   # one spelling per spec: run names, sweeps and fits key on the text
        raise ctx.error(f"specs are lowercase without surrounding spaces; did you mean "
                        f"'{spec_text}'?")
    if not spec_text:
        raise ctx.error(f"empty spec; valid: {VALID_HEADS}")
    parts = [p.strip() for p in spec_text.split("+")]
    if parts == ["dense"] or parts == ["bf16"]:
        return CompressionSpec()
    found = {}  # role -> (component text, object)
    for part in parts:
        pctx = _Ctx(text, part)
        if not part:
            raise pctx.error("empty component (stray '+')")
        if part in ("dense", "bf16"):
            raise pctx.error(f"'{part}' means no compression and cannot be combined with other "
                             f"components")
        for role, obj in _parse_component(part, pctx):
            if role in found:
                raise pctx.error(f"more than one {role} format ('{found[role][0]}' and '{part}'); "
                                 f"a spec has at most one sparsity, one weight and one activation "
                                 f"format")
            found[role] = (part, obj)
    sparsity = found.get("sparsity", (None, None))[1]
    weight = found.get("weight", (None, None))[1]
    if sparsity is not None and weight is not None and weight.kind in ("vector", "noise"):
        raise ctx.error(f"'{found['weight'][0]}' cannot be combined with weight sparsity "
                        f"('{found['sparsity'][0]}'); sparsity combines with w<b> and fp<x> "
                        f"formats")
    activation = found.get("activation", (None, None))[1]
    if "activation sparsity" in found and getattr(activation, "learned", ""):
        raise ctx.error(f"'{activation.learned}' (a learned step) cannot be combined with "
                        f"activation sparsity ('{found['activation sparsity'][0]}'); drop one "
                        f"of them")
    if sparsity is not None and getattr(weight, "learned", ""):
        raise ctx.error(f"'{weight.learned}' (a learned step) cannot be combined with sparsity; "
                        f"drop one of them")
    if sparsity is not None and weight is not None and weight.outliers:
        raise ctx.error(f"outliers ('{found['weight'][0]}') cannot be combined with weight "
                        f"sparsity ('{found['sparsity'][0]}'); drop one of them")
    return CompressionSpec(sparsity, weight, found.get("activation", (None, None))[1],
                           found.get("activation sparsity", (None, None))[1])


def _parse_component(part: str, ctx: _Ctx):
    head, colon, opts = part.partition(":")
    if head == "noise":
        return [("weight", _parse_noise(opts if colon else "", ctx))]
    options = [o.strip() for o in opts.split(",")] if colon else []
    if any(not o for o in options):
        raise ctx.error("empty option (stray ',' or ':')")
    for kind, pattern in _HEADS:
        m = pattern.fullmatch(head)
        if m:
            if kind == "int":
                return _parse_int(m.groupdict(), head, options, ctx)
            if kind == "float":
                return _parse_float(m.groupdict(), head, options, ctx)
            if kind == "vector":
                return [("weight", _parse_vector(m["d"], head, options, ctx))]
            if kind == "activation sparsity":
                if options:
                    raise ctx.error(f"'{head}' (activation sparsity) takes no options, got "
                                    f"'{','.join(options)}'; write e.g. as50+a4 to quantize too")
                percent = _percent(m["p"], head, ctx, "each token's inputs")
                return [(kind, ActivationSparsity(float(percent)))]
            return [("sparsity", _parse_sparse(m["p"], head, options, ctx))]
    raise ctx.error(f"unknown format '{head}'; valid: {VALID_HEADS}")


def _int_bits(text: str, role: str, ctx: _Ctx) -> float:
    if text == "1.58":
        return TERNARY
    if text in {str(b) for b in range(1, 9)}:
        return int(text)
    raise ctx.error(f"{role} bits must be one of 1, 2, 3, 4, 5, 6, 7, 8 or 1.58 (ternary), "
                    f"got '{text}'")


def _set_once(chosen: dict, category: str, option: str, ctx: _Ctx):
    if category in chosen:
        raise ctx.error(f"conflicting {category} options '{chosen[category]}' and '{option}'; "
                        f"give at most one")
    chosen[category] = option


def _had_block(option: str, ctx: _Ctx) -> int:
    size = int(option[3:]) if option != "had" else 128
    if size < 2 or size & (size - 1):
        raise ctx.error(f"'{option}': the Hadamard block must be a power of two >= 2 "
                        f"(had = had128), got {size}")
    return size


def _parse_int(groups: dict, head: str, options: list[str], ctx: _Ctx):
    w_bits = _int_bits(groups["w"], "weight", ctx) if groups.get("w") is not None else None
    a_bits = _int_bits(groups["a"], "activation", ctx) if groups.get("a") is not None else None
    chosen = {}
    for o in options:
        if o in ("sym", "zero"):
            _set_once(chosen, "grid", o, ctx)
        elif o in ("rms", "absmax", "absmean"):
            _set_once(chosen, "scale", o, ctx)
        elif o in ("row", "tensor") or re.fullmatch(r"g[0-9]+", o):
            _set_once(chosen, "granularity", o, ctx)
        elif re.fullmatch(r"had[0-9]*", o):
            _set_once(chosen, "had", o, ctx)
        elif o in ("ste", "trust"):
            _set_once(chosen, "estimator", o, ctx)
        elif re.fullmatch(r"out[0-9.]+", o):
            _set_once(chosen, "outliers", o, ctx)
        elif o in ("lsq", "pact"):
            _set_once(chosen, "learned", o, ctx)
        else:
            raise ctx.error(f"unknown option '{o}' for '{head}'; valid: {INT_OPTIONS}")
    grid = chosen.get("grid", "sym")
    granularity = chosen.get("granularity", "row")
    if granularity.startswith("g"):
        size = int(granularity[1:])
        if size < 2:
            raise ctx.error(f"'{granularity}': the group size must be >= 2")
        granularity = size
    if w_bits is None and granularity != "row":
        raise ctx.error(f"option '{chosen['granularity']}' does not apply to activations "
                        f"(always per token); valid for '{head}': sym, zero, rms, absmax, "
                        f"absmean, had, had<size>, ste, trust")
    if "learned" in chosen:
        _check_learned(chosen, w_bits, head, ctx)
    bits = [b for b in (w_bits, a_bits) if b is not None]
    if grid == "zero":
        if all(b == TERNARY for b in bits):
            raise ctx.error("grid options (sym, zero) do not apply to 1.58 bits: the ternary grid "
                            "is {-s, 0, s}")
        if 1 in bits:
            raise ctx.error("the 'zero' grid needs at least 2 bits ({-1, 0} * step wastes a "
                            "level); use the 1-bit 'sym' grid {-s, s} or 1.58 (ternary)")
    outliers = _outlier_percent(chosen.get("outliers"), w_bits, a_bits, "had" in chosen, head, ctx)
    common = dict(scale=chosen.get("scale", "rms"),
                  had=_had_block(chosen["had"], ctx) if "had" in chosen else 0,
                  estimator=chosen.get("estimator", "ste"), learned=chosen.get("learned", ""))
    out = []
    if w_bits is not None:
        out.append(("weight", IntQuant(w_bits, grid if w_bits != TERNARY else "sym",
                                       granularity=granularity, outliers=outliers, **common)))
    if a_bits is not None:
        out.append(("activation", IntQuant(a_bits, grid if a_bits != TERNARY else "sym",
                                           granularity="row", **common)))
    return out


def _check_learned(chosen: dict, w_bits, head: str, ctx: _Ctx) -> None:
    """lsq / pact learn the step (clip) in the model: no scale rule, estimator, Hadamard or group
    may be combined with them, and pact clips activations only."""
    learned = chosen["learned"]
    if learned == "pact" and w_bits is not None:
        raise ctx.error(f"'pact' learns a clip for activations only; '{head}' quantizes weights "
                        f"(write e.g. 'w4+a4:pact', or 'lsq' to learn weight steps)")
    for category in ("scale", "estimator", "had", "outliers"):
        if category in chosen:
            raise ctx.error(f"'{learned}' learns its step and has its own gradient; it cannot be "
                            f"combined with '{chosen[category]}'; valid with '{learned}': sym, zero"
                            + (", row" if learned == "lsq" else ""))
    if chosen.get("granularity", "row") != "row":
        raise ctx.error(f"'{learned}' learns one step per output row (weights) and one per "
                        f"tensor (activations); '{chosen['granularity']}' is not available with it")


def _float_format_bits(text: str, ctx: _Ctx) -> int:
    if text in ("4", "6", "8"):
        return int(text)
    raise ctx.error(f"float formats have 4, 6 or 8 bits (fp4, fp6, fp8), got '{text}'")


def _parse_float(groups: dict, head: str, options: list[str], ctx: _Ctx):
    w_bits = _float_format_bits(groups["w"], ctx) if groups.get("w") is not None else None
    a_bits = _float_format_bits(groups["a"], ctx) if groups.get("a") is not None else None
    widths = [b for b in (w_bits, a_bits) if b is not None]
    chosen, formats = {}, {}
    for o in options:
        if o in floats.FORMATS:
            width = floats.FORMATS[o].bits
            if width not in widths:
                valid = ", ".join(n for b in widths for n in floats.FORMATS_BY_BITS[b])
                raise ctx.error(f"'{o}' is a {width}-bit format but '{head}' has "
                                f"{' and '.join(map(str, widths))}-bit parts; valid: {valid}")
            if width in formats:
                raise ctx.error(f"conflicting {width}-bit formats '{formats[width]}' and '{o}'")
            formats[width] = o
        elif o in ("row", "tensor", "mx", "nv"):
            _set_once(chosen, "scaling", o, ctx)
        elif re.fullmatch(r"had[0-9]*", o):
            _set_once(chosen, "had", o, ctx)
        elif o in ("ste", "trust"):
            _set_once(chosen, "estimator", o, ctx)
        else:
            raise ctx.error(f"unknown option '{o}' for '{head}'; valid: {FLOAT_OPTIONS}")
    scaling = chosen.get("scaling", "row")
    if w_bits is None and scaling == "tensor":
        raise ctx.error("option 'tensor' does not apply to activations (scaled per token); "
                        f"valid for '{head}': row, mx, nv, had, had<size> and the format name")
    had = _had_block(chosen["had"], ctx) if "had" in chosen else 0
    estimator = chosen.get("estimator", "ste")
    out = []
    if w_bits is not None:
        fmt = formats.get(w_bits, floats.FORMATS_BY_BITS[w_bits][0])
        out.append(("weight", FloatQuant(fmt, scaling, had, estimator)))
    if a_bits is not None:
        fmt = formats.get(a_bits, floats.FORMATS_BY_BITS[a_bits][0])
        out.append(("activation", FloatQuant(fmt, scaling if scaling in ("mx", "nv") else "row",
                                             had, estimator)))
    return out


def _percent(percent_text: str, head: str, ctx: _Ctx, what: str = "weights") -> Fraction:
    try:
        percent = Fraction(percent_text)
    except ValueError:
        percent = None
    if percent is None or not 0 < percent < 100:
        raise ctx.error(f"sparsity must be a percentage of {what} pruned, 0 < p < 100, "
                        f"got '{percent_text}'")
    return percent


def _parse_sparse(percent_text: str, head: str, options: list[str], ctx: _Ctx) -> Sparsity:
    percent = _percent(percent_text, head, ctx)
    chosen, pattern, rbbm = {}, "row", 0.0
    for o in options:
        nm = re.fullmatch(r"nm([0-9]+)/([0-9]+)", o)
        rb = re.fullmatch(r"rbbm([0-9.]+)", o)
        if o in ("row", "tensor"):
            _set_once(chosen, "pattern", o, ctx)
            pattern = o
        elif nm:
            _set_once(chosen, "pattern", o, ctx)
            n, m = int(nm[1]), int(nm[2])
            if not 0 < n < m:
                raise ctx.error(f"'{o}': N:M keeps N of every M consecutive weights and needs "
                                f"0 < N < M, got N={n}, M={m}")
            exact = Fraction(100 * (m - n), m)
            # The percent must agree with N:M up to rounding to 2 decimals (s33.33:nm2/3).
            if abs(exact - percent) > Fraction(1, 200):
                raise ctx.error(f"'{o}' prunes {_pct(exact)}% but '{head}' asks for "
                                f"{_pct(percent)}%; valid here: s{_pct(exact)}:{o}")
            percent = exact
            pattern = (n, m)
        elif rb:
            _set_once(chosen, "backward", o, ctx)
            try:
                rbbm = Fraction(rb[1])
            except ValueError:
                rbbm = None
            if rbbm is None or not 0 < rbbm < 50:
                raise ctx.error(f"'{o}': the RBBM band percent p needs 0 < p < 50 "
                                f"(T_p = RMS * Phi^-1(0.5 + p/100))")
            rbbm = float(rbbm)
        else:
            raise ctx.error(f"unknown option '{o}' for '{head}'; valid: {SPARSE_OPTIONS}")
    # The canonical form keeps 2 decimals, so more would name a different run than it trains
    # (N:M fixes the exact fraction itself; its percent only has to agree to 2 decimals).
    if not isinstance(pattern, tuple) and len(percent_text.partition(".")[2]) > 2:
        raise ctx.error(f"sparsity '{percent_text}' has more than 2 decimals; give the percent "
                        f"to at most 2 decimals (e.g. s{_pct(percent)})")
    return Sparsity(float(percent), pattern, rbbm)


def _pct(f: Fraction) -> str:
    return f"{round(float(f), 2):g}"



def _outlier_percent(option, w_bits, a_bits, had: bool, head: str, ctx: _Ctx) -> float:
    """The percent of `out<p>` (0.0 without it), for weight-only integer formats."""
    if option is None:
        return 0.0
    if w_bits is None or a_bits is not None:
        raise ctx.error(f"'{option}' keeps weight outliers and applies to weight-only formats; "
                        f"write e.g. w4:{option}+a4 instead of '{head}:{option}'")
    if had:
        raise ctx.error(f"'{option}' cannot be combined with 'had': outliers are the largest "
                        f"weights of the original basis; drop one of them")
    try:
        percent = Fraction(option[3:])
    except ValueError:
        percent = None
    if percent is None or not 0 < percent < OUTLIER_MAX_PERCENT:
        raise ctx.error(f"'{option}': the outlier percent p needs 0 < p < {OUTLIER_MAX_PERCENT} "
                        f"(e.g. out1 keeps the largest 1% of each row)")
    return float(percent)


def _parse_vector(dim_text: str, head: str, options: list[str], ctx: _Ctx) -> VectorQuant:
    dim = int(dim_text)
    if dim not in vector.DIMENSIONS:
        raise ctx.error(f"vector quantization works on 2- or 4-dimensional vectors, got '{head}'; "
                        f"valid: {vector.valid_formats()}")
    if not options or not options[0].isdigit():
        raise ctx.error(f"'{head}' needs its bits per weight as the first option (e.g. "
                        f"{head}:2); valid: {vector.valid_formats()}")
    bits = int(options[0])
    if bits not in vector.supported_bits(dim):
        raise ctx.error(f"'{head}:{options[0]}' would need a grid of 2^{dim * bits} points; "
                        f"supported grids have at most {vector.MAX_GRID_POINTS}: "
                        f"{vector.valid_formats()}")
    chosen = {}
    for o in options[1:]:
        if re.fullmatch(r"had[0-9]*", o):
            _set_once(chosen, "had", o, ctx)
        elif o in ("ste", "trust"):
            _set_once(chosen, "estimator", o, ctx)
        else:
            raise ctx.error(f"unknown option '{o}' for '{head}'; valid: {VECTOR_OPTIONS}")
    had = _had_block(chosen["had"], ctx) if "had" in chosen else 128
    if had < dim:
        raise ctx.error(f"'{chosen['had']}': the Hadamard block must hold whole {dim}-vectors")
    return VectorQuant(dim, bits, had, chosen.get("estimator", "trust"))


def _parse_noise(target_text: str, ctx: _Ctx) -> NoiseInjection:
    if not target_text:
        raise ctx.error("'noise' needs the weight format whose Gaussian MSE it injects, e.g. "
                        "noise:w4 or noise:fp4")
    try:
        target = parse_spec(target_text)
    except SpecError as err:
        raise ctx.error(f"the format after 'noise:' is invalid: {err}") from None
    if (target.weight is None or target.sparsity_format is not None
            or target.activation is not None or target.activation_sparsity_format is not None
            or isinstance(target.weight, NoiseInjection)):
        raise ctx.error(f"'noise:' takes one weight quantizer (w<b>, fp<x> or vq<d>:<bits> with "
                        f"options), got '{target_text}'")
    return NoiseInjection(target)
