"""The real-image baselines' selections (pqdjax.quantize.selection) against plain numpy."""

import jax
import numpy as np

from pqdjax.quantize import selection


def _herding_numpy(x, k):
    target, chosen, total = x.mean(0), [], np.zeros(x.shape[1])
    for t in range(k):
        errors = [np.inf if i in chosen else np.sum(((total + x[i]) / (t + 1) - target) ** 2) for i in range(len(x))]
        chosen.append(int(np.argmin(errors)))
        total += x[chosen[-1]]
    return chosen


def test_herding_matches_the_greedy_rule_written_out():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    got = np.asarray(selection.herding(x, np.full(40, 1 / 40, np.float32), 6))
    assert got.tolist() == _herding_numpy(x.astype(np.float64), 6)
    assert len(set(got.tolist())) == 6  # never the same sample twice


def test_medoids_are_the_nearest_samples_and_padding_is_never_chosen():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    points = rng.normal(size=(5, 4)).astype(np.float32)
    mass = np.full(30, 1 / 25, np.float32)
    mass[25:] = 0.0  # padding rows
    x[25:] = points  # exactly on the points: chosen only if padding were allowed
    got = np.asarray(selection.medoids(x, mass, points))
    want = np.argmin(((points[:, None] - x[None, :25]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(got, want)
    # vmapped over classes, as the quantize stage calls them
    both = jax.vmap(selection.herding, in_axes=(0, 0, None))(np.stack([x, x]), np.stack([mass, mass]), 3)
    assert np.all(np.asarray(both) < 25)
