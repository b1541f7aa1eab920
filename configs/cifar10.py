r"""DDOQ vs D4M on CIFAR-10 with Stable Diffusion (D4M's prior), a ConvNet-3 teacher trained in the run.

Command:
    python -m pqdjax.main --config=configs/cifar10.py --workdir=runs/cifar10_ipc10 \
        --config.prior.pretrained_dir=/models/stable-diffusion-v1-5 --config.data.tfds_data_dir=/data/tfds
Options (after a colon, comma-separated):
    ipc=N            images per class (default 10; the field reports 1, 10, 50)
    quantizer=NAME   'lloyd' (default: 5,000 latents per class fit in memory) or 'clvq' (mini-batches)
    runlocal         the whole path on a CPU in under a minute: tfds mock data (48
                     random 32 px images per split, labels folded into 4 classes),
                     a tiny random Stable Diffusion written into the workdir, a tiny
                     ConvNet teacher trained for a few steps, a tiny ResNet-10 student
    e.g. configs/cifar10.py:ipc=50   configs/cifar10.py:runlocal
Data: tfds `cifar10` (50,000 train, 10,000 test images of 32 x 32), prepared once with
    `tfds build cifar10 --data_dir=DATA_DIR --file_format=array_record`. Class names
    (airplane, automobile, bird, ...) are Stable Diffusion's prompts.
Prior: Stable Diffusion v1.x at D4M's img2img settings (strength 0.7, guidance 8, 50
    steps, negative prompt "cartoon, anime, painting"); each 32 px image is upsampled
    to 512 px (Stable Diffusion's resolution) before encoding, and each pushed-forward
    image downsampled to 32 px.
Teacher: ConvNet-3 (width 128, instance norm; the DC/DM/MTT network), trained in the
    run on the training split (teacher.kind 'trained', pqdjax.stages.teacher):
    no pretrained CIFAR-10 teacher is assumed.
Students: ResNet-18 with the CIFAR stem (3x3 conv, no pool; SRe2L/RDED's CIFAR
    network), the RDED/D4M protocol of configs/in1k.py at 32 px (300 epochs,
    RandomResizedCrop + flip + CutMix, the teacher's soft labels at T = 20).
Hardware: one GPU; the encode stage (50,000 SD VAE encodings at 512 px) and the
    decode stage dominate.
Runtime: runlocal about 40 s on a 2-core CPU (see README.md). The full run has NOT
    been measured.
Results: none measured here (no CIFAR-10 or Stable Diffusion weights were
    available). D4M reports CIFAR-10 results; not reproduced here.
"""

import os

import ml_collections

from pqdjax.config_options import from_file, parse_arg

_IN1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "in1k.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = parse_arg(arg, "configs/cifar10.py", choices={"quantizer": ("clvq", "lloyd")},
                        ipc=10, quantizer="lloyd", runlocal=False)
    config = from_file(_IN1K, f"ipc={options.ipc},quantizer={options.quantizer},prior=stable_diffusion"
                       + (",runlocal" if options.runlocal else ""))
    config.data.update(name="cifar10", train_split="train", test_split="test", encode_resize=512, encode_crop=512,
                       eval_resize=32, eval_crop=32, num_classes=10)
    config.decode.image_size = 32
    config.teacher = ml_collections.ConfigDict(dict(kind="trained", checkpoint=""))
    config.teacher.model = ml_collections.ConfigDict(dict(arch="convnet", width=128, depth=3, norm="instance"))
    config.teacher.train = ml_collections.ConfigDict(dict(
        steps=20000, batch_size=256, learning_rate=2e-3, warmup_steps=500, weight_decay=0.0,
        crop_padding=4, flip=True, log_every=500, checkpoint_every=1000,
    ))
    config.evaluate.model = ml_collections.ConfigDict(dict(arch="resnet18", stem="cifar"))
    config.evaluate.train.update(image_size=32)
    if options.runlocal:
        config.data.update(encode_resize=16, encode_crop=16, num_classes=4)
        config.teacher.model.update(width=8, depth=2)
        config.teacher.train.update(steps=6, batch_size=16, warmup_steps=0, log_every=2, checkpoint_every=2)
        config.evaluate.model.update(arch="resnet10", width=4)
    return config
