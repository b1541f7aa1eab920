"""ResNet shapes against torchvision's state dicts, the converter against torch's layer definitions written out here
(a kernel with one non-zero entry), and the .pth reader's refusal to run pickled code."""

import collections
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import pytest
from references import torchvision

from pqdjax.models import convert_torchvision
from pqdjax.models.resnet import ResNet


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pth_reader_never_runs_pickled_code(tmp_path):
    """A .pth whose data.pkl calls os.system is refused, not executed."""
    path = str(tmp_path / "evil.pth")
    payload = pickle.dumps(collections.OrderedDict(x=_Evil()), protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", payload)
        archive.writestr("evil/byteorder", "little")
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        convert_torchvision.load_state_dict(path)
    with pytest.raises(convert_torchvision.CheckpointFormatError, match="not a torch zip"):
        (tmp_path / "legacy.pth").write_bytes(b"\x80\x02not a zip")
        convert_torchvision.load_state_dict(str(tmp_path / "legacy.pth"))


def test_resnet50_shapes():
    """Bottleneck blocks: 1x1 -> 3x3 -> 1x1 (4x planes) and the widened classifier input (shapes only, no compile)."""
    model = ResNet(num_classes=3, depth_name="resnet50", width=8)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert variables["params"]["layer1_0"]["conv3"]["kernel"].shape == (1, 1, 8, 32)
    assert variables["params"]["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    assert variables["params"]["fc"]["kernel"].shape == (8 * 8 * 4, 3)
    assert len([k for k in variables["params"] if k.startswith("layer3_")]) == 6
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.ones((2, 32, 32, 3)))
    assert out.shape == (2, 3)


def test_tiny_torchvision_checkpoint_round_trips_through_the_converter(tmp_path):
    """tiny_checkpoints writes a torchvision state dict that convert_torchvision turns back into the same variables."""
    import numpy as np

    from pqdjax.models.tiny_checkpoints import resnet_to_torchvision, write_tiny_torchvision_resnet

    model = ResNet(num_classes=5, depth_name="resnet10", width=4)
    path = str(tmp_path / "tiny.safetensors")
    written = write_tiny_torchvision_resnet(path, model, seed=3)
    state = convert_torchvision.load_state_dict(path)
    assert state["layer2.0.downsample.1.running_var"].shape == (8,) and state["conv1.weight"].shape == (4, 3, 7, 7)
    assert set(state) == set(resnet_to_torchvision(written))
    loaded = convert_torchvision.load_torchvision_resnet(path, model)
    assert jax.tree.structure(loaded) == jax.tree.structure(written)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(written)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _torchvision_resnet10_state_dict(width: int, num_classes: int, rng) -> dict:
    """A torchvision-layout state dict for resnet10 (one BasicBlock per stage), keys and OIHW shapes written out here."""
    import numpy as np

    def bn(prefix, c):
        return {f"{prefix}.weight": rng.uniform(0.5, 1.5, c), f"{prefix}.bias": rng.normal(0, 0.1, c),
                f"{prefix}.running_mean": rng.normal(0, 0.1, c), f"{prefix}.running_var": rng.uniform(0.5, 1.5, c),
                f"{prefix}.num_batches_tracked": np.array(1)}

    state = {"conv1.weight": rng.normal(0, 0.1, (width, 3, 7, 7)), **bn("bn1", width)}
    inplanes = width
    for stage in range(1, 5):
        planes = width * 2 ** (stage - 1)
        block = f"layer{stage}.0"
        state.update({f"{block}.conv1.weight": rng.normal(0, 0.1, (planes, inplanes, 3, 3)), **bn(f"{block}.bn1", planes),
                      f"{block}.conv2.weight": rng.normal(0, 0.1, (planes, planes, 3, 3)), **bn(f"{block}.bn2", planes)})
        if stage > 1:
            state.update({f"{block}.downsample.0.weight": rng.normal(0, 0.1, (planes, inplanes, 1, 1)), **bn(f"{block}.downsample.1", planes)})
        inplanes = planes
    state.update({"fc.weight": rng.normal(0, 0.1, (num_classes, inplanes)), "fc.bias": rng.normal(0, 0.1, num_classes)})
    return {k: np.asarray(v, np.float32) if v.dtype.kind == "f" else v for k, v in state.items()}


def test_converted_kernels_follow_torchs_conv_and_linear_definitions():
    """The OIHW -> HWIO conversion checked without pqdjax's checkpoint writer: a torch-layout state dict built here,
    with one non-zero entry in the stem kernel, gives the stem output that torch's Conv2d (cross-correlation,
    stride 2, padding 3) defines, computed in numpy; the linear layer's [out, in] weight lands where y = W x puts it."""
    import numpy as np

    rng = np.random.default_rng(0)
    model = ResNet(num_classes=5, depth_name="resnet10", width=4)
    state = _torchvision_resnet10_state_dict(4, 5, rng)
    state["conv1.weight"][:] = 0.0
    state["conv1.weight"][1, 2, 0, 3] = 1.0  # output channel 1 reads input channel 2 at kernel row 0, column 3
    variables = convert_torchvision.torchvision_to_flax(state, model, image_size=16)
    image = rng.normal(size=(1, 16, 16, 3)).astype(np.float32)
    _, captured = model.apply(variables, jnp.asarray(image), capture_intermediates=True, mutable=["intermediates"])
    stem = np.asarray(captured["intermediates"]["conv1"]["__call__"][0])[0]  # [8, 8, 4]
    padded = np.pad(image[0], ((3, 3), (3, 3), (0, 0)))
    expected = np.zeros((8, 8, 4), np.float32)
    for y in range(8):
        for x in range(8):
            expected[y, x, 1] = padded[2 * y + 0, 2 * x + 3, 2]
    np.testing.assert_allclose(stem, expected, atol=1e-6)
    # fc: torch computes logits = features @ W.T + b with W [out, in]
    features = rng.normal(size=(32,)).astype(np.float32)
    kernel, bias = (np.asarray(variables["params"]["fc"][k]) for k in ("kernel", "bias"))
    np.testing.assert_allclose(features @ kernel + bias, state["fc.weight"] @ features + state["fc.bias"], rtol=1e-5)
    # a 1x1 kernel with I != O (the downsample of layer2: 8 <- 4 channels) keeps O and I apart
    down = np.asarray(variables["params"]["layer2_0"]["downsample_conv"]["kernel"])
    np.testing.assert_array_equal(down[0, 0], state["layer2.0.downsample.0.weight"][:, :, 0, 0].T)
    # every parameter of the state dict was used (num_batches_tracked is dropped)
    assert sum(np.size(v) for v in jax.tree.leaves(variables)) == sum(
        np.size(v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("arch, parameters, state_keys", [
    ("resnet18", 11_689_512, 122), ("resnet34", 21_797_672, 218), ("resnet50", 25_557_032, 320), ("resnet101", 44_549_160, 626),
])
def test_full_size_resnets_have_torchvisions_parameter_count_and_state_dict_keys(arch, parameters, state_keys):
    """Against torchvision's own state dict (every key and shape) and its published figures (its model docs: 11.7M /
    21.8M / 25.6M / 44.5M parameters at 1,000 classes), shapes only."""
    import numpy as np

    from pqdjax.models.tiny_checkpoints import resnet_to_torchvision

    model = ResNet(num_classes=1000, depth_name=arch)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])) == parameters
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), variables)
    state = resnet_to_torchvision(zeros)
    assert len(state) == state_keys
    expected = _torchvision_state_shapes(arch)
    assert {k: tuple(np.shape(v)) for k, v in state.items()} == expected
    # the list itself against torchvision's published figures: its key count and its parameter count
    assert len(expected) == state_keys
    assert sum(int(np.prod(shape)) for k, shape in expected.items() if not k.endswith(("running_mean", "running_var", "tracked"))) == parameters


def _torchvision_state_shapes(arch: str) -> dict[str, tuple]:
    """{key: shape} of torchvision's own resnet{18,34,50,101}().state_dict(), built on torch's meta device (no memory)."""
    import torch

    with torch.device("meta"):
        model = getattr(torchvision().models, arch)()
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}
