"""Training images for block-wise training: a registered Detectron2 data set, every image
resized to one size, a few held out to measure the block losses on."""
import random
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from ..tools.inference import model_inputs

__all__ = ["ImageSource"]


class ImageSource:
    """Images of ``dataset`` as model inputs (``{"image": (3, H, W) uint8, "height", "width"}``).

    Args:
        dataset: a name registered in ``DatasetCatalog`` (e.g. ``synthetic_citypersons_train``).
        size: (H, W) every image is resized to.
        image_format: the teacher's ``INPUT.FORMAT`` (e.g. "BGR").
        held_out: how many images (the data set's last ones) are kept out of training.
        seed: order of the training images and their horizontal flips.
    """

    def __init__(self, dataset: str, size: Tuple[int, int], image_format: str, held_out: int, seed: int = 0):
        if dataset not in DatasetCatalog.list():
            raise KeyError(f"Data set {dataset!r} is not registered (e.g. synthetic_citypersons_train, or one of "
                           "DATASETS.PEDESTRIAN_JSON.FILES registered with hkd_d2.data.register_pedestrian_dataset)")
        records = DatasetCatalog.get(dataset)
        if len(records) <= held_out:
            raise ValueError(f"Data set {dataset!r} has {len(records)} images: too few to hold out {held_out} "
                             "and train on the rest (--eval-images)")
        self.files = [r["file_name"] for r in records]
        self.train_count = len(records) - held_out
        self.size, self.image_format = size, image_format
        self.rng = random.Random(seed)
        self._cache: Dict[int, torch.Tensor] = {}

    def _image(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            image = read_image(self.files[index], format=self.image_format)
            self._cache[index] = model_inputs(np.ascontiguousarray(image), *self.size)[0]["image"]
        return self._cache[index]

    def _inputs(self, indices: List[int], flips: List[bool]) -> List[Dict]:
        h, w = self.size
        return [{"image": self._image(i).flip(-1) if flip else self._image(i), "height": h, "width": w}
                for i, flip in zip(indices, flips)]

    def training_batches(self, batch_size: int) -> Iterator[List[Dict]]:
        """Endless batches of training images, reshuffled at every pass, each flipped with p = 0.5."""
        if not 1 <= batch_size <= self.train_count:
            raise ValueError(f"Batch size {batch_size} does not fit the {self.train_count} training images (--batch-size)")
        while True:
            order = list(range(self.train_count))
            self.rng.shuffle(order)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                picks = order[start:start + batch_size]
                yield self._inputs(picks, [self.rng.random() < 0.5 for _ in picks])

    def held_out_batches(self, batch_size: int) -> List[List[Dict]]:
        """The held-out images (unflipped), in batches."""
        indices = list(range(self.train_count, len(self.files)))
        return [self._inputs(indices[i:i + batch_size], [False] * len(indices[i:i + batch_size]))
                for i in range(0, len(indices), batch_size)]
