"""Streamed stage fidelity: what the pushforward (Stable Diffusion or DiT) kept, for every synthetic set.

The same three measures as the default pipeline's fidelity stage
(pqdjax.stages.fidelity), on the PNGs of each manifest:

    teacher_agreement  share of the set's images that the teacher (validation
                       preprocessing: torchvision normalisation, argmax over the
                       run's classes) labels as the class they were made for
    cell_consistency   share of images whose re-encoded latent lies in the
                       Voronoi cell of the point it was decoded from, among its
                       set's K points of the class: each PNG resized to the
                       encoder's input size (data.encode_crop), prior's VAE
                       posterior mean, scaled (None for real images)
    w2_images          W2 from the class's latent measure (its latent file) to
                       the re-encoded images with the set's weights, mean over
                       classes, beside w2_points, the same W2 for the set's
                       points (random: its images' latents): W2 for every method

One class at a time, so memory holds one class's latents; every process
computes the same record (the PNGs are on the shared workdir) and process 0
writes fidelity/{method}_ipc{K}.json.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pqdjax.batching import map_batches
from pqdjax.config_checks import decoder_of, point_source, split_method
from pqdjax.data import imagenet
from pqdjax.quantize import wasserstein2_classes
from pqdjax.stages.fidelity import cell_consistency, measure_sets
from pqdjax.stages.streamed_decode import class_points as class_points_of
from pqdjax.data.image_folder import load_images, read_manifest

BATCH_SIZE = 32


@functools.partial(jax.jit, static_argnums=(0, 3))
def _teacher_predictions(model, variables, images: jax.Array, num_classes: int) -> jax.Array:
    """uint8 [B, S, S, 3] (S = decode.image_size) -> predicted class [B] among the first num_classes."""
    logits = model.apply(variables, imagenet.normalize(images.astype(jnp.float32) / 255.0), train=False)
    return jnp.argmax(logits[:, :num_classes], axis=-1)


def teacher_agreement(teacher, images: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Share of uint8 images [N, H, W, 3] the teacher labels as labels [N]."""
    predictions = map_batches(lambda b: _teacher_predictions(teacher.model, teacher.variables, b, num_classes), images, BATCH_SIZE)
    return float(np.mean(predictions == labels))


def reencode(prior, images: np.ndarray, size: int) -> np.ndarray:
    """uint8 PNG pixels [N, H, W, 3] -> scaled latents of the prior's VAE [N, d] at the encoder's input size `size`."""
    resized = np.stack([imagenet.resize_and_center_crop(image, size, size) for image in images])
    model = prior.model
    return map_batches(lambda b: model.encode_images(jnp.asarray(b, jnp.float32) / 127.5 - 1.0), resized, BATCH_SIZE).reshape(len(images), -1)


def measure(run, prior, teacher, latents, quantized, synthetic) -> dict:
    """The record of one synthetic set (see the module docstring)."""
    config = run.config
    files, labels, weights = read_manifest(synthetic.manifest)
    ipc, num_classes = synthetic.ipc, latents.num_classes
    order = np.lexsort((np.arange(len(labels)), labels))  # class-major, as the points
    if not np.array_equal(labels[order], np.repeat(np.arange(num_classes), ipc)):
        raise ValueError(f"fidelity: {synthetic.manifest} does not hold {ipc} images of each of the {num_classes} classes.")
    images = load_images([files[i] for i in order])
    labels, weights = labels[order], weights[order].reshape(num_classes, ipc)
    agreement = teacher_agreement(teacher, images, labels, config.data.num_classes)
    reencoded = reencode(prior, images, config.data.encode_crop).reshape(num_classes, ipc, -1)
    q = config.quantize
    w2_settings = (q.get("w2_exact_max_size", 10_000_000), q.get("w2_relative_epsilon", 3e-3), q.get("w2_max_iterations", 20000))
    base, _ = split_method(synthetic.method)
    source = point_source(base)
    points, w2_images, w2_points = [], [], []
    for c in range(num_classes):
        class_points = class_points_of(run, latents, quantized, ipc, c, source)
        x = latents.load(c)[None]
        mass = np.full((1, x.shape[1]), 1.0 / x.shape[1], np.float32)
        w2_images.append(wasserstein2_classes(x, mass, reencoded[c][None], weights[c][None], *w2_settings)[0][0])
        w2_points.append(wasserstein2_classes(x, mass, class_points[None], weights[c][None], *w2_settings)[0][0])
        points.append(class_points)
    return {
        "method": synthetic.method, "ipc": ipc,
        "teacher_agreement": agreement,
        # real images are decoded from no point
        "cell_consistency": None if decoder_of(synthetic.method, config) is None else cell_consistency(reencoded, np.stack(points)),
        "w2_images": float(np.mean(w2_images)),
        "w2_points": float(np.mean(w2_points)),
    }


def run(run, prior, teacher, latents, quantized: dict, synthetic: dict) -> dict[tuple[str, int], dict]:
    """The fidelity record of every synthetic set, keyed like `synthetic` by (method, IPC)."""
    return measure_sets(
        run, synthetic, quantized, lambda q, synthetic_set: measure(run, prior, teacher, latents, q, synthetic_set),
        "imagenet_fidelity", prior.fingerprint, teacher.fingerprint, latents.fingerprint, run.config.quantize,
        run.config.data.encode_crop, run.config.data.num_classes,
    )
