"""MobileNet-V2: torchvision's parameter count, shapes, BatchNorm in train mode, and a KD step as an ImageNet student."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from references import torchvision

from pqdjax.models.classifiers import make_classifier
from pqdjax.models.mobilenet import InvertedResidual, MobileNetV2, make_divisible
from pqdjax.models.resnet import ResNet
from pqdjax.train import loop
from pqdjax.train import student as student_trainer


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_parameter_count_and_layout_match_torchvision():
    """3,504,872 trainable parameters with 1,000 classes: torchvision's documented count for mobilenet_v2, and
    torchvision's own model has it too (shapes only, no compile)."""
    model = make_classifier(ml_collections.ConfigDict(dict(arch="mobilenet_v2")), 1000)
    assert isinstance(model, MobileNetV2)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert set(variables) == {"params", "batch_stats"}
    assert _count(variables["params"]) == 3_504_872
    assert sum(p.numel() for p in torchvision().models.mobilenet_v2().parameters()) == 3_504_872
    params = variables["params"]
    # torchvision's key layout: features.0.0 stem conv, features.1.conv.0.0 depthwise (no expansion at t=1),
    # features.2.conv.0.0 expansion 16 -> 96, features.18.0 last conv, classifier.1.
    assert params["features_0_0"]["kernel"].shape == (3, 3, 3, 32)
    assert params["features_1"]["conv_0_0"]["kernel"].shape == (3, 3, 1, 32)
    assert params["features_2"]["conv_0_0"]["kernel"].shape == (1, 1, 16, 96)
    assert params["features_2"]["conv_1_0"]["kernel"].shape == (3, 3, 1, 96)
    assert params["features_17"]["conv_2"]["kernel"].shape == (1, 1, 960, 320)
    assert params["features_18_0"]["kernel"].shape == (1, 1, 320, 1280)
    assert params["classifier_1"]["kernel"].shape == (1280, 1000)
    # BatchNorm statistics: a mean and a variance per normalised channel.
    assert _count(variables["batch_stats"]) == 2 * _count([v["scale"] for v in _batch_norms(params)])


def _batch_norms(tree):
    if isinstance(tree, dict) and "scale" in tree:
        return [tree]
    return [bn for value in (tree.values() if isinstance(tree, dict) else []) for bn in _batch_norms(value)]


def test_make_divisible_matches_torchvision_rounding():
    assert [make_divisible(v) for v in (32, 16 * 0.25, 24 * 0.25, 96 * 0.5, 13.0, 1280 * 1.4)] == [32, 8, 8, 48, 16, 1792]
    with pytest.raises(ValueError, match="unknown classifier arch 'mobilenet_v3'.*'mobilenet_v2'"):
        make_classifier(ml_collections.ConfigDict(dict(arch="mobilenet_v3")), 10)


def _random_variables(model, image_size: int, seed: int) -> dict:
    """Variables of `model` filled on the host (He-normal kernels, unit BatchNorm, zero running means, small biases).

    XLA:CPU takes about 20 s to compile a flax init with dozens of random
    kernels; these tests need variables of the right tree and shapes, not
    flax's initializers, so they fill the tree from numpy instead.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "mean":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny():
    """A width-0.25 MobileNet-V2 with 5 classes and variables for 32x32 images."""
    model = MobileNetV2(num_classes=5, width_multiplier=0.25)
    return model, _random_variables(model, 32, seed=0)


def test_output_shape_and_train_mode_updates_batch_stats(tiny):
    model, variables = tiny
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 2.0 + 0.5

    @jax.jit
    def forward(variables, x):
        eval_logits = model.apply(variables, x, train=False)
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return eval_logits, train_logits, updates

    eval_logits, train_logits, updates = forward(variables, x)
    assert eval_logits.shape == train_logits.shape == (4, 5)
    assert np.isfinite(eval_logits).all() and np.isfinite(train_logits).all()
    # Train mode normalises with the batch's statistics, eval mode with the running ones: different outputs.
    assert not np.allclose(eval_logits, train_logits, atol=1e-6)
    stats = updates["batch_stats"]
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
    # The stem BatchNorm's running mean moves 0.1 of the way from 0 to the batch mean of the stem conv's output.
    stem = jax.lax.conv_general_dilated(
        x, variables["params"]["features_0_0"]["kernel"], (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(stats["features_0_1"]["mean"], 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # Running averages change in every BatchNorm, the deepest included.
    assert not np.allclose(stats["features_17"]["conv_3"]["var"], variables["batch_stats"]["features_17"]["conv_3"]["var"])


def test_residual_connection_only_where_stride_is_1_and_channels_match(tiny):
    """Zeroing a block's projection BatchNorm makes a residual block the identity and a non-residual one output zeros."""
    model, variables = tiny
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 8))  # width 0.25: block 3 maps 8 -> 8 channels, stride 1
    zeroed = jax.tree.map(lambda a: a, variables)
    for block in ("features_2", "features_3"):
        bn = dict(zeroed["params"][block]["conv_3"])
        bn["scale"], bn["bias"] = jnp.zeros_like(bn["scale"]), jnp.zeros_like(bn["bias"])
        zeroed["params"][block]["conv_3"] = bn
    def block_apply(block_name, features, stride, x):
        block = InvertedResidual(features, stride, 6)
        sub = {k: v[block_name] for k, v in zeroed.items()}
        return block.apply(sub, x, train=False)

    np.testing.assert_allclose(block_apply("features_3", 8, 1, x), x, atol=1e-6)  # residual
    np.testing.assert_allclose(block_apply("features_2", 8, 2, x), 0.0, atol=1e-6)  # strided: no shortcut


def test_one_kd_step_of_the_student_trainer_gives_a_finite_loss_and_changes_the_model():
    student = make_classifier(ml_collections.ConfigDict(dict(arch="mobilenet_v2", width_multiplier=0.25)), 5)
    teacher = ResNet(num_classes=5, depth_name="resnet10", width=4)
    teacher_variables = _random_variables(teacher, 32, seed=7)
    config = ml_collections.ConfigDict(dict(learning_rate=1e-2, weight_decay=0.01))
    tx, _ = student_trainer.make_optimizer(config, 4)
    # student_trainer.create_state's fields, with host-filled variables (see _random_variables).
    variables = _random_variables(student, 32, seed=0)
    state = student_trainer.StudentState(loop.create_train_state(variables["params"], tx), variables["batch_stats"])
    protocol = student_trainer.Protocol(temperature=20.0, augment="rrc_cutmix", image_size=32, cutmix_beta=1.0)
    step = student_trainer.make_step(student, teacher, tx, protocol, student_trainer.TORCHVISION)
    rng = np.random.default_rng(0)
    batch = {
        "images": jnp.asarray(rng.integers(0, 256, (8, 36, 36, 3), dtype=np.uint8)),
        "weights": jnp.asarray(rng.uniform(0.2, 2.0, 8).astype(np.float32)),
    }
    new_state, metrics = jax.jit(step)(state, teacher_variables, batch, jax.random.key(5))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert 0.0 <= float(metrics["teacher_agreement"]) <= 1.0
    old, new = state.train.params["classifier_1"]["kernel"], new_state.train.params["classifier_1"]["kernel"]
    assert not np.allclose(old, new)
    assert not np.allclose(state.batch_stats["features_0_1"]["mean"], new_state.batch_stats["features_0_1"]["mean"])


def test_in1k_config_student_option():
    from configs import in1k

    config = in1k.get_config("student=mobilenet_v2")
    assert isinstance(make_classifier(config.evaluate.model, 1000), MobileNetV2)
    local = in1k.get_config("runlocal,student=mobilenet_v2")
    assert local.evaluate.model.arch == "mobilenet_v2" and local.evaluate.model.width_multiplier == 0.25
    assert in1k.get_config("runlocal").evaluate.model.arch == "resnet10"
    with pytest.raises(ValueError, match="student must be one of.*mobilenet_v2"):
        in1k.get_config("student=mobilenet_v3")


def _torch_state_to_flax(state: dict) -> dict:
    """torchvision MobileNet-V2 state-dict keys -> the flax tree: `features.2.conv.1.0.weight` -> params/features_2/conv_1_0/kernel."""
    variables = {"params": {}, "batch_stats": {}}
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        value = tensor.detach().numpy()
        if leaf == "num_batches_tracked":
            continue
        names = ["_".join(path[:2]), "_".join(path[2:])] if len(path) > 2 and path[2] == "conv" else ["_".join(path)]
        collection, leaf = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}.get(leaf, ("params", leaf))
        if leaf == "weight":
            leaf = {4: "kernel", 2: "kernel", 1: "scale"}[value.ndim]
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value
        node = variables[collection]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node.setdefault(names[-1], {})[leaf] = jnp.asarray(value)
    return variables


def test_forward_matches_torchvisions_mobilenet_v2(tiny):
    """torchvision's own mobilenet_v2 (width 0.25, random BatchNorm statistics) converted by key name: same tree as
    ours, same logits in eval mode."""
    import torch

    model, ours = tiny
    torch.manual_seed(0)
    net = torchvision().models.mobilenet_v2(num_classes=5, width_mult=0.25).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    variables = _torch_state_to_flax(net.state_dict())
    assert jax.tree.structure(variables) == jax.tree.structure(ours)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), variables, ours)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_the_cifar_stem_keeps_a_4x4_map_at_32_px_with_the_same_parameters():
    """stem='cifar': the stem conv and the first 24-channel block at stride 1, so 32 px ends at 4x4 (torchvision's: 1x1)."""
    x = jnp.zeros((1, 32, 32, 3))
    final = {}
    for stem in ("imagenet", "cifar"):
        model = MobileNetV2(num_classes=5, width_multiplier=0.25, stem=stem)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
        final[stem] = variables
        _, state = jax.eval_shape(lambda v: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]), variables)
        last = state["intermediates"]["features_18_0"]["__call__"][0]
        assert last.shape[1:3] == ((1, 1) if stem == "imagenet" else (4, 4))
    shapes = lambda v: jax.tree.map(lambda a: a.shape, v)
    assert shapes(final["imagenet"]) == shapes(final["cifar"])
    with pytest.raises(ValueError, match="stem must be 'imagenet' or 'cifar'"):
        MobileNetV2(num_classes=5, stem="tiny").init(jax.random.key(0), x)
