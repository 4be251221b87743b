"""Training data: registered pairs decoded and normalised once, split by patient, augmented gently.

Pairs come from ``fuse_runtime.pairing`` and are normalised by ``fuse_runtime.preprocess``, the
same code the runtime serves with, then brought to the model size (``to_model_size``: letterbox or
resize, so the various vis-ir image sizes all become ``image_size``²) and cached in memory as
float32 ``[H,W]`` slices in [0,1]. A volume (NIfTI, DICOM series) contributes each of its slices
except nearly empty ones (less than ``min_foreground`` of the pixels above ``FOREGROUND_LEVEL`` in
both images).

Split: by *group* — the patient id for ct-mri (``pairing.patient_id``: Harvard names are patient id
+ 2-digit slice, and neighbouring slices are near duplicates), the image itself for vis-ir (the
TNO/RoadScene scenes have no patients). Groups are sorted, shuffled with ``random.Random(seed)``
and the first ``round(val_fraction · groups)`` (at least one, and at least one left for training)
are held out, so the split is reproducible from the seed alone.

Augmentation (training only), one random draw shared by both images so they stay registered:
rotation by up to ±``rotate_degrees`` about the centre (zero fill), a random ``crop_size`` crop,
horizontal flip with probability ``hflip_p`` and a contrast gain in [1 − j, 1 + j]
(``intensity_jitter``), clipped to [0,1]. The draw depends only on (seed, epoch, index), so it is
the same with any number of loader workers or processes and after a resume. Validation uses the
full model size without augmentation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fuse_runtime.errors import FuseError
from fuse_runtime.pairing import Pair, find_pairs, load_pair, patient_id
from fuse_runtime.preprocess import normalise_intensity, normalise_scan, to_model_size
from fuse_train.config import TrainConfig

#: A pixel counts as foreground above this normalised intensity (for skipping empty volume slices).
FOREGROUND_LEVEL = 0.05


@dataclass(frozen=True)
class Sample:
    """One cached training image pair: ``first``/``second`` float32 ``[size,size]`` in [0,1]."""

    name: str
    group: str
    first: np.ndarray = field(repr=False)
    second: np.ndarray = field(repr=False)


@dataclass
class TrainingData:
    """Cached samples split into training and validation, plus the pairs that could not be used."""

    train: list[Sample]
    val: list[Sample]
    train_groups: list[str]
    val_groups: list[str]
    problems: list[str]
    group_kind: str

    def describe_split(self) -> str:
        """Which groups (patients or images) went where, for the log."""
        def listing(groups: list[str]) -> str:
            return ", ".join(groups) if len(groups) <= 20 else ", ".join(groups[:20]) + f", … (+{len(groups) - 20})"

        return (
            f"split by {self.group_kind}: {len(self.train_groups)} for training ({len(self.train)} images): "
            f"{listing(self.train_groups)}\n"
            f"  {len(self.val_groups)} for validation ({len(self.val)} images): {', '.join(self.val_groups)}"
        )


def load_training_data(root: str | Path, config: TrainConfig) -> TrainingData:
    """Find, decode, normalise and cache the pairs under ``root``, then split them by group.

    Unusable pairs are listed in ``problems`` and skipped; FuseError when nothing usable remains
    or there are fewer than two groups to split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FuseError("data folder not found; give the folder that holds the paired images (--data)", root)
    report = find_pairs(root, task=config.task)
    problems = [str(problem) for problem in report.problems]
    pairs = select_pairs(list(report.pairs), config.max_pairs, lambda pair: group_of(pair.name, config.task))
    samples: list[Sample] = []
    for pair in pairs:
        try:
            samples.extend(decode_pair(pair, config))
        except FuseError as error:
            problems.append(str(error))
    if not samples:
        raise FuseError(
            f"no usable {config.task} image pairs found ({len(problems)} problem(s)); "
            "check the folder layout (e.g. CT/ + MRI/ or vi/ + ir/ with the same file names)",
            root,
        )
    train_groups, val_groups = split_groups(sorted({s.group for s in samples}), config.val_fraction, config.seed)
    held_out = set(val_groups)
    return TrainingData(
        train=[s for s in samples if s.group not in held_out],
        val=[s for s in samples if s.group in held_out],
        train_groups=train_groups,
        val_groups=val_groups,
        problems=problems,
        group_kind="patient" if config.task == "ct-mri" else "image",
    )


def group_of(name: str, task: str) -> str:
    """Split group of a pair name: its patient id for ct-mri, the image itself for vis-ir."""
    return patient_id(name) if task == "ct-mri" else name


def split_groups(groups: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Reproducible (train, val) split of group ids; both sides non-empty. Returns sorted lists."""
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise FuseError(
            f"cannot split {len(unique)} patient/image group(s) into training and validation; "
            "at least two are needed (add data or raise --max-pairs)"
        )
    shuffled = list(unique)
    random.Random(seed).shuffle(shuffled)
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])


def select_pairs(pairs: list[Pair], max_pairs: int | None, group: Callable[[Pair], str]) -> list[Pair]:
    """At most ``max_pairs`` pairs taken round-robin over the groups (all when None).

    Round-robin keeps several patients in a small smoke-test subset, so it can still be split.
    """
    if max_pairs is None or max_pairs >= len(pairs):
        return pairs
    by_group: dict[str, list[Pair]] = {}
    for pair in sorted(pairs, key=lambda p: p.name):
        by_group.setdefault(group(pair), []).append(pair)
    order = sorted(
        ((rank, key, pair) for key, members in by_group.items() for rank, pair in enumerate(members)),
        key=lambda item: (item[0], item[1]),
    )
    return [pair for _, _, pair in order[:max_pairs]]


def decode_pair(pair: Pair, config: TrainConfig) -> list[Sample]:
    """Read, check (``load_pair`` refuses unregistered pairs), normalise and resize one pair.

    One Sample per slice; a volume's nearly empty slices are left out. Emptiness is judged before
    CLAHE, which turns an all-black slice into a uniform gray.
    """
    scans = load_pair(pair)
    prep = config.preprocess
    first, second = (
        to_model_size(normalise_scan(scan, role, prep), prep)[0] for scan, role in zip(scans, config.modalities)
    )
    keep = np.ones(first.shape[0], dtype=bool)
    if first.shape[0] > 1:
        first_raw, second_raw = (normalise_intensity(scan, role, prep) for scan, role in zip(scans, config.modalities))
        keep = np.array(
            [
                max(foreground_fraction(a), foreground_fraction(b)) >= config.min_foreground
                for a, b in zip(first_raw, second_raw)
            ]
        )
    group = group_of(pair.name, config.task)
    return [
        Sample(
            f"{pair.name}[{index}]" if first.shape[0] > 1 else pair.name,
            group,
            np.ascontiguousarray(first[index]),
            np.ascontiguousarray(second[index]),
        )
        for index in np.flatnonzero(keep)
    ]


def foreground_fraction(image: np.ndarray) -> float:
    """Fraction of pixels brighter than ``FOREGROUND_LEVEL`` in a [0,1] image."""
    return float((image > FOREGROUND_LEVEL).mean())


class FusionDataset(Dataset):
    """``(first [3,H,W], second [1,H,W])`` float32 tensors in [0,1] from cached samples.

    Training: augmented ``crop_size`` crops (see the module docstring); call ``set_epoch`` each
    epoch for new draws. Validation (``train=False``): the full model-size images, unchanged.
    """

    def __init__(self, samples: Sequence[Sample], config: TrainConfig, train: bool) -> None:
        self.samples = list(samples)
        self.config = config
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        first, second = sample.first, sample.second
        if self.train:
            rng = np.random.default_rng([self.config.seed, self.epoch, index])
            first, second = augment_pair(first, second, rng, self.config)
        first_t = torch.from_numpy(np.ascontiguousarray(first))[None].expand(3, -1, -1).contiguous()
        second_t = torch.from_numpy(np.ascontiguousarray(second))[None]
        return first_t, second_t


def augment_pair(
    first: np.ndarray, second: np.ndarray, rng: np.random.Generator, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random draw identically to two registered ``[H,W]`` [0,1] images.

    Returns two ``[crop_size, crop_size]`` float32 arrays in [0,1].
    """
    height, width = first.shape
    if config.rotate_degrees > 0:
        angle = rng.uniform(-config.rotate_degrees, config.rotate_degrees)
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
        first, second = (
            cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for image in (first, second)
        )
    crop = config.crop_size
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    first, second = first[top : top + crop, left : left + crop], second[top : top + crop, left : left + crop]
    if rng.random() < config.hflip_p:
        first, second = first[:, ::-1], second[:, ::-1]
    if config.intensity_jitter > 0:
        gain = rng.uniform(1.0 - config.intensity_jitter, 1.0 + config.intensity_jitter)
        first, second = np.clip(first * gain, 0.0, 1.0), np.clip(second * gain, 0.0, 1.0)
    return first.astype(np.float32, copy=False), second.astype(np.float32, copy=False)
