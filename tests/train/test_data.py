"""Training data: by-patient split, cached preprocessing, volumes, augmentation that keeps registration."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
import torch
from nibabel.testing import data_path as nibabel_data

from fuse_runtime.errors import FuseError
from fuse_runtime.preprocess import PreprocessConfig
from fuse_train.config import TrainConfig
from fuse_train.data import FusionDataset, augment_pair, load_training_data, split_groups

SIZE = 64


def config_for(task: str = "ct-mri", **changes) -> TrainConfig:
    values = {"crop_size": SIZE, **changes}
    return TrainConfig(task=task, preprocess=PreprocessConfig(image_size=SIZE), **values)


def harvard_patient(name: str) -> str:
    """Independent oracle: Harvard names are patient id + 2-digit slice."""
    return name[:-2]


@pytest.fixture(scope="module")
def harvard_data(harvard_train):
    return load_training_data(harvard_train, config_for())


def test_split_by_patient_puts_no_patient_on_both_sides(harvard_data, harvard_train):
    train_patients = {harvard_patient(s.name) for s in harvard_data.train}
    val_patients = {harvard_patient(s.name) for s in harvard_data.val}
    assert train_patients.isdisjoint(val_patients)
    all_names = {p.stem for p in (harvard_train / "CT").glob("*.png")}
    assert {s.name for s in harvard_data.train + harvard_data.val} == all_names
    assert len(val_patients) == round(0.2 * len(train_patients | val_patients)) == 2
    assert sorted(val_patients) == harvard_data.val_groups
    assert sorted(train_patients) == harvard_data.train_groups
    text = harvard_data.describe_split()
    assert all(patient in text for patient in train_patients | val_patients)


def test_split_is_reproducible_from_the_seed_and_changes_with_it(harvard_train):
    groups = [str(g) for g in (20, 200, 280, 320, 330, 340, 370, 410)]
    assert split_groups(groups, 0.2, 42) == split_groups(list(reversed(groups)), 0.2, 42)
    assert len({tuple(split_groups(groups, 0.2, seed)[1]) for seed in range(10)}) > 1
    again = load_training_data(harvard_train, config_for())
    first = load_training_data(harvard_train, config_for())
    assert again.val_groups == first.val_groups and [s.name for s in again.train] == [s.name for s in first.train]


@pytest.mark.parametrize(
    "groups, fraction, n_val",
    [(["a", "b"], 0.2, 1), (["a", "b"], 0.9, 1), (list("abcdefghij"), 0.2, 2), (list("abcdefghij"), 0.5, 5)],
)
def test_split_sizes_keep_both_sides_non_empty(groups, fraction, n_val):
    train, val = split_groups(groups, fraction, seed=0)
    assert len(val) == n_val and len(train) == len(groups) - n_val
    assert set(train) | set(val) == set(groups)


def test_cached_images_are_model_size_in_unit_range(harvard_data):
    sample = harvard_data.train[0]
    for image in (sample.first, sample.second):
        assert image.shape == (SIZE, SIZE) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5


def test_max_pairs_spreads_over_patients(harvard_train):
    data = load_training_data(harvard_train, config_for(max_pairs=8))
    samples = data.train + data.val
    assert len(samples) == 8
    assert len({harvard_patient(s.name) for s in samples}) == 8


def test_vis_ir_images_of_any_size_are_split_by_image(vis_ir):
    data = load_training_data(vis_ir, config_for("vis-ir"))
    samples = data.train + data.val
    tno = len(list((vis_ir / "tno" / "vi").iterdir()))
    roadscene = len(list((vis_ir / "roadscene" / "vi").iterdir()))
    assert len(samples) == tno + roadscene
    assert data.group_kind == "image"
    assert {s.name for s in data.train}.isdisjoint({s.name for s in data.val})
    assert all(s.first.shape == s.second.shape == (SIZE, SIZE) for s in samples)
    assert len(data.val) == round(0.2 * len(samples))


def _write_case(folder: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, affine), folder / "ct.nii.gz")
    inverted = ((volume.max() - volume) * (volume > 0)).astype(np.int16)
    nib.save(nib.Nifti1Image(inverted, affine), folder / "mri.nii.gz")


def test_volumes_contribute_their_non_empty_slices(tmp_path):
    source = nib.load(os.path.join(nibabel_data, "anatomical.nii"))
    volume = np.clip(np.asarray(source.dataobj), 0, None).astype(np.int16)
    volume[:, :, :5] = 0  # five empty axial slices at the inferior end
    for case in ("case01", "case02"):
        _write_case(tmp_path / case, volume, source.affine)
    data = load_training_data(tmp_path, config_for())
    samples = data.train + data.val
    assert data.group_kind == "patient"
    assert data.train_groups + data.val_groups in (["case01", "case02"], ["case02", "case01"])
    slices = volume.shape[2]
    assert len(samples) == 2 * (slices - 5)
    assert {s.name for s in samples} == {f"{c}[{i}]" for c in ("case01", "case02") for i in range(5, slices)}


def test_unusable_pairs_are_reported_and_the_rest_used(tmp_path, harvard_train):
    for role in ("CT", "MRI"):
        (tmp_path / "harvard" / role).mkdir(parents=True)
        for name in ("2005.png", "20005.png"):
            shutil.copy(harvard_train / role / name, tmp_path / "harvard" / role / name)
    # CT_small (128², 0.66 mm) with MR_small (64², 0.31 mm): not registered.
    for role, sample in (("CT", "CT_small.dcm"), ("MRI", "MR_small.dcm")):
        (tmp_path / "dicom" / role).mkdir(parents=True)
        shutil.copy(pydicom.data.get_testdata_file(sample), tmp_path / "dicom" / role / "9901.dcm")
    data = load_training_data(tmp_path, config_for())
    assert len(data.train + data.val) == 2
    assert len(data.problems) == 1 and "9901" in data.problems[0] and "register" in data.problems[0]


@pytest.mark.parametrize(
    "make_root, message",
    [
        (lambda tmp: tmp / "missing", "not found"),
        (lambda tmp: tmp, "no CT/MRI pairs"),
    ],
)
def test_bad_data_folders_raise_fuse_error(tmp_path, make_root, message):
    with pytest.raises(FuseError, match=message):
        load_training_data(make_root(tmp_path), config_for())


def test_a_single_patient_cannot_be_split(tmp_path, harvard_train):
    for role in ("CT", "MRI"):
        (tmp_path / role).mkdir()
        for name in ("2005.png", "2006.png"):
            shutil.copy(harvard_train / role / name, tmp_path / role / name)
    with pytest.raises(FuseError, match="at least two"):
        load_training_data(tmp_path, config_for())


def test_augmentation_applies_one_draw_to_both_images(harvard_data):
    config = config_for(crop_size=32, hflip_p=0.5)
    image = harvard_data.train[3].first
    outputs = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        a, b = augment_pair(image, image.copy(), rng, config)
        assert a.shape == b.shape == (32, 32) and a.dtype == np.float32
        assert np.array_equal(a, b), "the two images were transformed differently"
        assert 0.0 <= a.min() and a.max() <= 1.0
        outputs.append(a)
    assert len({o.tobytes() for o in outputs}) == len(outputs)


def test_augmentation_is_conservative(harvard_data):
    """No crop, no flip, no jitter: only the ±5° rotation, so the image barely changes."""
    config = config_for(hflip_p=0.0, intensity_jitter=0.0)
    image = harvard_data.train[3].first
    rotated, _ = augment_pair(image, image, np.random.default_rng(0), config)
    assert np.abs(rotated - image).mean() < 0.1
    still, _ = augment_pair(
        image, image, np.random.default_rng(0), config_for(hflip_p=0.0, intensity_jitter=0.0, rotate_degrees=0.0)
    )
    assert np.array_equal(still, image)


def test_dataset_draws_depend_on_epoch_and_index_only(harvard_data):
    config = config_for(crop_size=32)
    dataset = FusionDataset(harvard_data.train, config, train=True)
    first, second = dataset[5]
    assert first.shape == (3, 32, 32) and second.shape == (1, 32, 32)
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])
    torch.manual_seed(123)  # global RNG state does not matter
    assert torch.equal(dataset[5][0], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5][0], first)


def test_validation_items_are_the_cached_images_unchanged(harvard_data):
    dataset = FusionDataset(harvard_data.val, config_for(), train=False)
    first, second = dataset[0]
    assert first.shape == (3, SIZE, SIZE) and second.shape == (1, SIZE, SIZE)
    assert np.array_equal(first[0].numpy(), harvard_data.val[0].first)
    assert np.array_equal(second[0].numpy(), harvard_data.val[0].second)
