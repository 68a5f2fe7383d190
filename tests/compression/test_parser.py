"""parse_spec: canonical forms, round trips, accounting figures and error messages."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.compression import CompressionSpec, SpecError, parse_spec

CANONICAL = {
    "dense": "dense", "bf16": "dense", "w4:sym,rms,row,ste": "w4",
    "w2:zero,absmax,tensor": "w2:zero,absmax,tensor", "w2:tensor,absmax,zero": "w2:zero,absmax,tensor",
    "w1.58": "w1.58", "w4:had128": "w4:had", "w4:had16": "w4:had16", "w4:g128": "w4:g128",
    "w4a8": "w4a8", "w4+a8": "w4a8", "a8+w4": "w4a8", "w4a4:had,trust": "w4a4:had,trust",
    "w4a8:g64": "w4a8:g64", "w4:zero+a8": "w4:zero+a8", "w1.58a8:zero": "w1.58a8:zero",
    "a8": "a8", "a4:absmax": "a4:absmax",
    "s50": "s50", "s50:row": "s50", "s50.0": "s50", "s87.5": "s87.5", "s50:tensor": "s50:tensor",
    "s50:nm2/4": "s50:nm2/4", "s50:nm64/128": "s50:nm64/128", "s50:rbbm10": "s50:rbbm10",
    "s50+w4": "s50+w4", "w4+s50": "s50+w4", "s50:nm2/4+w4a8": "s50:nm2/4+w4a8",
    "fp8": "fp8", "fp8:e4m3": "fp8", "fp8:e5m2": "fp8:e5m2", "fp6": "fp6", "fp6:e2m3": "fp6",
    "fp6:e3m2": "fp6:e3m2", "fp4": "fp4", "fp4:e2m1,row": "fp4", "fp4:mx": "fp4:mx",
    "fp4:nv": "fp4:nv", "fp8a8": "fp8a8", "fp8+afp8": "fp8a8", "fp4a8:e5m2": "fp4a8:e5m2",
    "fp8a8:e5m2": "fp8a8:e5m2", "fp8:e5m2+afp8": "fp8:e5m2+afp8", "fp8a8:tensor": "fp8a8:tensor",
    "fp4a4:nv": "fp4a4:nv", "fp4:nv+afp4": "fp4:nv+afp4", "w4+afp8": "w4+afp8",
    "s50+fp4:mx": "s50+fp4:mx", "s33.3333:nm2/3": "s33.33:nm2/3", "s98.44:nm1/64": "s98.44:nm1/64",
    # vector quantization, Hadamard with sparsity, float trust, outliers, noise, activation sparsity
    "vq2:2": "vq2:2", "vq2:2,trust,had128": "vq2:2", "vq4:2,ste": "vq4:2,ste",
    "vq2:3,had64": "vq2:3,had64", "vq2:4+a8": "vq2:4+a8",
    "s50:nm4/8+w4a4:had,trust": "s50:nm4/8+w4a4:had,trust", "w4:had+s50": "s50+w4:had",
    "fp4:trust": "fp4:trust", "fp4:ste": "fp4", "fp4a4:trust,had": "fp4a4:had,trust",
    "fp4:trust+afp4": "fp4:trust+afp4", "afp8:e5m2,trust": "afp8:e5m2,trust",
    "fp4:nv,trust": "fp4:nv,trust", "s50+fp4:had,trust": "s50+fp4:had,trust",
    "w4:out1": "w4:out1", "w4:trust,out1.0": "w4:out1,trust", "w4:out0.5+a4": "w4:out0.5+a4",
    "w2:zero,g64,out2": "w2:zero,g64,out2",
    "noise:w4": "noise:w4", "noise:w4:rms,row": "noise:w4", "noise:fp4:mx": "noise:fp4:mx",
    "a8+noise:w3:tensor": "noise:w3:tensor+a8", "noise:vq2:2": "noise:vq2:2",
    "as50": "as50", "w4+as50": "as50+w4", "as12.5+w4a4:had": "as12.5+w4a4:had",
    "s50+as50+fp4a4": "s50+as50+fp4a4", "as50.0+a8": "as50+a8",
}


@pytest.mark.parametrize("text,canonical", sorted(CANONICAL.items()))
def test_canonical_form(text, canonical):
    spec = parse_spec(text)
    assert spec.canonical == canonical == str(spec)
    assert parse_spec(canonical) == spec
    assert hash(parse_spec(canonical)) == hash(spec)


def test_specs_are_frozen_hashable_and_ordered():
    a, b = parse_spec("w4"), parse_spec("w8")
    with pytest.raises(AttributeError):
        a.weight = None
    assert len({a, b, parse_spec("w4:rms")}) == 2
    assert sorted([b, a]) == [a, b]
    assert parse_spec(a) is a  # a CompressionSpec passes through


@pytest.mark.parametrize("text,w_bits,a_bits,sparsity", [
    ("dense", 16, 16, 0), ("w4", 4, 16, 0), ("w4a8", 4, 8, 0), ("a4", 16, 4, 0),
    ("w1.58", math.log2(3), 16, 0), ("w4:g128", 4 + 16 / 128, 16, 0), ("s50", 16, 16, 0.5),
    ("s75+w4", 4, 16, 0.75), ("s50:nm2/4+w4a8", 4, 8, 0.5), ("fp8", 8, 16, 0), ("fp6", 6, 16, 0),
    ("fp4:mx", 4.25, 16, 0), ("fp4a4:nv", 4.5, 4.5, 0), ("s87.5", 16, 16, 0.875),
    ("vq2:2", 2, 16, 0), ("vq4:2+a8", 2, 8, 0), ("vq2:3", 3, 16, 0),
    # out1: 99% codes of 4 bits + 1% (bf16 value + 16-bit column index)
    ("w4:out1", 0.99 * 4 + 0.01 * 32, 16, 0), ("w4:g128,out2", 0.98 * (4 + 16 / 128) + 0.02 * 32, 16, 0),
    ("noise:w4", 16, 16, 0), ("fp4:trust", 4, 16, 0), ("s50:nm4/8+w4a4:had", 4, 4, 0.5),
])
def test_bits_accounting(text, w_bits, a_bits, sparsity):
    spec = parse_spec(text)
    assert spec.w_bits == pytest.approx(w_bits)
    assert spec.a_bits == pytest.approx(a_bits)
    assert spec.sparsity == pytest.approx(sparsity)
    assert spec.effective_w_bits == pytest.approx(w_bits * (1 - sparsity))
    assert spec.is_dense == (text == "dense")
    # noise stores 16-bit weights but still perturbs them
    assert spec.compresses_weights == (w_bits != 16 or sparsity > 0 or text.startswith("noise"))
    assert spec.compresses_activations == (a_bits != 16)


def test_activation_sparsity_accounting():
    spec = parse_spec("as50+w4")
    assert spec.activation_sparsity == 0.5 and spec.sparsity == 0.0
    assert spec.compresses_activations and spec.compresses_weights and not spec.is_dense
    assert spec.a_bits == 16 and spec.w_bits == 4
    assert parse_spec("as25").activation_sparsity == 0.25 and not parse_spec("as25").compresses_weights
    assert parse_spec("w4").activation_sparsity == 0.0


@pytest.mark.parametrize("text,fragments", [
    ("w9", ["w9", "1, 2, 3, 4, 5, 6, 7, 8 or 1.58"]),
    ("w0", ["w0", "1.58"]),
    ("w4a9", ["activation bits", "'9'"]),
    ("w1.5", ["'1.5'", "1.58"]),
    ("s100", ["s100", "0 < p < 100"]),
    ("s0", ["s0", "0 < p < 100"]),
    ("s50:nm3/2", ["nm3/2", "0 < N < M", "N=3, M=2"]),
    ("s50:nm2/2", ["nm2/2", "0 < N < M"]),
    ("s75:nm2/4", ["nm2/4", "50%", "75%", "s50:nm2/4"]),
    ("w4:foo", ["'foo'", "w4", "sym, zero, rms, absmax, absmean, row, tensor, g<size>"]),
    ("fp4:foo", ["'foo'", "e2m1", "mx, nv", "ste, trust"]),
    ("s50:foo", ["'foo'", "row, tensor, nm<N>/<M>, rbbm<p>"]),
    ("s50:rbbm60", ["rbbm60", "0 < p < 50"]),
    ("w4:row,tensor", ["conflicting granularity", "'row'", "'tensor'"]),
    ("w4:had3", ["had3", "power of two"]),
    ("w4:g1", ["g1", ">= 2"]),
    ("w1:zero", ["'zero'", "2 bits"]),
    ("w1.58:zero", ["1.58", "ternary"]),
    ("a8:tensor", ["'tensor'", "activations", "per token"]),
    ("afp8:tensor", ["'tensor'", "activations"]),
    ("fp5", ["'5'", "4, 6 or 8"]),
    ("fp4:e5m2", ["e5m2", "8-bit", "e2m1"]),
    ("fp8:e4m3,e5m2", ["conflicting 8-bit formats"]),
    ("w4+w8", ["more than one weight format", "'w4'", "'w8'"]),
    ("w4a8+a4", ["more than one activation format"]),
    ("s50+s75", ["more than one sparsity format"]),
    ("vq4:4", ["vq4:4", "2^16 points", "vq2:1, vq2:2, vq2:3, vq2:4, vq4:1, vq4:2"]),
    ("vq3:2", ["'vq3'", "2- or 4-dimensional", "vq4:2"]),
    ("vq2", ["'vq2'", "bits per weight", "vq2:2"]),
    ("vq2:2,foo", ["'foo'", "vq2", "had, had<size>, ste, trust"]),
    ("vq2:2,had2,had4", ["conflicting had"]),
    ("s50+vq2:2", ["'vq2:2'", "weight sparsity", "'s50'"]),
    ("s50+noise:w4", ["'noise:w4'", "weight sparsity"]),
    ("s50+w4:out1", ["outliers", "sparsity"]),
    ("w4a4:out1", ["'out1'", "weight-only", "w4:out1+a4"]),
    ("a4:out1", ["'out1'", "weight-only"]),
    ("w4:out1,had", ["'out1'", "'had'"]),
    ("w4:out50", ["'out50'", "0 < p < 50"]),
    ("w4:out1,out2", ["conflicting outliers"]),
    ("noise", ["'noise'", "noise:w4"]),
    ("noise:s50", ["'noise:'", "one weight quantizer", "'s50'"]),
    ("noise:w4a4", ["'noise:'", "one weight quantizer"]),
    ("noise:noise:w4", ["one weight quantizer"]),
    ("noise:w9", ["after 'noise:' is invalid", "1.58"]),
    ("as100", ["'as100'", "0 < p < 100", "each token's inputs"]),
    ("as50:row", ["'as50'", "takes no options", "as50+a4"]),
    ("as50+as25", ["more than one activation sparsity format"]),
    ("dense+w4", ["'dense'", "cannot be combined"]),
    ("q4", ["unknown format 'q4'", "w<b>", "s<p>", "fp<x>", "vq<d>:<bits>", "noise:", "as<p>"]),
    ("w4+", ["empty component"]),
    ("w4:", ["empty option"]),
    ("", ["empty spec"]),
])
def test_invalid_specs_name_the_bad_part(text, fragments):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_non_string_is_rejected():
    for bad in (4, None, ["w4"]):
        with pytest.raises(SpecError, match="must be a string"):
            parse_spec(bad)


def test_validate_shape_names_the_block():
    parse_spec("s50:nm2/4+w4:g64").validate_shape(8, 128)
    for text, option, size in [("s33.33:nm2/3", "nm2/3", 3), ("w4:g48", "g48", 48),
                               ("w4:had", "had", 128), ("fp4:mx", "mx", 32), ("fp4:nv", "nv", 16),
                               ("a4:had64", "had64", 64)]:
        spec = parse_spec(text)
        with pytest.raises(SpecError) as err:
            spec.validate_shape(8, 40)
        assert f"'{option}'" in str(err.value) and f"multiple of {size}" in str(err.value)
        assert "40" in str(err.value)
    with pytest.raises(SpecError, match="positive integer"):
        parse_spec("w4").validate_shape(0, 8)


# ---- generated specs round-trip ----------------------------------------------------------------
INT_BITS = [str(b) for b in range(1, 9)] + ["1.58"]
_int_opts = st.tuples(
    st.sampled_from([None, "sym", "zero"]), st.sampled_from([None, "rms", "absmax", "absmean"]),
    st.sampled_from([None, "row", "tensor", "g32", "g128"]),
    st.sampled_from([None, "had", "had16"]), st.sampled_from([None, "ste", "trust"]))


def _join(head, options):
    options = [o for o in options if o]
    return head + (":" + ",".join(options) if options else "")


@st.composite
def int_component(draw):
    w = draw(st.sampled_from(INT_BITS + [None]))
    a = draw(st.sampled_from(INT_BITS + [None])) if w is not None else draw(st.sampled_from(INT_BITS))
    grid, scale, gran, had, est = draw(_int_opts)
    bits = [b for b in (w, a) if b]
    if grid == "zero" and ("1" in bits or all(b == "1.58" for b in bits)):
        grid = None
    if w is None:
        gran = None
    out = draw(st.sampled_from([None, "out1", "out0.5"])) if w and not a and not had else None
    head = (f"w{w}" if w else "") + (f"a{a}" if a else "")
    return _join(head, [grid, scale, gran, had, out, est])


@st.composite
def float_component(draw):
    w = draw(st.sampled_from(["4", "6", "8", None]))
    a = draw(st.sampled_from(["4", "6", "8", None])) if w else draw(st.sampled_from(["4", "6", "8"]))
    widths = {int(b) for b in (w, a) if b}
    fmts = [draw(st.sampled_from([None, *{8: ["e4m3", "e5m2"], 6: ["e2m3", "e3m2"],
                                          4: ["e2m1"]}[b]])) for b in sorted(widths)]
    scaling = draw(st.sampled_from([None, "row", "mx", "nv"] + (["tensor"] if w else [])))
    had = draw(st.sampled_from([None, "had", "had32"]))
    est = draw(st.sampled_from([None, "ste", "trust"]))
    head = (f"fp{w}" if w else "afp") + (f"a{a}" if w and a else (a if not w else ""))
    return _join(head, [*fmts, scaling, had, est])


@st.composite
def vector_component(draw):
    d = draw(st.sampled_from([2, 4]))
    bits = draw(st.sampled_from([1, 2, 3, 4] if d == 2 else [1, 2]))
    return _join(f"vq{d}", [str(bits), draw(st.sampled_from([None, "had", "had64"])),
                            draw(st.sampled_from([None, "ste", "trust"]))])


@st.composite
def noise_component(draw):
    target = draw(st.one_of(int_component(), float_component(), vector_component()))
    return f"noise:{target}"


@st.composite
def sparse_component(draw):
    nm = draw(st.sampled_from([None, (2, 4), (1, 4), (4, 8), (64, 128), (2, 3), (1, 64)]))
    if nm:
        n, m = nm
        pct = round(100 * (m - n) / m, 2)
        pattern = f"nm{n}/{m}"
    else:
        pct = draw(st.sampled_from([10, 25, 50, 62.5, 75, 90]))
        pattern = draw(st.sampled_from([None, "row", "tensor"]))
    rbbm = draw(st.sampled_from([None, "rbbm5", "rbbm12.5"]))
    return _join(f"s{pct:g}", [pattern, rbbm])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_generated_specs_round_trip(data):
    sparse = data.draw(st.one_of(st.none(), sparse_component()))
    act_sparse = data.draw(st.sampled_from([None, "as50", "as12.5"]))
    quant = data.draw(st.one_of(st.none(), int_component(), float_component(),
                                vector_component(), noise_component()))
    parts = [p for p in (sparse, act_sparse, quant) if p]
    if not parts:
        return
    if quant and quant.startswith("noise:"):
        target = parse_spec(quant[len("noise:"):])
        if target.weight is None or target.activation is not None:  # noise takes one weight format
            with pytest.raises(SpecError, match="one weight quantizer"):
                parse_spec(quant)
            return
    weight = parse_spec(quant).weight if quant else None
    if sparse and weight is not None and (weight.kind in ("vector", "noise") or weight.outliers):
        with pytest.raises(SpecError, match="sparsity"):
            parse_spec("+".join(parts))
        return
    text = "+".join(data.draw(st.permutations(parts)))
    spec = parse_spec(text)
    assert isinstance(spec, CompressionSpec)
    again = parse_spec(spec.canonical)
    assert again == spec and again.canonical == spec.canonical


@pytest.mark.parametrize("text, message", [
    ("W4", "did you mean 'w4'"), (" w4", "did you mean 'w4'"), ("w4 ", "did you mean 'w4'"),
    ("Dense", "did you mean 'dense'"),
    ("s99.999", "more than 2 decimals"), ("s33.333", "more than 2 decimals"),
])
def test_one_spelling_per_spec(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)
    assert parse_spec("s33.33").canonical == "s33.33"
