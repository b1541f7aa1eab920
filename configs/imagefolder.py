r"""DDOQ vs D4M vs random real images on any folder of images, with a prior trained in the run or Stable Diffusion.

Command:
    python -m pqdjax.main --config=configs/imagefolder.py --workdir=runs/mydata --config.data.dir=DIR
where DIR/train/CLASS/*.png|jpg|jpeg holds the training images, one folder per
class (the folder names are the class names), and DIR/test/CLASS/* the test
images (without it, the last 10% of each class's images by file name are held
out as the test split: --config.data.test_fraction).
Options (after a colon, comma-separated):
    runlocal    a smoke run: tiny models, a few steps, on whatever folder is given
    sweep       strength x guidance on held-out training images (pqdjax.sweep)
    ipc=N       images per class (default 10)
    size=N      the square size images are resized and center-cropped to (default 32)
    gray        read the images as grayscale (default RGB; the trained prior only)
    prior=NAME  'trained' (default: the VAE, denoiser and teacher trained in the run, the
                data in host memory) or 'stable_diffusion': D4M's prior, the streamed
                pipeline of configs/cifar10.py (the folder encoded record by record, each
                image upsampled to 512 px for the VAE, the class folder names as prompts,
                a ConvNet-3 teacher trained in the run on the training split read into
                host memory, ResNet-18 students with the CIFAR stem), for which DIR needs
                a test/ folder and --config.prior.pretrained_dir=/models/stable-diffusion-v1-5
    quantizer=NAME  with prior=stable_diffusion: 'lloyd' (default; a class's latents of
                16,384 floats each in memory, 8 classes per call) or 'clvq' (mini-batches
                of one class at a time: one class in host memory, one mini-batch on the
                device, for classes of more than a few thousand images)
Hardware: 2 CPU cores suffice for a CIFAR-sized folder (tens of thousands of 32x32 images).
Runtime: not measured on a real folder yet. On 2 CPU cores, the settings of
    configs/default.py (which this config reuses) trained the VAE, the teacher and the
    denoiser on 60k 28x28 images in about 35, 20 and 25 minutes; a folder of
    that size at 32x32x3 takes somewhat longer.
Results: none measured; a new dataset should start with the sweep option, which
    chooses strength and guidance on held-out training images.

With prior=stable_diffusion every class folder is distilled (config.data.num_classes
0: as many as DIR/train holds, counted when the run starts). Everything else is
configs/cifar10.py's; its Hardware note (one GPU) applies, and its networks are
CIFAR's: the students' CIFAR stem (no downsampling before the first block) and the
teacher's 4 px crop padding suit sizes near 32 px; for larger images set
--config.evaluate.model.stem=imagenet and --config.teacher.train.crop_padding.

With the trained prior, everything but the data comes from configs/default.py: the conv VAE, the
class-conditioned latent denoiser and the ConvNet-3 teacher, all trained in
the run (no weights ship for a user's folder), Lloyd quantization, img2img at
strength 0.4 and guidance 4 (the Fashion-MNIST sweep's choice), students with
the teacher's soft labels. Every distilled set is written as PNGs in class
folders with a manifest (synthetic/ipc{K}/manifest_{method}.csv).
"""

import os

import ml_collections

from pqdjax.config_options import from_file, parse_arg
from pqdjax.errors import ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))


def _stable_diffusion_config(options) -> ml_collections.ConfigDict:
    """configs/cifar10.py's streamed run with Stable Diffusion, on the folder: every class, images of options.size."""
    if options.gray or options.sweep:  # the in-memory pipeline's options
        raise ConfigError("configs/imagefolder.py: gray and sweep go with prior=trained; Stable Diffusion reads RGB and "
                          "keeps D4M's img2img settings.")
    config = from_file(os.path.join(_HERE, "cifar10.py"),
                       f"ipc={options.ipc},quantizer={options.quantizer}" + (",runlocal" if options.runlocal else ""))
    config.data.update(name="imagefolder", dir="", train_split="train", test_split="test", mock_examples=0,
                       num_classes=0,  # every class folder, counted when the run starts (pqdjax.pipeline)
                       eval_resize=options.size, eval_crop=options.size)
    config.decode.image_size = options.size
    config.evaluate.train.update(image_size=options.size)
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = parse_arg(arg, "configs/imagefolder.py", choices={"prior": ("trained", "stable_diffusion"), "quantizer": ("lloyd", "clvq")},
                        runlocal=False, sweep=False, ipc=10, size=32, gray=False, prior="trained", quantizer="lloyd")
    if options.prior == "stable_diffusion":
        return _stable_diffusion_config(options)
    if options.quantizer != "lloyd":
        raise ConfigError("configs/imagefolder.py: quantizer= goes with prior=stable_diffusion; the trained prior's run "
                          "sets --config.quantize.method.")
    base = ",".join(name for name in ("runlocal", "sweep") if options[name])
    config = from_file(os.path.join(_HERE, "default.py"), base)
    config.data = ml_collections.ConfigDict(dict(
        name="imagefolder",
        dir="",  # DIR with DIR/train/CLASS/* (required)
        image_size=options.size,
        channels=1 if options.gray else 3,
        test_fraction=0.1,  # held out of each class when DIR has no test/ folder
        train_per_class=config.data.train_per_class,  # 0: all
        test_size=config.data.test_size,  # 0: all
        evaluate_on=config.data.evaluate_on,
        validation_per_class=config.data.validation_per_class,
    ))
    for section in (config.prior, config.teacher, config.denoiser):
        section.weights = ""  # no shipped weights fit a user's folder: trained in the run
    if not options.runlocal:
        config.ipcs = (options.ipc,)
    return config
