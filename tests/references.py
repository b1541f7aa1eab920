"""Outside references the tests compare pqdjax with, imported the way they can run on this CPU."""

import sys
import types


def torchvision():
    """torchvision (the test extra's torchvision==0.28.0), with its models and state dicts as torchvision defines them.

    PyPI's torchvision wheel carries detection operators (nms, roi_align) compiled against torch's CUDA build; beside
    the CPU build of torch they fail to load, and torchvision's import stops where it registers their meta and autograd
    kernels ('operator torchvision::nms does not exist'). Those two registration modules are replaced by empty ones:
    the models (pure Python on torch.nn) do not use the operators, and nothing here calls them.
    """
    if "torchvision" not in sys.modules:
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision as module

    return module
