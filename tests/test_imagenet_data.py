"""ImageNet input: class names, resizing, per-process shards and batches on tfds mock data."""

import numpy as np
import pytest

from pqdjax import parallel
from pqdjax.data import imagenet, streamed
from pqdjax.data.sources import DatasetNotFoundError


def test_class_names_are_the_1000_imagenet_classes_in_tfds_label_order():
    synsets, names = imagenet.class_synsets_and_names()
    assert len(synsets) == len(set(synsets)) == 1000
    assert synsets == tuple(sorted(synsets))  # tfds's labels are the synsets sorted
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert imagenet.class_prompts()[1] == "goldfish" and imagenet.class_prompts()[-1] == "toilet tissue"


def test_resize_and_center_crop_keeps_the_center():
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:200, 150:250] = 255  # a centred white square, a third of the height
    out = imagenet.resize_and_center_crop(image, 256, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    rows = np.flatnonzero(out[:, 112, 0] > 127)
    assert abs(len(rows) - 256 / 3) <= 2 and abs(rows.mean() - 111.5) <= 1.5
    gray = imagenet.resize_and_center_crop(np.full((50, 60, 1), 9, np.uint8), 32, 32)
    assert gray.shape == (32, 32, 3) and np.all(gray == 9)


def test_process_shards_partition_the_split():
    parts = [parallel.process_shard(10, i, 3) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10))
    assert [len(p) for p in parts] == [4, 3, 3]


def test_host_batches_from_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        source = streamed.open_split("validation")
        indices = parallel.process_shard(len(source), 1, 2)
        batches = list(streamed.host_batches(source, indices, streamed.BatchSpec(batch_size=2, resize=40, crop=32)))
        expected_labels = [source[int(i)]["label"] for i in indices]
    assert len(source) == 7 and list(indices) == [4, 5, 6]
    assert [b["images"].shape for b in batches] == [(2, 32, 32, 3)] * 2
    assert [b["mask"].tolist() for b in batches] == [[True, True], [True, False]]
    labels = np.concatenate([b["labels"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, expected_labels)
    assert np.all((labels >= 0) & (labels < 1000))


def test_unprepared_imagenet_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="tfds build imagenet2012 --manual_dir"):
        streamed.open_split("train", data_dir=str(tmp_path))


def test_in1k_config_options_and_its_clear_errors_for_missing_weights():
    from configs import in1k

    from pqdjax.config_checks import ConfigError, validate_streamed_config

    config = in1k.get_config("ipc=50,quantizer=lloyd,student=resnet50")
    assert config.ipcs == (50,) and config.quantize.method == "lloyd" and config.evaluate.model.arch == "resnet50"
    assert config.evaluate.train.temperature == 20.0 and config.decode.diffusion.strength == 0.7 and config.decode.diffusion.guidance == 8.0
    local = in1k.get_config("runlocal")
    assert local.teacher.model.arch == "resnet10" and local.prior.tiny_random and local.prior.kind == "stable_diffusion" and local.data.mock_examples > 0
    validate_streamed_config(local)
    with pytest.raises(ValueError, match="unknown option"):
        in1k.get_config("ipcs=10")
    with pytest.raises(ValueError, match="quantizer"):
        in1k.get_config("quantizer=kmeans")
    with pytest.raises(ConfigError, match="pretrained_dir is empty"):
        validate_streamed_config(config)
    config.prior.pretrained_dir = "/models/sd"
    with pytest.raises(ConfigError, match="teacher.checkpoint is empty"):
        validate_streamed_config(config)


def test_fingerprinted_data_fields_are_fields_of_the_config():
    """A misspelt field would be fingerprinted as None, so a change of it would silently reuse old artifacts."""
    from configs import in1k

    data = in1k.get_config().data
    for fields in (streamed.TRAIN_DATA_FIELDS, streamed.TEST_DATA_FIELDS):
        assert set(fields) <= set(data.keys())
        assert "tfds_data_dir" not in fields  # where the data lives is not what it is
    data = in1k.get_config("runlocal").data  # tfds mock data: data_fields reads its records for their digest
    changed = in1k.get_config("runlocal").data
    changed.test_limit = 7
    assert streamed.data_fields(changed, streamed.TEST_DATA_FIELDS) != streamed.data_fields(data, streamed.TEST_DATA_FIELDS)
    assert streamed.data_fields(changed, streamed.TRAIN_DATA_FIELDS) == streamed.data_fields(data, streamed.TRAIN_DATA_FIELDS)
    assert streamed.data_fields(data, streamed.TRAIN_DATA_FIELDS)["content"] == streamed.split_digest(
        streamed.open_configured_split(data, data.train_split))


def test_split_digest_tells_data_sources_apart():
    """Stage fingerprints hold split_digest: another preparation of the split (other records) redoes the work."""
    rng = np.random.default_rng(0)
    records = [{"image": rng.integers(0, 256, (5, 4, 3), np.uint8), "label": i % 3, "file_name": f"f{i}.JPEG"} for i in range(7)]
    same = [dict(r) for r in records]
    assert streamed.split_digest(records) == streamed.split_digest(same)
    for change in (lambda r: r[3].update(label=2), lambda r: r[6].update(file_name="other.JPEG"),
                   lambda r: r[0]["image"].__setitem__((0, 0, 0), (int(r[0]["image"][0, 0, 0]) + 1) % 256), lambda r: r.pop()):
        other = [dict(r, image=r["image"].copy()) for r in records]
        change(other)
        assert streamed.split_digest(other) != streamed.split_digest(records)
