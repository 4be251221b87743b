"""Link the validation patients' pairs of a CT/MRI training folder into a new folder, for benchmarks.quality.

fuse-train holds out whole patients (``fuse_train.data.split_groups`` with the run's val_fraction and
seed); this writes the same held-out pairs as OUT/CT/<name> and OUT/MRI/<name> symbolic links, so a
recipe can be scored on validation patients instead of the test folder.

Usage: python scripts/validation_folder.py TRAIN_DIR OUT [--val-fraction 0.2] [--seed 42]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fuse_runtime.pairing import find_pairs
from fuse_train.config import TrainConfig
from fuse_train.data import group_of, split_groups


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_dir", type=Path)
    parser.add_argument("out", type=Path, help="new folder (refused if it exists)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} already exists; pass a new folder")
    pairs = find_pairs(args.train_dir, task="ct-mri").pairs
    _, val = split_groups([group_of(p.name, "ct-mri") for p in pairs], args.val_fraction, args.seed)
    for modality in ("CT", "MRI"):
        (args.out / modality).mkdir(parents=True)
    held_out = [p for p in pairs if group_of(p.name, "ct-mri") in val]
    for pair in held_out:
        for modality, source in (("CT", pair.first), ("MRI", pair.second)):
            (args.out / modality / Path(source).name).symlink_to(Path(source).resolve())
    print(f"{len(held_out)} pairs of validation patients {', '.join(val)} linked under {args.out}")


if __name__ == "__main__":
    main()
