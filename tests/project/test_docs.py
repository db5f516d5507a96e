"""The documentation: the site builds with ``mkdocs build --strict`` (every link and anchor
resolves, every generated table and the OpenAPI schema are made), the README stays short,
keeps the two commands, and its headline figures are those of ``perf/results/``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.data import ROOT

README = ROOT / "README.md"
README_MAX_LINES = 300


def load_hook(name: str) -> ModuleType:
    """A module of ``docs/hooks/`` (MkDocs loads them by path, not as a package)."""
    path = ROOT / "docs" / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI would: strict, so any warning fails the build."""
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.mark.slow
def test_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    schema = (site / "openapi.json").read_text()
    assert '"/v1/identify"' in schema
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- results:" not in benchmarks
    assert "perf/results/lfw_variants.json" in benchmarks
    api = (site / "python-api" / "index.html").read_text()
    assert 'id="facerec.FaceRecognizer"' in api


@pytest.mark.slow
def test_readme_links_into_the_docs_resolve(site: Path) -> None:
    text = README.read_text()
    links = re.findall(r"\]\(docs/([^)#]+\.md)(?:#([^)]+))?\)", text)
    assert links
    for page, anchor in links:
        html = site / (page.removesuffix(".md").removesuffix("index")) / "index.html"
        assert html.is_file(), f"README links to docs/{page}, which the site does not have"
        if anchor:
            assert f'id="{anchor}"' in html.read_text(), f"docs/{page} has no #{anchor}"


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert "bash run.sh" in section
    assert "bash scripts/test.sh" in section


def test_readme_headline_figures_are_the_measured_ones() -> None:
    tables = load_hook("results_tables")
    text = README.read_text()
    lfw = tables.load("lfw_variants.json")["similarity+flip, int8 (default)"]
    accuracy = f"{100 * lfw['accuracy_mean']:.2f} ± {100 * lfw['accuracy_std']:.2f} %"
    speed = tables.load("speed.json")["end_to_end"]["lfw_250x250"]
    default, reference = speed["default, worker processes"], speed["reference (PyTorch eager)"]
    openset = tables.load("openset.json")["results"]["centroid"]["3"]["1000"]
    expected = [
        accuracy,
        tables.pct(lfw["tar_at_far_1e-3"], 2),
        f"{tables.rate(default['images_per_second'])} images/s",
        f"{default['speedup_vs_reference']:.1f}x",
        f"{tables.rate(reference['images_per_second'])} images/s",
        tables.pct(openset["rank1"]),
        tables.pct(openset["dir_at_fpir"]["0.01"]),
        tables.pct(openset["dir_at_fpir"]["0.001"]),
    ]
    for figure in expected:
        assert figure in text, f"README.md's headline figures lack {figure!r}"


def test_doctests_become_code_blocks() -> None:
    fence = load_hook("griffe_doctest").fence_doctests
    text = "Prose.\n\n>>> 1 + 1\n2\n\nMore.\n\n```python\n>>> kept\n```"
    assert fence(text) == (
        "Prose.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nMore.\n\n```python\n>>> kept\n```"
    )


def _search_row(gallery: int, default_ef: int | None, repeat_recall: float) -> dict[str, object]:
    """One ``perf.search_scaling`` row, as the benchmark writes it (``default_ef`` only since
    it records it; before, the sweep entry whose latency it copied says which ef it was)."""
    latency = {"p50": 2.0, "p95": 4.0, "p99": 9.0, "mean": 2.5}
    sweep = [
        {"ef": ef, "latency_ms": latency if ef == (default_ef or 64) else {**latency, "p50": 3.0}}
        | {"recall_at_1": 0.9 if ef == 64 else 1.0, "server_cpu_ms_per_probe": 2.0, "load": 1.0}
        for ef in (64, 128)
    ]
    row: dict[str, object] = {
        "gallery": gallery,
        "load_before": 1.0,
        "insert_per_second": 12345.0,
        "index_build_seconds": 8.0,
        "sweep": sweep,
        "latency_ms": latency,
        "repeat_latency_ms": latency,
        "repeat_recall_at_1": repeat_recall,
        "batch_queries_per_second": 1000.0,
        "identify_path_ms": latency,
    }
    if default_ef is not None:
        row["default_ef"] = default_ef
    return row


def test_search_tables_name_the_ef_and_the_second_pass(tmp_path: Path) -> None:
    """The generated search tables say at which ef each latency was measured (in the header
    when the rows share it, in the cells when a later run changed the default), and show a
    second pass's recall only where it differed from the first."""
    tables = load_hook("results_tables")
    out = tmp_path / "search_scaling"
    out.mkdir()
    shared = [_search_row(10_000, None, 0.9), _search_row(100_000, 64, 0.95)]
    (out / "search_scaling_server_hnsw.json").write_text(json.dumps({"rows": shared}))
    text = tables.search_scaling(tmp_path)
    assert "at ef 64 (second pass)" in text
    assert "0.9 / 1" not in text  # recalls print with three decimals
    assert "0.900 / 1" in text and "0.900 (0.950) / 1" in text
    mixed = [_search_row(10_000, None, 0.9), _search_row(100_000, 128, 1.0)]
    (out / "search_scaling_server_hnsw.json").write_text(json.dumps({"rows": mixed}))
    text = tables.search_scaling(tmp_path)
    assert "at the default ef" in text
    assert "ef 64: 2.0 / 4.0 / 9.0 ms" in text and "ef 128: 2.0 / 4.0 / 9.0 ms" in text
