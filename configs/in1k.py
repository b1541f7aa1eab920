r"""DDOQ vs D4M on ImageNet-1K with Stable Diffusion, evaluated by the RDED/D4M protocol.

Command:
    python -m pqdjax.main --config=configs/in1k.py --workdir=gs://BUCKET/runs/in1k_ipc10
Options (after a colon, comma-separated):
    ipc=N            images per class (the paper's table: 10, 50, 100, 200); default 10
    quantizer=NAME   'clvq' (streaming, default) or 'lloyd'
    student=ARCH     resnet18 (default), resnet50, resnet101
    runlocal         tiny models and sizes for tfds mock data: the in1k code path on a laptop CPU
                     (once the ImageNet stages are wired, see Status)
    e.g. configs/in1k.py:ipc=50,quantizer=clvq
Hardware: a TPU v4-32 slice (16 hosts; every host runs the same command, and
    jax.distributed finds the others) or one node with 8 GPUs (A100/H100).
Runtime (estimates, not yet measured end to end): encode 1.28M images at 512 px
    with the SD VAE about 1-2 h on 8 A100s; quantize (CLVQ, 1,000 classes
    sharded over the devices) minutes; decode 1,000 x IPC images with 50 img2img
    steps (35 after strength 0.7) about 1 h per 10 IPC on 8 A100s; teacher:
    converted, seconds; a ResNet-18 student for 300 epochs on 10k-200k images
    from about 1 h (IPC 10) to a day (IPC 200) on 8 A100s.
Results (the paper's ResNet-18 top-1 on the ImageNet-1K validation set, %):
    IPC     10    50    100   200
    D4M    27.9  55.2  59.3  62.6
    DDOQ   33.1  56.2  60.1  63.4

Input: tfds `imagenet2012`, prepared once into ArrayRecord files (see
pqdjax/data/imagenet.py for the one `tfds build` command; the archives go in
tfds's manual_dir), read with tfds.data_source, each process its own shard.
Encoder: Stable Diffusion's VAE (weights from config.prior.pretrained_dir, a
diffusers folder), images resized to 512 (D4M), latents (posterior mean, or a
sample with prior.latent_sample) times 0.18215, streamed to disk per class.
Quantize: every class's latent measure with K = IPC points (CLVQ or Lloyd),
Voronoi weights, classes sharded over the mesh. Decode: SD img2img from each
point, prompt = the class name (pqdjax/data/imagenet_classes.txt), strength
0.7, guidance 8, 50 steps; 224 px PNGs and a manifest (file, label, weight).
Teacher: torchvision's ResNet-18 weights (config.teacher.checkpoint,
.safetensors or .pth), converted by pqdjax.models.convert_torchvision.
Students (pqdjax.train.imagenet_student): 300 epochs, AdamW lr 1e-3, weight
decay 0.01 off norms and biases, cosine, RandomResizedCrop 224 (0.08-1) + flip
+ CutMix, KL to the teacher at T = 20 on the same batch, per-image weights;
validation resize 256, center crop 224. Checkpoints every
evaluate.train.checkpoint_every steps (orbax, async, keep 2): a rerun resumes.

Status: the teacher conversion, the student protocol with resumable
data-parallel training, the tfds input, the mesh and the quantizers
(pqdjax.quantize: Lloyd, CLVQ with clvq_stream, classes sharded over a mesh)
are implemented and tested; the Stable Diffusion encode stage (latents
streamed to disk per class) and img2img decode stage, and the wiring of the
ImageNet stages into the pipeline, are not there yet, so `pqdjax.main` stops
with an error that says so.
"""

import ml_collections

_STUDENTS = ("resnet18", "resnet50", "resnet101")


def _parse(arg: str | None) -> dict:
    options = {}
    for item in (a for a in (arg or "").split(",") if a):
        key, _, value = item.partition("=")
        options[key] = value if value else True
    known = {"ipc", "quantizer", "student", "runlocal"}
    if set(options) - known:
        raise ValueError(f"unknown option(s) {sorted(set(options) - known)} for configs/in1k.py; known: {sorted(known)}.")
    return options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = _parse(arg)
    ipc = int(options.get("ipc", 10))
    quantizer = options.get("quantizer", "clvq")
    student = options.get("student", "resnet18")
    if quantizer not in ("clvq", "lloyd"):
        raise ValueError(f"configs/in1k.py: quantizer must be 'clvq' or 'lloyd', got {quantizer!r}.")
    if student not in _STUDENTS:
        raise ValueError(f"configs/in1k.py: student must be one of {_STUDENTS}, got {student!r}.")

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.ipcs = (ipc,)
    config.methods = ("d4m", "ddoq")
    config.fast_conv_gradients = "auto"
    # One Mesh for every stage: all devices of all processes on the data axis.
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1,), axes=("data",)))
    config.distributed = ml_collections.ConfigDict(dict(enabled="auto", coordinator_address="", num_processes=-1, process_id=-1))

    config.data = ml_collections.ConfigDict(dict(
        name="imagenet2012", tfds_data_dir="", train_split="train", test_split="validation",
        encode_resize=512, encode_crop=512, eval_resize=256, eval_crop=224, batch_size_per_device=32,
    ))
    config.prior = ml_collections.ConfigDict(dict(
        kind="stable_diffusion", pretrained_dir="", latent_scale=0.18215, latent_sample=False,
    ))
    config.teacher = ml_collections.ConfigDict()
    config.teacher.model = ml_collections.ConfigDict(dict(arch="resnet18"))
    config.teacher.checkpoint = ""  # torchvision resnet18 weights: .safetensors or .pth
    config.encode = ml_collections.ConfigDict(dict(batch_size=256, stream_to_disk=True))
    config.quantize = ml_collections.ConfigDict(dict(
        method=quantizer, batch_size=1024, epochs=1, max_iter=100, tol=1e-4, shard_classes=True,
    ))
    config.decode = ml_collections.ConfigDict(dict(
        method="sd_img2img", strength=0.7, guidance_scale=8.0, num_inference_steps=50, image_size=224,
        batch_size=32,
    ))
    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.seeds = (0,)
    config.evaluate.model = ml_collections.ConfigDict(dict(arch=student))
    config.evaluate.train = ml_collections.ConfigDict(dict(
        epochs=300, batch_size=1024, learning_rate=1e-3, weight_decay=0.01, warmup_steps=0,
        temperature=20.0, image_size=224, cutmix_beta=1.0, log_every=100,
        checkpoint_every=1000, keep_checkpoints=2,
    ))

    if options.get("runlocal"):
        config.mesh.shape = (-1,)
        config.data.update(encode_resize=64, encode_crop=64, eval_resize=40, eval_crop=32, batch_size_per_device=4)
        config.data.train_limit = 40  # tfds mock data: a few examples per split
        config.prior.update(kind="tiny_random")
        config.teacher.model.update(arch="resnet10", width=8)
        config.evaluate.model.update(arch="resnet10", width=4)
        config.evaluate.train.update(epochs=1, batch_size=8, image_size=32, log_every=1, checkpoint_every=2)
        config.decode.update(num_inference_steps=4, image_size=32, batch_size=4)
        config.quantize.update(batch_size=16)
        config.ipcs = (min(ipc, 2),)
    return config
