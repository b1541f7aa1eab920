"""Top-1 accuracy of a classifier on an ImageNet split, the batches sharded over the run's Mesh.

The validation protocol of torchvision / RDED / D4M: shorter side resized to
256, center crop 224 (config.data.eval_resize / eval_crop), torchvision's
normalisation. Every process reads its own part of the split
(pqdjax.parallel.process_shard), all processes run the same number of
sharded steps (padding with masked rows), and the counts are summed over
the global batch under jit, so the accuracy is that of the whole split.
A run on the first C classes (config.data.num_classes) is validated on
those classes only: other rows are masked out, and the prediction is the
argmax over the first C logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pqdjax import parallel
from pqdjax.data import imagenet, streamed
from pqdjax.progress import Progress
from pqdjax.errors import ConfigError


def count_correct_fn(model: nn.Module, mesh, num_classes: int):
    """jit of (variables, images uint8 [B, H, W, 3], labels [B], mask [B]) -> (correct, counted), B sharded over 'data'.

    The prediction is the argmax over the first num_classes logits (all 1,000 on the full task).
    """
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)

    def count(variables, images, labels, mask):
        logits = model.apply(variables, imagenet.normalize(images.astype(jnp.float32) / 255.0), train=False)
        hit = (jnp.argmax(logits[:, :num_classes], -1) == labels) & mask
        return jnp.sum(hit), jnp.sum(mask)

    return jax.jit(count, in_shardings=(rep, data, data, data), out_shardings=(rep, rep))


def sharded_accuracy(model: nn.Module, variables, source, num_examples: int, data_config, mesh, name: str = "accuracy") -> float:
    """Top-1 accuracy of `model` on the first num_examples of `source` (a tfds data source) at resize/crop of data_config.

    data_config fields: eval_resize, eval_crop, batch_size_per_device, num_classes.
    """
    spec = streamed.BatchSpec(data_config.batch_size_per_device * jax.local_device_count(), data_config.eval_resize, data_config.eval_crop)
    count = count_correct_fn(model, mesh, data_config.num_classes)
    variables = parallel.replicate(mesh, variables)
    steps = streamed.steps_per_process(num_examples, spec.batch_size)
    progress = Progress(name, steps, unit="batches", log_every=max(1, steps // 10))
    correct = counted = 0
    for step, batch in enumerate(streamed.equal_host_batches(source, num_examples, spec), 1):
        mask = batch["mask"] & (batch["labels"] < data_config.num_classes)
        arrays = parallel.shard_host_batch(mesh, {"images": batch["images"], "labels": batch["labels"], "mask": mask})
        c, n = count(variables, arrays["images"], arrays["labels"], arrays["mask"])
        correct, counted = correct + int(c), counted + int(n)
        progress.update(step)
    if counted == 0:
        raise ConfigError(f"{name}: no validation example has a label below config.data.num_classes = {data_config.num_classes}.")
    return correct / counted

