r"""DDOQ vs D4M vs random real images on Fashion-MNIST, on a laptop CPU.

Command:
    python -m pqdjax.main --config=configs/default.py --workdir=runs/default
Options (after a colon, comma-separated):
    configs/default.py:table      the full table: IPC 1, 10, 50 x 4 methods x 5 seeds
    configs/default.py:runlocal   a tiny smoke run (a few hundred images, tiny models trained in the run)
    configs/default.py:pretrain   trains the VAE, teacher and denoiser from nothing with the settings
                                  below and ships them to pretrained/fashion_mnist (pqdjax.pretrained)
    configs/default.py:sweep      strength x guidance on held-out training images (pqdjax.sweep)
    configs/default.py:weighting  the weight ablation on held-out training images (pqdjax.weighting_ablation)
    protocol=NAME                 the student protocol (config.evaluate.train): 'kd' (default: the teacher's
                                  soft labels, pad-crop + flip, 300 steps), 'hard' (DC/DSA: each image's class,
                                  cross-entropy, pad-crop + flip, 300 epochs), 'rrc_cutmix' (SRe2L/RDED/D4M:
                                  RandomResizedCrop + flip + CutMix relabelled by the teacher, 300 epochs)
                                  e.g. configs/default.py:table,protocol=hard
    cross_arch                    the same sets also train a ResNet-10 and a MobileNet-V2 beside the ConvNet-3:
                                  a table per architecture (config.evaluate.cross_architectures), e.g.
                                  configs/default.py:table,cross_arch
Hardware: 2 CPU cores, no accelerator.
Runtime: about 4 min on 2 CPU cores (3 min 37 s from a fresh workdir, 12 students 171 s; with fast_conv on, the
    default before 2026-12-04: 4 min 41-52 s), plus about
    2 min of `make setup` from a fresh clone; the VAE, teacher and denoiser are loaded from
    pretrained/fashion_mnist, not trained.
Results (IPC 10, 3 paired seeds; README.md has the tables and what they show):
    random 76.33, d4m 76.02, ddoq 75.80, ddoq_vae 67.33, teacher 93.04 (%);
    ddoq - d4m -0.21 points [-0.81, +0.39]; d4m/ddoq teacher agreement 97%,
    cell consistency 95%.

Stages: the shipped conv VAE (28x28x1 -> 7x7x8 latents, test PSNR 27.7 dB)
encodes every training image; each class's latent measure is quantized with
K = IPC points by Lloyd (k-means++ seeding), weighted by their Voronoi cell
masses; the shipped class-conditioned latent denoiser (diffusers
FlaxUNet2DConditionModel, Stable Diffusion's noise schedule, EMA weights)
pushes the points forward by img2img (strength 0.4, guidance 4, 50 DDIM steps,
chosen on a validation split) and the VAE decodes them; students learn from
the synthetic images with the shipped teacher's soft labels (ConvNet-3, 93.0%),
each image's loss times its weight.
"""

import ml_collections

from pqdjax.config_options import distributed_config, parse_arg


PROTOCOLS = ("kd", "hard", "rrc_cutmix")


def _classifier(width: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(arch="convnet", width=width, depth=3, norm="instance"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = parse_arg(arg, "configs/default.py", choices={"protocol": PROTOCOLS}, table=False, runlocal=False,
                        pretrain=False, sweep=False, weighting=False, protocol="kd", cross_arch=False)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.ipcs = (10,)
    # d4m and ddoq decode with config.decode.method; ddoq_vae: the ddoq points decoded by the VAE alone.
    # Also known (pqdjax.config_checks): medoid, medoid_weighted, herding (real images), generated (class-conditional
    # samples of the denoiser), and any of them with a decoder suffix, e.g. random_vae (the random real images through the VAE).
    config.methods = ("random", "d4m", "ddoq", "ddoq_vae")
    # 'true' ('auto': on CPU only): conv kernel gradients by shifted matmuls (pqdjax.models.fast_conv). 'false': with
    # jax 0.9.2, XLA's own gradients were faster on CPU for every model here (python -m benchmarks.conv_gradient).
    # A string, so that --config.fast_conv_gradients= takes true, false and auto alike.
    config.fast_conv_gradients = "false"
    config.distributed = distributed_config()  # multi-process runs: pqdjax.launch_local, SLURM (README: Several processes)

    config.data = ml_collections.ConfigDict(dict(
        name="fashion_mnist",
        source="auto",  # 'auto' | 'idx' | 'tfds'
        data_dir="",  # a folder with the four IDX files; '' searches the usual places
        tfds_data_dir="",
        train_per_class=0,  # 0: all
        test_size=0,  # 0: all
        evaluate_on="test",  # 'validation': the last validation_per_class training images of each class instead
        validation_per_class=500,
    ))

    # The VAE, teacher and denoiser are loaded from the files shipped in pretrained/fashion_mnist
    # (their manifest says how they were trained and what they measure); a weights field set
    # to '' trains that component in the run with the train settings below, and the pretrain
    # option trains all three from nothing with exactly these settings and ships them.
    shipped = "pretrained/fashion_mnist/"
    config.prior = ml_collections.ConfigDict()
    config.prior.weights = shipped + "vae.safetensors"
    config.prior.vae = ml_collections.ConfigDict(dict(
        arch="conv",  # pqdjax.models.conv_vae: residual conv blocks; 28x28x1 -> 7x7x8
        block_out_channels=(32, 64),
        layers_per_block=2,
        latent_channels=8,
        patch=2,
    ))
    config.prior.train = ml_collections.ConfigDict(dict(
        steps=3000, batch_size=128, learning_rate=2e-3, warmup_steps=100, kl_weight=1e-4, log_every=100,
        checkpoint_every=500,  # steps between mid-training checkpoints (0: none); a killed run resumes there
    ))

    config.teacher = ml_collections.ConfigDict()
    config.teacher.weights = shipped + "teacher.safetensors"
    config.teacher.model = _classifier(128)  # ConvNet-3 as in the DC/DM/MTT benchmarks
    config.teacher.train = ml_collections.ConfigDict(dict(
        steps=7500, batch_size=128, learning_rate=2e-3, warmup_steps=200, weight_decay=0.0,
        crop_padding=2, flip=True, log_every=250, checkpoint_every=500,
    ))

    config.encode = ml_collections.ConfigDict(dict(batch_size=1000))

    config.quantize = ml_collections.ConfigDict(dict(
        method="lloyd",  # 'lloyd' | 'clvq' | 'barycenter' (pqdjax.quantize)
        max_iter=100,  # Lloyd / barycenter iterations, CLVQ mini-batches
        tol=1e-4,  # relative tolerance on the squared shift of the points (scikit-learn's rule)
        # the best of n_init starts (seeds) by distortion (scikit-learn's n_init); Lloyd on scikit-learn's digits
        # (K = 10 per class, 10 classes): one start lands 2.6% above scikit-learn's best of 10, three 0.8%, ten -0.2%
        n_init=3,
        clvq_batch_size=1024,
        barycenter_relative_epsilon=1e-2,  # Sinkhorn epsilon of the barycenter's transport plans
        w2_exact_max_size=10_000_000,  # exact W2 (network simplex) where samples x K is at most this
        w2_relative_epsilon=3e-3,  # Sinkhorn epsilon for larger W2 problems, a fraction of the mean squared distance
        w2_max_iterations=20000,
    ))

    # The class-conditioned latent denoiser of the diffusion decoder (pqdjax.models.denoiser).
    config.denoiser = ml_collections.ConfigDict()
    config.denoiser.weights = shipped + "denoiser.safetensors"
    config.denoiser.model = ml_collections.ConfigDict(dict(
        # Two levels (7x7 padded to 8x8, then 4x4); the class reaches the UNet through the
        # cross-attention of the second level, the mid block and the first up block. On 2 CPU
        # cores a training step at batch 128 took 0.30 s with fast_conv on; (64, 64) 0.47 s, (64, 128) 1.05 s.
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        context_dim=64,
        # Stable Diffusion's noise schedule, the one D4M's strength refers to: strength 0.7
        # leaves a signal-to-noise ratio of about 0.10 (DDPM's linear schedule: 0.009).
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
    ))
    config.denoiser.train = ml_collections.ConfigDict(dict(
        steps=8000, batch_size=128, learning_rate=1e-3, warmup_steps=200, class_dropout=0.1, ema_decay=0.999,
        log_every=250, checkpoint_every=1000,
    ))

    # 'vae': decode the points directly; 'diffusion': img2img with the denoiser, then the VAE (DDOQ, D4M).
    config.decode = ml_collections.ConfigDict(dict(method="diffusion"))
    # strength and guidance chosen by configs/default.py:sweep on held-out training images (README, re-measured on
    # the one-key-per-point pushforward of commit d4d3bd4): the best student validation accuracy (mean of d4m and
    # ddoq, 2 seeds) among settings with teacher agreement >= 90% and cell consistency >= 50%: 78.36% at (0.4, 4),
    # the best overall too; 78.28% at (0.5, 4), 77.95% at (0.4, 6), 77.94% at (0.3, 4); teacher agreement 96% and
    # cell consistency 99% at (0.4, 4). (The sweep on the earlier per-batch noise keys chose (0.4, 6), 0.5 points
    # above (0.4, 4) there: the two guidances lie within the seeds' spread of each other.)
    # start: 'img2img' (D4M, DDOQ) or 'initial_latent' (the whole reverse process from the point; pqdjax.diffusion.pushforward)
    config.decode.diffusion = ml_collections.ConfigDict(dict(strength=0.4, guidance=4.0, steps=50, batch_size=100, start="img2img"))
    # The figure pushforward.png: a few points decoded directly, then after img2img at these strengths.
    config.decode.figure_strengths = (0.3, 0.5, 0.7, 0.9, 1.0)

    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.seeds = (0, 1, 2)  # paired over seeds: 3 is the fewest with a usable t interval (t_0.975,2 = 4.3)
    # results.md gives the paired difference (same seeds) of each pair with a 95% t interval
    config.evaluate.compare = (("ddoq", "d4m"), ("ddoq", "random"), ("d4m", "random"), ("ddoq", "ddoq_vae"))
    config.evaluate.model = _classifier(32)
    # Cross-architecture evaluation: {name: classifier config} of further students trained on the very same sets
    # (same protocol, paired by seed within each architecture); results.md has a table per architecture.
    config.evaluate.cross_architectures = ml_collections.ConfigDict()
    # > 0: also a student of config.evaluate.model per seed on every training image (uniform weights, the same loss and
    # augmentation) for this many epochs, the ceiling of the distillation loss (pqdjax.stages.evaluate.full_data)
    config.evaluate.full_data_epochs = 0
    # How the set's weights enter the loss (pqdjax.train.weighting): power a (1: the Voronoi masses, 0: uniform),
    # mix l with uniform (1: none), normalize 'class' (mean of w_i l_i) or 'batch' (sum w_i l_i / sum w_i).
    config.evaluate.weighting = ml_collections.ConfigDict(dict(power=1.0, mix=1.0, normalize="class"))
    config.evaluate.train = ml_collections.ConfigDict(dict(
        steps=300, batch_size=100, learning_rate=2e-3, warmup_steps=20, weight_decay=0.0,
        temperature=4.0, crop_padding=2, flip=True, log_every=100, checkpoint_every=100,
        # pqdjax.train.student: augment 'crop_flip' | 'rrc_cutmix' (RandomResizedCrop + flip + CutMix of cutmix_beta,
        # the teacher relabelling every batch); labels 'teacher' (soft, KD) | 'hard' (the DC/DSA protocol)
        augment="crop_flip", cutmix_beta=1.0, labels="teacher",
        epochs=0,  # > 0: train for this many passes over the set instead of `steps` (IPC 1/10/50 at batch 100: E/E/5E steps)
    ))
    if options.protocol == "hard":
        config.evaluate.train.update(labels="hard", epochs=300)
    elif options.protocol == "rrc_cutmix":
        config.evaluate.train.update(augment="rrc_cutmix", epochs=300)

    if options.cross_arch:
        # Sized for a CPU (300 steps of 100 images on 2 cores, README): ResNet-10 of width 16 with the CIFAR stem
        # (64-66 s a student; width 32 took 174 s) and MobileNet-V2 x0.5 with torchvision's stem (114-155 s; 28 px end at 1x1).
        # Its CIFAR stem (stem='cifar', 4x4 at the end) suits 28 px better but costs 10x more on XLA:CPU, whose
        # depthwise convolutions are slow (x0.25: 1.7 s a step); on an accelerator, use it.
        config.evaluate.cross_architectures = ml_collections.ConfigDict(dict(
            resnet10=dict(arch="resnet10", width=16, stem="cifar"),
            mobilenet_v2=dict(arch="mobilenet_v2", width_multiplier=0.5, stem="imagenet"),
        ))
    if options.table:
        config.ipcs = (1, 10, 50)
        config.evaluate.seeds = (0, 1, 2, 3, 4)
    if options.pretrain:
        # Train the VAE, teacher and denoiser from nothing with the settings above, measure them
        # and write them with their manifest into config.export_pretrained; no distillation.
        for section in (config.prior, config.teacher, config.denoiser):
            section.weights = ""
        config.export_pretrained = shipped
        config.export_samples_per_class = 100
    if options.sweep:
        # pqdjax.sweep: strength x guidance on held-out training images (never the test set).
        config.data.evaluate_on = "validation"
        config.methods = ("d4m", "ddoq")
        config.evaluate.seeds = (0, 1)
        # the chosen setting: the best validation accuracy among those that keep the class (teacher agreement)
        # and the point (cell consistency) of the pushforward (pqdjax.sweep)
        config.sweep = ml_collections.ConfigDict(dict(
            strengths=(0.3, 0.4, 0.5, 0.6, 0.7, 1.0), guidances=(4.0, 6.0), min_teacher_agreement=0.9, min_cell_consistency=0.5,
        ))
    if options.weighting:
        # pqdjax.weighting_ablation: ddoq's weights transformed (power a, mix l, normalisation), students paired
        # by seed; a = 0 is D4M. On held-out training images (never the test set).
        config.data.evaluate_on = "validation"
        config.methods = ("ddoq",)
        config.evaluate.seeds = (0, 1, 2, 3, 4)
        config.weighting_ablation = ml_collections.ConfigDict(dict(settings=(
            dict(power=1.0), dict(power=0.0), dict(power=0.5), dict(power=2.0), dict(power=1.0, mix=0.5),
            dict(power=1.0, normalize="batch"),
        )))
    if options.runlocal:
        for section in (config.prior, config.teacher, config.denoiser):
            section.weights = ""
        config.data.train_per_class = 30
        config.data.test_size = 200
        config.prior.vae.update(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4)
        config.prior.train.update(steps=4, batch_size=32, warmup_steps=0, log_every=2, checkpoint_every=2)
        config.teacher.model.width = 8
        # 40 steps: the teacher learns the tests' bar images (74% on their 100 test images, against 10% at 4 steps),
        # so that teacher accuracy and agreement in the tests can tell a working teacher from a broken one.
        config.teacher.train.update(steps=40, batch_size=32, warmup_steps=0, log_every=10, checkpoint_every=2)
        config.evaluate.model.width = 8
        if options.cross_arch:
            config.evaluate.cross_architectures.resnet10.width = 4
            config.evaluate.cross_architectures.mobilenet_v2.width_multiplier = 0.25
        config.evaluate.train.update(steps=3, batch_size=20, warmup_steps=0, log_every=1, checkpoint_every=2)
        config.evaluate.seeds = (0,)
        config.ipcs = (2,)
        config.denoiser.model.update(block_out_channels=(32,), context_dim=32)
        config.denoiser.train.update(steps=3, batch_size=32, warmup_steps=0, log_every=1, checkpoint_every=2, ema_decay=0.0)
        # guidance 6, the default before the re-run sweep, keeps tests/golden/'s results of this run
        config.decode.diffusion.update(steps=4, batch_size=8, guidance=6.0)
        config.decode.figure_strengths = (0.5, 1.0)
        config.data.validation_per_class = 5
        if options.pretrain:
            config.export_samples_per_class = 4
        if options.sweep:
            config.sweep.update(strengths=(0.5, 1.0), guidances=(3.0,))
        if options.weighting:
            config.evaluate.seeds = (0, 1)
            config.weighting_ablation.settings = (dict(power=1.0), dict(power=0.0), dict(power=1.0, normalize="batch"))
    return config
