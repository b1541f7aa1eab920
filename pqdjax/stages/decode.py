"""Stage decode: each method's synthetic set at every IPC K, as PNGs in class folders with a manifest of weights.

One stage for every kind of run. A method (pqdjax.config_checks) names a point source and a decoder:

    random, medoid, medoid_weighted, herding   K real training images per class, chosen by stages.quantize
                                               (streamed runs: resized and center-cropped to config.decode.image_size)
    d4m        the k-means points, decoded (config.decode.method), uniform weights
    ddoq       the same images, weighted by the Voronoi cell masses
    generated  K class-conditional samples per class (decoder 'sample'), uniform weights

and a decoder suffix decodes a set's points (real-image methods: their images' latents) by another decoder
(stages.image_decoders: 'vae', 'diffusion', 'sample'), e.g. ddoq_vae, random_vae, d4m_diffusion. The prior's
model decodes: the VAE and latent denoiser trained here (in-memory runs), Stable Diffusion or DiT (streamed runs).

Methods with the same points and decoder share one set of images (d4m and ddoq; medoid and medoid_weighted);
their manifests differ in the weights (stages.quantize.method_weights), which sum to 1 per class:

    synthetic/ipc{K}/{source}_{decoder}/{c}_{name}/{k:03d}.png   a set's images (ImageFolder layout, image_folder)
                                                                 e.g. kmeans_diffusion, random_real, kmeans_vae
    synthetic/ipc{K}/manifest_{method}.csv                       file,label,class,weight per image
    synthetic/ipc{K}/groups/{set}/{c:04d}.json                   a group of classes decoded (resume)
    synthetic/ipc{K}/sets/{set}.json                             a set complete: its wall time and FLOPs

Each process decodes its part of the classes (parallel.process_shard), config.decode.diffusion.batch_size // K
classes per call sharded over its devices; every point (c, k) has its own noise key (image_decoders.point_keys),
so the images are the same for any number of processes and batch size. Process 0 writes the manifests.

The random baseline is drawn anew for each student seed (set_for_seed): draw s > 0 is the set
{source}_{decoder}_draw{s} with manifest_{method}_draw{s}.csv, made when a student first asks for it.
With config.decode.figure_strengths the stage also saves the pushforward strips (STRIPS_ARTIFACT) the report draws.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from pqdjax import artifacts, parallel
from pqdjax.config_checks import decoder_of, point_source, split_method
from pqdjax.data import image_folder
from pqdjax.errors import InputError, NonFiniteError
from pqdjax.progress import Progress
from pqdjax.stages.image_decoders import TrainedLatentModel, decode_flops, decode_images, point_keys
from pqdjax.stages.quantize import random_rows

STRIPS_ARTIFACT = "figures/pushforward_strips.npz"


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """One method's distilled set at one IPC: its manifest (a path in the store) and fingerprint."""

    method: str
    ipc: int
    manifest: str
    fingerprint: str

    def load(self, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The manifest's PNGs and weights, class-major: (images uint8 [C, K, H, W, ch], weights float32 [C, K]); only
        the first `first` classes if given (only their PNGs are read)."""
        return image_folder.read_class_major(self.manifest, self.ipc, first)


@dataclasses.dataclass(frozen=True)
class SetSpec:
    """The images of a set: a point source (config_checks.point_source), a decoder (None: the real images) and the
    random baseline's draw (0 for every other source)."""

    source: str
    decoder: str | None
    draw: int = 0

    @property
    def folder(self) -> str:
        return f"{self.source}_{self.decoder or 'real'}" + (f"_draw{self.draw}" if self.draw else "")


def spec_of(method: str, config, draw: int = 0) -> SetSpec:
    base, _ = split_method(method)
    return SetSpec(point_source(base), decoder_of(method, config), draw)


def decoders_in_use(config) -> set[str]:
    """The decoders the config's methods need."""
    return {d for d in (decoder_of(m, config) for m in config.methods) if d is not None}


def latent_model(prior, denoiser):
    """The model that decodes points (stages.image_decoders): a pretrained prior's, or the VAE and denoiser of an
    in-memory run."""
    return getattr(prior, "model", None) or TrainedLatentModel(prior, denoiser)


def _set_fingerprint(run, latents, q, prior, denoiser, spec: SetSpec) -> str:
    """What a set's images depend on: the random images on the latents (their classes), the IPC and the seed alone
    (stages.quantize.random_rows), the other sources on the quantization; a decoder adds the prior (and denoiser) and
    the pushforward's settings (not its batch size: each point has its own key)."""
    points = ("random", latents.fingerprint, q.ipc) if spec.source == "random" else (spec.source, q.fingerprint)
    parts = ["set", *points, spec.decoder, spec.draw, run.config.seed, run.config.decode.get("image_size")]
    if spec.decoder is not None:
        parts.append(prior.fingerprint)
    if spec.decoder in ("diffusion", "sample"):
        settings = {k: v for k, v in run.config.decode.diffusion.items() if k != "batch_size"}
        parts += [getattr(denoiser, "fingerprint", None), settings]
    return artifacts.fingerprint(*parts)


def _class_rows(run, latents, q, classes: list[int], spec: SetSpec) -> list[np.ndarray]:
    """The rows [K] in each class's latents of a real-image source's images (a random draw s > 0: drawn here)."""
    if spec.draw:
        return random_rows(run, latents.counts_per_class(), q.ipc, spec.draw, classes)
    key = f"{spec.source}_rows"
    return [q.load(c, (key,))[key] for c in classes]


def _real_images(run, latents, classes: list[int], rows: list[np.ndarray]) -> np.ndarray:
    """uint8 [len(classes) * K, H, W, C]: the training images at `rows` of each class's latents (streamed runs: resized
    and center-cropped to config.decode.image_size)."""
    indices = np.concatenate([latents.example_indices(c)[r] for c, r in zip(classes, rows)])
    if run.kind != "streamed":
        return run.dataset.train_images[indices]
    from pqdjax.data import imagenet, streamed

    data, size = run.config.data, run.config.decode.image_size
    split = streamed.open_configured_split(data, data.train_split)
    return np.stack([imagenet.resize_and_center_crop(np.asarray(split[int(i)]["image"]), size, size) for i in indices])


def _condition_labels(run, labels: np.ndarray) -> np.ndarray:
    """The class-label condition [n] of the run's labels [n]: their ImageNet-1K indices where the classes are ImageNet
    classes (DiT is conditioned on ImageNet's 1,000), else the labels themselves."""
    if run.kind == "streamed" and run.classes.imagenet_indices is not None:
        return run.classes.imagenet_indices[labels]
    return labels


def _noise_base(run, ipc: int, decoder: str) -> jax.Array:
    """The key point_keys folds each point's class and index into; the samples draw from keys of their own."""
    return run.rng("decode", "sample", ipc) if decoder == "sample" else run.rng("decode", ipc)


def _decode_groups(run, model, latents, q, spec: SetSpec, fp: str) -> None:
    """Writes the PNGs of this process's classes of a set, in groups of classes (resuming finished groups)."""
    ipc, store, names = q.ipc, run.store, run.class_names
    mesh = Mesh(np.asarray(jax.local_devices()), (parallel.DATA_AXIS,))
    mine = [int(c) for c in parallel.process_shard(latents.num_classes)]
    per_call = max(1, run.config.decode.diffusion.batch_size // ipc)
    groups = [mine[i : i + per_call] for i in range(0, len(mine), per_call)]
    bar = Progress(f"decode IPC {ipc} ({spec.folder})", len(groups), unit="groups", log_every=max(1, len(groups) // 10))
    for g, classes in enumerate(groups, 1):
        record, group_fp = f"synthetic/ipc{ipc}/groups/{spec.folder}/{classes[0]:04d}.json", artifacts.fingerprint(fp, classes)
        files = _image_files(run, latents, spec, ipc, classes)
        if store.is_complete(record, group_fp) and all(os.path.exists(f) for f in files):
            continue
        store.remove(record)  # before its images change: a kill then leaves the group undone, not done with others' images
        labels = np.repeat(classes, ipc)
        if spec.source == "kmeans":
            points = np.concatenate([q.load(c, ("points",))["points"] for c in classes])
        else:
            rows = _class_rows(run, latents, q, classes, spec)
            if spec.decoder is None:
                images = _real_images(run, latents, classes, rows)
            else:  # the chosen images' latents
                points = np.concatenate([latents.load(c)[r] for c, r in zip(classes, rows)])
        if spec.decoder is not None:
            try:
                images = decode_images(model, spec.decoder, points.reshape((-1,) + tuple(latents.shape)), _condition_labels(run, labels),
                                       [names[c] for c in labels], point_keys(_noise_base(run, ipc, spec.decoder), classes, ipc),
                                       run.config.decode.diffusion, mesh, run.config.decode.get("image_size"))
            except NonFiniteError as error:
                raise NonFiniteError(f"{error} (IPC {ipc}, set {spec.folder}, classes {classes[0]}-{classes[-1]})") from None
        for path, image in zip(files, images):
            artifacts.write_bytes(path, image_folder.png_bytes(image))
        store.save_record(record, {"classes": classes}, group_fp)
        bar.update(g)


def _image_files(run, latents, spec: SetSpec, ipc: int, classes) -> list[str]:
    """The paths of the PNGs of `classes` in a set, class-major."""
    names, num_classes = run.class_names, latents.num_classes
    return [run.store.path(f"synthetic/ipc{ipc}/{spec.folder}/" + image_folder.image_file(c, names[c], num_classes, k))
            for c in classes for k in range(ipc)]


def _make_set(run, model, latents, q, spec: SetSpec, fp: str) -> None:
    """The set's images, unless complete: every process its groups, then process 0 marks the set complete with its
    cost (sets/{set}.json: 'seconds', the wall time of the run that finished it; 'flops', XLA's count of decoding it
    with the model trained here, 0 for real images, None for pretrained priors)."""
    record = f"synthetic/ipc{q.ipc}/sets/{spec.folder}.json"
    if parallel.complete_everywhere(run.store, record, fp):
        return
    if jax.process_index() == 0:  # another set's marker (an earlier config) must not outlive the images it marked
        run.store.remove(record)
    parallel.sync_processes(f"unmarked ipc{q.ipc} {spec.folder}")
    start = time.perf_counter()
    _decode_groups(run, model, latents, q, spec, fp)
    parallel.sync_processes(f"decoded ipc{q.ipc} {spec.folder}")
    seconds = round(time.perf_counter() - start, 2)

    def write():  # process 0, once every process's images are there
        missing = [f for f in _image_files(run, latents, spec, q.ipc, range(latents.num_classes)) if not os.path.exists(f)]
        if missing:
            raise InputError(f"decode: {len(missing)} images of {spec.folder} are missing after every process decoded its "
                             f"classes (first: {missing[0]}); the workdir must be one folder that all processes share.")
        flops = 0.0 if spec.decoder is None else None
        if spec.decoder is not None and isinstance(model, TrainedLatentModel):
            settings = run.config.decode.diffusion
            flops = decode_flops(model, spec.decoder, settings, latents.shape, latents.num_classes * q.ipc,
                                 max(1, settings.batch_size // q.ipc) * q.ipc)  # _decode_groups' calls
        run.store.save_record(record, {"seconds": seconds, "flops": flops}, fp)

    parallel.write_once(run.store, record, fp, write)


def _manifest(run, latents, q, method: str, spec: SetSpec, set_fp: str) -> SyntheticSet:
    """The method's manifest over its set's images (process 0 writes it, unless complete), with the method's weights
    as stages.quantize stored them (uniform for a random draw); its info holds the set's cost."""
    suffix = f"_draw{spec.draw}" if spec.draw else ""
    name = f"synthetic/ipc{q.ipc}/manifest_{method}{suffix}.csv"
    fp = artifacts.fingerprint("manifest", method, set_fp)
    names, num_classes, base = run.class_names, latents.num_classes, split_method(method)[0]

    def write():
        weights = [np.full(q.ipc, 1.0 / q.ipc) if spec.draw else q.weights(c, base) for c in range(num_classes)]
        files = [f"{spec.folder}/" + image_folder.image_file(c, names[c], num_classes, k) for c in range(num_classes) for k in range(q.ipc)]
        text = image_folder.manifest_text(files, np.repeat(np.arange(num_classes), q.ipc), np.concatenate(weights), names)
        cost = run.store.load_record(f"synthetic/ipc{q.ipc}/sets/{spec.folder}.json")

        def fill(path):
            with open(path, "w") as f:
                f.write(text)

        run.store.write_artifact(name, fill, fp, {"images": num_classes * q.ipc, **cost})

    parallel.write_once(run.store, name, fp, write)
    return SyntheticSet(method, q.ipc, run.store.path(name), fp)


def synthetic_set(run, prior, denoiser, latents, q, method: str, draw: int = 0) -> SyntheticSet:
    """Method's set at q.ipc (draw s > 0: the random baseline's draw s), made unless complete."""
    spec = spec_of(method, run.config, draw)
    fp = _set_fingerprint(run, latents, q, prior, denoiser, spec)
    _make_set(run, latent_model(prior, denoiser), latents, q, spec, fp)
    return _manifest(run, latents, q, method, spec, fp)


def run(run, prior, latents, quantized: dict, denoiser=None) -> dict[tuple[str, int], SyntheticSet]:
    out = {}
    for ipc, q in quantized.items():
        # made in the order of their image folders (a method sharing another's images finds them made)
        made = {m: synthetic_set(run, prior, denoiser, latents, q, m) for m in sorted(run.config.methods, key=lambda m: spec_of(m, run.config).folder)}
        out.update({(m, ipc): made[m] for m in run.config.methods})
        logging.info("decode IPC %d: %s", ipc, ", ".join(sorted({spec_of(m, run.config).folder for m in run.config.methods})))
    if run.config.decode.get("figure_strengths") and (denoiser is not None or hasattr(prior, "model")):
        _pushforward_strips(run, prior, denoiser, latents, quantized)
    return out


def set_for_seed(run, prior, latents, quantized: dict, synthetic: dict, denoiser=None):
    """set_for(method, ipc, seed) -> the SyntheticSet that the student of `seed` trains on.

    The random baseline (base method 'random', with or without a decoder) is
    drawn anew for each evaluation seed: the student of seed s trains on draw
    s (stages.quantize.random_rows), so that the spread of its accuracy over
    seeds includes the choice of images, as a reviewer expects of a
    random-subset baseline. Draw 0 is the set of decode.run, which fidelity
    measures and the figures show. Every other method is the same set for
    every seed (its points do not depend on the seed).
    """

    def set_for(method: str, ipc: int, seed: int) -> SyntheticSet:
        if split_method(method)[0] != "random" or seed == 0:
            return synthetic[method, ipc]
        return synthetic_set(run, prior, denoiser, latents, quantized[ipc], method, draw=seed)

    return set_for


def _pushforward_strips(run, prior, denoiser, latents, quantized) -> None:
    """For a few classes and points: the VAE decoding, then img2img at each of config.decode.figure_strengths, with
    the noise keys of the points' images in the diffusion set.

    Saved as STRIPS_ARTIFACT: images uint8 [classes, points, 1 + strengths, H, W, ch],
    strengths, classes; the report draws it.
    """
    config = run.config.decode
    ipc = min(quantized, key=lambda k: abs(k - 10))
    q = quantized[ipc]
    strengths = tuple(float(s) for s in config.figure_strengths)
    fp = artifacts.fingerprint("strips", q.fingerprint, prior.fingerprint, getattr(denoiser, "fingerprint", None), config.diffusion,
                               config.get("image_size"), strengths, run.config.seed)
    if parallel.complete_everywhere(run.store, STRIPS_ARTIFACT, fp):
        return
    classes = list(range(min(4, latents.num_classes)))
    per_class = min(3, ipc)
    chosen = np.concatenate([q.load(c, ("points",))["points"][:per_class] for c in classes]).reshape((-1,) + tuple(latents.shape))
    labels = np.repeat(classes, per_class)
    keys = point_keys(_noise_base(run, ipc, "diffusion"), classes, ipc)[np.add.outer(np.arange(len(classes)) * ipc, np.arange(per_class)).ravel()]
    mesh = Mesh(np.asarray(jax.local_devices()), (parallel.DATA_AXIS,))
    settings = ml_collections.ConfigDict({**config.diffusion.to_dict(), "start": "img2img"})  # the strength decides
    decode = lambda decoder, strength=None: decode_images(
        latent_model(prior, denoiser), decoder, chosen, _condition_labels(run, labels), [run.class_names[c] for c in labels],
        keys, settings, mesh, config.get("image_size"), strength)
    columns = [decode("vae")] + [decode("diffusion", strength) for strength in strengths]
    images = np.stack(columns, axis=1)  # [n, 1 + S, H, W, ch]
    images = images.reshape((len(classes), per_class) + images.shape[1:])
    arrays = {"images": images, "strengths": np.asarray(strengths), "classes": np.asarray(classes), "ipc": ipc}
    parallel.write_once(run.store, STRIPS_ARTIFACT, fp, lambda: run.store.save_arrays(STRIPS_ARTIFACT, arrays, fp))
