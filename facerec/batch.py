"""Batch jobs across worker processes.

Threads inside one process share the interpreter lock, which the pipeline's numpy glue
holds part of the time; for long batch jobs (benchmarks, folders of images) one process per
core runs the whole pipeline single-threaded on its share of the files, decoding included.
Measured here it was 10-35 % faster than threads in one comparison and no faster in
another: these machines' speed drifts.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from facerec.errors import FaceRecError, NoFaceError
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.pipeline import FacePipeline, ImageFaces, PipelineConfig
from facerec.runtime import default_threads

_pipeline: FacePipeline | None = None


@dataclass
class FileResult:
    """One file's faces, or the error that stopped it."""

    path: Path
    faces: ImageFaces | None = None
    error: FaceRecError | None = None


def analyze_paths(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    pad: int = 0,
    primary_only: bool = False,
    embed: bool = True,
) -> list[FileResult]:
    """Decode (and edge-pad) ``paths`` and analyse them as one batch; a file that cannot
    be decoded gets its error and never stops the others."""
    results = [FileResult(p) for p in paths]
    images, good = [], []
    with pipeline.timer.stage("decode"):
        for r in results:
            try:
                images.append(pad_edges(read_image(r.path), pad))
            except FaceRecError as exc:
                r.error = exc
                continue
            good.append(r)
    if images:
        for r, faces in zip(good, pipeline.analyze(images, primary_only, embed), strict=True):
            r.faces = faces
    return results


def _init(config: PipelineConfig, home: Path | None) -> None:
    global _pipeline
    _pipeline = FacePipeline.open(config, home)


def _run(
    paths: Sequence[Path], pad: int, primary_only: bool, embed: bool
) -> tuple[list[FileResult], dict[str, float]]:
    assert _pipeline is not None, "worker not initialised"
    before = dict(_pipeline.timer.seconds)
    results = analyze_paths(_pipeline, paths, pad, primary_only, embed)
    spent = {k: v - before.get(k, 0.0) for k, v in _pipeline.timer.seconds.items()}
    return results, spent


class ProcessBatchRunner:
    """Runs :class:`FacePipeline` over files in ``processes`` worker processes.

    Results come back in input order. Stage times (decode included) are summed over the
    workers into :attr:`seconds`.
    """

    def __init__(
        self,
        config: PipelineConfig,
        processes: int | None = None,
        home: Path | None = None,
    ) -> None:
        self.processes = max(1, processes or default_threads())
        worker_config = replace(config, workers=1, threads=1)
        self._pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(worker_config, home),
        )
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> ProcessBatchRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def warm_up(self) -> None:
        """Start every worker and load its models (start-up, kept out of timings)."""
        list(
            self._pool.map(
                _run,
                [[]] * self.processes,
                [0] * self.processes,
                [False] * self.processes,
                [False] * self.processes,
            )
        )

    def run(
        self,
        paths: Sequence[Path],
        pad: int = 0,
        primary_only: bool = False,
        embed: bool = True,
        chunk: int = 8,
    ) -> Iterator[FileResult]:
        """Analyse every file; yields results in input order as chunks complete."""
        chunks = [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)]
        n = len(chunks)
        for results, spent in self._pool.map(
            _run, chunks, [pad] * n, [primary_only] * n, [embed] * n
        ):
            for k, v in spent.items():
                self.seconds[k] = self.seconds.get(k, 0.0) + v
            yield from results


#: From this many files on, commands analyse them in worker processes, one per core. A
#: worker starts and loads its models in about a second, which a few dozen files repay;
#: threads in one process lose 10-35 % of their detection time to the interpreter lock.
PROCESS_MIN_FILES = 32


def worker_processes(
    pipeline: FacePipeline, files: int, requested: int | None = None, batch: int = 8
) -> int:
    """How many worker processes analyse ``files`` files: ``requested`` when given, else
    one per core from :data:`PROCESS_MIN_FILES` files on; never more than there are
    batches of ``batch`` files (a worker without one would only load the models). 1 means
    in this process, which is also the answer for a remote backend (Triton does the work
    there)."""
    if not pipeline.in_process:
        return 1
    wanted = default_threads() if files >= PROCESS_MIN_FILES else 1
    if requested is not None:
        wanted = requested
    return max(1, min(wanted, -(-files // batch)))


def analyze_files(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    primary_only: bool,
    embed: bool,
    batch: int = 8,
    progress: bool = False,
    processes: int | None = None,
) -> Iterator[FileResult]:
    """Decode and analyse ``paths`` a batch at a time, in input order; a bad file never
    stops the rest. Many files go to worker processes (:func:`worker_processes`)."""
    bar = tqdm(total=len(paths), unit="img", disable=not progress, leave=False)
    workers = worker_processes(pipeline, len(paths), processes, batch)
    if workers > 1:
        with ProcessBatchRunner(pipeline.config, workers) as runner:
            for result in runner.run(paths, primary_only=primary_only, embed=embed, chunk=batch):
                bar.update(1)
                yield result
    else:
        for lo in range(0, len(paths), batch):
            chunk = paths[lo : lo + batch]
            yield from analyze_paths(pipeline, chunk, primary_only=primary_only, embed=embed)
            bar.update(len(chunk))
    bar.close()


def require_face(o: FileResult) -> FaceRecError | None:
    """The file's error, or ``no_face`` when it has no face, or None."""
    if o.error is not None:
        return o.error
    if o.faces is None or not o.faces.faces:
        return NoFaceError(f"no face found in {o.path}", code="no_face")
    return None
