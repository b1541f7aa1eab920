"""ResNet in flax against torchvision's architecture in torch, and the checkpoint readers on files torch writes."""

import collections

import jax
import ml_collections
import numpy as np
import pytest

from pqdjax.models import convert_torchvision
from pqdjax.models.classifiers import make_classifier
from pqdjax.models.resnet import ResNet

torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install -e .[torch]); the conversion test needs it")
from torch import nn as tnn  # noqa: E402


class _TorchBasicBlock(tnn.Module):
    """torchvision.models.resnet.BasicBlock, same attribute names (torchvision has no CPU build here)."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _TorchBottleneck(tnn.Module):
    """torchvision.models.resnet.Bottleneck (ResNet v1.5: the stride on the 3x3 conv2), same attribute names."""

    expansion = 4

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), tnn.BatchNorm2d(planes * 4))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class _TorchResNet18(tnn.Module):
    """torchvision.models.resnet18's module tree and forward pass (resnet50's with bottleneck=True), with a
    configurable width."""

    def __init__(self, num_classes, width=64, bottleneck=False):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        block, counts, expansion = (_TorchBottleneck, (3, 4, 6, 3), 4) if bottleneck else (_TorchBasicBlock, (2, 2, 2, 2), 1)
        inplanes = width
        for stage, count in enumerate(counts):
            planes = width * 2**stage
            blocks = [block(inplanes, planes, 2 if stage else 1)] + [block(planes * expansion, planes, 1) for _ in range(count - 1)]
            setattr(self, f"layer{stage + 1}", tnn.Sequential(*blocks))
            inplanes = planes * expansion
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _trained_looking_torch_resnet18(num_classes=10, width=64, seed=0, bottleneck=False):
    """A torch ResNet-18 (ResNet-50 with bottleneck=True) in eval mode with non-trivial BatchNorm statistics and
    affine parameters."""
    torch.manual_seed(seed)
    model = _TorchResNet18(num_classes, width, bottleneck)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def test_resnet18_conversion_matches_torch_forward(tmp_path):
    torch_model = _trained_looking_torch_resnet18()
    path = str(tmp_path / "resnet18.pth")
    torch.save(torch_model.state_dict(), path)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()

    model = make_classifier(ml_collections.ConfigDict(dict(arch="resnet18")), 10)
    variables = convert_torchvision.load_torchvision_resnet(path, model)
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # The same weights through safetensors give the same variables.
    from safetensors.torch import save_file

    st_path = str(tmp_path / "resnet18.safetensors")
    save_file(torch_model.state_dict(), st_path)
    from_safetensors = convert_torchvision.load_torchvision_resnet(st_path, model)
    jax.tree.map(np.testing.assert_array_equal, from_safetensors, variables)


def test_resnet50_bottleneck_conversion_matches_torch_forward():
    """The Bottleneck blocks (1x1, strided 3x3, 1x1; 4x expansion; a downsample in every stage's first block)."""
    torch_model = _trained_looking_torch_resnet18(num_classes=6, width=8, seed=3, bottleneck=True)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    model = ResNet(num_classes=6, depth_name="resnet50", width=8)
    variables = convert_torchvision.torchvision_to_flax(state, model)
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_training_mode_batchnorm_matches_torch():
    """train=True normalises by the batch statistics and updates the running averages like torch's momentum 0.1."""
    torch_model = _trained_looking_torch_resnet18(num_classes=5, width=8).train()
    model = ResNet(num_classes=5, width=8)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    variables = convert_torchvision.torchvision_to_flax(state, model)
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
    state = {k: v.numpy() for k, v in _trained_looking_torch_resnet18(num_classes=10, width=8).state_dict().items()}
    with pytest.raises(convert_torchvision.CheckpointFormatError, match="shape"):
        convert_torchvision.torchvision_to_flax(state, ResNet(num_classes=7, width=8))
    del state["layer4.1.conv2.weight"]
    with pytest.raises(convert_torchvision.CheckpointFormatError, match="missing.*layer4_1/conv2/kernel"):
        convert_torchvision.torchvision_to_flax(state, ResNet(num_classes=10, width=8))


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
