r"""DDOQ vs D4M on ImageWoof (10 dog breeds of ImageNet, a hard subset), with DiT (DDOQ-DiT) or Stable Diffusion.

Command:
    python -m pqdjax.main --config=configs/imagewoof.py --workdir=/shared/runs/imagewoof_ipc10 \
        --config.data.dir=/data/imagewoof2 \
        --config.prior.pretrained_dir=facebook/DiT-XL-2-256 \
        --config.teacher.checkpoint=/models/resnet18-f37072fd.pth
Options (after a colon, comma-separated): those of configs/in1k.py (ipc=N, quantizer=NAME,
    student=ARCH, prior=NAME, runlocal), with prior=dit the default here.
    e.g. configs/imagewoof.py:ipc=50   configs/imagewoof.py:runlocal --config.data.dir=DIR
Data: fast.ai's imagewoof2 folder (tfds has no ImageWoof): DIR/train/n*/ (9,025 images)
    and DIR/val/n*/ (3,929), one folder per class named by its ImageNet synset, read
    record by record (pqdjax.data.streamed.FolderSource). The classes' ImageNet names are
    Stable Diffusion's prompts, their ImageNet indices DiT's class labels.
Teacher: torchvision's ImageNet-1K ResNet-18, its logits read at the 10 breeds
    (pqdjax.models.classifiers.ClassSubset).
Hardware: one GPU (A100/H100) or a TPU v4-8.
Runtime: runlocal (on a folder of a few images per class, e.g. the one
    tests/test_streamed_datasets.py writes) about 40 s on a 2-core CPU. The full run has
    NOT been measured.
Results: none measured here (no ImageWoof or pretrained weights were available).
    The paper's DDOQ-DiT on ImageWoof, as secondary sources report it: 48.8.

Everything else is configs/in1k.py's.
"""

import os

import ml_collections

from pqdjax.config_options import from_file, parse_arg

_IN1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "in1k.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = parse_arg(arg, "configs/imagewoof.py", ipc=10, quantizer="clvq", student="resnet18", prior="dit", runlocal=False)
    base = f"ipc={options.ipc},quantizer={options.quantizer},student={options.student},prior={options.prior}"
    config = from_file(_IN1K, base + (",runlocal" if options.runlocal else ""))
    config.data.update(name="imagefolder", dir="", train_split="train", test_split="val", mock_examples=0)
    if not options.runlocal:
        config.data.num_classes = 10
    return config
