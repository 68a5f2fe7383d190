"""Gaussian MSE against the published values, derived constants, and the capacity formula."""
import math

import numpy as np
import pytest

from megatron_csl.compression import (CapacityParams, gaussian_mse, gaussian_mse_parts,
                                      parse_spec, predicted_epm)
from megatron_csl.compression.capacity import _monte_carlo_gmse
from megatron_csl.compression.floats import optimal_format_scale
from megatron_csl.compression.gaussian import (alpha_star, scalar_quantizer_mse, symmetric_levels,
                                               ternary_star)

# Published Gaussian MSE (N(0,1), best scale): QuEST (arXiv 2502.05003) and the unified-laws paper
# (Panferov et al. 2025, arXiv 2506.01863).
REFERENCE_GMSE = {
    "w1": 0.36338, "w2": 0.11885, "w2:zero": 0.14943, "w1.58": 0.19017, "w3": 0.037440,
    "w4": 0.011543, "w5": 0.0034952, "w6": 0.0010400, "w8": 8.77e-5, "fp4": 0.012685,
    "fp8": 6.99e-4, "fp8:e5m2": 2.77e-3, "s25": 0.00835, "s50": 0.07133, "s75": 0.27639,
    "s50:nm2/4": 0.1320, "s50:nm4/8": 0.1030,
}
REFERENCE_ALPHA = {1: 0.79788, 2: 1.49353, 3: 2.05107, 4: 2.51393, 5: 2.91609, 6: 3.27660,
                   7: 3.60105, 8: 3.88494}


@pytest.mark.parametrize("spec", sorted(REFERENCE_GMSE))
def test_gmse_matches_reference_within_2_percent(spec):
    assert gaussian_mse(spec) == pytest.approx(REFERENCE_GMSE[spec], rel=0.02)


def test_alpha_star_matches_reference():
    for b, ref in REFERENCE_ALPHA.items():
        mine = alpha_star(b)
        if b <= 5:
            assert mine == pytest.approx(ref, rel=1e-4)
        else:
            # The Gaussian MSE is very flat in the clip at 6-8 bits: the listed alpha*_6..8 are
            # up to 1% off the exact optimum, which reaches the same or a lower MSE.
            assert mine == pytest.approx(ref, rel=0.015)
            levels = symmetric_levels(b)
            assert scalar_quantizer_mse(levels, mine) <= scalar_quantizer_mse(levels, ref)
    assert ternary_star() == pytest.approx(1.22401, rel=1e-4)
    assert optimal_format_scale("e2m1")[0] == pytest.approx(0.48708, rel=1e-4)


def test_closed_form_agrees_with_monte_carlo_of_the_format_itself():
    # Same machinery as the formats without a closed form: the format's own compress function.
    for spec in ("w4", "fp4"):
        exact = gaussian_mse(spec)
        assert _monte_carlo_gmse(parse_spec(spec), "weight") == pytest.approx(exact, rel=0.01)


def test_closed_form_gmse_is_the_best_scale():
    # Perturbing the scale in either direction only increases the closed-form MSE.
    levels = symmetric_levels(3)
    a = alpha_star(3)
    best = scalar_quantizer_mse(levels, a)
    assert best < scalar_quantizer_mse(levels, a * 1.01)
    assert best < scalar_quantizer_mse(levels, a * 0.99)


def test_ordering_of_formats_is_sane():
    g = {s: gaussian_mse(s) for s in ("w2", "w3", "w4", "w8", "w4:absmax", "w4:g128",
                                      "s50:nm64/128", "s50:nm2/4", "s50")}
    assert g["w2"] > g["w3"] > g["w4"] > g["w8"]
    assert g["w4:absmax"] > g["w4"]  # no clipping wastes levels on the tails
    assert g["s50:nm2/4"] > g["s50:nm64/128"] > g["s50"]  # more structure, more error
    assert gaussian_mse("w4:had") == gaussian_mse("w4")  # a rotation of iid Gaussians is iid


def test_parts_and_activation_only():
    assert gaussian_mse_parts("dense") == (None, None)
    assert gaussian_mse("dense") == 0.0
    w, a = gaussian_mse_parts("w4a8")
    assert w == pytest.approx(0.011543, rel=0.01) and a == pytest.approx(8.77e-5, rel=0.02)
    assert gaussian_mse("w4a8") == w
    assert gaussian_mse("a8") == a
    assert gaussian_mse_parts("a8") == (None, a)
    w2, a2 = gaussian_mse_parts("s50+w4")
    assert a2 is None and w2 > gaussian_mse("s50")


def test_predicted_epm_formula_and_composition():
    params = CapacityParams()
    g = gaussian_mse("w4")
    expected = math.tanh(0.41 * math.log(g) / math.log(0.25)) ** 1.39
    assert predicted_epm("w4") == pytest.approx(expected, rel=1e-12)
    assert predicted_epm("dense") == 1.0
    assert predicted_epm("w4a8") == pytest.approx(params.rho(gaussian_mse("w4"))
                                                  * params.rho(gaussian_mse("a8")))
    custom = CapacityParams(Lc=0.9, F=0.5, C=1.0)
    assert predicted_epm("w4", custom) == pytest.approx(0.9 * math.tanh(0.5 * math.log(g)
                                                                        / math.log(0.25)))
    # More bits, more capacity; 8-bit is close to dense.
    epms = [predicted_epm(f"w{b}") for b in range(1, 9)]
    assert all(x < y for x, y in zip(epms, epms[1:])) and epms[-1] > 0.98
    assert CapacityParams().rho(1.5) == 0.0 and CapacityParams().rho(0.0) == 1.0


def test_monte_carlo_is_deterministic_and_cached():
    a = gaussian_mse("s50:nm2/4")
    _monte_carlo_gmse.cache_clear()
    assert gaussian_mse("s50:nm2/4") == a
