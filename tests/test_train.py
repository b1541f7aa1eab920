import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from pqdjax.data.preprocess import to_model_range
from pqdjax.models.convnet import ConvNet
from pqdjax import parallel
from pqdjax.train import augment, classifier, loop, losses, weighting
from pqdjax.train import student as student_trainer
from pqdjax.train.student import Protocol, StudentState


def test_soft_label_kl_matches_closed_form():
    s = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    t = jnp.array([[0.5, 2.5, 0.0], [3.0, -1.0, 0.0]])
    T = 3.0
    p = np.exp(np.asarray(t) / T) / np.exp(np.asarray(t) / T).sum(1, keepdims=True)
    q = np.exp(np.asarray(s) / T) / np.exp(np.asarray(s) / T).sum(1, keepdims=True)
    expected = T**2 * (p * np.log(p / q)).sum(1)
    np.testing.assert_allclose(losses.soft_label_kl(s, t, T), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.soft_label_kl(t, t, T), 0.0, atol=1e-6)


def test_cross_entropy():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    ce = losses.cross_entropy(logits, jnp.array([0, 0]))
    np.testing.assert_allclose(ce, optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 0])), rtol=1e-6)


def test_per_class_mean_one():
    w = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    out = weighting.per_class_mean_one(w)
    np.testing.assert_allclose(out.mean(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], [1.5, 0.75, 0.75], rtol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        weighting.per_class_mean_one(np.array([[0.5, -0.1]]))
    with pytest.raises(ValueError, match="finite"):
        weighting.per_class_mean_one(np.array([[0.5, np.nan]]))


def test_weight_transforms_at_their_endpoints_and_between():
    w = np.array([[0.6, 0.3, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(weighting.transform_weights(w, power=1.0, mix=1.0), w, rtol=1e-12)
    np.testing.assert_array_equal(weighting.transform_weights(w, power=0.0), np.full(w.shape, 0.25))  # uniform: D4M
    np.testing.assert_allclose(weighting.transform_weights(w, mix=0.0), np.full(w.shape, 0.25), rtol=1e-12)
    # power 2, closed form: 0.36, 0.09, 0.01, 0 over 0.46; then half mixed with 1/4
    squared = np.array([0.36, 0.09, 0.01, 0.0]) / 0.46
    np.testing.assert_allclose(weighting.transform_weights(w, power=2.0)[0], squared, rtol=1e-12)
    np.testing.assert_allclose(weighting.transform_weights(w, power=2.0, mix=0.5)[0], 0.5 * squared + 0.125, rtol=1e-12)
    np.testing.assert_allclose(weighting.transform_weights(w, power=0.5)[1], 0.25, rtol=1e-12)  # uniform stays uniform
    # the student's weights: mean 1 per class; power 0 gives d4m's (all ones) exactly
    config = ml_collections.ConfigDict(dict(power=0.0, mix=1.0))
    np.testing.assert_array_equal(weighting.student_weights(w, config), np.ones(w.shape, np.float32))
    for bad in (dict(power=-1.0), dict(power=np.nan), dict(mix=1.5)):
        with pytest.raises(ValueError, match="weighting"):
            weighting.transform_weights(w, **bad)


def test_weighted_loss_per_class_and_per_batch():
    losses_, weights = jnp.array([1.0, 3.0, 2.0]), jnp.array([1.5, 0.5, 0.25])
    np.testing.assert_allclose(weighting.weighted_loss(losses_, weights, "class"), (1.5 + 1.5 + 0.5) / 3, rtol=1e-6)
    np.testing.assert_allclose(weighting.weighted_loss(losses_, weights, "batch"), (1.5 + 1.5 + 0.5) / 2.25, rtol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        weighting.weighted_loss(losses_, weights, "sample")


def test_student_step_normalises_its_loss_as_asked():
    """The step's loss is the weighted KL of its batch (one view: no crop, no flip), normalised per class or per batch."""
    student = ConvNet(num_classes=3, width=4, depth=1)
    images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1.0, maxval=1.0)
    params = student.init(jax.random.key(1), images[:1])["params"]
    weights = jnp.array([2.0, 0.5, 0.5, 1.0, 1.0, 1.0])
    teacher_logits = jax.random.normal(jax.random.key(2), (6, 1, 3))  # [n, views, classes]
    per_example = losses.soft_label_kl(student.apply({"params": params}, images), teacher_logits[:, 0], 2.0)
    tx = optax.sgd(0.0)
    for normalize, want in (("class", jnp.mean(weights * per_example)),
                            ("batch", jnp.sum(weights * per_example) / jnp.sum(weights))):
        protocol = Protocol(temperature=2.0, crop_padding=0, flip=False, per_view_table=True, loss_normalization=normalize)
        step = student_trainer.make_step(student, None, tx, protocol)
        state = StudentState(loop.create_train_state(jax.tree.map(jnp.array, params), tx))
        batch = {"images": images, "weights": weights, "teacher_logits": teacher_logits}
        _, metrics = step(state, {}, batch, jax.random.key(3))
        np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)


def test_cutmix_students_learn_the_teachers_output_on_the_mixed_image():
    """rrc_cutmix: the target of each augmented (cropped, flipped, cut-and-mixed) image is the teacher's output on it."""
    from pqdjax.train import imagenet_augment

    student = ConvNet(num_classes=3, width=4, depth=1)
    teacher = ConvNet(num_classes=3, width=6, depth=1)
    images = jax.random.uniform(jax.random.key(0), (6, 12, 12, 1), minval=-1.0, maxval=1.0)
    params = student.init(jax.random.key(1), images[:1])["params"]
    teacher_params = teacher.init(jax.random.key(4), images[:1])["params"]
    weights = jnp.array([2.0, 0.5, 0.5, 1.0, 1.0, 1.0])
    tx = optax.sgd(0.0)
    rng = jax.random.key(3)
    step = student_trainer.make_step(student, teacher, tx, Protocol(temperature=2.0, augment="rrc_cutmix", cutmix_beta=1.0))
    state = StudentState(loop.create_train_state(jax.tree.map(jnp.array, params), tx))
    _, metrics = step(state, {"params": teacher_params}, {"images": images, "weights": weights}, rng)
    mixed, mixed_weights = imagenet_augment.student_augment(rng, images, weights, 12, 1.0)
    assert not np.allclose(mixed_weights, weights)  # CutMix moved weight between images
    kl = losses.soft_label_kl(student.apply({"params": params}, mixed), teacher.apply({"params": teacher_params}, mixed), 2.0)
    np.testing.assert_allclose(metrics["loss"], jnp.mean(mixed_weights * kl), rtol=1e-5)


def test_hard_label_students_learn_each_images_class():
    student = ConvNet(num_classes=3, width=4, depth=1)
    images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1.0, maxval=1.0)
    params = student.init(jax.random.key(1), images[:1])["params"]
    weights, labels = jnp.array([2.0, 0.5, 0.5, 1.0, 1.0, 1.0]), jnp.array([0, 0, 1, 1, 2, 2])
    tx = optax.sgd(0.0)
    step = student_trainer.make_step(student, None, tx, Protocol(crop_padding=0, flip=False, hard_labels=True))
    state = StudentState(loop.create_train_state(jax.tree.map(jnp.array, params), tx))
    _, metrics = step(state, {}, {"images": images, "weights": weights, "labels": labels}, jax.random.key(3))
    log_probs = jax.nn.log_softmax(student.apply({"params": params}, images))
    np.testing.assert_allclose(metrics["loss"], jnp.mean(weights * -log_probs[jnp.arange(6), labels]), rtol=1e-5)
    with pytest.raises(ValueError, match="hard labels cannot follow CutMix"):
        Protocol(augment="rrc_cutmix", cutmix_beta=1.0, hard_labels=True)
    # train_student needs the labels for them, and trains without any teacher
    config = _train_config()
    config.labels = "hard"
    with pytest.raises(ValueError, match="pass labels"):
        student_trainer.train_student(student, None, None, np.asarray(images), np.ones(6), config, jax.random.key(1), _one_device())
    trained, _ = student_trainer.train_student(student, None, None, np.asarray(images), np.ones(6), config, jax.random.key(1),
                                               _one_device(), labels=np.asarray(labels))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(trained))


def test_random_flip_mirrors_exactly_the_chosen_images():
    images = jax.random.normal(jax.random.key(0), (64, 5, 6, 2))
    out = augment.random_flip(jax.random.key(1), images)
    flipped = np.all(np.asarray(out) == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(np.asarray(out) == np.asarray(images), axis=(1, 2, 3))
    assert np.all(flipped | kept) and 10 < flipped.sum() < 54


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
    out = np.asarray(augment.random_crop(jax.random.key(3), images, padding=2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    for i in range(2):
        matches = [(a, b) for a in range(5) for b in range(5) if np.array_equal(padded[i, a : a + 6, b : b + 6], out[i])]
        assert matches
    np.testing.assert_array_equal(augment.random_crop(jax.random.key(3), images, padding=0), images)


@pytest.mark.parametrize("padding,flip", [(2, True), (1, False), (0, True)])
def test_crop_and_flip_draws_what_random_crop_then_random_flip_draw(padding, flip):
    images = jax.random.normal(jax.random.key(0), (40, 6, 5, 2))
    crop_rng, flip_rng = jax.random.split(jax.random.key(7))
    expected = augment.random_crop(crop_rng, images, padding)
    expected = augment.random_flip(flip_rng, expected) if flip else expected
    np.testing.assert_array_equal(augment.crop_and_flip(jax.random.key(7), images, padding, flip), expected)


@pytest.mark.parametrize("padding,flip", [(2, True), (1, False)])
def test_view_index_numbers_every_view_once_in_all_views_order(padding, flip):
    views = augment.all_views(padding, flip)
    assert len(views) == augment.num_views(padding, flip) == (2 * padding + 1) ** 2 * (2 if flip else 1)
    np.testing.assert_array_equal(augment.view_index(jnp.asarray(views), padding, flip), np.arange(len(views)))
    # every view apply_views makes is a distinct image (a random image has no symmetry)
    image = np.asarray(jax.random.normal(jax.random.key(1), (1, 5, 5, 1)))
    made = [np.asarray(augment.apply_views(image, jnp.asarray(v)[None], padding))[0] for v in views]
    assert len({m.tobytes() for m in made}) == len(views)


def test_teacher_logits_per_view_equal_the_teacher_on_each_view():
    teacher = ConvNet(num_classes=3, width=4, depth=1)
    images = np.asarray(jax.random.uniform(jax.random.key(0), (7, 8, 8, 1), minval=-1, maxval=1))
    params = teacher.init(jax.random.key(1), images[:1])["params"]
    table = student_trainer.teacher_logits_per_view(teacher, {"params": params}, images, crop_padding=1, flip=True, batch_size=3)
    views = augment.all_views(1, True)
    assert table.shape == (7, len(views), 3)
    for v in (0, 5, len(views) - 1):
        direct = teacher.apply({"params": params}, augment.apply_views(images, jnp.tile(views[v], (7, 1)), 1))
        np.testing.assert_allclose(table[:, v], direct, rtol=1e-5, atol=1e-5)


def test_student_step_with_the_teacher_table_equals_the_step_with_the_teacher():
    """Five SGD steps (Adam would amplify float noise in near-zero gradients) with either teacher target."""
    images, _ = _two_class_images(n=24)
    float_images = jnp.asarray(images, jnp.float32) / 127.5 - 1
    teacher, student = ConvNet(num_classes=2, width=8, depth=2), ConvNet(num_classes=2, width=4, depth=1)
    teacher_params = teacher.init(jax.random.key(5), float_images[:1])["params"]
    params = student.init(jax.random.key(6), float_images[:1])["params"]
    tx = optax.sgd(0.5)
    data = {"images": float_images, "weights": jnp.linspace(0.5, 1.5, 24)}
    tables = {
        True: dict(data, teacher_logits=student_trainer.teacher_logits_per_view(teacher, {"params": teacher_params}, float_images, 1, True)),
        False: data,
    }
    trained = {}
    for table, table_data in tables.items():
        step = student_trainer.make_step(student, teacher, tx, Protocol(temperature=2.0, crop_padding=1, flip=True, per_view_table=table))
        state = StudentState(loop.create_train_state(jax.tree.map(jnp.copy, params), tx))
        for i in range(5):
            batch = {k: v[jnp.arange(8) + 8 * (i % 3)] for k, v in table_data.items()}
            state, metrics = step(state, {"params": teacher_params}, batch, jax.random.key(i))
        trained[table] = state.train.params
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(trained[False]), jax.tree.leaves(params)))
    assert moved > 1e-3
    for a, b in zip(jax.tree.leaves(trained[True]), jax.tree.leaves(trained[False])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_epoch_batches_visit_every_example_once_per_epoch():
    batches = [np.asarray(b) for b in loop.epoch_batches(jax.random.key(0), 10, 3, 6)]
    assert len(batches) == 6 and all(len(b) == 3 for b in batches)
    first_epoch = np.concatenate(batches[:3])
    assert len(set(first_epoch.tolist())) == 9  # 3 batches of 3 from a permutation of 10
    assert [len(b) for b in loop.epoch_batches(jax.random.key(0), 4, 100, 2)] == [4, 4]


def _one_device():
    return parallel.make_mesh(devices=jax.devices()[:1])


def _train_config(**overrides):
    config = ml_collections.ConfigDict(dict(
        steps=40, batch_size=16, learning_rate=3e-3, warmup_steps=0, weight_decay=0.0,
        crop_padding=1, flip=False, log_every=10, temperature=2.0,
    ))
    config.update(overrides)
    return config


def _two_class_images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 8, 8, 1))
    images[labels == 1, :, :4] += 150  # class 1: bright left half
    return images.astype(np.uint8), labels.astype(np.int32)


def test_teacher_learns_a_separable_task():
    images, labels = _two_class_images()
    model = ConvNet(num_classes=2, width=8, depth=2)
    params = classifier.train_classifier(model, images, labels, _train_config(), jax.random.key(0), fast_conv=True)
    test_images, test_labels = _two_class_images(seed=1)
    assert classifier.accuracy(model, {"params": params}, test_images, test_labels, batch_size=24) > 0.95


def test_student_learns_from_teacher_and_weights_matter():
    images, labels = _two_class_images()
    teacher = ConvNet(num_classes=2, width=8, depth=2)
    teacher_params = classifier.train_classifier(teacher, images, labels, _train_config(), jax.random.key(0), fast_conv=False)
    float_images = np.asarray(images, np.float32) / 127.5 - 1
    student = ConvNet(num_classes=2, width=8, depth=2)
    teacher_variables = {"params": teacher_params}
    variables, _ = student_trainer.train_student(student, teacher, teacher_variables, float_images, np.ones(len(images)), _train_config(),
                                                 jax.random.key(1), _one_device(), fast_conv=True)
    test_images, test_labels = _two_class_images(seed=1)
    assert classifier.accuracy(student, variables, test_images, test_labels) > 0.95
    # Weight only class 0: the student never sees class 1's targets and loses it.
    weights = (labels == 0).astype(np.float32) * 2
    variables0, _ = student_trainer.train_student(student, teacher, teacher_variables, float_images, weights, _train_config(),
                                                  jax.random.key(1), _one_device(), fast_conv=True)
    assert classifier.accuracy(student, variables0, test_images, test_labels) < 0.9


def test_uint8_images_reach_the_networks_as_their_model_range_floats():
    """MODEL_RANGE_UINT8 (the in-memory runs' students, fed the stored uint8 images) converts inside jit as
    to_model_range does on the host (MODEL_RANGE), to one float32 rounding (XLA fuses the division differently):
    the teacher sees the same views either way, and a float space fed the raw uint8 values would not."""
    images, _ = _two_class_images(n=16)
    converted = jax.jit(student_trainer.MODEL_RANGE_UINT8.to_float)(images)
    np.testing.assert_allclose(converted, to_model_range(images), rtol=0, atol=2.0 ** -23)
    teacher = ConvNet(num_classes=2, width=4, depth=1)
    variables = teacher.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    tables = [student_trainer.teacher_logits_per_view(teacher, variables, x, 1, True, space, batch_size=6)
              for x, space in ((images, student_trainer.MODEL_RANGE_UINT8),
                               (np.asarray(to_model_range(images)), student_trainer.MODEL_RANGE),
                               (images.astype(np.float32), student_trainer.MODEL_RANGE))]
    assert tables[0].shape == (16, 18, 2)  # 9 crops x 2 flips
    np.testing.assert_allclose(tables[0], tables[1], rtol=1e-5, atol=1e-6)
    assert np.abs(tables[2] - tables[1]).max() > 0.1


def test_non_finite_loss_stops_training():
    images, labels = _two_class_images()
    images_nan = np.asarray(images, np.float32) / 127.5 - 1
    model = ConvNet(num_classes=2, width=4, depth=1)
    with pytest.raises(loop.NonFiniteError, match="NaN or inf"):
        images_nan[0, 0, 0, 0] = np.nan
        student_trainer.train_student(model, model, model.init(jax.random.key(0), images_nan[:1]), images_nan, np.ones(len(images)),
                                      _train_config(), jax.random.key(1), _one_device())
    with pytest.raises(loop.NonFiniteError, match="teacher: loss=nan at step"):
        classifier.train_classifier(model, images, labels, _train_config(learning_rate=float("nan")), jax.random.key(0), fast_conv=False)


def test_predict_logits_pads_the_last_batch():
    images, _ = _two_class_images(n=10)
    model = ConvNet(num_classes=2, width=4, depth=1)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    full = classifier.predict_logits(model, {"params": params}, images, batch_size=10)
    batched = classifier.predict_logits(model, {"params": params}, images, batch_size=4)
    np.testing.assert_allclose(batched, full, rtol=1e-5, atol=1e-5)


def test_ema_follows_the_params_as_written_out():
    """Plain SGD (lr 0.5) on f(p) = p^2 / 2 for three steps, with decay 0.9, against the recursion by hand."""
    tx = optax.sgd(0.5)
    state = loop.create_train_state({"p": jnp.array([4.0, -2.0])}, tx, ema=True)
    p, ema = np.array([4.0, -2.0]), np.array([4.0, -2.0])
    for _ in range(3):
        state = loop.apply_gradients(state, {"p": state.params["p"]}, tx, ema_decay=0.9)
        p = p - 0.5 * p
        ema = 0.9 * ema + 0.1 * p
    np.testing.assert_allclose(state.params["p"], p, rtol=1e-6)
    np.testing.assert_allclose(state.ema_params["p"], ema, rtol=1e-6)
    assert abs(float(state.ema_params["p"][0]) - 3.218) < 1e-5  # 0.9^3 * 4 + 0.1 * (0.81 * 2 + 0.9 * 1 + 0.5)
    with pytest.raises(ValueError, match="ema_decay"):
        loop.apply_gradients(state, {"p": state.params["p"]}, tx)
    assert loop.create_train_state({"p": jnp.zeros(2)}, tx).ema_params is None


def test_training_length_in_epochs_follows_the_set_size():
    """epochs E over n images at batch B: E * (n // min(B, n)) steps, the steps epoch_batches cuts; epochs 0: steps."""
    config = ml_collections.ConfigDict(dict(steps=300, batch_size=100, epochs=0))
    assert [loop.training_steps(config, n) for n in (10, 100, 500, 550)] == [300] * 4
    config.epochs = 7
    assert [loop.training_steps(config, n) for n in (10, 100, 500, 550)] == [7, 7, 35, 35]
    for n in (10, 100, 550):
        batches = list(loop.epoch_batches(jax.random.key(0), n, config.batch_size, loop.training_steps(config, n)))
        seen = np.concatenate([np.asarray(b) for b in batches])
        assert len(seen) == 7 * (n // min(100, n)) * min(100, n)  # 7 full passes (the remainder of each dropped)
        np.testing.assert_array_equal(np.bincount(seen, minlength=n).max(), 7)
