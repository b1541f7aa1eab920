"""What the mid-training checkpoints cost the default run: the time of one save per trainer, times their number.

    python -m benchmarks.checkpoint_overhead

Builds the default config's prior (VAE), teacher and student train states
(parameters and Adam state, as `pqdjax.train.loop.train` checkpoints them),
saves each `--repeats` times through pqdjax.train.checkpoint.Checkpoints into
a temporary folder, and prints the median save time, the number of saves the
default run makes (steps / checkpoint_every per trainer) and their total
against the run's measured length.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from configs import default
from pqdjax.artifacts import ArtifactStore
from pqdjax.models import classifiers, silence_diffusers_deprecation, vae as vae_lib
from pqdjax.train import loop
from pqdjax.train.checkpoint import Checkpoints


def _state(params, train_config):
    return loop.create_train_state(params, loop.cosine_adam(train_config.learning_rate, train_config.steps))


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
    trainers = {  # name: (train state, its train config, how many trainings the default run has)
        "prior": (_state(vae_lib.init_params(vae, jax.random.key(0), 28), config.prior.train), config.prior.train, 1),
        "teacher": (_state(teacher.init(jax.random.key(1), image)["params"], config.teacher.train), config.teacher.train, 1),
        "student": (_state(student.init(jax.random.key(2), image)["params"], config.evaluate.train), config.evaluate.train,
                    len(config.methods) * len(config.ipcs) * len(config.evaluate.seeds)),
    }
    total = 0.0
    with tempfile.TemporaryDirectory() as folder:
        store = ArtifactStore(folder)
        for name, (state, train_config, trainings) in trainers.items():
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
            print(f"{name:8s} state {size:6.2f} MiB  one save {1000 * median:6.1f} ms (median of {args.repeats})  "
                  f"{saves:3d} saves in the default run: {saves * median:5.1f} s")
    print(f"all checkpoints of the default run: {total:.1f} s")


if __name__ == "__main__":
    main()
