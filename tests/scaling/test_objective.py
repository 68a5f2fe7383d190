"""The objective every law shares: Huber on log residuals, its analytic gradient, the grid pass."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.scaling.laws import CapacityLaw, ChinchillaLaw, CompressionLaw
from megatron_csl.scaling.objective import HUBER_DELTA, huber, huber_grad, log_sum_exp_terms
from megatron_csl.scaling.problem import FitProblem, RunTable
from megatron_csl.scaling.synthetic import SyntheticSweep

GMSE = {"dense": (None, None), "w4": (0.011543, None), "w2": (0.11885, None), "w1": (0.36338, None),
        "w4a4": (0.011543, 0.011543), "s50": (0.07133, None)}


def _runs(seed=0):
    return SyntheticSweep().draw(np.random.default_rng(seed))


def _problem(law_name, has_data_term=True, seed=0):
    runs = _runs(seed)
    if law_name == "chinchilla":
        runs = runs.subset(runs.formats == "dense")
        law = ChinchillaLaw(["dense"])
    elif law_name == "compression":
        law = CompressionLaw(runs.format_names())
    else:
        law = CapacityLaw(runs.format_names(), GMSE)
    return FitProblem(law, runs, has_data_term)


def central_gradient(f, x, eps=1e-6):
    """Central finite differences (forward ones are off by eps/2 * f'', large along the exponents)."""
    g = np.empty(len(x))
    for j in range(len(x)):
        step = np.zeros(len(x))
        step[j] = eps
        g[j] = (f(x + step) - f(x - step)) / (2 * eps)
    return g


def _random_theta(problem, rng):
    """A point away from the optimum, so residuals fall on both sides of the Huber kink."""
    base = [6.0, 0.34, 7.6, 0.37, 0.6] if problem.layout.has_data_term else [6.0, 0.34, 0.6]
    theta = np.array(base + list(problem.law.extra_start()), dtype=float)
    theta += rng.normal(0, 0.02, len(theta))
    if problem.law.name == "compression":
        theta[problem.layout.n_base:] = rng.uniform(-1.0, 0.0, len(theta) - problem.layout.n_base)
    return theta


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    r = np.array([-3e-3, -1e-3, -5e-4, 0.0, 5e-4, 1e-3, 3e-3])
    expected = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    np.testing.assert_allclose(huber(r), expected)
    np.testing.assert_allclose(huber_grad(r), np.clip(r, -HUBER_DELTA, HUBER_DELTA))
    # continuous at the kink
    assert huber(np.array([HUBER_DELTA * (1 + 1e-12)]))[0] == pytest.approx(0.5 * HUBER_DELTA**2)


@pytest.mark.parametrize("law_name,full", [("chinchilla", True), ("compression", True),
                                           ("capacity", True), ("compression", False),
                                           ("chinchilla", False)])
def test_analytic_gradient_matches_finite_differences(law_name, full):
    problem = _problem(law_name, full)
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 3, len(problem.y)).astype(float)
    for w in (None, weights):
        theta = _random_theta(problem, rng)
        analytic = problem.objective(theta, w)[1]
        numeric = central_gradient(lambda t: problem.objective(t, w)[0], theta)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6 * np.abs(analytic).max())


def test_objective_is_summed_huber_of_log_residuals():
    problem = _problem("compression")
    theta = _random_theta(problem, np.random.default_rng(2))
    pred = problem.predict_log(theta)
    value, _ = problem.objective(theta)
    assert value == pytest.approx(huber(problem.y - pred).sum(), rel=1e-12)
    # weights count runs: weight 2 on every run doubles the objective, weight 0 removes runs
    assert problem.objective(theta, np.full(len(pred), 2.0))[0] == pytest.approx(2 * value, rel=1e-12)
    w = np.zeros(len(pred))
    w[:5] = 1.0
    assert problem.objective(theta, w)[0] == pytest.approx(huber(problem.y - pred)[:5].sum(), rel=1e-12)


def test_centred_coordinates_are_the_same_objective():
    problem = _problem("compression")
    theta = _random_theta(problem, np.random.default_rng(3))
    z = problem.to_z(theta)
    np.testing.assert_allclose(problem.to_theta(z), theta, rtol=1e-12, atol=1e-12)
    assert problem.objective_z(z)[0] == pytest.approx(problem.objective(theta)[0], rel=1e-13)
    analytic = problem.objective_z(z)[1]
    numeric = central_gradient(lambda u: problem.objective_z(u)[0], z)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6 * np.abs(analytic).max())


@pytest.mark.parametrize("full", [True, False])
def test_grid_pass_equals_pointwise_objective(full):
    problem = _problem("compression", full)
    grid = problem.law.grid(full)
    assert len(grid) == (4500 if full else 150)
    rows = grid[:: len(grid) // 37]
    values = problem.grid_objective(rows, chunk=7)
    expected = [problem.objective(r)[0] for r in rows]
    np.testing.assert_allclose(values, expected, rtol=1e-10)


def test_prediction_jacobian_matches_finite_differences():
    problem = _problem("capacity")
    theta = _random_theta(problem, np.random.default_rng(4))
    jac = problem.prediction_jacobian(theta)
    eps = 1e-6
    for j in range(len(theta)):
        step = np.zeros(len(theta))
        step[j] = eps
        numeric = (problem.predict_log(theta + step) - problem.predict_log(theta - step)) / (2 * eps)
        np.testing.assert_allclose(jac[:, j], numeric, rtol=1e-5, atol=1e-8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-800, 800), min_size=3, max_size=3))
def test_log_sum_exp_is_stable_and_exact(ts):
    t1, t2, t3 = (np.array([t]) for t in ts)
    lse, w1, w2, w3 = log_sum_exp_terms(t1, t2, t3)
    assert np.isfinite(lse).all()
    assert lse[0] >= max(ts) - 1e-9 and lse[0] <= max(ts) + np.log(3) + 1e-9
    assert w1[0] + w2[0] + w3[0] == pytest.approx(1.0)
    if max(ts) - min(ts) < 50:
        assert lse[0] == pytest.approx(np.log(np.sum(np.exp(np.array(ts) - max(ts)))) + max(ts))


def test_runtable_rejects_bad_values_with_the_source():
    with pytest.raises(ValueError, match="loss must be finite and positive; runX has loss=nan"):
        RunTable([1e6], [2e7], [float("nan")], ["dense"], ["runX"])
    with pytest.raises(ValueError, match="N must be finite and positive"):
        RunTable([-1.0], [2e7], [3.0], ["dense"])
