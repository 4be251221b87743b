"""Small ONNX models with fuse's tensor names, built with onnx.helper for runtime tests.

The graph computes ``fused = max(ct, mri) * CHANNEL_GAIN`` (mri broadcast over the 3 channels), a
stand-in for FusionNet whose per-channel gain makes a swapped RGB/BGR order visible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fuse_runtime.manifest import (
    INPUT_FIRST,
    INPUT_SECOND,
    META_FORMAT,
    META_IMAGE_SIZE,
    META_PREPROCESS,
    OUTPUT,
    Manifest,
    write_manifest,
)
from fuse_runtime.preprocess import PreprocessConfig

CHANNEL_GAIN = np.array([1.0, 0.75, 0.5], dtype=np.float32)


def reference_fusion(ct: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """What the test model computes, in numpy: ``[N,3,H,W]``."""
    return np.maximum(ct, mri) * CHANNEL_GAIN[None, :, None, None]


def write_max_fusion_onnx(
    path: Path,
    image_size: int = 64,
    preprocess: PreprocessConfig | None = None,
    batch: int | str = "N",
    metadata: bool = True,
    manifest: bool = False,
    graph_size: int | None = None,
) -> Path:
    """Write the test model to ``path``.

    batch: a fixed batch size or a name for a dynamic axis. metadata: embed ``fuse.*`` metadata_props.
    manifest: also write manifest.json beside it. graph_size: the graph's H,W if different from
    ``image_size`` (to build a deliberately inconsistent model).
    """
    preprocess = preprocess or PreprocessConfig(image_size=image_size)
    side = graph_size or image_size
    inputs = [
        helper.make_tensor_value_info(INPUT_FIRST, TensorProto.FLOAT, [batch, 3, side, side]),
        helper.make_tensor_value_info(INPUT_SECOND, TensorProto.FLOAT, [batch, 1, side, side]),
    ]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, 3, side, side])
    gain = numpy_helper.from_array(CHANNEL_GAIN.reshape(1, 3, 1, 1), name="gain")
    nodes = [
        helper.make_node("Max", [INPUT_FIRST, INPUT_SECOND], ["both"]),
        helper.make_node("Mul", ["both", "gain"], [OUTPUT]),
    ]
    graph = helper.make_graph(nodes, "max_fusion", inputs, [output], initializer=[gain])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if metadata:
        helper.set_model_props(
            model,
            {
                META_PREPROCESS: json.dumps(preprocess.to_dict()),
                META_IMAGE_SIZE: str(image_size),
                META_FORMAT: "1",
            },
        )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    if manifest:
        write_manifest(path.parent / "manifest.json", Manifest(image_size=image_size, preprocess=preprocess))
    return path


def build_scan_tree(root: Path, harvard_test: Path, harvard_pairs: int = 3) -> Path:
    """A folder of every input layout fuse-run reads, from real files.

    ``png/{CT,MRI}/phantomNN.png`` (4 phantom pairs), ``dicom/case01/{CT,MRI}/`` (DICOM series),
    ``nifti/case01/{ct,mri}.nii.gz`` (from fuse_runtime.phantoms) and ``harvard/{CT,MRI}/NN.png``
    (the first ``harvard_pairs`` Harvard test pairs, copied).
    """
    import shutil

    from fuse_runtime.phantoms import write_phantoms

    write_phantoms(root)
    names = sorted(p.name for p in (harvard_test / "CT").glob("*.png"))[:harvard_pairs]
    for role in ("CT", "MRI"):
        (root / "harvard" / role).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy2(harvard_test / role / name, root / "harvard" / role / name)
    return root


def fuse_directly(engine, pair, gray: bool = False) -> np.ndarray:
    """What fuse-run should write for ``pair``: the engine on the whole pair, restored and 8-bit.

    Returns uint8 ``[S,H,W,3]`` (or ``[S,H,W]`` with ``gray``) in the CT's slice layout.
    """
    from fuse_runtime.pairing import load_pair
    from fuse_runtime.preprocess import prepare_pair, restore_geometry
    from fuse_runtime.writers import to_display

    ct, mri = load_pair(pair)
    prepared = prepare_pair(ct, mri, pair.roles, engine.preprocess)
    fused = engine.infer(prepared.first, prepared.second)
    return to_display(restore_geometry(fused, prepared.restore), gray=gray)


def read_output(path: Path, fmt: str, ct) -> np.ndarray:
    """Read a fuse-run output back as uint8 ``[S,H,W(,3)]`` in the CT's slice layout (RGB order)."""
    import cv2
    import nibabel as nib
    import pydicom

    from fuse_runtime.io.nifti import READER_AXCODES

    if fmt == "png":
        files = sorted(path.glob("*.png")) if path.is_dir() else [path]
        images = [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]
        return np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2RGB) if i.ndim == 3 else i for i in images])
    if fmt == "dicom":
        files = sorted(path.glob("*.dcm")) if path.is_dir() else [path]
        return np.stack([pydicom.dcmread(f).pixel_array for f in files])
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    if data.dtype.names:  # RGB24 voxels → a trailing channel axis
        data = np.stack([data[channel] for channel in ("R", "G", "B")], axis=-1)
    elif data.dtype.kind == "f":  # gray written as float in [0, 1]
        data = np.clip(np.rint(data * 255.0), 0, 255).astype(np.uint8)
    if ct.source_format == "nifti":
        from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

        volume = data.reshape(ct.metadata["source_shape"][:3] + data.shape[3:]) if data.ndim < 3 else data
        forward = ornt_transform(ct.metadata["source_ornt"], axcodes2ornt(READER_AXCODES))
        return apply_orientation(volume, forward)
    return np.swapaxes(data, 0, 2)  # written as (column, row, slice)
