"""Outside references the tests compare pqdjax with, imported the way they can run on this CPU."""

import os
import sys
import types

# `make setup` installs torchvision here, apart from site-packages (see the Makefile).
TORCHVISION_DIR = os.path.join(sys.prefix, "references")


def torchvision():
    """torchvision 0.28.0 (the release made for torch 2.13.0), with its models and state dicts as torchvision defines them.

    It lives in the virtual environment's references/ folder, not in site-packages: PyPI's torchvision wheel carries
    detection operators (nms, roi_align) compiled against torch's CUDA build, which fail to load beside the CPU
    build, and transformers imports torchvision wherever Python finds it, so in site-packages it would break the
    pipeline's imports. For the same reason torchvision's import stops where it registers those operators' meta and
    autograd kernels ('operator torchvision::nms does not exist'): the two registration modules are replaced by empty
    ones. The models (pure Python on torch.nn) do not use the operators, and nothing here calls them.
    """
    if "torchvision" not in sys.modules:
        if not os.path.isdir(os.path.join(TORCHVISION_DIR, "torchvision")):
            raise ImportError(f"torchvision is not in {TORCHVISION_DIR}; run `make setup` (it installs torchvision==0.28.0 there).")
        sys.path.append(TORCHVISION_DIR)
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision as module

    if not module.__version__.startswith("0.28.0"):
        raise ImportError(f"torchvision {module.__version__} found, the tests compare with 0.28.0 (torch 2.13.0's); run `make setup`.")
    return module
