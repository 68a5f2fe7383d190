"""Predictions, Chinchilla-optimal token counts and Pareto frontiers from a fitted law."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.scaling.fitting import FitOptions, fit_runs
from megatron_csl.scaling.formats import FormatInfo
from megatron_csl.scaling.pareto import optimal_loss, optimal_size, pareto_front
from megatron_csl.scaling.predict import law_loss, optimal_tokens, parse_predict_arg, predict
from megatron_csl.scaling.synthetic import SyntheticSweep

FAST = FitOptions(refine_top=8)


@pytest.fixture(scope="module")
def full_fit():
    sweep = SyntheticSweep(noise=0.0)
    return sweep, fit_runs("compression", sweep.draw(np.random.default_rng(0)), options=FAST)


@pytest.fixture(scope="module")
def reduced_fit():
    sweep = SyntheticSweep(law=(900.0, 0.33, 0.0, 0.3, 1.9), ratios=(20.0,), noise=0.0)
    return sweep, fit_runs("compression", sweep.draw(np.random.default_rng(0)), options=FAST)


def test_predicted_loss_is_the_true_law(full_fit):
    sweep, result = full_fit
    p = predict(result, 3e8, 5e9, "w2")
    assert p.eff == pytest.approx(0.702, rel=1e-4)
    assert p.loss == pytest.approx(sweep.true_loss(3e8, 5e9, 0.702), rel=1e-5)
    assert p.note == ""


def test_optimal_tokens_is_the_dense_compute_optimum_at_n_times_eff(full_fit):
    _, result = full_fit
    N, eff = 2e8, result.epm["w1"]
    d_opt = optimal_tokens(result, N, eff)
    # at the compute 6 (N eff) D*, the dense loss over model sizes is lowest at N eff
    compute = 6 * N * eff * d_opt
    sizes = N * eff * np.exp(np.linspace(-0.5, 0.5, 2001))
    losses = law_loss(result, sizes, compute / (6 * sizes), 1.0)
    assert sizes[np.argmin(losses)] == pytest.approx(N * eff, rel=2e-3)
    # a compressed model wants fewer tokens than a dense one of the same N
    assert d_opt < optimal_tokens(result, N, 1.0)


def test_reduced_form_uses_the_sweep_ratio(reduced_fit):
    _, result = reduced_fit
    p = predict(result, 1e8, 2e9, "w4a4")
    assert p.optimal_D == pytest.approx(20 * 1e8 * result.epm["w4a4"], rel=1e-9)
    assert p.note == ""
    off = predict(result, 1e8, 1e10, "w4a4")
    assert "does not enter" in off.note and off.loss == pytest.approx(p.loss)


def test_unfitted_format_is_an_error_for_the_compression_law(full_fit):
    _, result = full_fit
    with pytest.raises(ValueError, match="format 'w3' was not fitted .*--law capacity"):
        predict(result, 1e8, 2e9, "w3")


def test_capacity_law_predicts_unfitted_formats_from_gmse():
    gmse = {"dense": (None, None), "w4": (0.011543, None), "w2": (0.11885, None),
            "w1": (0.36338, None), "w4a4": (0.011543, 0.011543)}
    from megatron_csl.scaling.laws import CapacityLaw
    truth = np.array([0.0, 0.41, 1.39])
    epm = CapacityLaw(sorted(gmse), gmse).epm(truth)
    sweep = SyntheticSweep(epm=tuple(epm.items()), noise=0.0)
    result = fit_runs("capacity", sweep.draw(np.random.default_rng(0)), gmse, options=FAST)
    w3 = predict(result, 1e8, 2e9, "w3", gmse_parts=(0.03744, None))
    expected = np.tanh(0.41 * np.log(0.03744) / np.log(0.25)) ** 1.39
    assert w3.eff == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize("text,match", [("1e8,2e9", "takes N,D,SPEC"), ("x,2e9,w4", "N 'x' is not a number"),
                                        ("1e8,-5,w4", "D must be finite and positive")])
def test_parse_predict_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_predict_arg(text)


def test_parse_predict_keeps_the_spec_whole():
    assert parse_predict_arg("1e8, 2e9 ,s50:nm2/4+w4a8") == (1e8, 2e9, "s50:nm2/4+w4a8")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 1e6), st.floats(1, 10)), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_undominated_runs(points):
    cost = np.array([p[0] for p in points])
    loss = np.array([p[1] for p in points])
    front = set(pareto_front(cost, loss).tolist())
    for i in range(len(points)):
        dominated = np.any((cost <= cost[i]) & (loss < loss[i]))
        if i in front:
            assert not dominated
        else:
            # not on the front: beaten, or tied with a front run of equal cost and loss
            assert dominated or any(cost[j] <= cost[i] and loss[j] <= loss[i] for j in front)
    f = sorted(front, key=lambda j: cost[j])
    assert np.all(np.diff(loss[f]) < 0)


def test_cost_factors():
    w4a4 = FormatInfo("w4a4", 4, 4, 0.0, 4)
    w4 = FormatInfo("w4", 4, 16, 0.0, 4)
    s50 = FormatInfo("s50", 16, 16, 0.5, 8)
    assert w4a4.cost_factor("linear") == 0.25 and w4a4.cost_factor("quadratic") == 1 / 16
    assert w4.cost_factor("linear") == 1.0 and w4.cost_factor("quadratic") == 0.25
    assert s50.cost_factor("linear") == 0.5 and s50.cost_factor("quadratic") == 0.5
    assert s50.size_factor == 2.0
    with pytest.raises(ValueError, match="unknown cost mode 'cubic'; valid: linear, quadratic"):
        s50.cost_factor("cubic")


@pytest.mark.parametrize("which", ["full", "reduced"])
def test_optimal_loss_is_the_minimum_over_sizes_at_fixed_cost(which, full_fit, reduced_fit):
    _, result = full_fit if which == "full" else reduced_fit
    eff, factor, cost = result.epm["w2"], 0.25, 1e19
    n_star = optimal_size(result, eff, factor, cost)
    best = optimal_loss(result, eff, factor, np.array([cost]))[0]
    if which == "full":
        sizes = n_star * np.exp(np.linspace(-1, 1, 401))
        losses = law_loss(result, sizes, cost / (6 * sizes * factor), eff)
        assert best <= losses.min() + 1e-12
        assert best == pytest.approx(losses.min(), rel=1e-6)
    else:
        d = result.tokens_per_param * n_star
        assert 6 * n_star * d * factor == pytest.approx(cost)
