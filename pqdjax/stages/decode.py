"""Stage decode: each method's synthetic set (uint8 images with per-class weights) for every IPC.

    random, medoid, medoid_weighted, herding   real training images per class
    d4m        the quantization points decoded to images, uniform weights
    ddoq       the same images, weighted by the Voronoi cell masses
    generated  K class-conditional samples of the denoiser per class, uniform weights

(pqdjax.config_checks lists the base methods, pqdjax.stages.quantize.class_method_set
their latent points, weights and images.) Decoders map latent points to
images; config.decode.method picks the one of d4m and ddoq, and a method with
a decoder suffix ('ddoq_vae', 'd4m_diffusion', 'random_vae': the real images'
latents) decodes that set's points with another, so that one run compares them:

    vae        the VAE decoder, directly
    diffusion  the pushforward of DDOQ and D4M: img2img of each point with the
               class-conditioned latent denoiser (noise to config.decode.diffusion
               .strength, DDIM with classifier-free guidance), then the VAE decoder;
               every pipeline's (pqdjax.diffusion.pushforward.denoise), so
               diffusion.start='initial_latent' applies here as with DiT
    sample     the same at strength 1: pure class-conditional sampling from noise
               (the points' content unused), generated's decoder

In a run of several processes, every decoder maps its batches split over the
processes (pqdjax.batching.map_batches(across_processes=True)) and every
process gets every image; process 0 writes the artifacts.

Every set is also written as PNGs in class folders with a manifest of its
weights (pqdjax.data.image_folder), distilled/{method}_ipc{K}/manifest.csv,
for training on it outside pqdjax.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.batching import map_batches
from pqdjax.cost import compiled_flops
from pqdjax.config_checks import decoder_of, point_source, split_method
from pqdjax.data import image_folder
from pqdjax.data.preprocess import to_uint8
from pqdjax.diffusion import guided_epsilon, start_index
from pqdjax.diffusion.pushforward import denoise
from pqdjax.models import vae as vae_lib
from pqdjax.errors import ConfigError, NonFiniteError
from pqdjax.stages.quantize import random_draw

STRIPS_ARTIFACT = "figures/pushforward_strips.npz"


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """images: uint8 [C, K, H, W, ch]; weights: float32 [C, K], each row summing to 1; manifest: the path of its
    export's manifest.csv (distilled/{method}_ipc{K}/), None for the random draws of other seeds (not exported)."""

    method: str
    ipc: int
    images: np.ndarray
    weights: np.ndarray
    fingerprint: str
    manifest: str | None = None

    def load(self, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [C, K, H, W, ch], weights float32 [C, K]); only the first `first` classes if given."""
        return self.images[:first], self.weights[:first]


def decoders_in_use(config) -> set[str]:
    """The decoders the config's methods need."""
    return {d for d in (decoder_of(m, config) for m in config.methods) if d is not None}


VAE_BATCH = 256  # latent points per call of the VAE decoder


def _vae_decoder(prior):
    """The jitted VAE decoder: (params, latents [B, h, w, c]) -> float images [B, H, W, C]."""
    return jax.jit(lambda p, z: vae_lib.decode(prior.vae, p, z, prior.latent_scale))


def decode_with_vae(run, prior, denoiser, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Latent points [n, h, w, c] -> float images [n, H, W, C] by the VAE decoder (labels, denoiser unused)."""
    del run, denoiser, labels
    decode = _vae_decoder(prior)
    return map_batches(lambda z: decode(prior.params, z), points, VAE_BATCH, across_processes=True)


def denoise_points(denoiser, points: np.ndarray, labels: np.ndarray, rng: jax.Array, *, strength: float, guidance: float,
                   steps: int, batch_size: int, start: str = "img2img") -> np.ndarray:
    """The pushforward (pqdjax.diffusion.pushforward.denoise) of latent points [n, h, w, c] of classes labels [n] by
    the class-conditioned denoiser, in batches split over the processes.

    Batch b's noise comes from fold_in(rng, b), so a point's result depends on
    its position and batch size but not on the other points of the batch.
    """
    points = np.asarray(points, np.float32)
    labels = np.asarray(labels, np.int32)

    def sample(indices: np.ndarray) -> jax.Array:
        key = jax.random.fold_in(rng, int(indices[0]) // batch_size)
        return denoise(denoiser, jnp.asarray(points[indices]), labels[indices], None, key,
                       strength=strength, guidance=guidance, steps=steps, start=start)

    return map_batches(sample, np.arange(len(points)), batch_size, across_processes=True)


def decode_with_diffusion(run, prior, denoiser, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Latent points [n, h, w, c] of classes labels [n] -> float images [n, H, W, C]: the pushforward
    (config.decode.diffusion: img2img at strength, or the whole reverse process from the point), then the VAE decoder."""
    settings = run.config.decode.diffusion
    denoised = denoise_points(
        denoiser, points, labels, run.rng("decode", "diffusion"), strength=settings.strength, guidance=settings.guidance,
        steps=settings.steps, batch_size=settings.batch_size, start=settings.get("start", "img2img"),
    )
    return decode_with_vae(run, prior, None, denoised, labels)


def decode_with_samples(run, prior, denoiser, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class-conditional samples [n, H, W, C] of classes labels [n]: img2img at strength 1 (the points give only the shape)."""
    settings = run.config.decode.diffusion
    sampled = denoise_points(
        denoiser, points, labels, run.rng("decode", "sample"), strength=1.0, guidance=settings.guidance,
        steps=settings.steps, batch_size=settings.batch_size, start="sample",
    )
    return decode_with_vae(run, prior, None, sampled, labels)


DECODERS = {"vae": decode_with_vae, "diffusion": decode_with_diffusion, "sample": decode_with_samples}


def _decode_points(run, prior, denoiser, decoder: str, latent_shape, points: np.ndarray) -> np.ndarray:
    """Latent points [C, K, d] -> uint8 images [C, K, H, W, ch] by `decoder`."""
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}; known: {sorted(DECODERS)}.")
    num_classes, ipc, _ = points.shape
    labels = np.repeat(np.arange(num_classes), ipc)
    images = DECODERS[decoder](run, prior, denoiser, points.reshape((-1,) + tuple(latent_shape)), labels)
    if not np.all(np.isfinite(images)):
        raise NonFiniteError(f"decode: the {decoder} decoder produced NaN or inf images at IPC {ipc}.")
    return to_uint8(images).reshape((num_classes, ipc) + images.shape[1:])


def decode_flops(run, prior, denoiser, decoder: str, latent_shape, n: int) -> float | None:
    """Floating-point operations of decoding n points by `decoder`, as XLA counts them (pqdjax.cost).

    The sampler runs its DDIM steps in a fori_loop, whose body XLA would count once,
    so the count is built from programs without loops: one guided denoiser call on a
    batch (both halves of classifier-free guidance) times the steps run times the
    batches, plus the VAE decoder's batches. None where the backend counts none.
    """
    latent_shape = tuple(latent_shape)
    vae_batch = min(VAE_BATCH, n)  # decode_with_vae's batches
    vae_flops = compiled_flops(_vae_decoder(prior), prior.params, jnp.zeros((vae_batch,) + latent_shape))
    if vae_flops is None:
        return None
    total = vae_flops * -(-n // vae_batch)
    if decoder not in ("diffusion", "sample"):
        return total
    settings = run.config.decode.diffusion
    strength = settings.strength if decoder == "diffusion" else 1.0
    whole = decoder == "diffusion" and settings.get("start", "img2img") == "initial_latent"  # every step, from the point
    steps_run = settings.steps if whole else settings.steps - start_index(settings.steps, strength)
    batch = min(settings.batch_size, n)
    context, _ = denoiser.guidance_contexts(np.zeros(batch, np.int32), None, "")
    call = jax.jit(guided_epsilon, static_argnums=0)
    eps_flops = compiled_flops(call, denoiser.epsilon, denoiser.denoiser_params, jnp.zeros((batch,) + latent_shape), jnp.int32(0),
                               context, context, settings.guidance)
    return None if eps_flops is None else total + eps_flops * steps_run * -(-n // batch)


def _timed_decode(run, prior, denoiser, decoder: str, latent_shape, points: np.ndarray) -> tuple[np.ndarray, dict]:
    """(_decode_points(...), its cost {'seconds': wall time, 'flops': decode_flops})."""
    images, seconds = _timed(lambda: _decode_points(run, prior, denoiser, decoder, latent_shape, points))
    flops = decode_flops(run, prior, denoiser, decoder, latent_shape, points.shape[0] * points.shape[1])
    return images, {"seconds": round(seconds, 2), "flops": flops}


NO_COST = {"seconds": 0.0, "flops": 0.0}  # real images: nothing decoded


def _decoder_fingerprint(run, decoder: str, quantized, prior, denoiser) -> str:
    if decoder in ("diffusion", "sample"):
        return artifacts.fingerprint(
            "decode", decoder, quantized.fingerprint, prior.fingerprint, denoiser.fingerprint,
            run.config.decode.diffusion, run.config.seed,
        )
    return artifacts.fingerprint("decode", decoder, quantized.fingerprint, prior.fingerprint)


def _synthetic_set(run, method: str, quantized, decoded_fp: str, make, draw: int = 0) -> SyntheticSet:
    """The stored set (computed by make() -> (images, weights, cost) if absent); draw 0 is also exported as PNGs.

    cost, the wall time and FLOPs of decoding the set's images ({'seconds', 'flops'}), is
    kept in the artifact's marker (stages.report: synthetic_seconds, synthetic_flops);
    sets that share images (d4m and ddoq) both carry the cost of their one decoding.
    """
    suffix = f"_draw{draw}" if draw else ""
    name = f"synthetic/{method}_ipc{quantized.ipc}{suffix}.npz"
    fp = artifacts.fingerprint("synthetic", method, decoded_fp, *([draw] if draw else []))
    if parallel.complete_everywhere(run.store, name, fp):
        stored = run.store.load_arrays(name)
    else:
        images, weights, cost = make()
        stored = {"images": images, "weights": weights}
        parallel.write_once(run.store, name, fp, lambda: run.store.save_arrays(name, stored, fp, cost))
    synthetic = SyntheticSet(method, quantized.ipc, stored["images"], stored["weights"], fp)
    if draw:
        return synthetic
    folder = f"distilled/{method}_ipc{quantized.ipc}"
    write = lambda path: image_folder.write_set(path, synthetic.images, synthetic.weights, run.dataset.class_names)
    parallel.write_once(run.store, folder, fp, lambda: run.store.write_artifact(folder, write, fp))  # unless complete
    return dataclasses.replace(synthetic, manifest=os.path.join(run.store.path(folder), image_folder.MANIFEST))


def run(run, prior, latents, quantized: dict, denoiser=None) -> dict[tuple[str, int], SyntheticSet]:
    methods = tuple(run.config.methods)
    out = {}
    for ipc, q in quantized.items():
        decoded: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}  # (decoder, point source): decoded once, shared

        def decoded_images(decoder: str, base: str) -> tuple[np.ndarray, dict]:
            key = (decoder, point_source(base))
            if key not in decoded:
                points, _, _ = q.method_set(latents, base)
                decoded[key] = _timed_decode(run, prior, denoiser, decoder, latents.shape, points)
            return decoded[key]

        def maker(method: str):
            base, _ = split_method(method)
            decoder = decoder_of(method, run.config)
            _, weights, indices = q.method_set(latents, base)
            if decoder is None:  # the real images
                return lambda: (run.dataset.train_images[indices], weights, NO_COST)

            def make():
                images, cost = decoded_images(decoder, base)
                return images, weights, cost

            return make

        for method in methods:
            base, _ = split_method(method)
            decoder = decoder_of(method, run.config)
            if decoder is None and base == "random":  # random images depend on the data, the seed and the IPC only
                source_fp = _random_fingerprint(run, ipc, 0)
            elif decoder is None:
                source_fp = artifacts.fingerprint("real", base, q.fingerprint)
            else:
                source_fp = artifacts.fingerprint(_decoder_fingerprint(run, decoder, q, prior, denoiser), point_source(base))
            out[method, ipc] = _synthetic_set(run, method, q, source_fp, maker(method))
        logging.info("decode IPC %d: %s", ipc, ", ".join(f"{m} {out[m, ipc].images.shape}" for m in methods))
    if denoiser is not None and run.config.decode.figure_strengths:
        _pushforward_strips(run, prior, denoiser, latents.shape, quantized)
    return out


def _timed(fn) -> tuple[np.ndarray, float]:
    """(fn(), its wall time in seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _random_fingerprint(run, ipc: int, draw: int) -> str:
    return artifacts.fingerprint("random", run.data_fingerprint, ipc, run.config.seed, draw)


def set_for_seed(run, prior, latents, quantized: dict, synthetic: dict, denoiser=None):
    """set_for(method, ipc, seed) -> the SyntheticSet that the student of `seed` trains on.

    The random baseline (base method 'random', with or without a decoder) is
    drawn anew for each evaluation seed: the student of seed s trains on draw
    s (pqdjax.stages.quantize.random_draw), so that the spread of its accuracy
    over seeds includes the choice of images, as a reviewer expects of a
    random-subset baseline. Draw 0 is the stored set of decode.run, which
    fidelity measures, the figures show and distilled/ exports; other draws
    are stored as synthetic/{method}_ipc{K}_draw{s}.npz. Every other method is
    the same set for every seed (its points do not depend on the seed).
    """

    def set_for(method: str, ipc: int, seed: int) -> SyntheticSet:
        base, _ = split_method(method)
        if base != "random" or seed == 0:
            return synthetic[method, ipc]
        decoder = decoder_of(method, run.config)
        indices, rows = random_draw(run, latents, ipc, seed)
        uniform = np.full(indices.shape, 1.0 / ipc, np.float32)
        q = quantized[ipc]
        if decoder is None:
            source_fp = _random_fingerprint(run, ipc, seed)
            make = lambda: (run.dataset.train_images[indices], uniform, NO_COST)
        else:
            source_fp = artifacts.fingerprint(
                _decoder_fingerprint(run, decoder, q, prior, denoiser), point_source(base), "draw", latents.fingerprint,
            )

            def make():
                points = np.stack([latents.load(c)[r] for c, r in enumerate(rows)])
                images, cost = _timed_decode(run, prior, denoiser, decoder, latents.shape, points)
                return images, uniform, cost
        return _synthetic_set(run, method, q, source_fp, make, draw=seed)

    return set_for


def _pushforward_strips(run, prior, denoiser, latent_shape, quantized) -> None:
    """For a few classes and points: the VAE decoding, then img2img at each of config.decode.figure_strengths.

    Saved as STRIPS_ARTIFACT: images uint8 [classes, points, 1 + strengths, H, W, ch],
    strengths, classes; the report draws it.
    """
    config = run.config.decode
    ipc = min(quantized, key=lambda k: abs(k - 10))
    q = quantized[ipc]
    strengths = tuple(float(s) for s in config.figure_strengths)
    fp = artifacts.fingerprint(
        "strips", q.fingerprint, prior.fingerprint, denoiser.fingerprint, config.diffusion, strengths, run.config.seed
    )
    if parallel.complete_everywhere(run.store, STRIPS_ARTIFACT, fp):
        return
    points = q.arrays["points"]  # [C, K, d]
    classes = np.arange(min(4, points.shape[0]))
    per_class = min(3, points.shape[1])
    chosen = points[classes, :per_class].reshape((-1,) + tuple(latent_shape))
    labels = np.repeat(classes, per_class)
    settings = config.diffusion
    columns = [decode_with_vae(run, prior, None, chosen, labels)]
    for strength in strengths:
        denoised = denoise_points(
            denoiser, chosen, labels, run.rng("decode", "strips"),
            strength=strength, guidance=settings.guidance, steps=settings.steps, batch_size=len(chosen),
        )
        columns.append(decode_with_vae(run, prior, None, denoised, labels))
    images = to_uint8(np.stack(columns, axis=1))  # [n, 1 + S, H, W, ch]
    images = images.reshape((len(classes), per_class) + images.shape[1:])
    arrays = {"images": images, "strengths": np.asarray(strengths), "classes": classes, "ipc": ipc}
    parallel.write_once(run.store, STRIPS_ARTIFACT, fp, lambda: run.store.save_arrays(STRIPS_ARTIFACT, arrays, fp))
