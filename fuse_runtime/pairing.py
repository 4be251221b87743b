"""Find registered pairs (CT + MRI, or visible + infrared) in a folder tree, and load them.

Layouts recognised anywhere under the root (the tree is searched recursively, so one root can hold
several datasets; folder names are matched case-insensitively):

* paired folders: ``DIR/CT/<name>`` + ``DIR/MRI/<name>`` (also ``MR/``; ``vi/`` + ``ir/`` for the
  visible–infrared task) holding images, single DICOM files, NIfTI files or DICOM series folders
  paired by the same stem (``20005.png`` + ``20005.png``, ``x.dcm`` + ``x.tif`` ...);
* per-case DICOM series: ``DIR/<case>/CT/*.dcm`` + ``DIR/<case>/MRI/*.dcm`` (a role folder whose DICOM
  files all belong to one series is one scan);
* per-case volumes: ``DIR/<case>/ct.nii.gz`` + ``DIR/<case>/mri.nii.gz`` (also ``.nii``, ``mr.*``).

A pair's name is its path relative to the root without the role folder and suffix: ``20005`` for
``ROOT/CT/20005.png``, ``train/20005`` for ``ROOT/train/CT/20005.png``, ``case01`` for
``ROOT/case01/ct.nii.gz`` (a case at the root itself is named after the root folder).

Discovery (``find_pairs``) reads only file names and, for DICOM, the series UID; unpaired names and
unusable files become ``PairProblem`` entries while the rest proceeds. Reading the pixels
(``load_pair``) finds unreadable files and pairs whose geometry differs; ``verify_pairs`` does that for
a whole report, moving each failing pair into the problems.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from fuse_runtime.errors import FuseError
from fuse_runtime.io import read_scan
from fuse_runtime.io.formats import Kind, file_kind, format_suffix, looks_like_dicom
from fuse_runtime.preprocess import Role, check_registered
from fuse_runtime.resample import align_to_ct
from fuse_runtime.scan import Scan

Task = Literal["ct-mri", "vis-ir"]


@dataclass(frozen=True)
class TaskLayout:
    """How one task's two roles are spelled on disk and what read_scan is told about them."""

    roles: tuple[Role, Role]
    labels: tuple[str, str]
    folder_names: tuple[frozenset[str], frozenset[str]]
    modalities: tuple[str, str]


TASKS: dict[str, TaskLayout] = {
    "ct-mri": TaskLayout(
        roles=("ct", "mri"),
        labels=("CT", "MRI"),
        folder_names=(frozenset({"ct"}), frozenset({"mri", "mr"})),
        modalities=("CT", "MR"),
    ),
    "vis-ir": TaskLayout(
        roles=("vis", "ir"),
        labels=("visible", "infrared"),
        folder_names=(frozenset({"vi", "vis", "visible"}), frozenset({"ir", "infrared"})),
        modalities=("VIS", "IR"),
    ),
}


@dataclass(frozen=True)
class Pair:
    """Two registered scans of the same anatomy (or scene), ready for ``load_pair``.

    name:   path relative to the search root, without role folder and suffix (see module docstring).
    first:  the CT (or visible) file or DICOM series folder.
    second: the MRI (or infrared) file or DICOM series folder.
    kind:   the format of ``first`` ("image", "dicom-file", "dicom-series", "nifti"); ``second`` is
            usually the same and is detected separately when read.
    task:   "ct-mri" or "vis-ir"; sets the roles and the modalities the scans are read as.
    """

    name: str
    first: Path
    second: Path
    kind: Kind
    task: Task = "ct-mri"

    @property
    def roles(self) -> tuple[Role, Role]:
        return TASKS[self.task].roles


@dataclass(frozen=True)
class PairProblem:
    """A name that could not become a usable pair, the paths involved and why (with the fix)."""

    name: str
    paths: tuple[Path, ...]
    reason: str

    @classmethod
    def from_error(cls, pair: Pair, error: FuseError) -> PairProblem:
        return cls(pair.name, (pair.first, pair.second), str(error))

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class PairingReport:
    """What ``find_pairs`` found under ``root``: usable pairs and problems, each sorted by name."""

    root: Path
    task: Task
    pairs: list[Pair] = field(default_factory=list)
    problems: list[PairProblem] = field(default_factory=list)


def find_pairs(root: str | Path, task: Task = "ct-mri") -> PairingReport:
    """Search ``root`` recursively for pairs in the layouts of the module docstring.

    Raises FuseError when ``root`` is not a folder or holds neither a pair nor a problem (no layout
    recognised at all); ValueError for an unknown ``task``.
    """
    layout = _layout(task)
    root = Path(root)
    if not root.is_dir():
        raise FuseError("not a folder; point at a folder holding CT/ and MRI/ (or case) folders", root)
    finder = _Finder(root, task, layout)
    finder.search(root)
    if not finder.pairs and not finder.problems:
        first, second = layout.labels
        raise FuseError(
            f"no {first}/{second} pairs found; expected {first}/ + {second}/ folders with matching file "
            f"names, or case folders holding {first}/ + {second}/ DICOM series or "
            f"{layout.roles[0]}.nii.gz + {layout.roles[1]}.nii.gz",
            root,
        )
    return PairingReport(
        root=root,
        task=task,
        pairs=sorted(finder.pairs, key=lambda pair: pair.name),
        problems=sorted(finder.problems, key=lambda problem: problem.name),
    )


def load_pair(pair: Pair, register: str | None = None) -> tuple[Scan, Scan]:
    """Read both scans of ``pair`` (modalities set from the task's roles) and put the second on the first's grid.

    A pair on one grid comes back as read. Otherwise the second scan is resampled onto the first's
    grid by world coordinates (``fuse_runtime.resample``), or registered first with
    ``register="rigid"`` (``fuse_runtime.register``). How it was aligned (an ``Alignment``) is kept in
    the first scan's ``metadata["alignment"]``, and the SOP instances of the second scan in its
    ``metadata["second_slices"]``, for the report and the DICOM writer. Raises FuseError naming both
    files when either is unreadable, the scans do not overlap, or a grid cannot be placed in space.
    """
    layout = TASKS[pair.task]
    try:
        first = read_scan(pair.first, modality=layout.modalities[0])
        second = read_scan(pair.second, modality=layout.modalities[1])
    except (FuseError, OSError) as error:
        raise FuseError(f"cannot load the pair {pair.first} + {pair.second}: {error}") from None
    aligned, alignment = align_to_ct(first, second, register)
    check_registered(first, aligned)
    first.metadata["alignment"] = alignment
    first.metadata["second_slices"] = _instances(second, alignment.source_slices or [])
    first.metadata["second_dicom"] = {
        key: value
        for key, value in (second.metadata.get("dicom") or {}).items()
        if key in ("StudyInstanceUID", "SeriesInstanceUID", "Modality")
    }
    return first, aligned


def _instances(scan: Scan, sources: list[list[int]]) -> list[list[dict[str, str]]]:
    """Per slice of the first scan, the DICOM instances (SOPClassUID, SOPInstanceUID) of ``scan`` it uses.

    ``sources`` lists ``scan``'s slice indices per first-scan slice; empty lists for non-DICOM scans.
    """
    tags = scan.metadata.get("dicom") or {}
    sop_class = tags.get("SOPClassUID")
    slices = scan.metadata.get("slices") or ([tags] if scan.source_format == "dicom" else [])
    instances = [
        {"SOPClassUID": sop_class, "SOPInstanceUID": item.get("SOPInstanceUID")} if sop_class else None
        for item in slices
    ]
    return [
        [instances[i] for i in indices if i < len(instances) and instances[i] and instances[i]["SOPInstanceUID"]]
        for indices in sources
    ]


def verify_pairs(report: PairingReport, progress: bool = False) -> PairingReport:
    """Load every pair once; a pair that fails moves into the problems with the reason.

    Returns a new report; ``progress`` shows a tqdm bar (reading is the slow part of a large tree).
    """
    good: list[Pair] = []
    problems = list(report.problems)
    for pair in tqdm(report.pairs, desc="checking pairs", unit="pair", disable=not progress):
        try:
            load_pair(pair)
        except FuseError as error:
            problems.append(PairProblem.from_error(pair, error))
        else:
            good.append(pair)
    return replace(report, pairs=good, problems=sorted(problems, key=lambda problem: problem.name))


def patient_id(name: str) -> str:
    """The patient a pair belongs to, for splitting training and validation by patient.

    Harvard Whole Brain Atlas names are the patient id followed by a 2-digit slice number, so the
    patient is all but the last two digits: ``2006`` → ``20`` (patient 20, slice 06), ``28015`` →
    ``280``. Folders in the name are kept (``train/28015`` → ``train/280``) so equal ids in different
    datasets stay apart. Any other name (``case01``, ``FLIR_00211``, a 1–2 digit ``11``) is not in
    that scheme and is its own patient: the name is returned unchanged.
    """
    folder, _, stem = name.rpartition("/")
    if not re.fullmatch(r"\d{3,}", stem):
        return name
    return f"{folder}/{stem[:-2]}" if folder else stem[:-2]


# --- discovery -----------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One scan inside a role folder: a file or a DICOM series folder."""

    path: Path
    kind: Kind


@dataclass
class _RoleFolder:
    """A role folder's content: either one DICOM series as a whole, or entries keyed by stem."""

    series: bool
    entries: dict[str, _Entry]
    ambiguous: set[str] = field(default_factory=set)


@dataclass
class _Finder:
    root: Path
    task: Task
    layout: TaskLayout
    pairs: list[Pair] = field(default_factory=list)
    problems: list[PairProblem] = field(default_factory=list)

    def search(self, folder: Path) -> None:
        try:
            children = _visible_children(folder)
        except FuseError as error:
            if folder == self.root:
                raise
            self._problem(self._name(folder), [folder], error.reason)
            return
        self._report_hidden_cases(folder)
        dirs = [child for child in children if child.is_dir() and not child.is_symlink()]
        role_dirs = [self._role_children(dirs, names) for names in self.layout.folder_names]
        if any(role_dirs):
            self._pair_role_folders(folder, role_dirs[0], role_dirs[1])
        self._pair_case_files(folder, [child for child in children if child.is_file()])
        consumed = {path for paths in role_dirs for path in paths}
        for child in dirs:
            if child not in consumed:
                self.search(child)

    def _role_children(self, dirs: list[Path], names: frozenset[str]) -> list[Path]:
        return [child for child in dirs if child.name.lower() in names]

    def _name(self, folder: Path, stem: str | None = None) -> str:
        relative = folder.relative_to(self.root).as_posix()
        if stem is None:
            return self.root.name if relative == "." else relative
        return stem if relative == "." else f"{relative}/{stem}"

    def _problem(self, name: str, paths: Iterable[Path], reason: str) -> None:
        self.problems.append(PairProblem(name, tuple(paths), reason))

    def _pair_role_folders(self, folder: Path, firsts: list[Path], seconds: list[Path]) -> None:
        labels = self.layout.labels
        for found, label in ((firsts, labels[0]), (seconds, labels[1])):
            if len(found) > 1:
                self._problem(
                    self._name(folder),
                    found,
                    f"several {label} folders ({', '.join(p.name for p in found)}); merge them into one",
                )
                return
        if not firsts or not seconds:
            present, missing = (firsts[0], labels[1]) if firsts else (seconds[0], labels[0])
            self._problem(
                self._name(folder),
                [present],
                f"{present.name}/ has no {missing} folder beside it; add one with matching names",
            )
            return
        first_dir, second_dir = firsts[0], seconds[0]
        first, second = self._read_role_folder(folder, first_dir), self._read_role_folder(folder, second_dir)
        if first.series and second.series:
            self.pairs.append(Pair(self._name(folder), first_dir, second_dir, "dicom-series", self.task))
            return
        if first.series != second.series:
            whole, split = (first_dir, second_dir) if first.series else (second_dir, first_dir)
            odd = _series_intruders(split)
            reason = (
                f"{whole.name}/ holds one DICOM series but {split.name}/ holds separate scans; "
                "use the same layout on both sides"
            )
            if odd:
                reason = f"{split.name}/ holds one DICOM series apart from {odd}; move that out of {split.name}/"
            self._problem(self._name(folder), [first_dir, second_dir], reason)
            return
        ambiguous = first.ambiguous | second.ambiguous
        for stem in sorted((first.entries.keys() | second.entries.keys()) - ambiguous):
            name = self._name(folder, stem)
            a, b = first.entries.get(stem), second.entries.get(stem)
            if a is not None and b is not None:
                self.pairs.append(Pair(name, a.path, b.path, a.kind, self.task))
            else:
                have, have_dir, missing = (a, first_dir, labels[1]) if a is not None else (b, second_dir, labels[0])
                self._problem(name, [have.path], f"no {missing} for {have_dir.name}/{have.path.name}")

    def _read_role_folder(self, folder: Path, role_dir: Path) -> _RoleFolder:
        children = _visible_children(role_dir)
        files = [child for child in children if child.is_file()]
        dicoms = [child for child in files if looks_like_dicom(child)]
        others = [child for child in children if child not in dicoms]
        if len(dicoms) > 1 and not others and _one_series(dicoms):
            return _RoleFolder(series=True, entries={})
        entries: dict[str, _Entry] = {}
        duplicates: dict[str, list[Path]] = {}
        for child in children:
            kind = _kind(child)
            if kind is None:
                what = "folder holds no DICOM files" if child.is_dir() else "file is not a scan"
                self._problem(
                    self._name(folder, _stem(child)),
                    [child],
                    f"{role_dir.name}/{child.name}: {what} (expected PNG/TIFF/JPEG, DICOM, NIfTI or a "
                    "DICOM series folder); move it out of the scan folders",
                )
                continue
            stem = _stem(child)
            if stem in entries:
                duplicates.setdefault(stem, [entries[stem].path]).append(child)
                continue
            entries[stem] = _Entry(child, kind)
        for stem, paths in duplicates.items():  # fused from neither: which one was meant is unknown
            del entries[stem]
            names = ", ".join(path.name for path in paths)
            self._problem(
                self._name(folder, stem),
                paths,
                f"{role_dir.name}/ has several scans named {stem!r} ({names}); keep one",
            )
        return _RoleFolder(series=False, entries=entries, ambiguous=set(duplicates))

    def _report_hidden_cases(self, folder: Path) -> None:
        """A hidden folder (``.case``) holding role folders or case files is skipped: say so, once."""
        roles = frozenset().union(*self.layout.folder_names)
        try:
            hidden = [c for c in folder.iterdir() if c.name.startswith(".") and c.is_dir() and not c.is_symlink()]
        except OSError:
            return
        for child in sorted(hidden):
            try:
                inside = {_stem(grand).lower() for grand in _visible_children(child)}
            except FuseError:
                continue
            if inside & roles:
                self._problem(
                    self._name(child), [child],
                    f"{child.name}/ is hidden (its name starts with a dot) and was skipped; rename it without the dot",
                )

    def _pair_case_files(self, folder: Path, files: list[Path]) -> None:
        """Per-case volumes: ``ct.nii.gz`` + ``mri.nii.gz`` (any scan format) directly in ``folder``."""
        found: list[list[Path]] = [[], []]
        for child in files:
            for index, names in enumerate(self.layout.folder_names):
                if _stem(child).lower() in names and _kind(child) is not None:
                    found[index].append(child)
        if not any(found):
            return
        name = self._name(folder)
        labels = self.layout.labels
        for side, label in zip(found, labels):
            if len(side) > 1:
                self._problem(name, side, f"several {label} scans ({', '.join(p.name for p in side)}); keep one")
                return
        if not found[0] or not found[1]:
            present, missing = (found[0][0], labels[1]) if found[0] else (found[1][0], labels[0])
            self._problem(name, [present], f"no {missing} scan beside {present.name}")
            return
        if any(pair.name == name for pair in self.pairs):
            self._problem(
                name,
                [found[0][0], found[1][0]],
                f"{found[0][0].name} + {found[1][0].name} duplicate the pair in the role folders of the same "
                "case; keep one layout per case",
            )
            return
        kind = _kind(found[0][0])
        assert kind is not None
        self.pairs.append(Pair(name, found[0][0], found[1][0], kind, self.task))


def _layout(task: str) -> TaskLayout:
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]


def _visible_children(folder: Path) -> list[Path]:
    """Sorted children, without hidden names (``.DS_Store``, partial files being written)."""
    try:
        return sorted(child for child in folder.iterdir() if not child.name.startswith("."))
    except OSError as error:
        raise FuseError(f"cannot list the folder ({error.strerror}); check its permissions", folder) from None


def _stem(path: Path) -> str:
    suffix = format_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix and path.is_file() else path.name


def _kind(path: Path) -> Kind | None:
    if path.is_dir():
        return (
            "dicom-series"
            if any(looks_like_dicom(child) for child in _visible_children(path) if child.is_file())
            else None
        )
    return file_kind(path)


def _series_intruders(folder: Path) -> str:
    """In a folder of one DICOM series plus a few other files: those files and why, else ``""``.

    A file that is not readable DICOM, or one of another series than most of the files, is named.
    """
    files = [child for child in _visible_children(folder) if child.is_file()]
    uids: dict[Path, str | None] = {}
    for path in files:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
            uids[path] = str(dataset.get("SeriesInstanceUID", "")) or None
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, TypeError):
            uids[path] = None
    counts: dict[str, int] = {}
    for uid in uids.values():
        if uid is not None:
            counts[uid] = counts.get(uid, 0) + 1
    if not counts:
        return ""
    main, size = max(counts.items(), key=lambda item: item[1])
    odd = [path for path, uid in uids.items() if uid != main]
    if size < 2 or len(odd) * 2 >= len(files):
        return ""
    return "; ".join(
        f"{path.name} ({'not a readable DICOM file' if uids[path] is None else 'a slice of another series'})"
        for path in odd[:5]
    ) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")


def _one_series(files: list[Path]) -> bool:
    """True when every file is readable DICOM and they share one SeriesInstanceUID."""
    uids = set()
    for path in files:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            return False
        uid = str(dataset.get("SeriesInstanceUID", ""))
        if not uid:
            return False
        uids.add(uid)
        if len(uids) > 1:
            return False
    return True
