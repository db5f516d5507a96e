"""Batch jobs across worker processes.

Threads inside one process share the interpreter lock, which the pipeline's numpy glue
holds part of the time; for long batch jobs (benchmarks, folders of images) one process per
core, each running the whole pipeline single-threaded on its share of the files, is about a
third faster here. Each worker decodes its own files, so decoding runs in parallel too.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from facerec.errors import FaceRecError
from facerec.imaging.decode import read_image
from facerec.imaging.pad import pad_edges
from facerec.pipeline import FacePipeline, ImageFaces, PipelineConfig
from facerec.runtime import default_threads

_pipeline: FacePipeline | None = None


@dataclass
class FileResult:
    """One file's faces, or the error (code and message) that stopped it."""

    path: Path
    faces: ImageFaces | None = None
    error: dict[str, Any] | None = None


def _init(config: PipelineConfig, home: Path | None) -> None:
    global _pipeline
    _pipeline = FacePipeline.local(config, home)


def _run(
    paths: Sequence[Path], pad: int, primary_only: bool, embed: bool
) -> tuple[list[FileResult], dict[str, float]]:
    assert _pipeline is not None, "worker not initialised"
    timer = _pipeline.timer
    before = dict(timer.seconds)
    results = [FileResult(p) for p in paths]
    images, good = [], []
    with timer.stage("decode"):
        for r in results:
            try:
                img = read_image(r.path)
            except FaceRecError as exc:
                r.error = exc.to_dict()
                continue
            images.append(pad_edges(img, pad))
            good.append(r)
    if images:
        for r, faces in zip(good, _pipeline.analyze(images, primary_only, embed), strict=True):
            r.faces = faces
    spent = {k: v - before.get(k, 0.0) for k, v in timer.seconds.items()}
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
