"""The ImageNet-1K pipeline end to end under configs/in1k.py:runlocal: tfds mock data, tiny random SD and ResNet checkpoints."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

from configs import in1k  # noqa: E402
from pqdjax import artifacts, pipeline  # noqa: E402
from pqdjax.config_checks import W2_METHODS  # noqa: E402
from pqdjax.data import imagenet, streamed  # noqa: E402
from pqdjax.stages import decode, encode, quantize  # noqa: E402


@pytest.fixture(scope="module")
def in1k_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("in1k") / "run")
    config = in1k.get_config("runlocal")
    results = pipeline.run(config, workdir)
    return dict(config=config, workdir=workdir, results=results)


def _exact_w2(x: np.ndarray, points: np.ndarray, weights: np.ndarray) -> float:
    """W2 from the uniform measure on x [n, d] to points [K, d] with weights [K]: the transport LP, by scipy's HiGHS."""
    from scipy.optimize import linprog

    n, k = len(x), len(points)
    cost = np.sum(np.square(x[:, None] - points[None]), axis=-1).reshape(-1)
    rows = np.kron(np.eye(n), np.ones(k))  # each sample's mass
    cols = np.kron(np.ones(n), np.eye(k))  # each point's weight
    plan = linprog(cost, A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([np.full(n, 1.0 / n), weights / weights.sum()]),
                   bounds=(0, None), method="highs")
    assert plan.status == 0, plan.message
    return float(np.sqrt(plan.fun))


def _manifest(workdir, method, ipc):
    with open(os.path.join(workdir, f"synthetic/ipc{ipc}/manifest_{method}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_manifests_pngs_and_results(in1k_run):
    config, workdir, results = in1k_run["config"], in1k_run["workdir"], in1k_run["results"]
    (ipc,), classes = config.ipcs, config.data.num_classes
    ddoq, d4m = _manifest(workdir, "ddoq", ipc), _manifest(workdir, "d4m", ipc)
    assert len(ddoq) == len(d4m) == classes * ipc
    assert [r["file"] for r in ddoq] == [r["file"] for r in d4m]  # the same images, other weights
    labels = np.asarray([int(r["label"]) for r in ddoq])
    np.testing.assert_array_equal(labels, np.repeat(np.arange(classes), ipc))
    for rows, uniform in ((ddoq, False), (d4m, True)):
        weights = np.asarray([float(r["weight"]) for r in rows]).reshape(classes, ipc)
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
        assert np.all(weights >= 0)
        if uniform:
            np.testing.assert_allclose(weights, 1.0 / ipc)
    images = [Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"])) for r in ddoq]
    assert all(im.size == (224, 224) and im.mode == "RGB" for im in images)
    pixels = np.stack([np.asarray(im) for im in images])
    assert pixels.std() > 1  # decoded images, not blank

    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    assert {"config", "teacher_test_accuracy", "accuracy", "quantization", "evaluations", "timing", "synthetic"} <= stored.keys()
    assert 0.0 <= stored["teacher_test_accuracy"] <= 1.0
    assert sorted(stored["accuracy"]) == ["d4m", "ddoq", "ddoq_vae", "random"]
    for record in stored["evaluations"]:
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["images"] == classes * ipc and record["steps"] >= 1
    assert len(stored["quantization"][str(ipc)]["distortion_per_class"]) == classes
    assert "| ddoq |" in results["table"]
    # The figures of every pipeline; distilled.png shows ddoq's PNGs with their manifest weights, class by class.
    for figure in ("accuracy_vs_ipc.png", "distilled.png", f"weights_ipc{ipc}.png"):
        assert Image.open(os.path.join(workdir, figure)).size[0] > 100
    from pqdjax.stages.report import figure_grid

    run = pipeline.Run(config=config, store=artifacts.ArtifactStore(workdir))
    synthetic = {(m, ipc): decode.SyntheticSet(m, ipc, os.path.join(workdir, f"synthetic/ipc{ipc}/manifest_{m}.csv"), "")
                 for m in config.methods}
    method, grid, grid_weights = figure_grid(run, synthetic, [ipc], classes)
    assert method == "ddoq" and grid.shape[:2] == (classes, ipc)
    np.testing.assert_array_equal(grid.reshape((-1,) + grid.shape[2:]), pixels)
    np.testing.assert_allclose(grid_weights.reshape(-1), [float(r["weight"]) for r in ddoq], rtol=1e-6)


def test_latents_on_disk_are_the_vae_encodings_of_each_class(in1k_run):
    """Per-class latent files equal the SD VAE's posterior means of that class's mock images, encoded one by one."""
    from pqdjax.models.stable_diffusion import load_stable_diffusion

    config, workdir = in1k_run["config"], in1k_run["workdir"]
    data = config.data
    sd = load_stable_diffusion(os.path.join(workdir, "prior/tiny_stable_diffusion"))
    source = streamed.open_configured_split(data, data.train_split)
    images = np.stack([imagenet.resize_and_center_crop(source[i]["image"], data.encode_resize, data.encode_crop) for i in range(len(source))])
    labels = np.asarray([source[i]["label"] for i in range(len(source))])
    want = np.asarray(sd.encode_images(images.astype(np.float32) / 127.5 - 1.0)).reshape(len(images), -1)
    info = artifacts.ArtifactStore(workdir).info("encode/latents/process0")
    assert sum(info["counts"]) == len(source)
    for c in range(data.num_classes):
        got = np.fromfile(os.path.join(workdir, "encode/latents/process0", f"class{c:04d}.f32"), np.float32).reshape(-1, want.shape[1])
        np.testing.assert_allclose(got, want[labels == c], atol=1e-4, err_msg=f"class {c}")


def test_ddoq_weights_are_the_voronoi_masses_of_the_stored_points(in1k_run):
    config, workdir = in1k_run["config"], in1k_run["workdir"]
    (ipc,) = config.ipcs
    store = artifacts.ArtifactStore(workdir)
    weights = np.asarray([float(r["weight"]) for r in _manifest(workdir, "ddoq", ipc)]).reshape(-1, ipc)
    for c in range(config.data.num_classes):
        x = np.fromfile(os.path.join(workdir, "encode/latents/process0", f"class{c:04d}.f32"), np.float32)
        q = store.load_arrays(f"quantize/ipc{ipc}/class{c:04d}.npz")
        x = x.reshape(-1, q["points"].shape[1])
        nearest = np.argmin(((x[:, None, :] - q["points"][None]) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(weights[c], np.bincount(nearest, minlength=ipc) / len(x), atol=1e-6)


def test_ddoq_vae_is_the_points_decoded_by_the_sd_vae_with_ddoq_weights(in1k_run):
    import jax

    from pqdjax.models.stable_diffusion import load_stable_diffusion
    from pqdjax.stages.prior import tiny_artifact

    config, workdir = in1k_run["config"], in1k_run["workdir"]
    (ipc,), classes = config.ipcs, config.data.num_classes
    ddoq, vae = _manifest(workdir, "ddoq", ipc), _manifest(workdir, "ddoq_vae", ipc)
    assert [r["weight"] for r in vae] == [r["weight"] for r in ddoq]
    assert all(r["file"].startswith("kmeans_vae/") for r in vae) and all(r["file"].startswith("kmeans_diffusion/") for r in ddoq)
    sd = load_stable_diffusion(os.path.join(workdir, tiny_artifact("stable_diffusion")))
    store = artifacts.ArtifactStore(workdir)
    latent_shape = in1k_run["results"]["latents"]["shape"]
    for c in range(classes):
        points = store.load_arrays(quantize.class_name(ipc, c))["points"].reshape([ipc] + latent_shape)
        decoded = np.asarray(sd.decode_latents(points))
        expected = np.asarray(jax.image.resize(decoded, (ipc, 224, 224, 3), "bicubic", antialias=True))
        expected = np.clip(np.round((expected + 1) * 127.5), 0, 255)
        pixels = np.stack([np.asarray(Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"])))
                           for r in vae[c * ipc : (c + 1) * ipc]]).astype(np.float64)
        assert np.abs(pixels - expected).max() <= 1.0
    diffused = np.stack([np.asarray(Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"]))) for r in ddoq])
    assert np.abs(diffused.astype(float) - np.stack([np.asarray(Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"]))) for r in vae])).mean() > 1


def test_random_is_k_distinct_training_images_of_each_class_with_uniform_weights(in1k_run):
    config, workdir, results = in1k_run["config"], in1k_run["workdir"], in1k_run["results"]
    (ipc,), classes = config.ipcs, config.data.num_classes
    rows = _manifest(workdir, "random", ipc)
    np.testing.assert_allclose([float(r["weight"]) for r in rows], 1.0 / ipc)
    source = streamed.open_configured_split(config.data, config.data.train_split)
    # the training images of each class, as the real reader gives them, resized and cropped like the set
    by_class = {c: [] for c in range(classes)}
    for i in range(min(len(source), config.data.get("train_limit") or len(source))):
        example = source[i]
        if example["label"] < classes:
            by_class[example["label"]].append(imagenet.resize_and_center_crop(np.asarray(example["image"]), 224, 224))
    for c in range(classes):
        pixels = [np.asarray(Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"])))
                  for r in rows if int(r["label"]) == c]
        assert len(pixels) == ipc
        matches = [[j for j, real in enumerate(by_class[c]) if np.array_equal(real, p)] for p in pixels]
        assert all(len(m) == 1 for m in matches) and len({m[0] for m in matches}) == ipc  # distinct images of class c
    record = results["fidelity"]["random"][ipc]
    assert record["cell_consistency"] is None and record["w2_points"] > 0 and record["w2_images"] > 0
    assert "| random |" in results["table"]


def test_fidelity_of_every_set(in1k_run):
    """d4m and ddoq share images and points: equal agreement and consistency; their W2 differ only by the weights."""
    config, results = in1k_run["config"], in1k_run["results"]
    (ipc,) = config.ipcs
    d4m, ddoq = results["fidelity"]["d4m"][ipc], results["fidelity"]["ddoq"][ipc]
    for key in ("teacher_agreement", "cell_consistency"):
        assert d4m[key] == ddoq[key] and 0.0 <= d4m[key] <= 1.0
        assert d4m[key] * config.data.num_classes * ipc == pytest.approx(round(d4m[key] * config.data.num_classes * ipc))
    # Voronoi weights make the nearest-point map optimal: the points' W2 is sqrt(distortion), the minimum over weights
    w2_ddoq = results["quantization"][ipc]["w2"]["ddoq"]["mean"]
    assert ddoq["w2_points"] == pytest.approx(w2_ddoq, rel=1e-4)
    assert d4m["w2_points"] >= ddoq["w2_points"] - 1e-5
    assert d4m["w2_images"] > 0 and ddoq["w2_images"] > 0
    assert "| ddoq | 2 |" in results["table"] and "cell consistency" in results["table"]
    # W2 of every base method's points in the report, as in the default one: against the transport LP solved by scipy
    w2 = results["quantization"][ipc]["w2"]
    assert set(w2) == set(W2_METHODS)
    run = pipeline.Run(config=config, store=artifacts.ArtifactStore(in1k_run["workdir"]))
    from pqdjax.stages import prior as prior_stage

    latents = encode.run(run, prior_stage.run(run))
    quantized = quantize.run(run, latents)[ipc]
    uniform = np.full(ipc, 1.0 / ipc)
    for c in range(config.data.num_classes):
        x = latents.load(c).astype(np.float64)
        q = quantized.load(c)
        points = q["points"].astype(np.float64)
        assert w2["d4m"]["per_class"][c] == pytest.approx(_exact_w2(x, points, uniform), rel=1e-4)
        assert w2["ddoq"]["per_class"][c] == pytest.approx(_exact_w2(x, points, q["weights"].astype(np.float64)), rel=1e-4)
        # the random set's W2: the latents of its images (rows of the class), whose indices quantize stored
        assert w2["random"]["per_class"][c] == pytest.approx(_exact_w2(x, x[q["random_rows"]], uniform), rel=1e-4)
        np.testing.assert_array_equal(q["random_indices"], latents.example_indices(c)[q["random_rows"]])
    assert "W2 from each class's latent measure" in results["table"]


def test_a_rerun_does_no_work(in1k_run, monkeypatch):
    config, workdir = in1k_run["config"], in1k_run["workdir"]

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun of a finished run redid work")

    monkeypatch.setattr(encode, "encode_process_part", refuse)
    monkeypatch.setattr(decode, "decode_images", refuse)
    monkeypatch.setattr(quantize, "quantize_group", refuse)
    monkeypatch.setattr("pqdjax.stages.evaluate.evaluate_set", refuse)
    monkeypatch.setattr("pqdjax.train.test_splits.sharded_accuracy", refuse)
    monkeypatch.setattr("pqdjax.stages.fidelity.measure", refuse)
    again = pipeline.run(config, workdir)
    first = in1k_run["results"]
    assert {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in first.items() if k != "timing"}


def test_an_interrupted_encode_resumes_to_the_same_files(in1k_run, monkeypatch, tmp_path):
    """Killed after some batches (progress recorded every batch), a rerun continues and writes the same files."""
    config, workdir = in1k_run["config"], in1k_run["workdir"]
    config = in1k.get_config("runlocal")
    config.encode.flush_every = 1
    run = pipeline.Run(config=config, store=artifacts.ArtifactStore(workdir))
    from pqdjax.stages import prior as prior_stage

    prior = prior_stage.run(run)
    name, fp = "encode/resume_check", "fp"
    calls = {"n": 0}
    original = encode.ClassFiles.append

    def append_then_die(self, latents, labels, indices):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill between two batches
        original(self, latents, labels, indices)

    monkeypatch.setattr(encode.ClassFiles, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        encode.encode_process_part(run, prior, name, fp)
    assert run.store.info(name) is None  # nothing marked complete
    with open(run.store.path(name + ".partial/progress.json")) as f:
        assert json.load(f)["batches"] == 2
    monkeypatch.setattr(encode.ClassFiles, "append", original)
    resumed_batches = []
    real_batches = streamed.equal_host_batches
    monkeypatch.setattr(streamed, "equal_host_batches", lambda *a, **k: resumed_batches.append(k.get("first_batch")) or real_batches(*a, **k))
    encode.encode_process_part(run, prior, name, fp)
    assert resumed_batches == [2]
    reference = run.store.path("encode/latents/process0")
    for c in range(config.data.num_classes):
        for file in (encode.class_file(c), encode.index_file(c)):
            with open(os.path.join(reference, file), "rb") as a, open(run.store.path(f"{name}/{file}"), "rb") as b:
                assert a.read() == b.read(), file
    assert run.store.info(name)["counts"] == run.store.info("encode/latents/process0")["counts"]


def test_the_dit_prior_runs_the_whole_path(tmp_path):
    """configs/in1k.py:runlocal,prior=dit: a tiny random DiT checkpoint written in diffusers' layout and loaded by the
    real loader; the ddoq images are its pushforward of the points (not their VAE decoding), the report complete."""
    config = in1k.get_config("runlocal,prior=dit")
    assert config.prior.kind == "dit" and config.decode.diffusion.start == "img2img"
    config.methods = ("ddoq", "ddoq_vae")
    workdir = str(tmp_path / "run")
    results = pipeline.run(config, workdir)
    assert os.path.isfile(os.path.join(workdir, "prior/tiny_dit/transformer/diffusion_pytorch_model.safetensors"))
    (ipc,), classes = config.ipcs, config.data.num_classes
    ddoq, vae = _manifest(workdir, "ddoq", ipc), _manifest(workdir, "ddoq_vae", ipc)
    assert len(ddoq) == classes * ipc and [r["weight"] for r in ddoq] == [r["weight"] for r in vae]
    read = lambda rows: np.stack([np.asarray(Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"]))) for r in rows])
    diffused, decoded = read(ddoq), read(vae)
    assert diffused.shape == (classes * ipc, 224, 224, 3) and np.abs(diffused.astype(float) - decoded).mean() > 1
    assert sorted(results["accuracy"]) == ["ddoq", "ddoq_vae"] and "| ddoq | 2 |" in results["table"]


def test_dit_pushforward_from_the_point_as_initial_latent(tmp_path):
    """decode.diffusion.start='initial_latent' runs the whole reverse process from the points, conditioned on the labels."""
    import jax
    from jax.sharding import Mesh

    from pqdjax.diffusion import sample_from
    from pqdjax.models.dit_diffusion import load_dit
    from pqdjax.models.tiny_checkpoints import write_tiny_dit
    from pqdjax.stages.image_decoders import decode_images, point_keys

    write_tiny_dit(str(tmp_path))
    model = load_dit(str(tmp_path))
    config = in1k.get_config("runlocal,prior=dit").decode
    config.diffusion.update(start="initial_latent", steps=3)
    points = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 8, 4)))
    labels = np.array([3, 7])
    mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    keys = point_keys(jax.random.key(1), [0], 2)  # unused by this start: it adds no noise
    got = decode_images(model, "diffusion", points, labels, ["", ""], keys, config.diffusion, mesh, config.image_size)
    cond, uncond = model.guidance_contexts(labels, [], "")
    latents = sample_from(model.epsilon, model.scheduler, model.denoiser_params, points, cond, uncond, guidance=config.diffusion.guidance, steps=3)
    decoded = np.asarray(jax.image.resize(model.decode_latents(latents), (2, 224, 224, 3), "bicubic", antialias=True))
    np.testing.assert_allclose(got.astype(float), np.clip(np.round((decoded + 1) * 127.5), 0, 255), atol=1.0)
    other = decode_images(model, "diffusion", points, np.array([3, 8]), ["", ""], keys, config.diffusion, mesh, config.image_size)
    assert np.abs(other[1].astype(float) - got[1]).mean() > 0.1 and np.array_equal(other[0], got[0])  # the label conditions


def test_records_keep_the_fingerprints_the_streamed_stages_gave_them(in1k_run):
    """The teacher's accuracy and the students recorded before the streamed pipeline shared the teacher and evaluate
    stages stay valid: their fingerprints are made as the streamed stages made them ('imagenet_teacher_accuracy',
    'imagenet_evaluate', with the validation split's data fields)."""
    from pqdjax.stages import evaluate, prior as prior_stage, teacher

    config, workdir = in1k_run["config"], in1k_run["workdir"]
    run = pipeline.Run(config=config, store=artifacts.ArtifactStore(workdir))
    eval_data = streamed.data_fields(config.data, streamed.TEST_DATA_FIELDS)
    the_teacher = teacher.run(run)
    assert run.store.is_complete("teacher/accuracy.json",
                                 artifacts.fingerprint("imagenet_teacher_accuracy", the_teacher.fingerprint, eval_data))
    prior = prior_stage.run(run)
    latents = encode.run(run, prior)
    sets = decode.run(run, prior, latents, quantize.run(run, latents))
    settings = evaluate.student_settings(config.evaluate, config.evaluate.model)
    for (method, ipc), synthetic in sets.items():
        for seed in config.evaluate.seeds:
            fp = artifacts.fingerprint("imagenet_evaluate", the_teacher.fingerprint, synthetic.fingerprint, settings,
                                       eval_data, seed)
            assert run.store.is_complete(evaluate.student_path(method, ipc, seed, None) + ".json", fp)
