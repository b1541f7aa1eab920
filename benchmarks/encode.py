r"""VAE encode throughput: pqdjax's Flax encoder against diffusers' PyTorch AutoencoderKL.

Both models have Stable Diffusion's VAE config (block_out_channels 128, 256,
512, 512; 2 layers per block; 4 latent channels; 32 norm groups) and the same
weights: random Flax parameters, copied into the torch model with diffusers'
own converter (load_flax_weights_in_pytorch_model). The script first checks
that both give the same latent means, then times `--repeats` encodes of a
batch of `--batch_size` images of `--size` px (posterior mean, float32, after
one untimed warm-up call each) and prints images/s side by side.

Command (needs the optional torch extra; on the shared machine run it under the CPU lock):
    flock /tmp/pqdjax-cpu.lock python -m benchmarks.encode --size=256 --batch_size=2 --repeats=3
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pqdjax.models import silence_diffusers_deprecation
from pqdjax.models import vae as vae_lib

SD_VAE = ml_collections.ConfigDict(dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
))


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up: compilation / allocator
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch_device", default="cpu", help="'cpu' or 'cuda' (a CUDA build of torch)")
    args = parser.parse_args()

    import torch
    from diffusers import AutoencoderKL
    from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
    from flax import traverse_util

    silence_diffusers_deprecation()
    torch.manual_seed(0)
    torch_vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(SD_VAE.block_out_channels), layers_per_block=SD_VAE.layers_per_block,
        latent_channels=SD_VAE.latent_channels, norm_num_groups=SD_VAE.norm_num_groups, sample_size=args.size,
    ).eval()
    flax_vae = vae_lib.make_vae(SD_VAE, args.size, 3)
    params = convert_pytorch_state_dict_to_flax(torch_vae.state_dict(), flax_vae)
    expected = jax.eval_shape(lambda: vae_lib.init_params(flax_vae, jax.random.key(0), args.size))
    got_keys, want_keys = set(traverse_util.flatten_dict(params)), set(traverse_util.flatten_dict(expected))
    if got_keys != want_keys:
        raise SystemExit(f"weight conversion mismatch: {sorted(want_keys ^ got_keys)[:5]}")
    torch_vae = torch_vae.to(args.torch_device)

    images = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, args.size, args.size, 3)).astype(np.float32)
    flax_encode = jax.jit(lambda p, x: vae_lib.encode(flax_vae, p, x))
    flax_images = jax.device_put(images)
    torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2)).to(args.torch_device)

    def run_flax():
        return flax_encode(params, flax_images).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            out = torch_vae.encode(torch_images).latent_dist.mean
        if args.torch_device == "cuda":
            torch.cuda.synchronize()
        return out

    difference = float(np.max(np.abs(np.asarray(run_flax()) - run_torch().cpu().numpy().transpose(0, 2, 3, 1))))
    flax_seconds = _time(run_flax, args.repeats)
    torch_seconds = _time(run_torch, args.repeats)
    result = {
        "size": args.size, "batch_size": args.batch_size, "repeats": args.repeats,
        "jax_device": str(jax.devices()[0]), "torch_device": args.torch_device,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "max_abs_latent_difference": difference,
        "pqdjax_flax_images_per_s": args.batch_size / float(np.median(flax_seconds)),
        "diffusers_torch_images_per_s": args.batch_size / float(np.median(torch_seconds)),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
