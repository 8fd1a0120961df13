"""The streaming path for ImageFolder sets too large to hold on the device.

A torch DataLoader with worker processes decodes, resizes (shorter side) and centre-crops each
image to ``image_size`` as uint8; batches move to the device and take the same batched
on-device augmentation and normalisation as :class:`DeviceLoader`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from mixbench.data.gpu_loader import Augment, Normalize, augment_batch
from mixbench.errors import UserError


class StreamingLoader:
    """Same iterator contract as ``DeviceLoader``: (normalised float x, int64 y) on the device."""

    def __init__(self, folder: Path, image_size: int, batch_size: int, *, train: bool, augment: Augment,
                 mean, std, device: torch.device, generator: torch.Generator | None,
                 num_workers: int, drop_last: bool, channels_last: bool, classes: list[str] | None = None):
        import torchvision
        from torchvision.transforms import v2

        tf = v2.Compose([v2.PILToTensor(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
        self.dataset = torchvision.datasets.ImageFolder(str(folder), transform=tf)
        if classes is not None and self.dataset.classes != classes:
            raise UserError(f"[data].root: class folders of {folder} differ from the train/ folders")
        self.classes = self.dataset.classes
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.device, self.generator = device, generator
        self.num_workers, self.drop_last = num_workers, drop_last and train
        self.channels_last = channels_last
        self.normalize = Normalize(mean, std, device)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler_gen = None
        if self.train:  # one draw per epoch from the device generator seeds the shuffle
            seed = torch.randint(0, 2**62, (1,), device=self.device, generator=self.generator)
            sampler_gen = torch.Generator().manual_seed(int(seed.item()))
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.train, generator=sampler_gen,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last, persistent_workers=False)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.train:
                x = augment_batch(x, self.augment, self.generator)
            yield self.normalize(x).contiguous(memory_format=fmt), y
