"""The student's teacher targets: a table of every crop-and-flip view against a teacher pass per step.

    python -m benchmarks.student_targets [--ipc 10]

Trains the default config's student (ConvNet-3, width 32) on IPC x 10 random
28x28 images with the default config's teacher (ConvNet-3, width 128, random
weights: the cost does not depend on them) and train settings, once with the
teacher's logits looked up in pqdjax.train.student.teacher_logits_per_view
and once with the teacher run in every step (the D4M / SRe2L way), and prints
the wall time of each. Both give the same targets (tests/test_train.py).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from configs import default
from pqdjax.models import classifiers
from pqdjax import parallel
from pqdjax.train import augment, student as student_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, default=10)
    args = parser.parse_args()
    config = default.get_config()
    train = config.evaluate.train
    n = 10 * args.ipc
    images = np.asarray(jax.random.uniform(jax.random.key(0), (n, 28, 28, 1), minval=-1, maxval=1))
    teacher = classifiers.make_classifier(config.teacher.model, 10)
    student = classifiers.make_classifier(config.evaluate.model, 10)
    teacher_params = teacher.init(jax.random.key(1), images[:1])["params"]
    print(f"{n} images x {augment.num_views(train.crop_padding, train.flip)} views in the table; "
          f"{train.steps} steps x {train.batch_size} images see {train.steps * train.batch_size} views")
    for table in (True, False):
        start = time.perf_counter()
        student_trainer.train_student(student, teacher, {"params": teacher_params}, images, np.ones(n), train,
                                      jax.random.key(2), parallel.make_mesh(), fast_conv=True, per_view_table=table)
        name = "table of views" if table else "teacher per step"
        print(f"{name:17s} {time.perf_counter() - start:6.1f} s per student (compile included)")


if __name__ == "__main__":
    main()
