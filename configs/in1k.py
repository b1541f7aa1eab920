r"""DDOQ vs D4M on ImageNet-1K with Stable Diffusion (or DiT), evaluated by the RDED/D4M protocol.

Command:
    python -m pqdjax.main --config=configs/in1k.py --workdir=/shared/runs/in1k_ipc10 \
        --config.prior.pretrained_dir=/models/stable-diffusion-v1-5 \
        --config.teacher.checkpoint=/models/resnet18-f37072fd.pth \
        --config.data.tfds_data_dir=/data/tfds
Options (after a colon, comma-separated):
    ipc=N            images per class (the paper's table: 10, 50, 100, 200); default 10
    quantizer=NAME   'clvq' (streaming, default) or 'lloyd'
    student=ARCH     resnet18 (default), resnet50, resnet101, mobilenet_v2
    prior=NAME       'stable_diffusion' (default: D4M, DDOQ) or 'dit' (DDOQ-DiT: DiT-XL/2 at
                     256 px, class-label guidance; set --config.prior.pretrained_dir to
                     facebook/DiT-XL-2-256 in diffusers' layout, or its hub id)
    runlocal         the whole in1k code path on a CPU in about a minute: tfds
                     mock data (48 random images per split, labels folded into 4
                     classes), a tiny random Stable Diffusion and a tiny random
                     ResNet teacher written as checkpoint files into the workdir
                     and loaded by the real loaders, IPC 2, 2 student epochs
                     of a tiny ResNet-10 (or, with student=mobilenet_v2, a
                     MobileNet-V2 at width multiplier 0.25); with prior=dit a tiny
                     random DiT checkpoint instead of Stable Diffusion
    e.g. configs/in1k.py:ipc=50,quantizer=clvq   configs/in1k.py:runlocal,prior=dit
Hardware: a TPU v4-32 slice (16 hosts; every host runs the same command, and
    jax.distributed finds the others) or one node with 8 GPUs (A100/H100). The
    workdir must be on a filesystem all hosts share.
Runtime: runlocal 54 s from an empty workdir on a 2-core CPU (see README.md).
    The full run has NOT been measured end to end; estimates: encode 1.28M
    images at 512 px with the SD VAE about 1-2 h on 8 A100s; quantize (CLVQ,
    one pass per class) minutes; decode 1,000 x IPC images with 50 img2img
    steps (35 after strength 0.7) about 1 h per 10 IPC on 8 A100s; teacher:
    converted in seconds, validated in minutes; a ResNet-18 student for 300
    epochs on 10k-200k images from about 1 h (IPC 10) to a day (IPC 200).
Results (the paper's ResNet-18 top-1 on the ImageNet-1K validation set, %; not
    reproduced here, no ImageNet or pretrained weights were available):
    IPC     10    50    100   200
    D4M    27.9  55.2  59.3  62.6
    DDOQ   33.1  56.2  60.1  63.4
    DDOQ-DiT (prior=dit), as secondary sources report it: ImageNet-1K 53.0 / 62.7
    (IPC 10 / 50), ImageWoof 48.8, ImageNette 68.2; not reproduced here either.

prior=dit: the same points and weights, pushed forward by DiT-XL/2 (Peebles &
    Xie, 2023; pqdjax.models.dit) on its own schedule (1,000 linear betas), its
    VAE (sd-vae-ft-ema) encoding 256 px images into 32 x 32 x 4 latents. The
    paper says DDOQ-DiT uses "the distilled noise initializations in a stronger
    diffusion transformer model", which admits two readings, both offered by
    decode.diffusion.start: 'img2img' (default) noises each point to `strength`
    and denoises it, as D4M and DDOQ do with Stable Diffusion; 'initial_latent'
    starts the whole reverse process from the point in place of Gaussian noise
    (strength unused). The default is img2img because it is the pushforward the
    method defines and keeps the point's meaning (a VAE latent of the class,
    whose statistics differ from the N(0, I) the reverse process starts from);
    strength 0.7 as D4M, guidance 4 (DiT's sampling guidance), 50 DDIM steps:
    not tuned, no DiT weights could be run here.

Stages (pqdjax.pipeline, the streamed components; every artifact fingerprinted, a rerun skips
what is complete and resumes what was interrupted):
  input     tfds `imagenet2012` prepared once into ArrayRecord files (see
            pqdjax/data/imagenet.py for the `tfds build` command; the archives go
            in tfds's manual_dir), read with tfds.data_source, each process its
            own shard; data.num_classes < 1000 distils the first classes only
            (students with that many outputs, the teacher's logits read at those classes).
  prior     Stable Diffusion v1.x (prior=dit: DiT) from prior.pretrained_dir (diffusers layout,
            Flax or PyTorch safetensors weights).
  teacher   torchvision's ResNet-18 weights (teacher.checkpoint, .safetensors or
            .pth read without executing pickled code), converted with their
            BatchNorm statistics; validated at resize 256 / crop 224.
  encode    images resized to 512 (D4M), SD VAE latents (posterior mean, or a
            sample with prior.latent_sample) times 0.18215, batches sharded over
            all devices, appended per class to encode/latents/ (resumable).
  quantize  per class K = IPC points: CLVQ streamed over the class in
            mini-batches, or Lloyd (classes_per_call classes at a time, sharded
            over devices); Voronoi weights, the real-image baselines' images and
            W2 of every base method (pqdjax.stages.quantize, the default one's).
  decode    SD img2img from each point, prompt = the class name
            (pqdjax/data/imagenet_classes.txt), negative prompt "cartoon, anime,
            painting", strength 0.7, guidance 8, 50 steps; 224 px PNGs and
            manifests (file, label, weight) per method: d4m (uniform), ddoq
            (Voronoi), and any other in config.methods (pqdjax.stages.decode).
  fidelity  per synthetic set: teacher agreement, cell consistency (the PNGs
            re-encoded by the SD VAE, in their point's Voronoi cell), W2 of
            the re-encoded images and of the points (pqdjax.stages.fidelity).
  evaluate  students (pqdjax.train.student): 300 epochs, AdamW lr 1e-3,
            weight decay 0.01 off norms and biases, cosine, RandomResizedCrop 224
            (0.08-1) + flip + CutMix, KL to the teacher at T = 20 on the same
            batch, per-image weights; data-parallel, orbax checkpoints every
            evaluate.train.checkpoint_every steps; validation resize 256 / crop 224.
  report    results.json, results.md, accuracy_vs_ipc.png, weights_ipc{K}.png, distilled.png
            (the figures show the first 10 classes).
"""

import ml_collections

from pqdjax.config_options import distributed_config, parse_arg

_STUDENTS = ("resnet18", "resnet50", "resnet101", "mobilenet_v2")
_PRIORS = ("stable_diffusion", "dit")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = parse_arg(
        arg, "configs/in1k.py", choices={"quantizer": ("clvq", "lloyd"), "student": _STUDENTS, "prior": _PRIORS},
        ipc=10, quantizer="clvq", student="resnet18", prior="stable_diffusion", runlocal=False,
    )
    ipc, quantizer, student = options.ipc, options.quantizer, options.student

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.ipcs = (ipc,)
    # Also known (pqdjax.config_checks): random, medoid, medoid_weighted, herding (real training images per class),
    # generated (the prior's class-conditional samples), and any of them with a decoder suffix, e.g. ddoq_vae,
    # random_vae: the points (real images: their latents) decoded by the VAE alone (what img2img adds).
    config.methods = ("d4m", "ddoq")
    config.fast_conv_gradients = "false"  # 'true' | 'auto': pqdjax.models.fast_conv (configs/default.py says why off)
    # One Mesh for every stage: all devices of all processes on the data axis.
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1,), axes=("data",)))
    config.distributed = distributed_config()  # multi-process runs: TPU pods, SLURM, pqdjax.launch_local

    config.data = ml_collections.ConfigDict(dict(
        # streamed: read record by record, each process its part (pqdjax.data.streamed); name: a tfds name or 'imagefolder'
        streamed=True, name="imagenet2012", tfds_data_dir="", dir="", train_split="train", test_split="validation",
        encode_resize=512, encode_crop=512, eval_resize=256, eval_crop=224, batch_size_per_device=32,
        num_classes=1000,  # distil the first C classes (all 1,000 by default)
        train_limit=0, test_limit=0,  # use only the first N examples of a split (0: all)
        mock_examples=0,  # > 0: tfds.testing.mock_data with this many random examples per split
    ))
    # kind: 'stable_diffusion' or 'dit' (pqdjax.stages.prior); tiny_random: a tiny random checkpoint of
    # that kind written into the workdir (smoke runs).
    config.prior = ml_collections.ConfigDict(dict(
        kind=options.prior, pretrained_dir="", latent_scale=0.18215, latent_sample=False, tiny_random=False,
    ))
    config.teacher = ml_collections.ConfigDict()
    config.teacher.model = ml_collections.ConfigDict(dict(arch="resnet18"))
    config.teacher.checkpoint = ""  # torchvision resnet18 weights: .safetensors or .pth
    config.encode = ml_collections.ConfigDict(dict(flush_every=50))  # batches between resumable progress records
    config.quantize = ml_collections.ConfigDict(dict(
        method=quantizer, batch_size=1024, epochs=1,  # clvq: mini-batch size and passes over a class
        max_iter=100, tol=1e-4, classes_per_call=8,  # lloyd
        n_init=1,  # starts of the quantizer, the best kept (pqdjax.quantize.Restarts)
    ))
    # The field names of configs/default.py; img2img with Stable Diffusion at D4M's settings.
    config.decode = ml_collections.ConfigDict(dict(method="diffusion", image_size=224))
    # start: 'img2img' (the point noised to strength, then denoised) or 'initial_latent' (the whole reverse
    # process from the point; strength unused). negative_prompt: Stable Diffusion's only (DiT: the null class).
    config.decode.diffusion = ml_collections.ConfigDict(dict(
        strength=0.7, guidance=8.0, steps=50, start="img2img",
        negative_prompt="cartoon, anime, painting", batch_size=32,  # points per img2img call (whole classes)
    ))
    if options.prior == "dit":
        # DiT-XL/2-256: 256 px images, 32 x 32 x 4 latents; DiT's sampling guidance 4 (not tuned here).
        config.data.update(encode_resize=256, encode_crop=256)
        config.decode.diffusion.update(guidance=4.0, negative_prompt="")
    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.seeds = (0,)
    # paired difference per IPC over the seeds (results.md), for the pairs whose methods run
    config.evaluate.compare = (("ddoq", "d4m"), ("ddoq", "ddoq_vae"), ("ddoq", "random"))
    # How the set's weights enter the loss (pqdjax.train.weighting): the Voronoi masses as they are.
    config.evaluate.weighting = ml_collections.ConfigDict(dict(power=1.0, mix=1.0, normalize="class"))
    config.evaluate.model = ml_collections.ConfigDict(dict(arch=student))
    config.evaluate.train = ml_collections.ConfigDict(dict(
        epochs=300, batch_size=1024, learning_rate=1e-3, weight_decay=0.01, warmup_steps=0,
        # pqdjax.train.student: RandomResizedCrop to image_size + flip + CutMix, the teacher relabelling every batch
        augment="rrc_cutmix", labels="teacher", temperature=20.0, image_size=224, cutmix_beta=1.0, log_every=100,
        checkpoint_every=1000,
    ))

    if options.get("runlocal"):
        # tfds mock data (random images, labels folded into 4 classes), tiny random
        # Stable Diffusion (or DiT) and ResNet checkpoints written into the workdir.
        config.data.update(
            encode_resize=16, encode_crop=16, eval_resize=40, eval_crop=32, batch_size_per_device=2,
            num_classes=4, mock_examples=48,
        )
        config.prior.update(tiny_random=True)
        config.teacher.model.update(arch="resnet10", width=8)
        if student == "mobilenet_v2":
            config.evaluate.model.update(width_multiplier=0.25)  # tiny MobileNet-V2 (its last conv keeps 1,280 channels)
        else:
            config.evaluate.model.update(arch="resnet10", width=4)
        config.evaluate.train.update(epochs=2, batch_size=8, image_size=32, log_every=1, checkpoint_every=1)
        config.decode.diffusion.update(steps=4, batch_size=8)
        config.quantize.update(batch_size=8, max_iter=20)
        config.ipcs = (min(ipc, 2),)
        config.methods = ("random", "d4m", "ddoq", "ddoq_vae")
    return config
