"""Training curves (pqdjax.train.metrics): JSON lines and TensorBoard events from the one training loop."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pqdjax.train import loop, metrics


def _quadratic_step(tx):
    @jax.jit
    def step(state, data, indices, rng):
        loss_fn = lambda p: jnp.mean((data["x"][indices] - p["w"]) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return loop.apply_gradients(state, grads, tx), {"loss": loss}

    return step


def _train(folder, num_steps, checkpoints=None):
    schedule = loop.cosine_schedule(0.1, num_steps, warmup_steps=2)
    tx = optax.adam(schedule)
    state = loop.create_train_state({"w": jnp.zeros(3)}, tx)
    data = {"x": jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)}
    return loop.train(
        _quadratic_step(tx), state, data, num_examples=16, num_steps=num_steps, batch_size=4,
        rng=jax.random.key(0), name="toy trainer", log_every=2, checkpoints=checkpoints,
        metrics_dir=folder, learning_rate=schedule,
    )


def test_the_loop_writes_every_logged_step(tmp_path):
    folder = str(tmp_path / "metrics")
    _, last = _train(folder, num_steps=7)
    records = metrics.read(os.path.join(folder, "toy_trainer.jsonl"))
    assert [r["step"] for r in records] == [2, 4, 6, 7]
    assert records[-1]["loss"] == last["loss"]
    schedule = loop.cosine_schedule(0.1, 7, warmup_steps=2)
    np.testing.assert_allclose([r["learning_rate"] for r in records], [float(schedule(s - 1)) for s in (2, 4, 6, 7)])
    assert all(r["steps_per_second"] > 0 for r in records)
    events = glob.glob(os.path.join(folder, "tensorboard", "toy_trainer", "events.out.tfevents.*"))
    assert len(events) == 1 and os.path.getsize(events[0]) > 0


def test_a_resumed_trainer_keeps_one_curve(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    path = folder / "toy_trainer.jsonl"
    path.write_text("".join(f'{{"step": {s}, "loss": 9.0}}\n' for s in (2, 4, 6)))
    writer = metrics.MetricsWriter(str(folder), "toy trainer", first_step=4)  # resumed from the step-4 checkpoint
    writer.write(6, {"loss": 1.0})
    writer.close()
    assert metrics.read(str(path)) == [{"step": 2, "loss": 9.0}, {"step": 4, "loss": 9.0}, {"step": 6, "loss": 1.0}]
