"""Open-set identification over the real HTTP service (``facerec serve`` on loopback, real
LFW faces from tests/data), on both storage configurations: enrolled people are found and
never-enrolled people rejected at the default FPIR; the response reports the operating
point; a key with only the identify role sees no candidate below the threshold and may not
loosen it (identify, batch identify and jobs)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.servers import Service
from facerec.matching import IdentificationPolicy
from facerec.models import load_model_card
from facerec.pipeline import PipelineConfig
from tests.support.apiclient import image_files
from tests.support.data import GALLERY, LFW
from tests.support.gateway import client_with_key

ENROL = 3  # photos per person (the gates refuse one of them: a profile)
STRANGERS = sorted(LFW.glob("*.jpg"))  # 17 photos of 11 people, none enrolled


def people() -> dict[str, list[Path]]:
    by_person: dict[str, list[Path]] = collections.defaultdict(list)
    for path in sorted(GALLERY.glob("*.jpg")):
        by_person[path.stem.rsplit("_", 1)[0]].append(path)
    return dict(by_person)


def main_face(result: dict[str, Any]) -> dict[str, Any]:
    faces: list[dict[str, Any]] = result["faces"]
    assert faces, result
    return max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))


def identify(c: httpx.Client, path: Path, **data: Any) -> httpx.Response:
    return c.post("/v1/identify", files=image_files([path], "image"), data=data)


def expected_point(gallery_size: int, fpir: float = 1e-3) -> float:
    """The threshold the model card gives the default pipeline for this gallery."""
    cfg = PipelineConfig()
    policy = IdentificationPolicy.from_card(
        load_model_card(), cfg.alignment, cfg.flip, cfg.precision
    )
    return policy.operating_point(gallery_size, fpir).threshold


@pytest.fixture
def service(serve: Callable[..., Service]) -> Service:
    return serve()


def test_enrolled_found_strangers_rejected_at_the_default_fpir(service: Service) -> None:
    with service.client() as c:
        ids = {}
        for person, paths in people().items():
            ids[person] = c.post("/v1/subjects", json={"name": person}).json()["id"]
            r = c.post(
                f"/v1/subjects/{ids[person]}/faces",
                files=image_files(paths[:ENROL]),
                data={"face": "primary"},
            )
            assert r.status_code == 200, r.text
        names = {v: k for k, v in ids.items()}
        threshold = expected_point(len(ids))
        assert 0.55 < threshold < 0.7  # far above the 1:1 threshold (0.415)

        def check_point(body: dict[str, Any]) -> None:
            assert body["fpir"] == 1e-3 and body["gallery_size"] == len(ids)
            assert body["method"] == "centroid" and body["threshold_source"] == "calibrated"
            assert body["threshold"] == pytest.approx(threshold, abs=1e-6)

        found = wrong = 0
        mated = [(p, person) for person, paths in people().items() for p in paths[ENROL:]]
        for path, person in mated:
            r = identify(c, path, top_k="3")
            assert r.status_code == 200, r.text
            check_point(r.json())
            match = main_face(r.json())["match"]
            if match is not None:
                found += names[match["subject_id"]] == person
                wrong += names[match["subject_id"]] != person
                assert match["similarity"] >= threshold
        print(f"\nenrolled found at FPIR 1e-3: {found}/{len(mated)}")
        assert wrong == 0 and found >= 0.9 * len(mated)

        accepted = []
        for path in STRANGERS:
            r = identify(c, path, top_k="3")
            check_point(r.json())
            best = main_face(r.json())
            assert best["candidates"], "an admin key sees the top-k"
            if best["match"] is not None:
                accepted.append(path.stem)
        print(f"strangers rejected: {len(STRANGERS) - len(accepted)}/{len(STRANGERS)}")
        assert accepted == []

        # An explicit threshold overrides; an FPIR outside the calibrated range is refused
        r = identify(c, LFW / "Anders_Fogh_Rasmussen_0001.jpg", threshold="0.3")
        body = r.json()
        assert (body["threshold"], body["fpir"], body["threshold_source"]) == (
            0.3,
            None,
            "explicit",
        )
        assert main_face(body)["match"] is not None  # a stranger, at a threshold far too low
        r = identify(c, mated[0][0], fpir="0.1")
        assert r.json()["threshold"] == pytest.approx(expected_point(len(ids), 0.1), abs=1e-6)
        r = identify(c, mated[0][0], fpir="0.5")
        assert r.status_code == 400 and r.json()["error"]["code"] == "fpir_out_of_range"

        # The gallery size follows deletions at once
        c.delete(f"/v1/subjects/{ids['Howard_Dean']}")
        body = identify(c, mated[0][0]).json()
        assert body["gallery_size"] == len(ids) - 1
        assert body["threshold"] == pytest.approx(expected_point(len(ids) - 1), abs=1e-6)


def test_an_identify_key_sees_only_candidates_above_the_threshold(service: Service) -> None:
    admin = service.client()
    kerry, dean = people()["John_Kerry"], people()["Howard_Dean"]
    subjects = {}
    for name, paths in (("Kerry", kerry), ("Dean", dean), ("Choi", people()["Choi_Sung-hong"])):
        subjects[name] = admin.post("/v1/subjects", json={"name": name}).json()["id"]
        r = admin.post(f"/v1/subjects/{subjects[name]}/faces", files=image_files(paths[:2]))
        assert r.status_code == 200, r.text
    token = admin.post("/v1/keys", json={"role": "identify"}).json()["token"]
    key = client_with_key(service, token)
    stranger, probe = LFW / "Dean_Barker_0001.jpg", kerry[3]
    try:
        # the admin sees the top-k; the identify key nothing below the threshold
        seen = main_face(identify(admin, stranger, top_k="5").json())
        assert len(seen["candidates"]) == 3 and seen["match"] is None
        body = identify(key, stranger, top_k="5").json()
        assert main_face(body)["candidates"] == [] and main_face(body)["match"] is None
        body = identify(key, probe, top_k="5").json()
        face = main_face(body)
        assert face["match"]["subject_id"] == subjects["Kerry"]
        assert [x["subject_id"] for x in face["candidates"]] == [subjects["Kerry"]]
        assert all(x["similarity"] >= body["threshold"] for x in face["candidates"])
        assert len(main_face(identify(admin, probe, top_k="5").json())["candidates"]) == 3

        # stricter is allowed, looser is not (an admin may)
        assert identify(key, probe, threshold="0.95").json()["threshold"] == 0.95
        assert identify(key, probe, fpir="0.001").status_code == 200
        for loose in ({"threshold": "-1"}, {"threshold": "0.3"}, {"fpir": "0.01"}):
            r = identify(key, stranger, **loose)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "threshold_not_allowed"
            assert identify(admin, stranger, **loose).status_code == 200
        r = key.post(
            "/v1/batch/identify", files=image_files([stranger, probe]), data={"fpir": "0.1"}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "threshold_not_allowed"
        r = key.post("/v1/jobs", files=image_files([stranger], "files"), data={"threshold": "0"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "threshold_not_allowed"

        # batch identify and jobs show the identify key the same
        r = key.post(
            "/v1/batch/identify", files=image_files([stranger, probe]), data={"top_k": "5"}
        )
        results = r.json()["results"]
        assert main_face(results[0])["candidates"] == []
        assert [x["subject_id"] for x in main_face(results[1])["candidates"]] == [subjects["Kerry"]]
        r = key.post("/v1/jobs", files=image_files([stranger, probe], "files"), data={"top_k": "5"})
        assert r.status_code == 202, r.text
        job_id, deadline = r.json()["id"], time.monotonic() + 120
        while (job := key.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert job["status"] == "done", job
        assert main_face(job["results"][0])["candidates"] == []
        assert main_face(job["results"][1])["match"]["subject_id"] == subjects["Kerry"]
        assert job["results"][1]["gallery_size"] == 3 and job["results"][1]["fpir"] == 1e-3
    finally:
        key.close()
        admin.close()
