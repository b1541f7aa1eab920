"""ResNet shapes, and the .pth reader's refusal to run pickled code (no torch needed)."""

import collections
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import pytest

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
