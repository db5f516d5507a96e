"""Enrolment through the core policy over HTTP, on both storage configurations: face=primary
takes the largest, most central face (not the detector's most confident), and every face
passes the enrolment gates, each refusal with its own code, documented in the OpenAPI
schema; force skips only the consistency gate and is audited."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from facerec.imaging.decode import read_image
from facerec.pipeline import FacePipeline
from facerec.selection import DEFAULT_GATES
from gateway.service.enrolment import REFUSAL_CODES
from tests.support.apiclient import image_files, one_image, running, settings_for
from tests.support.data import GALLERY, lfw_image, lfw_path

KERRY = sorted(GALLERY.glob("John_Kerry_*.jpg"))
DEAN = sorted(GALLERY.glob("Howard_Dean_*.jpg"))


def jpeg(image: np.ndarray, name: str = "photo.jpg") -> dict[str, Any]:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=95)
    return {"images": (name, out.getvalue(), "image/jpeg")}


def crowd() -> np.ndarray:
    """A real photo where the person in front is not the detector's most confident face:
    a large face in the middle (Dean Barker, at 70 % contrast: sharp enough to enrol) and
    two small, crisp faces in corners."""
    canvas = np.full((420, 720, 3), 90, np.uint8)
    middle = read_image(lfw_path("Dean_Barker_0001")).astype(np.float32)
    canvas[135:285, 285:435] = np.clip((middle - 128) * 0.7 + 128, 0, 255).astype(np.uint8)
    canvas[20:120, 20:120] = cv2.resize(read_image(lfw_path("Amber_Tamblyn_0001")), (100, 100))
    canvas[300:400, 600:700] = cv2.resize(read_image(lfw_path("Ann_Veneman_0003")), (100, 100))
    return canvas


def turned(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def subject(client: TestClient, name: str) -> str:
    sid: str = client.post("/v1/subjects", json={"name": name}).json()["id"]
    return sid


def refused(r: Any, code: str) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code, error
    return error


def test_primary_is_the_largest_central_face(client: TestClient) -> None:
    photo = crowd()
    detected = client.post("/v1/detect", files={"image": jpeg(photo)["images"]}).json()["faces"]
    assert len(detected) == 3
    assert detected[0]["score"] == max(f["score"] for f in detected)
    first = centre(detected[0]["box"])  # the detector's most confident: a corner face
    assert not (240 < first[0] < 480 and 90 < first[1] < 330)
    sid = subject(client, "Dean Barker")
    r = client.post(f"/v1/subjects/{sid}/faces", files=jpeg(photo), data={"face": "primary"})
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    x, y = centre(result["box"])
    assert 240 < x < 480 and 90 < y < 330  # the one in front
    # the template is Dean Barker's: his own photo verifies, the corner faces do not
    verify = {"subject_id": sid}
    r = client.post("/v1/verify", files=one_image(lfw_path("Dean_Barker_0001")), data=verify)
    assert r.json()["match"] is True, r.text
    for other in ("Amber_Tamblyn_0001", "Ann_Veneman_0003"):
        r = client.post("/v1/verify", files=one_image(lfw_path(other)), data=verify)
        assert r.json()["match"] is False, r.text


def test_each_gate_refuses_with_its_own_code(client: TestClient) -> None:
    sid = subject(client, "Angela Bassett")
    face = lfw_image("Angela_Bassett_0001")
    url = f"/v1/subjects/{sid}/faces"

    error = refused(
        client.post(url, files=jpeg(cv2.GaussianBlur(face, (0, 0), 3.0))), "blurry_face"
    )
    assert error["results"][0]["error"]["quality"]["sharpness"] < DEFAULT_GATES.min_sharpness
    refused(client.post(url, files=jpeg(turned(face, 45))), "extreme_pose")
    small = cv2.resize(face, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    error = refused(client.post(url, files=jpeg(small)), "face_too_small")
    assert error["results"][0]["error"]["quality"]["face_size"] < DEFAULT_GATES.min_face_size
    cut = np.ascontiguousarray(read_image(lfw_path("Angela_Bassett_0001"))[:, 60:])
    refused(client.post(url, files=jpeg(cut)), "face_cut_off")
    profile = GALLERY / "Xanana_Gusmao_0002.jpg"
    refused(client.post(url, files=image_files([profile])), "extreme_pose")
    assert client.get(f"/v1/subjects/{sid}").json()["faces"] == 0  # nothing stored

    r = client.post(url, files=image_files([lfw_path("Angela_Bassett_0001")]))
    assert r.status_code == 200, r.text
    (ok,) = r.json()["results"]
    assert ok["forced"] is False and ok["measures"]["score"] > DEFAULT_GATES.min_score
    assert set(ok["measures"]) >= {"face_size", "score", "outside", "pose", "sharpness"}
    assert "consistency" not in ok["measures"]  # the subject's first face
    assert 0 < ok["quality"] <= 1
    listed = client.get(f"/v1/subjects/{sid}").json()["face_list"]
    assert [f["quality"] for f in listed] == [ok["quality"]]


def test_consistency_gate_and_force(client: TestClient) -> None:
    sid = subject(client, "John Kerry")
    url = f"/v1/subjects/{sid}/faces"
    # one odd photo among several of one person, sent first: the majority wins
    r = client.post(url, files=image_files([DEAN[0], KERRY[0], KERRY[1]]))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["image"] for x in results] == [DEAN[0].name, KERRY[0].name, KERRY[1].name]
    assert results[0]["error"]["code"] == "inconsistent_face"
    assert results[0]["error"]["quality"]["consistency"] < DEFAULT_GATES.min_consistency
    assert results[1]["face_id"] and results[2]["face_id"]
    assert (
        results[2]["measures"]["consistency"] > 0.6 or results[1]["measures"]["consistency"] > 0.6
    )

    error = refused(client.post(url, files=image_files([DEAN[1]])), "inconsistent_face")
    assert "force" in error["message"]
    r = client.post(url, files=image_files([KERRY[2]]))  # the same person passes
    assert r.status_code == 200 and r.json()["results"][0]["forced"] is False

    r = client.post(url, files=image_files([DEAN[1]]), data={"force": "true"})
    assert r.status_code == 200, r.text
    (forced,) = r.json()["results"]
    assert forced["forced"] is True
    assert forced["measures"]["consistency"] < DEFAULT_GATES.min_consistency
    # force skips only the consistency gate
    blurred = cv2.GaussianBlur(read_image(DEAN[2]), (0, 0), 3.0)
    refused(client.post(url, files=jpeg(blurred), data={"force": "true"}), "blurry_face")

    events = client.get("/v1/audit", params={"last": 50}).json()["events"]
    enrols = [(e["outcome"], e["score"]) for e in events if e["action"] == "enrol"]
    outcomes = [o for o, _ in enrols]
    assert outcomes.count("forced") == 1 and outcomes.count("ok") == 3
    assert outcomes.count("refused") == 3
    forced_score = next(s for o, s in enrols if o == "forced")
    assert forced_score == pytest.approx(forced["measures"]["consistency"], abs=1e-3)


def test_gate_settings_are_honoured(
    storage: dict[str, Any], tmp_path: Path, pipeline: FacePipeline
) -> None:
    """FACEREC_ENROL_MIN_SCORE=0.999 refuses a photo the detector is 99.86 % sure of;
    FACEREC_ENROL_MAX_ROLL=60 lets a face turned by 45 degrees (99.98 %) through."""
    strict = settings_for(tmp_path / "data", storage, enrol_min_score=0.999, enrol_max_roll=60)
    with running(strict, pipeline) as client:
        sid = subject(client, "x")
        url = f"/v1/subjects/{sid}/faces"
        error = refused(client.post(url, files=image_files([KERRY[0]])), "low_detection_score")
        assert 0.998 < error["results"][0]["error"]["quality"]["score"] < 0.999
        r = client.post(url, files=jpeg(turned(lfw_image("Angela_Bassett_0001"), 45)))
        assert r.status_code == 200, r.text
        assert abs(r.json()["results"][0]["measures"]["pose"]["roll"]) > 30


def test_refusal_codes_are_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    enrol = schema["paths"]["/v1/subjects/{subject_id}/faces"]["post"]
    text = enrol["responses"]["422"]["description"]
    assert all(f"`{code}`" in text for code in REFUSAL_CODES)
    assert set(REFUSAL_CODES) == {
        "face_too_small",
        "low_detection_score",
        "face_cut_off",
        "blurry_face",
        "extreme_pose",
        "inconsistent_face",
    }
    form = schema["components"]["schemas"]
    body = next(v for k, v in form.items() if k.startswith("Body_add_faces"))
    assert "force" in body["properties"]
    identify = schema["paths"]["/v1/identify"]["post"]
    assert "threshold_not_allowed" in identify["responses"]["403"]["description"]
    assert "fpir_out_of_range" in identify["responses"]["400"]["description"]
    out = form["IdentifyOut"]["properties"]
    assert {"threshold", "fpir", "gallery_size", "method", "threshold_source"} <= set(out)
