"""The try-it page (``/``, gateway/static/index.html) driven in headless Chromium.

A real ``facerec serve`` runs on loopback in development mode; Playwright drives Debian's
Chromium (``scripts/install_browser.sh`` installs both). The tests act through the page only
and call the API directly just to check what the page did. The webcam tests launch a
Chromium of their own with a fake camera: Chromium's test pattern, or a Y4M file written
here (the Live panel, streaming to ``WS /v1/stream``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from devkit.servers import free_port
from facerec.imaging.decode import read_image
from tests.support.data import GALLERY, LFW, ROOT

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "perf" / "results" / "web_page.png"
TIMEOUT_MS = 30_000

try:
    from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
except ImportError:
    pytest.skip(
        "playwright is not installed (run scripts/install_browser.sh)", allow_module_level=True
    )
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (run scripts/install_browser.sh)", allow_module_level=True)

ENROL_IMAGES = [GALLERY / f"John_Kerry_{n:04d}.jpg" for n in (1, 3, 4)]
KERRY_PROBE = GALLERY / "John_Kerry_0005.jpg"
KERRY_VERIFY = GALLERY / "John_Kerry_0009.jpg"
STRANGER = LFW / "Dean_Barker_0001.jpg"
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

MATCH_RGB = (22, 163, 74)  # the page's box colour for a match (#16a34a)
UNKNOWN_RGB = (220, 38, 38)  # and for an unknown face (#dc2626)


@dataclass
class Server:
    url: str
    admin_key: str

    def get(self, path: str) -> Any:
        """A JSON answer from the API, with the admin key (to check what the page did)."""
        req = urllib.request.Request(self.url + path, headers={"X-API-Key": self.admin_key})
        with urllib.request.urlopen(req, timeout=10) as res:
            return json.load(res)


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``facerec serve`` in development mode with its own data folder, on a free port."""
    root = tmp_path_factory.mktemp("web")
    data = root / "data"
    log = root / "serve.log"
    exe = Path(sys.executable).with_name("facerec")
    cmd = [str(exe) if exe.exists() else shutil.which("facerec") or "facerec"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env.update({k: os.environ[k] for k in ("FACEREC_HOME", "FACEREC_THREADS") if k in os.environ})
    env.update(FACEREC_ENV="development", FACEREC_DATA_DIR=str(data))
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,  # no stray .env from the working folder
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"facerec serve exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as res:
                    if res.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"facerec serve not healthy after 90 s:\n{_log_tail(log)}")
            time.sleep(0.3)
        yield Server(url, (data / "admin.key").read_text().strip())
        if proc.poll() is not None:  # it died under the tests: say how, for the record
            pytest.fail(f"facerec serve exited with {proc.returncode}:\n{_log_tail(log)}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def shared_page(server: Server, browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """One page for the whole module, with the admin key entered; screenshot at the end."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(  # the page works under its Content-Security-Policy: nothing is blocked
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(server.url + "/")
    page.fill("#api-key", server.admin_key)
    page.dispatch_event("#api-key", "change")
    try:
        yield page, errors
    finally:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        context.close()


@pytest.fixture
def page(shared_page: tuple[Page, list[str]]) -> Iterator[Page]:
    """The shared page; each test must leave no uncaught error in it."""
    page, errors = shared_page
    errors.clear()
    yield page
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def kerry(shared_page: tuple[Page, list[str]], server: Server) -> str:
    """Enrols John Kerry from three photos through the page; his subject id."""
    page, _ = shared_page
    page.fill("#enrol-name", "John Kerry")
    page.set_input_files("#enrol-files", [str(p) for p in ENROL_IMAGES])
    page.click("#enrol-submit")
    expect(page.locator("#enrol-result .verdict")).to_have_text(
        "John Kerry: 3 of 3 face(s) enrolled", timeout=TIMEOUT_MS
    )
    subjects = [s for s in server.get("/v1/subjects")["items"] if s["name"] == "John Kerry"]
    assert len(subjects) == 1
    return str(subjects[0]["id"])


def canvas_size(page: Page) -> tuple[int, int]:
    w, h = page.eval_on_selector("#identify-canvas", "c => [c.width, c.height]")
    return int(w), int(h)


def canvas_has_colour(
    page: Page, rgb: tuple[int, int, int], canvas: str = "#identify-canvas"
) -> bool:
    """Whether some pixel of ``canvas`` is ``rgb`` (a drawn box or label)."""
    return bool(
        page.eval_on_selector(
            canvas,
            """(c, [r, g, b]) => {
                 const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                 for (let i = 0; i < d.length; i += 4)
                   if (d[i] === r && d[i + 1] === g && d[i + 2] === b) return true;
                 return false;
               }""",
            list(rgb),
        )
    )


def test_page_served_and_key_kept(page: Page, server: Server) -> None:
    assert page.title() == "facerec"
    page.reload()
    expect(page.locator("#api-key")).to_have_value(server.admin_key)


def test_enrol_shows_each_image(page: Page, kerry: str, server: Server) -> None:
    items = page.locator("#enrol-result li")
    expect(items).to_have_count(3)
    for item, path in zip(items.all(), ENROL_IMAGES, strict=True):
        expect(item).to_contain_text(path.name)
        expect(item).to_contain_text("face enrolled")
    assert server.get(f"/v1/subjects/{kerry}")["faces"] == 3


def test_enrol_refuses_two_faces(page: Page, server: Server) -> None:
    page.fill("#enrol-name", "Two faces")
    page.set_input_files("#enrol-files", str(GALLERY / "Choi_Sung-hong_0003.jpg"))
    page.click("#enrol-submit")
    expect(page.locator("#enrol-result .verdict")).to_contain_text("0 of 1", timeout=TIMEOUT_MS)
    expect(page.locator("#enrol-result li")).to_contain_text("multiple_faces: ")
    # the verdict shows before the page deletes the empty subject; the button comes back after
    expect(page.locator("#enrol-submit")).to_be_enabled(timeout=TIMEOUT_MS)
    names = [s["name"] for s in server.get("/v1/subjects")["items"]]
    assert "Two faces" not in names  # the page removes a subject left without a face


def test_webcam_without_camera_fails_gracefully(page: Page) -> None:
    page.click("#identify-webcam")
    expect(page.locator("#identify-result .error")).to_contain_text(
        re.compile(r"^camera: "), timeout=TIMEOUT_MS
    )
    expect(page.locator("#identify-webcam")).to_be_enabled()


def test_webcam_frame_is_sent(server: Server, playwright: Playwright) -> None:
    """With Chromium's fake camera (a test pattern, no face) the frame goes to /v1/identify."""
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=[*LAUNCH_ARGS, *FAKE_CAMERA]
    )
    try:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.fill("#api-key", server.admin_key)
        page.click("#identify-webcam")
        expect(page.locator("#identify-result .verdict")).to_have_text("No face found.")
        assert canvas_size(page) == (640, 480)  # the fake camera's frame, drawn as is
        assert errors == []
    finally:
        browser.close()


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """A Y4M file for Chromium's fake camera: the header, then ``FRAME`` and the I420
    planes of each RGB uint8[H, W, 3] frame (H and W even)."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def kerry_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s at 30 frames/s, 640x480 (a webcam's usual mode): John Kerry's photo (not one of
    the enrolled ones) sliding left and right over a grey gradient; Chromium loops it.
    A frame comes every 33 ms, faster than the service analyses one here, so a page that
    sent frames without waiting for results would have several in flight."""
    face = read_image(KERRY_PROBE)  # RGB uint8[150, 150, 3]
    height, width, fps, count = 480, 640, 30, 60
    background = np.broadcast_to(
        np.linspace(90, 170, width, dtype=np.float32)[None, :, None], (height, width, 3)
    ).astype(np.uint8)
    frames = []
    for k in range(count):
        frame = background.copy()
        x = 245 + round(80 * np.sin(2 * np.pi * k / count))  # 165-325: inside the frame
        frame[165:315, x : x + 150] = face
        frames.append(frame)
    return write_y4m(tmp_path_factory.mktemp("camera") / "kerry.y4m", frames, fps)


# Test instrumentation, injected before the page's own script: every WebSocket event
# (open, message, close) reaches the page 150 ms late, as over a slow link or from a busy
# service, so that a page sending frames without waiting for results would have several
# in flight; and a log of what the page sends and of the results it is handed, in order.
SLOW_LINK_JS = """
(() => {
  const log = (window.__liveLog = []);
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    log.push(typeof data === "string" ? "text" : "frame");
    return send.call(this, data);
  };
  const add = WebSocket.prototype.addEventListener;
  WebSocket.prototype.addEventListener = function (type, listener, options) {
    const late = (ev) => setTimeout(() => {
      if (type === "message") {
        const doc = JSON.parse(ev.data);
        if ("faces" in doc || (doc.error && "frame" in doc.error)) log.push("result");
      }
      listener(ev);
    }, 150);
    return add.call(this, type, late, options);
  };
})();
"""


@pytest.fixture
def camera_page(
    playwright: Playwright, server: Server, kerry_camera: Path
) -> Iterator[tuple[Page, dict[str, list[Any]]]]:
    """A page in a Chromium whose camera plays ``kerry_camera``, with the admin key entered.
    Records what must stay empty (uncaught errors, policy violations, requests to another
    origin) and the WebSocket messages the page sends and receives, in order; the page's
    WebSocket events come late (:data:`SLOW_LINK_JS`)."""
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[*LAUNCH_ARGS, *FAKE_CAMERA, f"--use-file-for-fake-video-capture={kerry_camera}"],
    )
    try:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        record: dict[str, list[Any]] = {"errors": [], "foreign": [], "messages": []}
        origin = server.url + "/"

        def guard(route: Any) -> None:
            if route.request.url.startswith(origin):
                route.continue_()
            else:
                record["foreign"].append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        context.add_init_script(SLOW_LINK_JS)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: record["errors"].append(str(exc)))
        page.on(
            "console",
            lambda m: record["errors"].append(m.text) if "Security Policy" in m.text else None,
        )

        def on_socket(ws: Any) -> None:
            record["messages"].append(("open", ws.url))
            ws.on("framesent", lambda data: record["messages"].append(("sent", data)))
            ws.on("framereceived", lambda data: record["messages"].append(("received", data)))

        page.on("websocket", on_socket)
        page.goto(server.url + "/")
        page.fill("#api-key", server.admin_key)
        yield page, record
    finally:
        browser.close()


def test_live_names_the_enrolled_person(
    camera_page: tuple[Page, dict[str, list[Any]]], kerry: str, server: Server
) -> None:
    """The Live panel streams the fake camera to WS /v1/stream: it names John Kerry over
    the video and in the events, shows a frame rate and the latency, sends the key as the
    first message and never a frame while another one's result is pending; Stop ends the
    stream and releases the camera."""
    page, record = camera_page
    page.click("#live-start")
    expect(page.locator("#live-result .who")).to_have_text(["John Kerry"], timeout=90_000)
    expect(page.locator("#live-events")).to_contain_text("identified: John Kerry")
    stats = page.locator("#live-stats")
    stats_text = re.compile(r"^\d+\.\d fps · latency \d+ ms · \d+ frames · 0 dropped$")
    expect(stats).to_have_text(stats_text)
    expect(stats).not_to_have_text(re.compile(r"^0\.0 fps"))  # once two results are in
    assert canvas_has_colour(page, MATCH_RGB, "#live-canvas"), "no green box over the video"
    page.click("#live-stop")
    expect(page.locator("#live-result")).to_have_text(re.compile(r"^Stopped after \d+ frame"))
    expect(page.locator("#live-start")).to_be_enabled()
    assert page.eval_on_selector("#live-video", "v => v.srcObject === null && v.hidden")

    opened = [m for m in record["messages"] if m[0] == "open"]
    assert len(opened) == 1 and opened[0][1].endswith("/v1/stream?every=1"), opened
    sent = [m[1] for m in record["messages"] if m[0] == "sent"]
    assert json.loads(sent[0]) == {"api_key": server.admin_key}  # never in the URL
    assert json.loads(sent[-1]) == {"end": True}
    assert all(isinstance(m, bytes) and m[:3] == b"\xff\xd8\xff" for m in sent[1:-1])
    received = [json.loads(m[1]) for m in record["messages"] if m[0] == "received"]
    results = [doc for doc in received if "faces" in doc]
    assert len(results) >= 3
    assert all(doc["dropped"] == 0 for doc in results)  # nothing ever waited at the server
    in_flight = 0
    log = page.evaluate("window.__liveLog")
    assert log.count("frame") >= len(results)
    for entry in log:  # what the page sent and the results it was handed, in its order
        in_flight += {"frame": 1, "result": -1}.get(entry, 0)
        assert in_flight <= 1, f"a frame was sent before the previous result came back: {log}"
    events = server.get("/v1/audit?last=200")["events"]
    assert any(e["action"] == "stream_identified" and e["subject"] == kerry for e in events)
    assert record["errors"] == [] and record["foreign"] == []


def test_live_shows_a_refused_key(camera_page: tuple[Page, dict[str, list[Any]]]) -> None:
    """A key the server refuses: the error code and the close code, camera released."""
    page, record = camera_page
    page.fill("#api-key", "frk_not_a_key")
    page.click("#live-start")
    expect(page.locator("#live-result .error")).to_have_text(
        re.compile(r"^invalid_api_key: .+ \(closed 1008\)$")
    )
    expect(page.locator("#live-start")).to_be_enabled()
    expect(page.locator("#live-stop")).to_be_disabled()
    assert page.eval_on_selector("#live-video", "v => v.srcObject === null && v.hidden")
    assert record["errors"] == [] and record["foreign"] == []


def test_live_without_camera_fails_gracefully(page: Page) -> None:
    page.click("#live-start")
    expect(page.locator("#live-result .error")).to_contain_text(re.compile(r"^camera: "))
    expect(page.locator("#live-start")).to_be_enabled()
    expect(page.locator("#live-stop")).to_be_disabled()


def test_identify_stranger_is_unknown(page: Page, kerry: str) -> None:
    page.set_input_files("#identify-file", str(STRANGER))
    page.click("#identify-submit")
    expect(page.locator("#identify-result .who")).to_have_text(["unknown"], timeout=TIMEOUT_MS)
    assert canvas_size(page)[0] > 0
    assert canvas_has_colour(page, UNKNOWN_RGB)
    assert not canvas_has_colour(page, MATCH_RGB)


def test_identify_enrolled_person(page: Page, kerry: str) -> None:
    page.set_input_files("#identify-file", str(KERRY_PROBE))
    page.click("#identify-submit")
    who = page.locator("#identify-result .who")
    expect(who).to_have_text(["John Kerry"], timeout=TIMEOUT_MS)
    expect(page.locator("#identify-result")).to_contain_text("similarity")
    width, height = canvas_size(page)
    assert width > 0 and height > 0
    assert canvas_has_colour(page, MATCH_RGB)


def test_identify_shows_its_operating_point(page: Page, kerry: str) -> None:
    """The threshold, the target FPIR (or an explicit threshold), the gallery's size and
    the scoring method the identification was decided at."""
    point = page.locator("#identify-point")

    def identified(fpir: str = "", threshold: str = "") -> float:
        page.fill("#identify-fpir", fpir)
        page.fill("#identify-threshold", threshold)
        page.set_input_files("#identify-file", str(KERRY_PROBE))
        page.click("#identify-submit")
        expect(page.locator("#identify-result .who")).to_have_text(["John Kerry"])
        found = re.match(r"threshold (\d\.\d{3}) \(", point.inner_text())
        assert found, point.inner_text()
        return float(found.group(1))

    default = identified()
    expect(point).to_contain_text("(FPIR 0.001; 1 person enrolled; centroid scoring)")
    looser = identified(fpir="0.01")
    expect(point).to_contain_text("FPIR 0.01;")
    assert looser < default
    assert identified(threshold="0.5") == 0.5
    expect(point).to_contain_text("(explicit threshold; 1 person enrolled")
    page.fill("#identify-threshold", "")


def test_verify(page: Page, kerry: str) -> None:
    page.click("#verify-subjects-refresh")
    page.select_option("#verify-subject", value=kerry)
    result = page.locator("#verify-result")
    page.set_input_files("#verify-file", str(STRANGER))
    page.click("#verify-submit")
    expect(result.locator(".verdict")).to_have_text("No match: not John Kerry", timeout=TIMEOUT_MS)

    page.set_input_files("#verify-file", str(KERRY_VERIFY))
    page.click("#verify-submit")
    expect(result.locator(".verdict")).to_have_text("Match: John Kerry")
    expect(result).to_contain_text(re.compile(r"similarity 0\.\d{3}"))


def test_audit_lists_enrol(page: Page, kerry: str) -> None:
    page.click("#audit-refresh")
    actions = page.locator("#audit-table tbody td.action")
    expect(actions.filter(has_text=re.compile(r"^enrol$")).first).to_be_visible()
    expect(actions.filter(has_text=re.compile(r"^identify$")).first).to_be_visible()
    assert actions.count() <= 20


def test_errors_show_code_and_message(page: Page, server: Server) -> None:
    page.fill("#api-key", "frk_not_a_key")
    try:
        page.click("#audit-refresh")
        expect(page.locator("#audit-result .error")).to_contain_text(
            re.compile(r"^(invalid_api_key|unauthorized): .+")
        )
        expect(page.locator("#audit-table tbody tr")).to_have_count(0)
        expect(page.locator("#verify-subjects-note .error")).to_contain_text("invalid_api_key: ")
    finally:
        page.fill("#api-key", server.admin_key)
    page.click("#audit-refresh")
    expect(page.locator("#audit-table tbody tr").first).to_be_visible()
    expect(page.locator("#verify-subjects-note")).to_be_empty()


def test_docs_load_offline(server: Server, browser: Browser) -> None:
    """Swagger UI renders the API with every file from the service: any request to
    another host is recorded and aborted, and there must be none."""
    context = browser.new_context()
    foreign: list[str] = []
    origin = server.url + "/"

    def guard(route: Any) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Security Policy" in m.text else None)
    try:
        page.goto(server.url + "/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "facerec gateway", timeout=TIMEOUT_MS
        )
        expect(page.locator(".opblock").first).to_be_visible(timeout=TIMEOUT_MS)
        assert page.locator(".opblock").count() >= 15  # every operation is listed
    finally:
        context.close()
    assert foreign == []
    assert blocked == []
