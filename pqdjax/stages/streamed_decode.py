"""Streamed stage decode: the quantization points pushed forward to PNGs (decode.image_size) by the prior's img2img (SD or DiT).

Methods, as in the default pipeline (pqdjax.stages.decode; pqdjax.config_checks
lists them): d4m and ddoq decode the k-means points by config.decode.method
('diffusion'); random, medoid, medoid_weighted and herding are K real training
images of each class (resized and center-cropped to decode.image_size): K
random ones, the one whose latent is nearest each k-means point, or K chosen
by herding toward the class's latent mean (chosen by stages.quantize); generated is K class-conditional
samples (decoder 'sample': img2img at strength 1 from zeros). A decoder
suffix decodes a set's points (real-image methods: their images' latents) by
another decoder: 'vae' (d4m_vae, ddoq_vae, random_vae) by the prior's VAE
alone, to measure what img2img adds.

For every IPC K and class c, each of the K latent points is noised to
config.decode.diffusion.strength and denoised by DDIM (diffusion.steps of the
schedule, classifier-free guidance diffusion.guidance), decoded by the VAE and
resized to config.decode.image_size. The condition is the prior's: for Stable
Diffusion the prompt = the class's name (pqdjax.data.streamed.Classes: the ImageNet
name of a synset, else the folder or tfds label name)
against diffusion.negative_prompt (D4M: strength 0.7, guidance 8, 50 steps,
224 px); for DiT the class label against the null class. With
diffusion.start 'initial_latent' the point is not noised: the whole reverse
process starts from it in place of Gaussian noise (DDOQ-DiT's "distilled
noise initializations", one reading; see configs/in1k.py).

    synthetic/ipc{K}/images/{c}_{name}/{k:03d}.png   the K images of class c (pqdjax.data.image_folder)
    synthetic/ipc{K}/images_{source}_{decoder}/...   the same for the other sets (set_folder):
                                                     e.g. images_kmeans_vae, images_random_real
    synthetic/ipc{K}/groups/{c:04d}.json             marks a group of classes done (resume; groups_.../)
    synthetic/ipc{K}/manifest_{method}.csv           file,label,class,weight per image

d4m and ddoq share the images of a decoder (the same points), as medoid and
medoid_weighted do; their manifests differ in the weights (quantize.method_weights): 1/K
for d4m and medoid, the Voronoi cell masses of the points (ddoq) or of the
medoids' latents (medoid_weighted), summing to 1 per class. The real images,
the points and the weights are the ones stages.quantize chose and stored for
each class. Classes are decoded config.decode.diffusion.batch_size // K at a
time, the batch sharded over this process's devices; each process decodes its
part of the classes, process 0 writes the manifests.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pqdjax import artifacts, parallel
from pqdjax.config_checks import decoder_of, point_source, split_method
from pqdjax.data import image_folder, imagenet, streamed
from pqdjax.data.preprocess import to_uint8
from pqdjax.diffusion.pushforward import denoise
from pqdjax.errors import InputError
from pqdjax.progress import Progress


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """One method's distilled set at one IPC: its manifest (a path in the store) and fingerprint."""

    method: str
    ipc: int
    manifest: str
    fingerprint: str

    def load(self, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The manifest's PNGs and weights, class-major: (images uint8 [C, K, S, S, 3], weights float32 [C, K]); only
        the first `first` classes if given (only their PNGs are read)."""
        files, labels, weights = image_folder.read_manifest(self.manifest)
        # by class, then by image index k (the file name '{k:03d}.png': shorter names first, then by name), in any row order
        order = np.asarray(sorted(range(len(files)), key=lambda i: (labels[i], len(files[i]), files[i])), np.int64)
        num_classes = len(labels) // self.ipc
        if len(labels) % self.ipc or not np.array_equal(labels[order], np.repeat(np.arange(num_classes), self.ipc)):
            raise InputError(f"{self.manifest} does not hold {self.ipc} images of each of classes 0..{num_classes - 1}; "
                             "delete synthetic/ in the workdir to decode the sets again.")
        kept = num_classes if first is None else min(first, num_classes)
        order = order[: kept * self.ipc]
        images = image_folder.load_images([files[i] for i in order])
        return images.reshape((kept, self.ipc) + images.shape[1:]), weights[order].astype(np.float32).reshape(kept, self.ipc)


def pushforward(model, points: np.ndarray, labels: np.ndarray, prompts: list[str], rng: jax.Array, config, mesh: Mesh,
                decoder: str = "diffusion") -> np.ndarray:
    """Latent points [n, h, w, 4] of classes labels [n] -> uint8 images [n, S, S, 3] (S = config.image_size) by the
    prior's denoiser + VAE decoding (decoder 'diffusion'), class-conditional samples of the same shape ('sample':
    strength 1 from zeros, the points' content unused) or the VAE decoder alone ('vae'; labels, prompts, rng unused).

    model: the prior (StableDiffusion, conditioned on the prompts; DiTDiffusion, on the labels);
    rng: the noise key, or one key per point [n] (point_keys).
    config: config.decode (image_size, and in its diffusion section strength, guidance, steps,
    negative_prompt, and start: 'img2img' noises each point to strength and denoises it,
    'initial_latent' runs the whole reverse process from the point in place of noise).
    The batch is padded to a multiple of the mesh's devices and sharded over them.
    """
    n = len(points)
    extra = -n % mesh.size
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a  # host arrays, put once
    prompts = list(prompts) + [prompts[-1]] * extra
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    put = lambda a: jax.device_put(np.asarray(a), sharding)
    if decoder == "vae":
        images = _resize(model.decode_latents(put(pad(points))), config.image_size)
        return to_uint8(np.asarray(images))[:n]
    settings = config.diffusion
    start = "sample" if decoder == "sample" else settings.get("start", "img2img")
    if rng.ndim and extra:  # per-point keys: the padding rows reuse the last point's key
        rng = jnp.concatenate([rng, jnp.repeat(rng[-1:], extra, axis=0)])
    latents = denoise(model, put(pad(points)), pad(np.asarray(labels)), prompts, rng, strength=settings.strength,
                      guidance=settings.guidance, steps=settings.steps, start=start,
                      negative_prompt=settings.get("negative_prompt", ""), place=put,
                      params=jax.device_put(model.denoiser_params, NamedSharding(mesh, PartitionSpec())))
    images = _resize(model.decode_latents(latents), config.image_size)
    return to_uint8(np.asarray(images))[:n]


@functools.partial(jax.jit, static_argnums=1)
def _resize(images: jax.Array, size: int) -> jax.Array:
    """[n, H, W, C] -> [n, size, size, C], bicubic (antialiased when shrinking)."""
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bicubic", antialias=True)


def class_points(run, latents, quantized, c: int, source: str) -> np.ndarray:
    """Class c's K latent points [K, d] of a point source: 'kmeans' (d4m, ddoq, generated) or a real-image source
    (random, medoid, herding: the latents of the images stages.quantize chose; this reads the class's latents)."""
    if source == "kmeans":
        return quantized.load(c, ("points",))["points"]
    return latents.load(c)[quantized.load(c, (f"{source}_rows",))[f"{source}_rows"]]


def real_images(run, quantized, c: int, source: str) -> np.ndarray:
    """uint8 [K, S, S, 3]: the training images of class c that stages.quantize chose for a real-image point source,
    resized and center-cropped to S = image_size."""
    data, size = run.config.data, run.config.decode.image_size
    split = streamed.open_configured_split(data, data.train_split)
    indices = quantized.load(c, (f"{source}_indices",))[f"{source}_indices"]
    return np.stack([imagenet.resize_and_center_crop(np.asarray(split[int(i)]["image"]), size, size) for i in indices])


def condition_labels(classes: streamed.Classes, labels: np.ndarray) -> np.ndarray:
    """The class-label condition int [n] of the run's labels [n]: their ImageNet-1K indices where the classes are
    ImageNet classes (DiT is conditioned on ImageNet's 1,000), else the labels themselves (unused by Stable Diffusion)."""
    return labels if classes.imagenet_indices is None else classes.imagenet_indices[labels]


def point_keys(run, ipc: int, classes: list[int], decoder: str = "diffusion") -> jax.Array:
    """One noise key per point [len(classes) * ipc], class-major: key (c, k) depends on neither the batch nor the
    process that decodes it, so the images are the same for any number of processes and batch size. The samples
    (decoder 'sample') draw from keys of their own."""
    base = run.rng("decode", "sample", ipc) if decoder == "sample" else run.rng("decode", ipc)
    return jnp.stack([jax.random.fold_in(jax.random.fold_in(base, c), k) for c in classes for k in range(ipc)])


def set_folder(source: str, decoder: str | None, kind: str = "images") -> str:
    """The folder under synthetic/ipc{K}/ of the PNGs (kind 'images') or group records ('groups') of a
    point source and decoder (None: the real images): 'images' for the pushforward of the k-means points."""
    return kind if (source, decoder) == ("kmeans", "diffusion") else f"{kind}_{source}_{decoder or 'real'}"


def decode_ipc(run, prior, latents, quantized, ipc: int, fp: str, source: str = "kmeans", decoder: str | None = "diffusion") -> None:
    """Writes the PNGs of this process's classes: `source`'s points by `decoder`, or the real images (resuming finished groups)."""
    config = run.config.decode
    store = run.store
    prompts = run.classes.prompts
    mesh = Mesh(np.asarray(jax.local_devices()), (parallel.DATA_AXIS,))
    mine = [int(c) for c in parallel.process_shard(latents.num_classes)]
    per_call = max(1, config.diffusion.batch_size // ipc)
    groups = [mine[i : i + per_call] for i in range(0, len(mine), per_call)]
    bar = Progress(f"decode IPC {ipc} ({source}, {decoder or 'real'})", len(groups), unit="groups", log_every=max(1, len(groups) // 10))
    folder, groups_folder = set_folder(source, decoder), set_folder(source, decoder, "groups")
    for g, classes in enumerate(groups, 1):
        record = f"synthetic/ipc{ipc}/{groups_folder}/{classes[0]:04d}.json"
        if store.is_complete(record, fp):
            continue
        labels = np.repeat(classes, ipc)
        if decoder is None:
            images = np.concatenate([real_images(run, quantized, c, source) for c in classes])
        else:
            points = np.concatenate([class_points(run, latents, quantized, c, source) for c in classes])
            points = points.reshape((-1,) + latents.shape)
            images = pushforward(prior.model, points, condition_labels(run.classes, labels), [prompts[c] for c in labels],
                                 point_keys(run, ipc, classes, decoder), config, mesh, decoder)
        files = []
        for i, (image, c) in enumerate(zip(images, labels)):
            files.append(f"{folder}/" + image_folder.image_file(c, prompts[c], latents.num_classes, i % ipc))
            artifacts.write_bytes(store.path(f"synthetic/ipc{ipc}/{files[-1]}"), image_folder.png_bytes(image))
        store.save_record(record, {"classes": classes, "files": files}, fp)
        bar.update(g)
    parallel.sync_processes(f"decode_ipc{ipc}_{source}_{decoder}")


def write_manifest(run, latents, quantized, ipc: int, method: str, name: str, fp: str) -> None:
    """file,label,class,weight for every image of `method`, with the method's weights as stages.quantize stored them
    (quantized.weights; process 0 writes it, reading only the weights of each class's quantization)."""
    num_classes = latents.num_classes
    prompts = run.classes.prompts
    base, _ = split_method(method)
    folder = set_folder(point_source(base), decoder_of(method, run.config))
    files, labels, weights = [], [], []
    for c in range(num_classes):
        weights.append(quantized.weights(c, base))
        files += [f"{folder}/" + image_folder.image_file(c, prompts[c], num_classes, k) for k in range(ipc)]
        labels += [c] * ipc
    text = image_folder.manifest_text(files, np.asarray(labels), np.concatenate(weights), prompts)

    def write(path):
        with open(path, "w") as f:
            f.write(text)

    run.store.write_artifact(name, write, fp, {"images": num_classes * ipc})


def run(run, prior, latents, quantized: dict) -> dict[tuple[str, int], SyntheticSet]:
    out = {}
    for ipc, q in quantized.items():
        fp = artifacts.fingerprint("imagenet_decode", q.fingerprint, prior.fingerprint, run.config.decode, run.config.seed)
        names = {m: f"synthetic/ipc{ipc}/manifest_{m}.csv" for m in run.config.methods}
        if not all(run.store.is_complete(n, fp) for n in names.values()):
            sets = {(point_source(split_method(m)[0]), decoder_of(m, run.config)) for m in run.config.methods}
            for source, decoder in sorted(sets, key=str):
                decode_ipc(run, prior, latents, q, ipc, fp, source, decoder)
            if jax.process_index() == 0:
                for method, name in names.items():
                    write_manifest(run, latents, q, ipc, method, name, fp)
            parallel.sync_processes(f"manifest_ipc{ipc}")
        else:
            logging.info("decode: reusing the synthetic images of IPC %d", ipc)
        for method, name in names.items():
            out[method, ipc] = SyntheticSet(method, ipc, run.store.path(name), fp)
    return out
