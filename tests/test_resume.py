"""Mid-training checkpoints: a run interrupted after a checkpoint resumes bit for bit."""

import os

import jax
import numpy as np
import pytest

from pqdjax import artifacts
from pqdjax.models.convnet import ConvNet
from pqdjax.train import classifier, loop
from pqdjax.train.checkpoint import Checkpoints
from test_train import _train_config, _two_class_images


class Killed(Exception):
    """Stands in for a kill right after a checkpoint is written."""


def _kill_after_checkpoint(monkeypatch, at_step):
    real_save = Checkpoints.save

    def save(self, state, step):
        real_save(self, state, step)
        if step == at_step:
            raise Killed()

    monkeypatch.setattr(Checkpoints, "save", save)


def _train(checkpoints=None, **overrides):
    images, labels = _two_class_images(n=40)
    model = ConvNet(num_classes=2, width=4, depth=1)
    # 40 examples in batches of 16: 2 batches an epoch, so step 7 is mid-epoch.
    config = _train_config(steps=11, batch_size=16, log_every=4, **overrides)
    return classifier.train_classifier(model, images, labels, config, jax.random.key(0), fast_conv=False, checkpoints=checkpoints)


def _assert_same_tree(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_epoch_batches_from_a_later_step_are_the_tail():
    rng = jax.random.key(3)
    full = [np.asarray(b) for b in loop.epoch_batches(rng, 10, 3, 11)]
    for first in (0, 2, 3, 7, 10, 11):
        tail = [np.asarray(b) for b in loop.epoch_batches(rng, 10, 3, 11, first_step=first)]
        assert len(tail) == 11 - first
        for got, want in zip(tail, full[first:]):
            np.testing.assert_array_equal(got, want)


def test_killed_training_resumes_bit_identically(tmp_path, monkeypatch):
    uninterrupted = _train()
    store = artifacts.ArtifactStore(str(tmp_path))
    checkpoints = Checkpoints(store, "checkpoints/teacher", "fp", every=3)
    _kill_after_checkpoint(monkeypatch, at_step=6)
    with pytest.raises(Killed):
        _train(checkpoints)
    assert checkpoints.latest_step() == 6
    assert sorted(os.listdir(tmp_path / "checkpoints" / "teacher")) == ["step_00000006", "step_00000006.done"]

    steps_run = []
    real_make_step = classifier.make_classifier_step

    def counting_make_step(*args):
        step = real_make_step(*args)

        def counted(state, *rest):
            steps_run.append(int(state.step))
            return step(state, *rest)

        return counted

    monkeypatch.setattr(classifier, "make_classifier_step", counting_make_step)
    resumed = _train(checkpoints)
    assert steps_run == [6, 7, 8, 9, 10]
    _assert_same_tree(resumed, uninterrupted)
    # Checkpoints on a step that is not a multiple of `every` are not made; the newest is 9.
    assert checkpoints.latest_step() == 9


def test_checkpoints_of_another_config_are_ignored_and_deleted(tmp_path, monkeypatch):
    store = artifacts.ArtifactStore(str(tmp_path))
    _kill_after_checkpoint(monkeypatch, at_step=3)
    with pytest.raises(Killed):
        _train(Checkpoints(store, "ckpt", "old-config", every=3))
    assert Checkpoints(store, "ckpt", "old-config", every=3).latest_step() == 3
    fresh = Checkpoints(store, "ckpt", "new-config", every=3)
    assert fresh.latest_step() is None
    assert not os.path.exists(tmp_path / "ckpt" / "step_00000003")


def _checkpoints_of_a_run_killed_at_step_3(tmp_path, monkeypatch) -> Checkpoints:
    """A training run killed right after its step-3 checkpoint; returns its Checkpoints."""
    store = artifacts.ArtifactStore(str(tmp_path))
    checkpoints = Checkpoints(store, "ckpt", "fp", every=3)
    _kill_after_checkpoint(monkeypatch, at_step=3)
    with pytest.raises(Killed):
        _train(checkpoints)
    return checkpoints


def test_corrupt_checkpoint_is_a_clear_error_then_a_fresh_start(tmp_path, monkeypatch):
    checkpoints = _checkpoints_of_a_run_killed_at_step_3(tmp_path, monkeypatch)
    for folder, _, files in os.walk(tmp_path / "ckpt" / "step_00000003"):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "r+b") as f:  # garble every file of the checkpoint
                f.write(b"\x00garbage\xff" * 4)
    with pytest.raises(artifacts.ArtifactError, match="corrupt or does not match.*rerun"):
        _train(checkpoints)
    assert checkpoints.latest_step() is None  # the marker is dropped: the next run starts fresh


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, monkeypatch):
    checkpoints = _checkpoints_of_a_run_killed_at_step_3(tmp_path, monkeypatch)
    images, labels = _two_class_images(n=40)
    wider = ConvNet(num_classes=2, width=8, depth=1)  # same fingerprint, other shapes
    with pytest.raises(artifacts.ArtifactError, match="does not match the model"):
        classifier.train_classifier(wider, images, labels, _train_config(steps=11, batch_size=16), jax.random.key(0), False, checkpoints=checkpoints)


def test_no_checkpoint_of_a_non_finite_state(tmp_path):
    store = artifacts.ArtifactStore(str(tmp_path))
    checkpoints = Checkpoints(store, "ckpt", "fp", every=3)
    with pytest.raises(loop.NonFiniteError, match="teacher: loss=nan at step 3"):
        _train(checkpoints, learning_rate=float("nan"))
    assert checkpoints.latest_step() is None


def test_no_checkpoint_of_a_state_that_diverged_after_its_reported_loss(tmp_path):
    """A step reports the loss of the params it started from: a NaN update with a finite loss is caught at the save."""
    import jax.numpy as jnp
    import optax

    tx = optax.sgd(0.1)

    def step(state, data, indices, rng):
        params = jax.tree.map(lambda p: jnp.where(state.step >= 1, jnp.nan, p), state.params)  # diverges at step 2
        return loop.TrainState(step=state.step + 1, params=params, opt_state=state.opt_state), {"loss": jnp.float32(1.0)}

    store = artifacts.ArtifactStore(str(tmp_path))
    checkpoints = Checkpoints(store, "ckpt", "fp", every=3)
    state = loop.create_train_state({"w": jnp.ones(3)}, tx)
    with pytest.raises(loop.NonFiniteError, match="toy: the parameters or optimizer state became NaN or inf by step 3"):
        loop.train(jax.jit(step), state, None, num_examples=8, num_steps=6, batch_size=4, rng=jax.random.key(0),
                   name="toy", log_every=100, checkpoints=checkpoints)
    assert checkpoints.latest_step() is None
    # without checkpoints the returned state is checked at the end
    with pytest.raises(loop.NonFiniteError, match="by step 6"):
        loop.train(jax.jit(step), state, None, num_examples=8, num_steps=6, batch_size=4, rng=jax.random.key(0), name="toy", log_every=100)
