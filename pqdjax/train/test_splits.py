"""The split a run's classifiers are tested on: the teacher's accuracy and every student's.

Every kind of run has one (pqdjax.pipeline.Run.test_split), and the teacher and
evaluate stages ask it, through one interface, for what they need:

    num_classes                      the classifiers' outputs
    space                            how the run's classifiers take uint8 images inside jit
                                     (pqdjax.train.student.InputSpace; the teacher's predictions)
    student_inputs(images)           uint8 images -> (the images as a student trains on them, their space)
    fingerprint                      what the split adds to a record's fingerprint (a tuple)
    fingerprint_prefix               the start of the records' fingerprint names ('' or 'imagenet_': the
                                     names streamed runs' records had before the stages were shared, so
                                     that their students and teacher accuracies stay valid)
    label                            how the report names it ('Test', 'Validation')
    accuracy(model, variables, name) top-1 accuracy in [0, 1] of a classifier on the split

HeldOutArrays: a test split in host memory (in-memory runs: Fashion-MNIST, an
image folder), uint8, the classifiers taking them in [-1, 1]. StreamedSplit: config.data.test_split read
record by record, each process its part, sharded over the run's Mesh, at
resize data.eval_resize / center crop data.eval_crop, torchvision-normalised
(the validation protocol of torchvision / RDED / D4M; pqdjax.train.imagenet_eval).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import numpy as np

from pqdjax.data import streamed
from pqdjax.data.preprocess import to_model_range
from pqdjax.train.classifier import accuracy
from pqdjax.train.imagenet_eval import sharded_accuracy
from pqdjax.train.student import MODEL_RANGE, MODEL_RANGE_UINT8, TORCHVISION, InputSpace


@dataclasses.dataclass(frozen=True)
class HeldOutArrays:
    """images uint8 [N, H, W, C], labels int [N] in host memory; classifiers take images in [-1, 1]."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    space: InputSpace = MODEL_RANGE_UINT8
    label: str = "Test"  # how the report names the split
    fingerprint_prefix: str = ""
    # the data's fingerprint is already in the teacher's, which every record's fingerprint holds
    fingerprint: tuple = ()

    def accuracy(self, model: nn.Module, variables: dict, name: str = "accuracy") -> float:
        del name
        return accuracy(model, variables, self.images, self.labels)

    @staticmethod
    def student_inputs(images: np.ndarray) -> tuple[np.ndarray, InputSpace]:
        """float32 images in [-1, 1], converted on the host: XLA's fused conversion inside the step rounds some
        values one float32 ulp apart, and Adam carries that into the weights, so converting here keeps students
        equal to those of earlier runs."""
        return np.asarray(to_model_range(images)), MODEL_RANGE


@dataclasses.dataclass
class StreamedSplit:
    """config.data.test_split of the dataset config.data names, read record by record and sharded over `mesh`."""

    data: object  # config.data (ml_collections.ConfigDict)
    mesh: object  # jax.sharding.Mesh
    space: InputSpace = TORCHVISION
    label: str = "Validation"  # how the report names the split (ImageNet's test labels are not public)
    fingerprint_prefix: str = "imagenet_"

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @functools.cached_property
    def fingerprint(self) -> tuple:
        """The split's data fields and content digest (pqdjax.data.streamed.data_fields), computed once: other
        records behind the same config (another tfds_data_dir, another test_limit) are other splits."""
        return (streamed.data_fields(self.data, streamed.TEST_DATA_FIELDS),)

    @staticmethod
    def student_inputs(images: np.ndarray) -> tuple[np.ndarray, InputSpace]:
        """The uint8 images themselves, torchvision-normalised inside the step (a quarter of the host memory)."""
        return images, TORCHVISION

    def accuracy(self, model: nn.Module, variables: dict, name: str = "accuracy") -> float:
        source = streamed.open_configured_split(self.data, self.data.test_split)
        num_examples = min(len(source), self.data.get("test_limit") or len(source))
        return sharded_accuracy(model, variables, source, num_examples, self.data, self.mesh, name=name)
