"""Stage fidelity: what the pushforward kept, for every synthetic set of every run.

The student trains on images, not on latent points, so whether a decoder
keeps what the quantizer found is measured on the images themselves:

    teacher_agreement  share of the set's images that the teacher labels as
                       the class they were made for
    cell_consistency   share of images whose re-encoded latent (the prior's VAE
                       encoder, posterior mean, scaled) lies in the Voronoi cell
                       of the point it was decoded from, among its set's K points
                       of the class (None for real images and for samples, which
                       are decoded from no point)
    w2_images          W2 from the class's latent measure to the re-encoded
                       images with the set's weights, mean over classes: what
                       the student actually trains on, beside W2 of the set's
                       points with the same weights (w2_points, and per class
                       w2_points_per_class; real-image methods: their images'
                       latents; None for samples)

One implementation for every kind of run: it asks the run's components for
what it measures, each through a small interface both kinds implement:

    synthetic.load()                  images uint8 [C, K, H, W, ch], weights [C, K]
    teacher.predict(images)           the teacher's class of each image [N]
    prior.reencode(images, config)    scaled latents [N, d], as the encode stage makes them
    latents.load(c)                   class c's training latents [n_c, d]
    quantized.class_set(base, c, x)   a base method's points [K, d] and weights [K] of
                                      class c, and the W2 stored for them

(stages.prior, stages.teacher, stages.encode and stages.quantize for every
run, and stages.decode). Each class's latents
are read once per set, one class at a time. One record per set,
fidelity/{method}_ipc{K}.json, reused while the set, its quantization, the
prior, the teacher and the latents are unchanged; process 0 writes it.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.config_checks import W2_METHODS, decoder_of, split_method
from pqdjax.errors import InputError
from pqdjax.stages.quantize import class_w2


def teacher_agreement(teacher, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 images [N, H, W, C] that the teacher (teacher.predict) labels as labels [N]."""
    return float(np.mean(np.asarray(teacher.predict(images)) == np.asarray(labels)))


def cell_consistency(reencoded: np.ndarray, points: np.ndarray) -> float:
    """Share of (c, k) whose reencoded[c, k] is nearer to points[c, k] than to any other points[c, j].

    reencoded, points: [C, K, d]. Ties go to the lowest index (as pqdjax.quantize.voronoi.assign).
    """
    d2 = np.sum(np.square(reencoded[:, :, None, :].astype(np.float64) - points[:, None, :, :]), axis=-1)  # [C, K, K]
    nearest = np.argmin(d2, axis=-1)
    return float(np.mean(nearest == np.arange(points.shape[1])[None, :]))


def measure(run, prior, teacher, latents, quantized, synthetic) -> dict:
    """The record of one synthetic set (see the module docstring)."""
    images, weights = synthetic.load()
    num_classes, ipc = weights.shape
    if num_classes != latents.num_classes:
        raise InputError(f"fidelity: the {synthetic.method} set of IPC {ipc} has {num_classes} classes, the latents "
                         f"{latents.num_classes}; delete synthetic/ in the workdir to decode the sets again.")
    flat_images = images.reshape((-1,) + images.shape[2:])
    reencoded = prior.reencode(flat_images, run.config).reshape(num_classes, ipc, -1)
    base, _ = split_method(synthetic.method)
    with_points = base in W2_METHODS  # 'generated' samples have no points of their own
    from_points = with_points and decoder_of(synthetic.method, run.config) not in (None, "sample")  # not real images
    w2_images, w2_points, consistent = [], [], []
    for c in range(num_classes):  # one class's latents in memory, read once
        x = latents.load(c)
        w2_images.append(class_w2(x, reencoded[c], weights[c], run.config))
        if with_points:
            points, _, stored_w2 = quantized.class_set(base, c, x)
            w2_points.append(stored_w2)
            if from_points:
                consistent.append(cell_consistency(reencoded[c][None], points[None]))
    return {
        "method": synthetic.method, "ipc": ipc,
        "teacher_agreement": teacher_agreement(teacher, flat_images, np.repeat(np.arange(num_classes), ipc)),
        "cell_consistency": float(np.mean(consistent)) if from_points else None,  # K per class: the mean over images
        "w2_images": float(np.mean(w2_images)),
        "w2_points": float(np.mean(w2_points)) if with_points else None,
        "w2_points_per_class": [float(w) for w in w2_points] if with_points else None,
    }


def run(run, prior, teacher, latents, quantized: dict, synthetic: dict) -> dict[tuple[str, int], dict]:
    """The fidelity record of every synthetic set, keyed like `synthetic` by (method, IPC).

    A record is reused while the set, its quantization and the prior, teacher, latents and settings are
    unchanged; process 0 writes fidelity/{method}_ipc{K}.json.
    """
    data = run.config.data
    inputs = (prior.fingerprint, teacher.fingerprint, latents.fingerprint, run.config.quantize,
              data.get("encode_resize"), data.get("encode_crop"))
    jobs = [(method, ipc, synthetic_set, f"fidelity/{method}_ipc{ipc}.json",
             artifacts.fingerprint("fidelity", synthetic_set.fingerprint, quantized[ipc].fingerprint, *inputs))
            for (method, ipc), synthetic_set in synthetic.items()]
    done = [run.store.is_complete(name, fp) for *_, name, fp in jobs]  # by every process before process 0 writes
    parallel.sync_processes("fidelity: records read")
    out = {}
    for (method, ipc, synthetic_set, name, fp), complete in zip(jobs, done):
        if complete:
            out[method, ipc] = run.store.load_record(name)
            continue
        record = measure(run, prior, teacher, latents, quantized[ipc], synthetic_set)
        parallel.write_once(run.store, name, fp, lambda: run.store.save_record(name, record, fp))
        out[method, ipc] = record
        consistency = record["cell_consistency"]
        logging.info(
            "fidelity %s IPC %d: teacher agreement %.3f, cell consistency %s, W2 of the images %.3f (of the points %s)",
            method, ipc, record["teacher_agreement"], "-" if consistency is None else f"{consistency:.3f}",
            record["w2_images"], "-" if record["w2_points"] is None else f"{record['w2_points']:.3f}",
        )
    return out
