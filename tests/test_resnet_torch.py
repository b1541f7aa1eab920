"""ResNet in flax against torchvision's own ResNets (torchvision.models), and the checkpoint readers on files torch writes."""

import collections

import jax
import ml_collections
import numpy as np
import pytest
import torch
from references import torchvision
from torch import nn as tnn

from pqdjax.models import convert_torchvision
from pqdjax.models.classifiers import make_classifier
from pqdjax.models.resnet import ResNet



def _trained_looking(model: tnn.Module, seed: int = 0) -> tnn.Module:
    """`model` (a torchvision ResNet) in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _torchvision_resnet(arch: str, num_classes: int, seed: int = 0) -> tnn.Module:
    torch.manual_seed(seed)
    return _trained_looking(getattr(torchvision().models, arch)(num_classes=num_classes), seed)


def _assert_eval_logits_equal(torch_model: tnn.Module, model, variables, image_size: int, seed: int) -> None:
    """torch_model and the flax `model` with `variables` give the same logits, in eval mode, on 2 random images."""
    images = np.random.default_rng(seed).normal(size=(2, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def _converted(torch_model: tnn.Module, model) -> dict:
    """The flax variables of `model` converted from torch_model's state dict."""
    return convert_torchvision.torchvision_to_flax({k: v.numpy() for k, v in torch_model.state_dict().items()}, model)


def test_resnet18_conversion_matches_torch_forward(tmp_path):
    torch_model = _torchvision_resnet("resnet18", 10)
    path = str(tmp_path / "resnet18.pth")
    torch.save(torch_model.state_dict(), path)
    model = make_classifier(ml_collections.ConfigDict(dict(arch="resnet18")), 10)
    variables = convert_torchvision.load_torchvision_resnet(path, model)
    _assert_eval_logits_equal(torch_model, model, variables, image_size=64, seed=0)
    # The same weights through safetensors give the same variables.
    from safetensors.torch import save_file

    st_path = str(tmp_path / "resnet18.safetensors")
    save_file(torch_model.state_dict(), st_path)
    from_safetensors = convert_torchvision.load_torchvision_resnet(st_path, model)
    jax.tree.map(np.testing.assert_array_equal, from_safetensors, variables)


def test_resnet10_the_students_depth_matches_torchvisions_resnet_class():
    """ResNet-10 (one BasicBlock per stage; the runlocal and cross-architecture students) is torchvision's ResNet class
    with layers [1, 1, 1, 1]."""
    resnet = torchvision().models.resnet
    torch.manual_seed(1)
    torch_model = _trained_looking(resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=4), seed=1)
    model = ResNet(num_classes=4, depth_name="resnet10")
    _assert_eval_logits_equal(torch_model, model, _converted(torch_model, model), image_size=48, seed=4)


def test_resnet50_bottleneck_conversion_matches_torch_forward():
    """The Bottleneck blocks (1x1, strided 3x3, 1x1; 4x expansion; a downsample in every stage's first block)."""
    torch_model = _torchvision_resnet("resnet50", 6, seed=3)
    model = ResNet(num_classes=6, depth_name="resnet50")
    _assert_eval_logits_equal(torch_model, model, _converted(torch_model, model), image_size=64, seed=2)


def test_training_mode_batchnorm_matches_torch():
    """train=True normalises by the batch statistics and updates the running averages like torch's momentum 0.1."""
    torch_model = _torchvision_resnet("resnet18", 5).train()
    model = ResNet(num_classes=5)
    variables = _converted(torch_model, model)
    images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)
    # torch's running_var uses the unbiased batch variance, flax's the biased one: compare the means only.
    np.testing.assert_allclose(
        np.asarray(updated["batch_stats"]["layer1_0"]["bn1"]["mean"]),
        torch_model.layer1[0].bn1.running_mean.numpy(), atol=1e-5,
    )


def test_mismatched_checkpoint_is_a_clear_error():
    state = {k: v.numpy() for k, v in torchvision().models.resnet18(num_classes=10).state_dict().items()}
    with pytest.raises(convert_torchvision.CheckpointFormatError, match="shape"):
        convert_torchvision.torchvision_to_flax(state, ResNet(num_classes=7))
    with pytest.raises(convert_torchvision.CheckpointFormatError, match="missing.*layer1_2"):  # ResNet-18's for a ResNet-34
        convert_torchvision.torchvision_to_flax(state, ResNet(num_classes=10, depth_name="resnet34"))
    del state["layer4.1.conv2.weight"]
    with pytest.raises(convert_torchvision.CheckpointFormatError, match="missing.*layer4_1/conv2/kernel"):
        convert_torchvision.torchvision_to_flax(state, ResNet(num_classes=10))


def test_pth_reader_handles_views_and_dtypes(tmp_path):
    """Non-contiguous tensors, shared storages and integer dtypes come back as torch has them."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict(t=base.t(), row=base[2], count=torch.tensor(5), half=torch.ones(3, dtype=torch.float16))
    path = str(tmp_path / "views.pth")
    torch.save(state, path)
    loaded = convert_torchvision.load_state_dict(path)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy())
        assert loaded[key].dtype == value.numpy().dtype
