"""Stage fidelity: what the pushforward kept, for every synthetic set.

The student trains on images, not on latent points, so whether a decoder
keeps what the quantizer found is measured on the images themselves:

    teacher_agreement  share of the set's images that the teacher labels as
                       the class they were made for
    cell_consistency   share of images whose re-encoded latent (the VAE
                       encoder's mean) lies in the Voronoi cell of the point it
                       was decoded from, among its set's K points of the class
                       (None for real images, which are decoded from no point)
    w2_images          W2 from the class's latent measure to the re-encoded
                       images with the set's weights, mean over classes: what
                       the student actually trains on, beside the quantize
                       stage's W2 of the points (w2_points)

One record per set, fidelity/{method}_ipc{K}.json, reused while the set,
the prior, the teacher and the latents are unchanged.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.config_checks import W2_METHODS, decoder_of, split_method
from pqdjax.data.grouping import class_indices, pad_classes
from pqdjax.quantize import wasserstein2_classes
from pqdjax.stages.encode import encode_images
from pqdjax.stages.quantize import method_set
from pqdjax.train.classifier import accuracy


def teacher_agreement(teacher, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 images [N, H, W, C] that the teacher labels as labels [N]: its accuracy on them."""
    return accuracy(teacher.model, {"params": teacher.params}, images, labels)


def cell_consistency(reencoded: np.ndarray, points: np.ndarray) -> float:
    """Share of (c, k) whose reencoded[c, k] is nearer to points[c, k] than to any other points[c, j].

    reencoded, points: [C, K, d]. Ties go to the lowest index (as pqdjax.quantize.voronoi.assign).
    """
    d2 = np.sum(np.square(reencoded[:, :, None, :].astype(np.float64) - points[:, None, :, :]), axis=-1)  # [C, K, K]
    nearest = np.argmin(d2, axis=-1)
    return float(np.mean(nearest == np.arange(points.shape[1])[None, :]))


def measure(run, prior, teacher, latents, quantized, synthetic) -> dict:
    """The record of one synthetic set (see the module docstring)."""
    config = run.config.quantize
    images = synthetic.images  # [C, K, H, W, ch]
    num_classes, ipc = images.shape[:2]
    flat_images = images.reshape((-1,) + images.shape[2:])
    labels = np.repeat(np.arange(num_classes), ipc)
    reencoded = encode_images(prior, flat_images, run.config.encode.batch_size).reshape(num_classes, ipc, -1)
    padded, mass = pad_classes(latents.latents, class_indices(latents.labels, latents.num_classes))
    w2, _ = wasserstein2_classes(
        padded, mass, reencoded, synthetic.weights, config.w2_exact_max_size, config.w2_relative_epsilon, config.w2_max_iterations,
    )
    base, decoder = split_method(synthetic.method)
    points, _, _ = method_set(quantized.arrays, base, latents.latents)
    from_points = base in W2_METHODS and decoder_of(synthetic.method, run.config) not in (None, "sample")  # not samples, not real images
    record = {
        "method": synthetic.method, "ipc": ipc,
        "teacher_agreement": teacher_agreement(teacher, flat_images, labels),
        "cell_consistency": cell_consistency(reencoded, points) if from_points else None,
        "w2_images": float(np.mean(w2)),
        "w2_points": float(np.mean(quantized.arrays[f"w2_{base}"])) if base in W2_METHODS else None,
    }
    return record


def measure_sets(run, synthetic: dict, quantized: dict, measure_set, kind: str, *inputs) -> dict[tuple[str, int], dict]:
    """measure_set(quantized[ipc], set) for every synthetic set, keyed like `synthetic` by (method, IPC).

    A record is reused while the set, its quantization and `inputs` (fingerprints,
    config sections) are unchanged; process 0 writes fidelity/{method}_ipc{K}.json.
    """
    jobs = [(method, ipc, synthetic_set, f"fidelity/{method}_ipc{ipc}.json",
             artifacts.fingerprint(kind, synthetic_set.fingerprint, quantized[ipc].fingerprint, *inputs))
            for (method, ipc), synthetic_set in synthetic.items()]
    done = [run.store.is_complete(name, fp) for *_, name, fp in jobs]  # by every process before process 0 writes
    parallel.sync_processes("fidelity: records read")
    out = {}
    for (method, ipc, synthetic_set, name, fp), complete in zip(jobs, done):
        if complete:
            out[method, ipc] = run.store.load_record(name)
            continue
        record = measure_set(quantized[ipc], synthetic_set)
        parallel.write_once(run.store, name, fp, lambda: run.store.save_record(name, record, fp))
        out[method, ipc] = record
        consistency = record["cell_consistency"]
        logging.info(
            "fidelity %s IPC %d: teacher agreement %.3f, cell consistency %s, W2 of the images %.3f (of the points %s)",
            method, ipc, record["teacher_agreement"], "-" if consistency is None else f"{consistency:.3f}",
            record["w2_images"], "-" if record["w2_points"] is None else f"{record['w2_points']:.3f}",
        )
    return out


def run(run, prior, teacher, latents, quantized: dict, synthetic: dict) -> dict[tuple[str, int], dict]:
    """The fidelity record of every synthetic set, keyed like `synthetic` by (method, IPC)."""
    return measure_sets(
        run, synthetic, quantized, lambda q, synthetic_set: measure(run, prior, teacher, latents, q, synthetic_set),
        "fidelity", prior.fingerprint, teacher.fingerprint, latents.fingerprint, run.config.quantize, run.config.encode,
    )
