"""What the mid-training checkpoints cost: the time of one save per trainer, times their number.

    python -m benchmarks.checkpoint_overhead

Builds the train states (parameters and Adam state, and the EMA for the
denoiser, as `pqdjax.train.loop.train` checkpoints them) of the default
config's trainers: the VAE, teacher and denoiser, which the pretrain run
trains (`configs/default.py:pretrain`), and the students, the only trainers of
the default run (it loads the other three). Saves each `--repeats` times
through pqdjax.train.checkpoint.Checkpoints into a temporary folder and prints
the median save time, the number of saves of each run (steps /
checkpoint_every per training) and their total.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

from configs import default
from pqdjax.artifacts import ArtifactStore
from pqdjax.models import classifiers, silence_diffusers_deprecation, vae as vae_lib
from pqdjax.models.denoiser import make_denoiser
from pqdjax.train import loop
from pqdjax.train.checkpoint import Checkpoints


def _state(params, train_config, ema=False):
    return loop.create_train_state(params, optax.adamw(loop.cosine_schedule(train_config.learning_rate, train_config.steps)), ema=ema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    silence_diffusers_deprecation()
    config = default.get_config()
    vae = vae_lib.make_vae(config.prior.vae, 28, 1)
    teacher = classifiers.make_classifier(config.teacher.model, 10)
    student = classifiers.make_classifier(config.evaluate.model, 10)
    image = jnp.zeros((1, 28, 28, 1))
    latent_shape = jax.eval_shape(lambda p: vae_lib.encode(vae, p, image), vae_lib.init_params(vae, jax.random.key(0), 28)).shape[1:]
    denoiser = make_denoiser(config.denoiser.model, latent_shape, 10)
    students = len(config.methods) * len(config.ipcs) * len(config.evaluate.seeds)
    trainers = {  # name: (train state, its train config, trainings in the run), per run
        "pretrain": {
            "vae": (_state(vae_lib.init_params(vae, jax.random.key(0), 28), config.prior.train), config.prior.train, 1),
            "teacher": (_state(teacher.init(jax.random.key(1), image)["params"], config.teacher.train), config.teacher.train, 1),
            "denoiser": (_state(denoiser.init_params(jax.random.key(3)), config.denoiser.train, ema=True), config.denoiser.train, 1),
        },
        "default": {
            "student": (_state(student.init(jax.random.key(2), image)["params"], config.evaluate.train), config.evaluate.train, students),
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        store = ArtifactStore(folder)
        for run_name, run_trainers in trainers.items():
            total = 0.0
            for name, (state, train_config, trainings) in run_trainers.items():
                checkpoints = Checkpoints(store, f"checkpoints/{name}", "benchmark", train_config.checkpoint_every)
                times = []
                for step in range(1, args.repeats + 1):
                    start = time.perf_counter()
                    checkpoints.save(state, step)
                    times.append(time.perf_counter() - start)
                saves = trainings * (train_config.steps // train_config.checkpoint_every)
                size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / 2**20
                median = statistics.median(times)
                total += saves * median
                print(f"{run_name:8s} {name:8s} state {size:6.2f} MiB  one save {1000 * median:6.1f} ms (median of {args.repeats})  "
                      f"{saves:3d} saves: {saves * median:5.1f} s")
            print(f"all checkpoints of the {run_name} run: {total:.1f} s")

if __name__ == "__main__":
    main()
