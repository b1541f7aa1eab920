r"""DDOQ vs D4M on ImageNette (10 easy ImageNet classes), with DiT (DDOQ-DiT) or Stable Diffusion, RDED/D4M students.

Command:
    python -m pqdjax.main --config=configs/imagenette.py --workdir=/shared/runs/imagenette_ipc10 \
        --config.prior.pretrained_dir=facebook/DiT-XL-2-256 \
        --config.teacher.checkpoint=/models/resnet18-f37072fd.pth \
        --config.data.tfds_data_dir=/data/tfds
Options (after a colon, comma-separated): those of configs/in1k.py (ipc=N, quantizer=NAME,
    student=ARCH, runlocal), with prior=dit the default here, and
    folder     read fast.ai's imagenette2 folder (--config.data.dir=DIR with DIR/train/n*/ and
               DIR/val/n*/) instead of tfds `imagenette/full-size-v2`
    e.g. configs/imagenette.py:ipc=50   configs/imagenette.py:prior=stable_diffusion   configs/imagenette.py:runlocal
Data: tfds `imagenette/full-size-v2` (train 9,469, validation 3,925 images), prepared
    once with `tfds build imagenette --data_dir=DATA_DIR --file_format=array_record`, or
    the same images as fast.ai's folder (option folder). Its classes are ImageNet-1K
    synsets (tench, English springer, cassette player, chain saw, church, French horn,
    garbage truck, gas pump, golf ball, parachute): their ImageNet names are Stable
    Diffusion's prompts, their ImageNet indices DiT's class labels (pqdjax.data.streamed).
Teacher: torchvision's ImageNet-1K ResNet-18, its logits read at the 10 classes
    (pqdjax.models.classifiers.ClassSubset): no ImageNette-trained teacher is needed.
Hardware: one GPU (A100/H100) or a TPU v4-8; the workdir on a shared filesystem for
    several hosts.
Runtime: runlocal about 40 s on a 2-core CPU (tfds mock data, tiny random DiT and
    ResNet, see README.md). The full run has NOT been measured.
Results: none measured here (no ImageNette or pretrained weights were available).
    The paper's DDOQ-DiT on ImageNette, as secondary sources report it: 68.2.

Everything else is configs/in1k.py's (stages, quantizer, img2img settings, students:
300 epochs, validation resize 256 / crop 224).
"""

import os

import ml_collections

from pqdjax.config_options import from_file, parse_arg

_IN1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "in1k.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = parse_arg(arg, "configs/imagenette.py", ipc=10, quantizer="clvq", student="resnet18", prior="dit",
                        runlocal=False, folder=False)
    base = f"ipc={options.ipc},quantizer={options.quantizer},student={options.student},prior={options.prior}"
    config = from_file(_IN1K, base + (",runlocal" if options.runlocal else ""))
    if options.folder:
        config.data.update(name="imagefolder", train_split="train", test_split="val", mock_examples=0)
    else:
        config.data.update(name="imagenette/full-size-v2", train_split="train", test_split="validation")
    if not options.runlocal:
        config.data.num_classes = 10
    return config
