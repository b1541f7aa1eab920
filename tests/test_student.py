"""The student trainer at the ImageNet protocol: augmentations, masked AdamW, the data-parallel step, resuming."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pqdjax import artifacts, parallel
from pqdjax.models.resnet import ResNet
from pqdjax.train import imagenet_augment
from pqdjax.train import student as student_trainer
from pqdjax.train.checkpoint import Checkpoints
from pqdjax.train.student import TORCHVISION, Protocol

KD = Protocol(temperature=20.0, augment="rrc_cutmix", image_size=16, cutmix_beta=1.0)


def test_crop_and_resize_full_window_is_identity_and_integer_window_is_a_slice():
    image = jax.random.uniform(jax.random.key(0), (16, 16, 3))
    np.testing.assert_allclose(imagenet_augment.crop_and_resize(image, 0.0, 0.0, 16.0, 16.0, 16), image, atol=1e-5)
    window = imagenet_augment.crop_and_resize(image, 4.0, 2.0, 8.0, 8.0, 8)
    np.testing.assert_allclose(window, image[4:12, 2:10], atol=1e-5)


def test_random_resized_crop_areas_follow_the_scale_range():
    """torchvision's law, read off crops of a 2-channel ramp (x and y coordinates): resizing is linear, so a crop's
    interior slope is its side over the output size. Crops of area fraction up to 0.75 are never clipped (the widest
    aspect 4/3 fits); below 0.7 the fraction is U(0.08, 0.7), and log aspect U(log 3/4, log 4/3)."""
    from scipy import stats

    side, size, n = 64, 32, 1024
    coords = jnp.arange(side, dtype=jnp.float32)
    ramp = jnp.stack(jnp.broadcast_arrays(coords[None, :], coords[:, None]), axis=-1)  # [y, x, (x, y)]
    crops = imagenet_augment.random_resized_crop(jax.random.key(1), jnp.stack([ramp] * n), size)
    assert crops.shape == (n, size, size, 2)
    a, b = size // 4, 3 * size // 4  # interior columns and rows: the resize kernel stays inside the image
    widths = np.asarray(crops[:, size // 2, b, 0] - crops[:, size // 2, a, 0]) * size / (b - a)
    heights = np.asarray(crops[:, b, size // 2, 1] - crops[:, a, size // 2, 1]) * size / (b - a)
    fraction, log_aspect = widths * heights / side**2, np.log(widths / heights)
    assert fraction.min() > 0.08 * 0.98 and fraction.max() <= 1.0 + 1e-3
    unclipped = fraction < 0.7
    assert unclipped.sum() > n / 2
    assert stats.kstest(fraction[unclipped], stats.uniform(0.08, 0.7 - 0.08).cdf).pvalue > 0.01
    assert np.abs(log_aspect[unclipped]).max() <= np.log(4 / 3) + 0.01  # the slopes read sides to within 1%
    assert stats.kstest(log_aspect[unclipped], stats.uniform(np.log(3 / 4), 2 * np.log(4 / 3)).cdf).pvalue > 0.01


def test_cutmix_mixes_weights_by_pasted_area():
    images = jnp.stack([jnp.full((10, 10, 1), float(i)) for i in range(6)])
    weights = jnp.arange(6.0) + 1
    mixed, mixed_weights = imagenet_augment.cutmix(jax.random.key(3), images, weights, beta=1.0)
    for i in range(6):
        values, counts = np.unique(np.asarray(mixed[i]), return_counts=True)
        fractions = dict(zip(values.tolist(), (counts / 100).tolist()))
        expected = sum(f * float(weights[int(v)]) for v, f in fractions.items())
        np.testing.assert_allclose(float(mixed_weights[i]), expected, rtol=1e-5)
    assert not np.array_equal(np.asarray(mixed), np.asarray(images))


def test_weight_decay_skips_norm_scales_and_biases():
    model = ResNet(num_classes=4, width=4)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    config = ml_collections.ConfigDict(dict(learning_rate=0.1, weight_decay=0.5))
    tx, _ = student_trainer.make_optimizer(config, 10)
    params = variables["params"]
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["bn1"]["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["fc"]["bias"]).max()) == 0.0
    np.testing.assert_allclose(updates["fc"]["kernel"], -0.1 * 0.5 * params["fc"]["kernel"], rtol=1e-5)


def _tiny_setup(image_size=16):
    student = ResNet(num_classes=5, depth_name="resnet10", width=4)
    teacher = ResNet(num_classes=5, depth_name="resnet10", width=8)
    teacher_variables = jax.jit(teacher.init)(jax.random.key(7), jnp.zeros((1, image_size, image_size, 3)))
    config = ml_collections.ConfigDict(dict(
        epochs=2, batch_size=16, learning_rate=1e-2, weight_decay=0.01, warmup_steps=0, temperature=20.0,
        augment="rrc_cutmix", image_size=image_size, cutmix_beta=1.0, log_every=1, checkpoint_every=2,
    ))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 20, 20, 3), dtype=np.uint8)
    weights = rng.uniform(0.2, 2.0, 32).astype(np.float32)
    return student, teacher, teacher_variables, config, images, weights


@pytest.mark.parametrize("loss_normalization", ["class", "batch"])
def test_kd_step_loss_is_the_weighted_kl_of_the_augmented_batch(loss_normalization):
    student, teacher, teacher_variables, config, images, weights = _tiny_setup()
    tx, _ = student_trainer.make_optimizer(config, 4)
    state = student_trainer.create_state(student, jax.random.key(0), (16, 16, 3), tx)
    step = student_trainer.make_step(student, teacher, tx, Protocol(**{**KD.__dict__, "loss_normalization": loss_normalization}), TORCHVISION)
    batch = {"images": jnp.asarray(images[:16]), "weights": jnp.asarray(weights[:16])}
    rng = jax.random.key(5)
    _, metrics = jax.jit(step)(state, teacher_variables, batch, rng)
    # An independent recomputation of the same loss from the same augmented batch.
    @jax.jit
    def oracle(batch):
        augmented, mixed_weights = imagenet_augment.student_augment(rng, batch["images"] / 255.0, batch["weights"], 16, 1.0)
        x = (augmented - jnp.asarray((0.485, 0.456, 0.406))) / jnp.asarray((0.229, 0.224, 0.225))
        student_logits, _ = student.apply({"params": state.train.params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])
        teacher_logits = teacher.apply(teacher_variables, x, train=False)
        p = jax.nn.softmax(teacher_logits / 20.0)
        kl = 400.0 * jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(student_logits / 20.0)), axis=1)
        if loss_normalization == "batch":
            return jnp.sum(mixed_weights * kl) / jnp.sum(mixed_weights)
        return jnp.mean(mixed_weights * kl)

    np.testing.assert_allclose(float(metrics["loss"]), float(oracle(batch)), rtol=1e-4)


def test_sharded_step_on_8_devices_equals_single_device_step():
    assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"
    student, teacher, teacher_variables, config, images, weights = _tiny_setup()
    tx, _ = student_trainer.make_optimizer(config, 4)
    step = student_trainer.make_step(student, teacher, tx, KD, TORCHVISION)
    results = []
    for mesh in (parallel.make_mesh(devices=jax.devices()[:1]), parallel.make_mesh()):
        assert parallel.data_parallel_size(mesh) in (1, 8)
        state = parallel.replicate(mesh, student_trainer.create_state(student, jax.random.key(0), (16, 16, 3), tx))
        sharded_step = student_trainer.jit_data_parallel(step, mesh)
        teacher_on_mesh = parallel.replicate(mesh, teacher_variables)
        for s in range(2):
            batch = parallel.shard_host_batch(mesh, {"images": images[16 * s : 16 * (s + 1)], "weights": weights[16 * s : 16 * (s + 1)]})
            state, metrics = sharded_step(state, teacher_on_mesh, batch, jax.random.key(s))
        if parallel.data_parallel_size(mesh) == 8:
            assert len(batch["images"].sharding.device_set) == 8
        results.append((jax.device_get(state), float(metrics["loss"])))
    (single, single_loss), (sharded, sharded_loss) = results
    # float32 sums split over 8 devices round differently: 1e-5 relative was seen on an AVX-512 host
    assert sharded_loss == pytest.approx(single_loss, rel=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), single, sharded)
    # The step did change the parameters and the BatchNorm statistics.
    fresh = student_trainer.create_state(student, jax.random.key(0), (16, 16, 3), tx)
    assert not np.allclose(single.batch_stats["bn1"]["mean"], fresh.batch_stats["bn1"]["mean"])


def test_resuming_from_a_mid_training_checkpoint_continues_identically(tmp_path, monkeypatch):
    student, teacher, teacher_variables, config, images, weights = _tiny_setup()
    mesh = parallel.make_mesh()
    args = (student, teacher, teacher_variables, images, weights, config, jax.random.key(11), mesh)
    saver = lambda folder: Checkpoints(artifacts.ArtifactStore(str(tmp_path / folder)), "checkpoints/student", "fp", every=2)
    uninterrupted, info = student_trainer.train_student(*args, space=TORCHVISION, checkpoints=saver("a"))
    assert info["steps"] == 4 and info["resumed_from"] == 0
    # Killed right after the step-2 checkpoint is written.
    real_save = Checkpoints.save

    def save_then_die(self, state, step):
        real_save(self, state, step)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        student_trainer.train_student(*args, space=TORCHVISION, checkpoints=saver("b"))
    monkeypatch.setattr(Checkpoints, "save", real_save)
    resumed, info = student_trainer.train_student(*args, space=TORCHVISION, checkpoints=saver("b"))
    assert info["resumed_from"] == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(uninterrupted))
    # the restored state was placed on the mesh like a fresh one (replicated), not left on the host
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(resumed))


def test_compiled_flops_count_a_matmul_on_one_and_eight_devices():
    """XLA's count against the closed form 2 m k n (the squared sum adds under 1%), summed over the mesh's devices."""
    from pqdjax.cost import compiled_flops

    w, x = jnp.ones((256, 128)), jnp.ones((64, 256))
    closed_form = 2 * 64 * 256 * 128
    for devices in (1, 8):
        mesh = parallel.make_mesh(devices=jax.devices()[:devices])
        f = jax.jit(lambda w, x: jnp.sum((x @ w) ** 2), in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)))
        assert compiled_flops(f, w, x, devices=devices) == pytest.approx(closed_form, rel=0.01)


def test_a_students_training_flops_are_its_steps_times_the_step():
    """flops = steps x the step's count (plus the view table's teacher passes); the step costs at least the
    forward and backward passes of the student's conv on the batch (closed form: 3 x 2 x 9 C_in C_out H W each)."""
    from pqdjax.models.convnet import ConvNet

    student, teacher = ConvNet(num_classes=3, width=8, depth=1), ConvNet(num_classes=3, width=8, depth=1)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
    teacher_variables = teacher.init(jax.random.key(0), images[:1])
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    flops = {}
    for steps in (2, 4):
        config = ml_collections.ConfigDict(dict(steps=steps, batch_size=8, learning_rate=1e-3, warmup_steps=0, weight_decay=0.0,
                                                temperature=2.0, crop_padding=1, flip=True, log_every=100))
        for table in (False, True):
            _, info = student_trainer.train_student(student, teacher, teacher_variables, images, np.ones(16), config,
                                                    jax.random.key(1), mesh, per_view_table=table)
            flops[steps, table] = info["flops"]
    step = flops[4, False] - flops[2, False]
    assert flops[4, False] == pytest.approx(2 * flops[2, False], rel=1e-9)
    assert step / 2 >= 3 * 8 * 2 * 9 * 1 * 8 * 8 * 8  # forward + backward of the conv, 8 images a step
    table_flops = flops[2, True] - (flops[4, True] - flops[2, True])  # the table, computed once
    assert table_flops >= 16 * 18 * 2 * 9 * 8 * 8 * 8  # the teacher's conv on 16 images x 18 views


def test_a_set_smaller_than_the_mesh_trains_on_one_device_as_on_a_one_device_mesh():
    """6 images on 8 devices: no global batch can split evenly, so one device trains them (one process); the result is the
    one-device mesh's, returned on the run's mesh."""
    from pqdjax.models.convnet import ConvNet

    student, teacher = ConvNet(num_classes=3, width=4, depth=1), ConvNet(num_classes=3, width=4, depth=1)
    images = np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
    config = ml_collections.ConfigDict(dict(steps=3, batch_size=4, learning_rate=1e-2, warmup_steps=0, weight_decay=0.0,
                                            temperature=2.0, crop_padding=1, flip=True, log_every=10))
    args = (student, teacher, teacher.init(jax.random.key(0), images[:1]), images, np.ones(6), config, jax.random.key(1))
    on_eight, _ = student_trainer.train_student(*args, parallel.make_mesh())
    on_one, _ = student_trainer.train_student(*args, parallel.make_mesh(devices=jax.devices()[:1]))
    assert len(jax.tree.leaves(on_eight)[0].sharding.device_set) == 8
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(on_eight), jax.device_get(on_one))


@pytest.mark.parametrize("bad, message", [
    (lambda w: np.concatenate([w[:3], [np.nan], w[4:]]), r"weights\[3\] = nan \(1 such\)"),
    (lambda w: -w, r"weights\[0\] = -.* \(32 such\)"),
    (lambda w: w[:-1], r"weights must be 32 numbers, one per image, got shape \(31,\)"),
])
def test_bad_image_weights_are_refused_before_training(bad, message):
    from pqdjax.errors import InputError

    student, teacher, teacher_variables, config, images, weights = _tiny_setup()
    with pytest.raises(InputError, match="^student: .*" + message):
        student_trainer.train_student(student, teacher, teacher_variables, images, bad(weights), config, jax.random.key(0),
                                      parallel.make_mesh(), space=TORCHVISION, name="student")
