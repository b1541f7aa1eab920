"""The whole pipeline on the runlocal config and a small IDX dataset written by the test."""

import json
import os

import jax
import numpy as np
import pytest

from configs import default
from pqdjax import pipeline
from pqdjax.errors import ConfigError
from pqdjax.train import autoencoder, classifier, student


def _config(data_dir):
    config = default.get_config("runlocal")
    config.data.data_dir = data_dir
    return config


def _stages_to_decode(data_dir, workdir, methods):
    """The runlocal stages up to decode for `methods`, by hand on a finished workdir:
    (run, prior, latents, denoiser or None, quantized, synthetic)."""
    from pqdjax import artifacts
    from pqdjax.stages import decode, denoiser, encode, prior, quantize

    config = _config(data_dir)
    config.methods = methods
    run = pipeline.Run(config=config, store=artifacts.ArtifactStore(workdir))
    the_prior = prior.run(run)
    latents = encode.run(run, the_prior)
    the_denoiser = denoiser.run(run, latents)
    quantized = quantize.run(run, latents)
    return run, the_prior, latents, the_denoiser, quantized, decode.run(run, the_prior, latents, quantized, the_denoiser)


@pytest.fixture(scope="module")
def finished_run(runlocal_run):
    return runlocal_run["data_dir"], runlocal_run["workdir"], runlocal_run["results"]


def _latents(workdir: str) -> tuple[np.ndarray, np.ndarray]:
    """(latents float32 [N, d], labels [N]) of a finished run in training-set order, read from the raw per-class files
    of encode/latents/process0 (class{c:04d}.f32 rows, class{c:04d}.idx their images' indices) without pqdjax."""
    folder = os.path.join(workdir, "encode/latents/process0")
    info = json.load(open(folder + ".done"))
    d = int(np.prod(info["shape"]))
    rows = [np.fromfile(os.path.join(folder, f"class{c:04d}.f32"), np.float32).reshape(-1, d) for c in range(10)]
    index = np.concatenate([np.fromfile(os.path.join(folder, f"class{c:04d}.idx"), np.int64) for c in range(10)])
    flat, labels = np.concatenate(rows), np.repeat(np.arange(10), [len(r) for r in rows])
    assert sorted(index.tolist()) == list(range(len(index)))  # every training image once
    return flat[np.argsort(index)], labels[np.argsort(index)]


def _quantized(workdir: str, ipc: int) -> dict[str, np.ndarray]:
    """Every class's quantize/ipc{K}/class{c:04d}.npz of a finished run (10 classes), stacked [C, ...]."""
    files = [os.path.join(workdir, f"quantize/ipc{ipc}/class{c:04d}.npz") for c in range(10)]
    per_class = [dict(np.load(f)) for f in files]
    return {key: np.stack([arrays[key] for arrays in per_class]) for key in per_class[0]}


def _set(workdir: str, method: str, ipc: int = 2, suffix: str = "") -> dict[str, np.ndarray]:
    """A synthetic set read back with csv and PIL only, as a user outside pqdjax would: its manifest
    synthetic/ipc{K}/manifest_{method}{suffix}.csv and PNGs; images uint8 [10, K, 28, 28, 1], weights [10, K], files."""
    import csv

    from PIL import Image

    folder = os.path.join(workdir, f"synthetic/ipc{ipc}")
    with open(os.path.join(folder, f"manifest_{method}{suffix}.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == np.repeat(np.arange(10), ipc).tolist()  # class-major
    images = np.stack([np.asarray(Image.open(os.path.join(folder, r["file"]))) for r in rows])
    return {"images": images.reshape(10, ipc, 28, 28, 1), "weights": np.asarray([float(r["weight"]) for r in rows]).reshape(10, ipc),
            "files": [r["file"] for r in rows], "classes": [r["class"] for r in rows]}


def test_produces_every_artifact(finished_run):
    _, workdir, results = finished_run
    for name in (
        "config.json", "results.json", "results.md", "distilled.png", "accuracy_vs_ipc.png", "weights_ipc2.png",
        "prior/vae", "prior/vae.done", "teacher/params", "teacher/params.done",
        "encode/latents/process0/class0000.f32", "encode/latents/process0.done", "quantize/ipc2/class0000.npz", "quantize/ipc2/class0009.npz", "synthetic/ipc2/manifest_ddoq.csv", "synthetic/ipc2/manifest_d4m.csv",
        "synthetic/ipc2/manifest_random.csv", "evaluate/ddoq_ipc2_seed0.json", "synthetic/ipc2/kmeans_diffusion/000_T-shirt_top/001.png",
        "prior/denoiser", "prior/denoiser.done", "synthetic/ipc2/manifest_ddoq_vae.csv", "pushforward.png",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    stored = json.load(open(os.path.join(workdir, "results.json")))
    assert stored["config"]["ipcs"] == [2]
    assert set(stored["accuracy"]) == {"random", "d4m", "ddoq", "ddoq_vae"}
    for method in ("random", "d4m", "ddoq", "ddoq_vae"):
        cell = stored["accuracy"][method]["2"]
        assert 0.0 <= cell["mean"] <= 1.0 and cell["n"] == 1
    w2 = stored["quantization"]["2"]["w2"]
    # Voronoi weights are the W2-optimal weights on the points.
    assert all(v <= u * (1 + 1e-3) for v, u in zip(w2["ddoq"]["per_class"], w2["d4m"]["per_class"]))
    assert set(stored["timing"]["stage_seconds"]) >= {"prior", "teacher", "encode", "quantize", "decode", "evaluate", "total"}
    synthetic_seconds = stored["timing"]["synthetic_seconds"]  # compute cost per method
    assert synthetic_seconds["random_ipc2"] >= 0 and synthetic_seconds["ddoq_vae_ipc2"] > 0  # real images: written, not decoded
    assert synthetic_seconds["d4m_ipc2"] == synthetic_seconds["ddoq_ipc2"] > 0  # one decoding, shared
    assert "| ddoq |" in results["table"] and "full data (teacher)" in results["table"]
    for method in ("random", "d4m", "ddoq", "ddoq_vae"):
        record = stored["fidelity"][method]["2"]
        assert 0.0 <= record["teacher_agreement"] <= 1.0 and record["w2_images"] > 0
        assert (record["cell_consistency"] is None) == (method == "random")
    assert "teacher agreement" in results["table"]
    # runlocal's teacher learns the bar images (chance: 0.1); it recognises the random real images it is shown
    assert stored["teacher_test_accuracy"] > 0.5
    assert stored["fidelity"]["random"]["2"]["teacher_agreement"] > 0.5


def test_synthetic_sets_are_consistent(finished_run):
    _, workdir, _ = finished_run
    ddoq, d4m = _set(workdir, "ddoq"), _set(workdir, "d4m")
    quantized = _quantized(workdir, 2)
    assert ddoq["images"].shape == (10, 2, 28, 28, 1) and ddoq["images"].dtype == np.uint8
    assert ddoq["files"] == d4m["files"]  # same points, one set of images, different weights
    # ddoq's weights are the Voronoi masses of the points, recounted here from the latents
    flat, labels = _latents(workdir)
    for c in range(10):
        x = flat[labels == c].astype(np.float64)
        nearest = np.argmin(((x[:, None] - quantized["points"][c][None].astype(np.float64)) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(ddoq["weights"][c], np.bincount(nearest, minlength=2) / len(x), atol=1e-6)
    np.testing.assert_allclose(d4m["weights"], 0.5)
    np.testing.assert_allclose(ddoq["weights"].sum(1), 1.0, rtol=1e-5)
    # ddoq_vae: the same points and weights, decoded without the diffusion pushforward
    ddoq_vae = _set(workdir, "ddoq_vae")
    np.testing.assert_allclose(ddoq_vae["weights"], ddoq["weights"])
    assert ddoq_vae["images"].shape == ddoq["images"].shape
    assert np.abs(ddoq_vae["images"].astype(int) - ddoq["images"].astype(int)).mean() > 1.0


def test_every_set_is_written_as_pngs_in_class_folders(finished_run):
    """Each set is PNGs in class folders (ImageFolder's layout) with a manifest; what a user reads with csv and PIL
    is what pqdjax's reader gives the students (SyntheticSet.load), the weights those the quantize stage stored."""
    from pqdjax.stages.decode import SyntheticSet

    _, workdir, results = finished_run
    quantized = _quantized(workdir, 2)
    for method in ("random", "d4m", "ddoq", "ddoq_vae"):
        outside = _set(workdir, method)
        manifest = os.path.join(workdir, results["synthetic"][f"{method}_ipc2"])
        images, weights = SyntheticSet(method, 2, manifest, "").load()
        np.testing.assert_array_equal(images, outside["images"])
        np.testing.assert_array_equal(weights, outside["weights"].astype(np.float32))
        np.testing.assert_allclose(outside["weights"], quantized["weights"] if method.startswith("ddoq") else 0.5, rtol=1e-6)
        # sorted class folders are the label order (torchvision's ImageFolder assigns labels so)
        set_folder = os.path.join(workdir, "synthetic/ipc2", outside["files"][0].split("/")[0])
        folders = sorted(os.listdir(set_folder))
        assert [f.split("/")[1] for f in outside["files"]][::2] == folders and len(folders) == 10
    assert outside["classes"][0] == "T-shirt/top" and folders[0] == "000_T-shirt_top"
    # the real images are the training images the quantize stage chose, byte for byte
    from pqdjax.data.sources import load_dataset

    data_dir = finished_run[0]
    train = load_dataset(_config(data_dir).data).train_images
    np.testing.assert_array_equal(_set(workdir, "random")["images"], train[quantized["random_indices"]])


def test_students_of_one_seed_are_paired(finished_run):
    """The same images and weights under another method name train the very same student (seed, not method, keys it)."""
    import dataclasses

    from pqdjax import artifacts
    from pqdjax.stages import evaluate, teacher

    data_dir, workdir, _ = finished_run
    run = pipeline.Run(config=_config(data_dir), store=artifacts.ArtifactStore(workdir))
    from pqdjax.stages.decode import SyntheticSet

    ddoq = SyntheticSet("ddoq", 2, os.path.join(workdir, "synthetic/ipc2/manifest_ddoq.csv"), "fp")
    renamed = dataclasses.replace(ddoq, method="another_name")
    the_teacher = teacher.run(run)
    first, second = (evaluate.evaluate_set(run, the_teacher, s, seed=0) for s in (ddoq, renamed))
    assert first["test_accuracy"] == second["test_accuracy"]
    recorded = json.load(open(os.path.join(workdir, "evaluate/ddoq_ipc2_seed0.json")))
    assert first["test_accuracy"] == recorded["test_accuracy"]  # and the pipeline's own student is that student


def test_ddoq_with_its_weights_at_power_zero_is_d4m(finished_run):
    """Weight power 0 makes the Voronoi weights uniform: the ddoq student of a seed is then d4m's of that seed."""
    from pqdjax import artifacts
    from pqdjax.stages import evaluate, teacher
    from pqdjax.stages.decode import SyntheticSet

    data_dir, workdir, _ = finished_run
    config = _config(data_dir)
    config.evaluate.weighting.power = 0.0
    run = pipeline.Run(config=config, store=artifacts.ArtifactStore(workdir))
    assert np.abs(_set(workdir, "ddoq")["weights"] - 0.5).max() > 0.01  # the Voronoi weights are not uniform here
    ddoq = SyntheticSet("ddoq", 2, os.path.join(workdir, "synthetic/ipc2/manifest_ddoq.csv"), "fp")
    record = evaluate.evaluate_set(run, teacher.run(run), ddoq, seed=0)
    d4m = json.load(open(os.path.join(workdir, "evaluate/d4m_ipc2_seed0.json")))
    assert record["test_accuracy"] == d4m["test_accuracy"]


def test_real_image_baselines(finished_run):
    """medoid, medoid_weighted, herding and random_vae beside the run's methods, reusing its quantization."""
    data_dir, workdir, _ = finished_run
    config = _config(data_dir)
    config.methods = ("ddoq", "medoid", "medoid_weighted", "herding", "random_vae")
    results = pipeline.run(config, workdir)
    quantized = _quantized(workdir, 2)
    flat, labels = _latents(workdir)
    x = flat.astype(np.float64)
    medoid, weighted = _set(workdir, "medoid"), _set(workdir, "medoid_weighted")
    assert medoid["files"] == weighted["files"]  # one set of images
    np.testing.assert_allclose(medoid["weights"], 0.5)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        # each medoid is the class member nearest its k-means point
        nearest = members[np.argmin(((x[members][:, None] - quantized["points"][c][None]) ** 2).sum(-1), axis=0)]
        np.testing.assert_array_equal(quantized["medoid_indices"][c], nearest)
        # medoid_weighted: the Voronoi masses of the medoids, recounted
        cells = np.argmin(((x[members][:, None] - x[nearest][None]) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(weighted["weights"][c], np.bincount(cells, minlength=2) / len(members), atol=1e-6)
    w2 = results["quantization"][2]["w2"]
    for a, b in zip(w2["medoid_weighted"]["per_class"], w2["medoid"]["per_class"]):
        assert a <= b * (1 + 1e-3)  # Voronoi weights are W2-optimal on any fixed points
    fidelity = results["fidelity"]
    assert fidelity["medoid"][2]["cell_consistency"] is None and fidelity["random_vae"][2]["cell_consistency"] is not None


def test_random_vae_of_another_seed_decodes_that_seeds_draw(finished_run):
    """set_for_seed: seed 1's random_vae set is the VAE decoding of the latents of seed 1's random draw."""
    from pqdjax.data.preprocess import to_uint8
    from pqdjax.models import vae as vae_lib
    from pqdjax.stages import decode, quantize

    data_dir, workdir, _ = finished_run
    run, the_prior, latents, _, quantized, synthetic = _stages_to_decode(data_dir, workdir, ("random", "random_vae"))
    set_for = decode.set_for_seed(run, the_prior, latents, quantized, synthetic)
    assert set_for("random_vae", 2, 0) is synthetic["random_vae", 2]
    drawn = set_for("random_vae", 2, 1)
    indices, _ = quantize.random_draw(run, latents, 2, 1)
    assert not np.array_equal(indices, quantized[2].arrays["random_indices"])
    flat, _ = latents.all()  # in training-set order: row i is image i's latent
    z = flat[indices.reshape(-1)].reshape((-1,) + latents.shape)
    expected = to_uint8(np.asarray(vae_lib.decode(the_prior.vae, the_prior.params, z, the_prior.latent_scale)))
    assert np.abs(drawn.load()[0].reshape(expected.shape).astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(set_for("random", 2, 1).load()[0], run.dataset.train_images[indices])


def test_a_set_overwritten_by_a_killed_decode_is_decoded_again(finished_run, monkeypatch):
    """Another strength's decode killed after its first group has overwritten some of the ddoq images: the set's
    earlier marker does not outlive them, and the rerun of the first config brings back its very images."""
    from pqdjax.stages import decode

    data_dir, workdir, _ = finished_run
    before = _set(workdir, "ddoq")["images"]
    real, calls = decode.decode_images, []

    def killed_after_one_group(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "decode_images", killed_after_one_group)
    config = _config(data_dir)
    config.decode.diffusion.strength = 0.9
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, workdir)
    assert not np.array_equal(_set(workdir, "ddoq")["images"], before)  # group 0's PNGs are strength 0.9's now
    monkeypatch.setattr(decode, "decode_images", real)
    _stages_to_decode(data_dir, workdir, ("ddoq",))
    np.testing.assert_array_equal(_set(workdir, "ddoq")["images"], before)


def test_set_fingerprints_follow_what_the_images_depend_on(finished_run):
    """The random images depend on the latents, the IPC and the seed, not on the quantizer; the k-means sets on the
    quantization; no set on the pushforward's batch size (each point has its own key)."""
    import types

    from pqdjax.stages import decode

    data_dir, workdir, _ = finished_run
    run, the_prior, latents, the_denoiser, quantized, _ = _stages_to_decode(data_dir, workdir, ("ddoq",))
    other_quantizer = types.SimpleNamespace(ipc=2, fingerprint="another quantization")
    fp = lambda q, method, r=run: decode._set_fingerprint(r, latents, q, the_prior, the_denoiser, decode.spec_of(method, r.config))
    assert fp(quantized[2], "random") == fp(other_quantizer, "random")
    assert fp(quantized[2], "random_vae") == fp(other_quantizer, "random_vae")
    assert fp(quantized[2], "ddoq") != fp(other_quantizer, "ddoq")
    config = run.config.copy_and_resolve_references()
    config.decode.diffusion.batch_size = 3
    import dataclasses

    assert fp(quantized[2], "ddoq", dataclasses.replace(run, config=config)) == fp(quantized[2], "ddoq")
    config.decode.diffusion.strength = 0.5
    assert fp(quantized[2], "ddoq", dataclasses.replace(run, config=config)) != fp(quantized[2], "ddoq")


def _count_students(monkeypatch) -> list[str]:
    """The names of the students the pipeline trains from now on, in order (evaluate.train_student still trains them)."""
    from pqdjax.stages import evaluate

    trained = []
    real = evaluate.train_student

    def counting(*args, **kwargs):
        trained.append(kwargs["name"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "train_student", counting)
    return trained


def test_rerun_skips_finished_stages(finished_run, monkeypatch):
    data_dir, workdir, results = finished_run

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for module, name in ((autoencoder, "train_vae"), (classifier, "train_classifier"), (student, "train_student")):
        monkeypatch.setattr(module, name, forbidden)
    from pqdjax.stages import decode, denoiser, encode, evaluate, prior, quantize, teacher

    monkeypatch.setattr(encode, "encode_process_part", forbidden)
    monkeypatch.setattr(quantize, "quantize_group", forbidden)
    monkeypatch.setattr(decode, "decode_images", forbidden)
    monkeypatch.setattr(denoiser, "train_denoiser", forbidden)
    monkeypatch.setattr(prior, "train_vae", forbidden)
    monkeypatch.setattr(teacher, "train_classifier", forbidden)
    monkeypatch.setattr(evaluate, "train_student", forbidden)
    # Fields outside the fingerprints (README: "changing them redoes nothing") change nothing either.
    config = _config(data_dir)
    with config.unlocked():
        config.quantize.classes_per_call = 3
    config.evaluate.train.log_every, config.evaluate.train.checkpoint_every = 7, 11
    again = pipeline.run(config, workdir)
    assert again["accuracy"] == results["accuracy"]
    assert again["quantization"] == results["quantization"]


def test_more_student_steps_retrain_only_the_students(finished_run, monkeypatch, tmp_path):
    """README: changing config.evaluate.train.steps retrains only the students (in a copy of the run, whose
    other tests expect its students as they are)."""
    import shutil

    data_dir, workdir, _ = finished_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)

    def forbidden(*args, **kwargs):
        raise AssertionError("a stage before the students ran again")

    from pqdjax.stages import decode, denoiser, encode, fidelity, prior, quantize, teacher

    for module, name in ((encode, "encode_process_part"), (quantize, "quantize_group"), (decode, "decode_images"),
                         (denoiser, "train_denoiser"), (prior, "train_vae"), (teacher, "train_classifier"),
                         (fidelity, "teacher_agreement")):
        monkeypatch.setattr(module, name, forbidden)
    trained = _count_students(monkeypatch)
    config = _config(data_dir)
    config.evaluate.train.steps += 5
    pipeline.run(config, copy)
    assert sorted(trained) == sorted(f"student {m} IPC 2 seed 0" for m in ("random", "d4m", "ddoq", "ddoq_vae"))


def test_a_new_seed_trains_only_new_students(finished_run, monkeypatch):
    data_dir, workdir, _ = finished_run
    trained = _count_students(monkeypatch)
    config = _config(data_dir)
    config.evaluate.seeds = (0, 1)
    results = pipeline.run(config, workdir)
    assert sorted(trained) == sorted(f"student {m} IPC 2 seed 1" for m in ("random", "d4m", "ddoq", "ddoq_vae"))
    assert results["accuracy"]["ddoq"][2]["n"] == 2
    # the random student of seed 1 trained on a subset drawn anew: other real images of the same classes
    draw0 = _set(workdir, "random")["images"]
    draw1 = _set(workdir, "random", suffix="_draw1")["images"]
    assert draw1.shape == draw0.shape and not np.array_equal(draw1, draw0)
    from pqdjax.data.sources import load_dataset

    dataset = load_dataset(config.data)
    for c in range(10):
        of_class = dataset.train_images[dataset.train_labels == c].reshape(-1, 28 * 28)
        for image in draw1[c]:
            assert (of_class == image.reshape(1, -1)).all(axis=1).any()


def test_other_architectures_train_on_the_same_sets_and_get_a_table_each(finished_run, monkeypatch):
    """configs/default.py:runlocal,cross_arch: a ResNet-10 and a MobileNet-V2 (BatchNorm) train on the very sets the
    ConvNet students trained on; the ConvNet's records are reused; each architecture is reported apart, and its
    recorded accuracy is that of the trained variables (BatchNorm statistics in inference mode)."""
    from pqdjax.data.preprocess import to_model_range
    from pqdjax.data.sources import load_dataset
    from pqdjax.stages import evaluate

    data_dir, workdir, before = finished_run
    trained = {}
    real = evaluate.train_student

    def recording(*args, **kwargs):
        variables, info = real(*args, **kwargs)
        trained[kwargs["name"]] = (args[0], np.asarray(args[3]), variables)
        return variables, info

    monkeypatch.setattr(evaluate, "train_student", recording)
    from PIL import Image

    figure = os.path.join(workdir, "accuracy_vs_ipc.png")
    one_panel = Image.open(figure).size
    config = default.get_config("runlocal,cross_arch")
    config.data.data_dir = data_dir
    results = pipeline.run(config, workdir)
    # accuracy_vs_ipc.png: a panel per architecture (the ConvNet's, then the two others), side by side
    assert Image.open(figure).size == (3 * one_panel[0], one_panel[1])
    methods = ("random", "d4m", "ddoq", "ddoq_vae")
    assert sorted(trained) == sorted(f"student {a} {m} IPC 2 seed 0" for a in ("resnet10", "mobilenet_v2") for m in methods)
    assert results["accuracy"] == before["accuracy"]  # the ConvNet students: reused, not retrained
    dataset = load_dataset(config.data)
    test_images = np.asarray(to_model_range(dataset.test_images))
    for arch in ("resnet10", "mobilenet_v2"):
        by_method = {r["method"]: r for r in results["cross_architecture"][arch]["evaluations"]}
        assert sorted(by_method) == sorted(methods) and all(r["arch"] == arch for r in by_method.values())
        assert f"## Student {arch} " in results["table"]
        for method in methods:
            student, images, variables = trained[f"student {arch} {method} IPC 2 seed 0"]
            assert "batch_stats" in variables
            stored = _set(workdir, method)["images"]
            np.testing.assert_array_equal(images, np.asarray(to_model_range(stored.reshape((-1,) + stored.shape[2:]))))
            logits = student.apply(variables, test_images, train=False)
            assert by_method[method]["test_accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, 1) == dataset.test_labels)))
    # d4m and ddoq share their images; with the same architecture and seed they start alike: paired
    assert "ddoq - d4m" in results["cross_architecture"]["resnet10"]["paired_differences"]
    # compute cost per student and per method: XLA's FLOPs (pqdjax.cost) and wall time, under "timing" only
    flops = results["timing"]["student_flops"]
    assert flops["resnet10/ddoq_ipc2_seed0"] > 0 and flops["ddoq_ipc2_seed0"] > 0
    assert flops["resnet10/ddoq_ipc2_seed0"] != flops["mobilenet_v2/ddoq_ipc2_seed0"]
    cost = results["timing"]["per_method"]["ddoq"][2]
    assert cost["students"] == 3 and cost["flops"] == pytest.approx(sum(v for k, v in flops.items() if "ddoq_ipc2_seed0" in k))
    assert all("train_flops" not in r for r in results["evaluations"])


def test_decode_flops_count_every_denoising_step_and_both_guidance_halves(finished_run):
    """decode_flops: the VAE's batches, plus for diffusion one guided call (2 model passes: conditional and
    unconditional) per DDIM step run per batch; strength 1 runs twice the steps of strength 0.5."""
    import jax.numpy as jnp

    from pqdjax.cost import compiled_flops
    from pqdjax.diffusion import start_index
    from pqdjax.stages.image_decoders import TrainedLatentModel, decode_flops

    data_dir, workdir, results = finished_run
    run, the_prior, latents, the_denoiser, _, _ = _stages_to_decode(data_dir, workdir, ("ddoq",))
    settings = run.config.decode.diffusion  # runlocal: 4 steps, batches of 8, strength 0.4 (2 steps run)
    model, n = TrainedLatentModel(the_prior, the_denoiser), 2 * settings.batch_size
    vae, diffusion, sample = (decode_flops(model, decoder, settings, latents.shape, n, settings.batch_size)
                              for decoder in ("vae", "diffusion", "sample"))  # sample: strength 1, 4 steps
    steps_run = settings.steps - start_index(settings.steps, settings.strength)
    assert vae > 0 and steps_run == 2
    assert (sample - vae) == pytest.approx(2 * (diffusion - vae), rel=1e-9)
    model, params = the_denoiser.model, the_denoiser.params
    one_pass = compiled_flops(jax.jit(model.epsilon), params, jnp.zeros((2 * settings.batch_size,) + latents.shape),
                              jnp.zeros(2 * settings.batch_size, jnp.int32),
                              model.class_context(params, jnp.zeros(2 * settings.batch_size, jnp.int32)))
    # per batch and step: the model on [uncond; cond] (2 x batch rows) plus the guidance arithmetic
    per_call = (diffusion - vae) / steps_run / 2
    assert one_pass <= per_call <= 1.05 * one_pass
    synthetic_flops = results["timing"]["synthetic_flops"]
    assert synthetic_flops["random_ipc2"] == 0.0
    assert synthetic_flops["d4m_ipc2"] == synthetic_flops["ddoq_ipc2"] > synthetic_flops["ddoq_vae_ipc2"] > 0


def test_encode_flops_are_one_batch_times_the_batches(finished_run):
    """The encode stage counts the encoder's loop-free program on one batch (XLA's count of a conv network is linear
    in the batch) times the batches (the last one padded: counted whole); results.json reports it under timing.encode."""
    data_dir, workdir, results = finished_run
    run, the_prior, _, _, _, _ = _stages_to_decode(data_dir, workdir, ("ddoq",))
    images = run.dataset.train_images
    per_batch = lambda size: the_prior.batch_encoder(run, (size,) + images.shape[1:]).flops_per_batch
    assert per_batch(50) > 0
    assert per_batch(100) == pytest.approx(2 * per_batch(50), rel=1e-3)
    batch_size = min(run.config.encode.batch_size, len(images))  # the batches encode makes
    assert results["timing"]["encode"]["flops"] == per_batch(batch_size) * -(-len(images) // batch_size)
    # three batches of 120 images, the last one padded, would count as three whole ones
    import types

    import ml_collections
    from pqdjax.stages import encode

    part = types.SimpleNamespace(train_images=images[:120], train_labels=run.dataset.train_labels[:120], num_classes=10)
    small = types.SimpleNamespace(kind="in_memory", dataset=part, config=ml_collections.ConfigDict(dict(encode=dict(batch_size=50))))
    batches = encode.training_batches(small)
    assert batches.total == 3 and batches.batch_shape == (50,) + images.shape[1:]
    assert [int(b["mask"].sum()) for b in batches.batches(0)] == [50, 50, 20]
    assert results["timing"]["encode"]["seconds"] > 0


def test_ipc_larger_than_a_class_is_a_clear_error(finished_run):
    data_dir, workdir, _ = finished_run
    config = _config(data_dir)
    config.ipcs = (31,)
    with pytest.raises(ValueError, match="IPC 31 is larger than the smallest class"):
        pipeline.run(config, workdir)


def test_generated_is_class_conditional_sampling_with_uniform_weights(finished_run):
    """The 'generated' baseline: K samples per class of the denoiser from noise (strength 1, each point's own key),
    uniform weights; the k-means points give only the shape: sampling from them instead of zeros gives its images."""
    import jax.numpy as jnp

    from pqdjax.data.preprocess import to_uint8
    from pqdjax.diffusion import img2img
    from pqdjax.stages import fidelity, teacher

    data_dir, workdir, _ = finished_run
    run, the_prior, latents, the_denoiser, quantized, synthetic = _stages_to_decode(data_dir, workdir, ("d4m", "generated"))
    (generated, weights), (d4m, _) = synthetic["generated", 2].load(), synthetic["d4m", 2].load()
    np.testing.assert_allclose(weights, 0.5)
    assert generated.shape == d4m.shape and not np.array_equal(generated, d4m)
    settings, model, params = run.config.decode.diffusion, the_denoiser.model, the_denoiser.params
    labels = np.repeat(np.arange(10), 2)
    # the sampler called directly: from zeros at strength 1, conditioned on the class embeddings, key (c, k) per point
    base = run.rng("decode", "sample", 2)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(base, c), k) for c in range(10) for k in range(2)])
    sampled = img2img(model.epsilon, model.ddim_scheduler, params, jnp.zeros((20,) + latents.shape), model.class_context(params, jnp.asarray(labels)),
                      model.class_context(params, jnp.full(20, model.null_class)), keys, strength=1.0, guidance=settings.guidance,
                      steps=settings.steps)
    from pqdjax.models import vae as vae_lib

    expected = to_uint8(np.asarray(vae_lib.decode(the_prior.vae, the_prior.params, sampled, the_prior.latent_scale)))
    assert np.abs(expected.reshape(generated.shape).astype(int) - generated.astype(int)).max() <= 1
    records = fidelity.run(run, the_prior, teacher.run(run), latents, quantized, synthetic)
    assert records["generated", 2]["cell_consistency"] is None and records["generated", 2]["w2_points"] is None
    assert records["d4m", 2]["cell_consistency"] is not None and records["generated", 2]["w2_images"] > 0


def test_the_in_memory_denoiser_is_pushed_forward_by_the_shared_sampler(finished_run):
    """The decode stage's diffusion decoder (image_decoders.decode_images) with the trained denoiser: the sampler
    called directly with the class embeddings and each point's key (c, k), then the VAE decoder, gives the ddoq images;
    start='initial_latent' runs the whole reverse process from the points (no noise), which decode_images follows;
    an unknown start is a clear config error."""
    import jax.numpy as jnp
    from jax.sharding import Mesh

    from pqdjax.data.preprocess import to_uint8
    from pqdjax.diffusion import img2img, sample_from
    from pqdjax.models import vae as vae_lib
    from pqdjax.stages.image_decoders import TrainedLatentModel, decode_images

    data_dir, workdir, _ = finished_run
    run, the_prior, latents, the_denoiser, quantized, synthetic = _stages_to_decode(data_dir, workdir, ("ddoq",))
    settings = run.config.decode.diffusion
    points = quantized[2].arrays["points"].reshape((-1,) + latents.shape)  # 10 classes x 2 points
    labels = np.repeat(np.arange(10), 2)
    model, params = the_denoiser.model, the_denoiser.params
    cond = model.class_context(params, jnp.asarray(labels))
    uncond = model.class_context(params, jnp.full(20, model.null_class))
    base = run.rng("decode", 2)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(base, c), k) for c in range(10) for k in range(2)])
    vae = lambda z: to_uint8(np.asarray(vae_lib.decode(the_prior.vae, the_prior.params, z, the_prior.latent_scale)))
    denoised = img2img(model.epsilon, model.ddim_scheduler, params, jnp.asarray(points), cond, uncond, keys,
                       strength=settings.strength, guidance=settings.guidance, steps=settings.steps)
    images, _ = synthetic["ddoq", 2].load()
    assert np.abs(vae(denoised).reshape(images.shape).astype(int) - images.astype(int)).max() <= 1
    # start='initial_latent': the whole reverse process from the points, deterministic
    whole = sample_from(model.epsilon, model.ddim_scheduler, params, jnp.asarray(points), cond, uncond,
                        guidance=settings.guidance, steps=settings.steps)
    config = run.config.copy_and_resolve_references()
    config.decode.diffusion.start = "initial_latent"
    mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    decoded = decode_images(TrainedLatentModel(the_prior, the_denoiser), "diffusion", points, labels, None, keys,
                            config.decode.diffusion, mesh)
    assert np.abs(decoded.astype(int) - vae(whole).astype(int)).max() <= 1
    assert np.abs(decoded.astype(int) - images.reshape(decoded.shape).astype(int)).mean() > 1  # another start, other images
    config = _config(data_dir)
    config.decode.diffusion.start = "noise"
    with pytest.raises(ConfigError, match="config.decode.diffusion.start must be one of"):
        pipeline.run(config, workdir)


def test_a_full_data_student_trains_alone_and_is_reported(finished_run, monkeypatch):
    """evaluate.full_data_epochs > 0 adds the student's architecture trained on every training image by the same
    protocol for that many epochs; the synthetic sets' students are reused, not retrained."""
    from pqdjax.stages import evaluate

    data_dir, workdir, _ = finished_run
    trained = []
    real = evaluate.train_student

    def counting(*args, **kwargs):
        trained.append((kwargs["name"], len(args[3])))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "train_student", counting)
    config = _config(data_dir)
    config.evaluate.full_data_epochs = 2
    results = pipeline.run(config, workdir)
    assert trained == [("full-data student seed 0", 300)]  # 30 training images of each of 10 classes
    full = results["full_data_student"]
    assert full["n"] == 1 and full["epochs"] == 2 and 0.0 <= full["mean"] <= 1.0
    assert "| full data (student, 2 epochs) |" in results["table"]
    with open(os.path.join(workdir, "metrics", "full-data_student_seed_0.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    global_batch = config.evaluate.train.batch_size - config.evaluate.train.batch_size % jax.device_count()  # 8 fake devices
    assert steps[-1] == 2 * (300 // global_batch)  # epochs x batches per epoch
