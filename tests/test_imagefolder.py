"""configs/imagefolder.py: distilling a folder of the user's own images (DIR/train/CLASS/*), end to end."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pqdjax import pipeline
from pqdjax.config_options import from_file
from pqdjax.data import image_folder
from pqdjax.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ("circle", "square", "stripes")


def _draw(shape: str, size: tuple[int, int], rng) -> Image.Image:
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    color = tuple(int(v) for v in rng.integers(150, 256, 3))
    if shape == "circle":
        draw.ellipse((w * 0.2, h * 0.2, w * 0.8, h * 0.8), fill=color)
    elif shape == "square":
        draw.rectangle((w * 0.25, h * 0.25, w * 0.75, h * 0.75), fill=color)
    else:
        for x in range(0, w, max(2, w // 6)):
            draw.rectangle((x, 0, x + max(1, w // 12), h), fill=color)
    return image


def write_folder(root, per_class: int = 12, test: bool = False, seed: int = 0) -> str:
    """Real image files of three classes, of varied sizes and formats, in the ImageFolder layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", 4)) if test else (("train", per_class),):
        for shape in SHAPES:
            folder = os.path.join(root, split, shape)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                size = (int(rng.integers(24, 48)), int(rng.integers(24, 48)))
                _draw(shape, size, rng).save(os.path.join(folder, f"{i:02d}.{'png' if i % 2 else 'jpg'}"))
    return str(root)


def _config(arg, folder):
    config = from_file(os.path.join(REPO, "configs", "imagefolder.py"), arg)
    config.data.dir = folder
    return config


def test_reading_a_folder(tmp_path):
    folder = write_folder(tmp_path / "shapes", per_class=10)
    train_x, train_y, test_x, test_y, names, _ = image_folder.read_dataset(folder, 16, 3, test_fraction=0.2)
    assert names == ("circle", "square", "stripes")
    assert train_x.shape == (24, 16, 16, 3) and test_x.shape == (6, 16, 16, 3) and train_x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train_y), [8, 8, 8])
    # the held-out images are the last of each class by file name: 08.jpg and 09.png
    expected = image_folder._load(os.path.join(folder, "train", "square", "09.png"), 16, 3)
    np.testing.assert_array_equal(test_x[3], expected)
    gray = image_folder.read_dataset(write_folder(tmp_path / "with_test", test=True), 16, 1)
    assert gray[0].shape[-1] == 1 and len(gray[3]) == 12  # the test/ folder: 4 per class


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="has no train/ folder"):
        image_folder.read_dataset(str(tmp_path), 16)
    (tmp_path / "train" / "only").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="at least 2 classes"):
        image_folder.read_dataset(str(tmp_path), 16)
    (tmp_path / "train" / "other").mkdir()
    with pytest.raises(DatasetFormatError, match="hold no image"):
        image_folder.read_dataset(str(tmp_path), 16)
    for c in ("only", "other"):
        for i in range(3):
            _draw("circle", (20, 20), np.random.default_rng(i)).save(tmp_path / "train" / c / f"{i}.png")
    (tmp_path / "train" / "other" / "9.png").write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match="9.png: not a readable image"):
        image_folder.read_dataset(str(tmp_path), 16)


def test_the_runlocal_run_distils_the_folder(tmp_path):
    config = _config("runlocal,size=16", write_folder(tmp_path / "shapes", test=True))
    results = pipeline.run(config, str(tmp_path / "run"))
    assert set(results["accuracy"]) == {"random", "d4m", "ddoq", "ddoq_vae"}
    stored = json.load(open(tmp_path / "run" / "results.json"))
    assert stored["config"]["data"]["name"] == "imagefolder"
    with open(tmp_path / "run" / "synthetic" / "ipc2" / "manifest_ddoq.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["circle", "circle", "square", "square", "stripes", "stripes"]
    assert np.asarray(Image.open(tmp_path / "run" / "synthetic" / "ipc2" / rows[0]["file"])).shape == (16, 16, 3)


def test_the_stable_diffusion_option_distils_every_class_folder_with_their_names_as_prompts(tmp_path):
    """prior=stable_diffusion: the streamed pipeline (tiny random Stable Diffusion, a teacher trained in the run) on
    the folder; every class folder is distilled, named as its folder, and every training image encoded in its class."""
    folder = write_folder(tmp_path / "shapes", test=True)
    config = _config("runlocal,size=16,prior=stable_diffusion", folder)
    assert config.data.num_classes == 0 and config.data.get("streamed") and config.prior.kind == "stable_diffusion"
    results = pipeline.run(config, str(tmp_path / "run"))
    assert config.data.num_classes == len(SHAPES)
    assert sorted(results["accuracy"]) == sorted(config.methods)
    stored = json.load(open(tmp_path / "run" / "results.json"))
    assert stored["config"]["data"]["num_classes"] == len(SHAPES)
    assert stored["latents"]["per_class"] == [len(os.listdir(os.path.join(folder, "train", s))) for s in SHAPES]
    ipc = config.ipcs[0]
    with open(tmp_path / "run" / "synthetic" / f"ipc{ipc}" / "manifest_ddoq.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["label"]), r["class"]) for r in rows] == [(c, s) for c, s in enumerate(SHAPES) for _ in range(ipc)]
    png = Image.open(tmp_path / "run" / "synthetic" / f"ipc{ipc}" / rows[0]["file"])
    assert np.asarray(png).shape == (16, 16, 3)
    # the folder names are Stable Diffusion's prompts (not ImageNet synsets: no ImageNet class index)
    classes = pipeline.Run(config=config, store=None).classes
    assert classes.prompts == SHAPES and classes.imagenet_indices is None


def test_the_stable_diffusion_option_refuses_gray_and_a_folder_without_a_test_split(tmp_path):
    for option in ("gray", "sweep"):
        with pytest.raises(ConfigError, match="gray and sweep go with prior=trained"):
            _config(f"prior=stable_diffusion,{option}", "")
    with pytest.raises(ConfigError, match="quantizer= goes with prior=stable_diffusion"):
        _config("quantizer=clvq", "")
    assert _config("prior=stable_diffusion,quantizer=clvq", "").quantize.method == "clvq"
    config = _config("runlocal,prior=stable_diffusion", write_folder(tmp_path / "shapes"))  # train/ only
    with pytest.raises(DatasetNotFoundError, match="shapes/test is not a folder"):
        pipeline.run(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "prior"), "the missing split is found before any stage runs"


def _herding_np(x: np.ndarray, k: int) -> list[int]:
    """Herding toward the mean in float64, written out: each step adds the unused sample that brings the mean of the
    chosen ones nearest the class mean."""
    target, total, chosen = x.mean(0), np.zeros(x.shape[1]), []
    for t in range(k):
        error = np.sum(np.square((total + x) / (t + 1) - target), axis=1)
        error[chosen] = np.inf
        chosen.append(int(np.argmin(error)))
        total = total + x[chosen[-1]]
    return chosen


def test_every_method_runs_in_the_streamed_pipeline(tmp_path, monkeypatch):
    """The real-image selections and the samples of the default pipeline on a streamed run: herding's images are the
    training images that herding in float64 picks, medoid_weighted's the training image nearest each k-means point
    with the Voronoi masses of their latents as weights, generated's class-conditional samples of the prior with
    uniform weights; fidelity measures each (no cell consistency for real images or samples)."""
    from pqdjax.data import imagenet, streamed
    from pqdjax.stages import encode, prior as prior_stage, quantize

    folder = write_folder(tmp_path / "shapes", test=True)
    config = _config("runlocal,size=16,prior=stable_diffusion", folder)
    config.methods = ("ddoq", "medoid_weighted", "herding", "generated")
    workdir = str(tmp_path / "run")
    results = pipeline.run(config, workdir)
    assert sorted(results["accuracy"]) == sorted(config.methods)
    ipc = config.ipcs[0]
    run = pipeline.Run(config=config, store=pipeline.artifacts.ArtifactStore(workdir))
    latents = encode.run(run, prior_stage.run(run))
    quantized = quantize.run(run, latents)[ipc]
    split = streamed.open_configured_split(config.data, config.data.train_split)
    size = config.decode.image_size
    manifests = {m: image_folder.read_manifest(os.path.join(workdir, f"synthetic/ipc{ipc}/manifest_{m}.csv")) for m in config.methods}
    medoid_w2 = []
    for c in range(latents.num_classes):
        x = latents.load(c).astype(np.float64)
        points = quantized.load(c)["points"].astype(np.float64)
        medoids = [int(np.argmin(np.sum(np.square(x - p), axis=1))) for p in points]
        to_medoids = np.sum(np.square(x[:, None] - x[medoids][None]), axis=-1)
        nearest_medoid = np.argmin(to_medoids, axis=1)
        medoid_w2.append(np.sqrt(np.mean(to_medoids.min(axis=1))))
        expected = {"herding": (_herding_np(x, ipc), np.full(ipc, 1.0 / ipc)),
                    "medoid_weighted": (medoids, np.bincount(nearest_medoid, minlength=ipc) / len(x))}
        for method, (positions, weights) in expected.items():
            files, labels, got_weights = manifests[method]
            rows = np.flatnonzero(labels == c)
            np.testing.assert_allclose(got_weights[rows], weights, atol=1e-6)
            for row, position in zip(rows, positions):
                index = int(latents.example_indices(c)[position])
                real = imagenet.resize_and_center_crop(np.asarray(split[index]["image"]), size, size)
                np.testing.assert_array_equal(np.asarray(Image.open(files[row])), real)
    files, labels, weights = manifests["generated"]
    np.testing.assert_allclose(weights, 1.0 / ipc, rtol=1e-6)
    ddoq_files = manifests["ddoq"][0]
    assert not any(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(files, ddoq_files))
    fidelity = results["fidelity"]
    assert fidelity["generated"][ipc]["cell_consistency"] is None and fidelity["generated"][ipc]["w2_points"] is None
    assert fidelity["herding"][ipc]["cell_consistency"] is None and fidelity["herding"][ipc]["w2_points"] > 0
    # with their own Voronoi masses as weights, the nearest-point map is optimal: W2 = sqrt(mean squared distance)
    assert fidelity["medoid_weighted"][ipc]["w2_points"] == pytest.approx(np.mean(medoid_w2), rel=1e-4)

    # medoid_weighted's weights are the ones the quantize stage stored for each class: process 0 writes the
    # manifest from them without reading any class's latents
    from pqdjax.stages import decode

    name = f"synthetic/ipc{ipc}/manifest_medoid_weighted.csv"
    spec = decode.spec_of("medoid_weighted", run.config)
    set_fp = run.store.info(f"synthetic/ipc{ipc}/sets/{spec.folder}.json")["fingerprint"]
    by_class = manifests["medoid_weighted"]
    for c in range(latents.num_classes):
        np.testing.assert_array_equal(quantized.load(c)["medoid_weights"], by_class[2][by_class[1] == c])

    def refuse(*args, **kwargs):
        raise AssertionError("process 0 read a class's latents")

    monkeypatch.setattr(encode.Latents, "load", refuse)
    os.remove(run.store.path(name))  # written again, by process 0 alone
    decode._manifest(run, latents, quantized, "medoid_weighted", spec, set_fp)
    assert image_folder.read_manifest(run.store.path(name))[2].tolist() == by_class[2].tolist()
