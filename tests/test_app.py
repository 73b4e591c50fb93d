"""`pipeline run app`: the page driven in headless Chromium, and its `animate` API from
gradio_client, against the app served on a free loopback port (tiny config, random weights,
a few frames of a real clip)."""
from __future__ import annotations

import argparse
import shutil
import socket
from pathlib import Path

import pytest

from core.errors import UserError
from core.media import probe
from pipeline.verify import verify_file
from stages import app as app_stage

FRAMES = 6  # the app's --max-frames: the driving clip is cut to it
PHOTO = "faces/sadtalker/happy.png"
CLIP = "faces/fomm-demo/08.mp4"  # 150 frames at 35 fps
SOUND_CLIP = "faces/liveportrait/d12.mp4"  # 183 frames at 25 fps, with audio


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def chromium() -> str:
    """Debian's chromium (.ci/run installs it); its absence fails the test, never skips it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is missing: `apt-get install chromium` (.ci/run installs it in CI)")
    return path


@pytest.fixture(scope="module")
def served(shared_data):
    options = app_stage.AppOptions(port=free_port(), config="tiny", device="cpu", precision="fp32",
                                   max_frames=FRAMES, max_upload_mb=20)
    app = app_stage.AnimateApp(options)
    try:
        url = app.launch()
        assert url.startswith("http://127.0.0.1:")
        yield app
    finally:
        folder = app.folder
        app.close()
        assert not folder.exists()  # everything it wrote went with it


def check_video(path: Path) -> None:
    assert probe(path).num_frames == FRAMES
    verdict = verify_file(path)
    assert verdict.c2pa.state == "valid" and verdict.c2pa.trained_algorithmic
    assert verdict.watermark.frames == FRAMES and verdict.marked


# collects every text the page shows while a run goes, so a short progress bar is seen too
RECORD_TEXTS = """() => {
  window.__seen = [];
  new MutationObserver(() => window.__seen.push(document.body.innerText))
    .observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_the_page_animates_a_photo_and_shows_bad_input(served, shared_data, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(served.url)
            page.locator("#source input[type=file]").set_input_files(str(shared_data / PHOTO))
            page.locator("#driving input[type=file]").set_input_files(str(shared_data / CLIP))
            page.locator("#random-weights input[type=checkbox]").check()
            expect(page.locator("#driving video")).to_have_count(1, timeout=20_000)
            page.evaluate(RECORD_TEXTS)
            page.locator("#animate").click()
            link = page.locator("#download a[href]").first
            link.wait_for(timeout=60_000)
            seen = page.evaluate("window.__seen.join('\\n')")
            assert f"/{FRAMES} frames" in seen, seen[-2000:]  # the progress bar: frames done of the run's
            response = page.request.get(link.get_attribute("href"))
            assert response.ok
            result = tmp_path / "downloaded.mp4"
            result.write_bytes(response.body())
            check_video(result)
            expect(page.locator("#preview video")).to_have_count(1, timeout=20_000)

            # a text file given as the photo: the project's one line in the page, no traceback
            notes = tmp_path / "notes.png"
            notes.write_text("not a photo\n")
            page.reload()
            page.locator("#source input[type=file]").set_input_files(str(notes))
            page.locator("#driving input[type=file]").set_input_files(str(shared_data / CLIP))
            page.locator("#random-weights input[type=checkbox]").check()
            page.locator("#animate").click()
            message = page.get_by_text("is not a readable image").first
            message.wait_for(timeout=30_000)
            assert "Traceback" not in page.locator("body").inner_text()
        finally:
            browser.close()


def test_the_api_animates_like_the_page(served, shared_data, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(served.url, verbose=False, download_files=str(tmp_path))
    result = client.predict(handle_file(str(shared_data / PHOTO)), handle_file(str(shared_data / SOUND_CLIP)),
                            {"random_weights": True, "layout": "side-by-side"}, api_name="/animate")
    result = Path(result)
    assert result.is_relative_to(tmp_path)
    check_video(result)
    info = probe(result)
    assert (info.width, info.height) == (3 * 64, 64)  # source | driving | result
    assert info.has_audio and info.audio_duration == pytest.approx(FRAMES / 25, abs=0.1)  # cut to the video (AAC frames)
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match=r"options \['shell'\]: unknown"):
        client.predict(handle_file(str(shared_data / PHOTO)), handle_file(str(shared_data / CLIP)),
                       {"random_weights": True, "shell": "rm -rf /"}, api_name="/animate")
    with pytest.raises(AppError, match="no checkpoint"):
        client.predict(handle_file(str(shared_data / PHOTO)), handle_file(str(shared_data / CLIP)), {},
                       api_name="/animate")


def test_the_page_builds_the_cli_request(tmp_path, shared_data):
    """The page's settings become animate's flags: the same AnimateRequest as the CLI's."""
    from core.devices import Precision
    from stages import animate as stage
    options = app_stage.AppOptions(config="tiny", device="cpu", max_frames=FRAMES)
    out = tmp_path / "o.mp4"
    argv = app_stage.animate_argv(shared_data / PHOTO, shared_data / CLIP, out,
                                  {"random_weights": True, "mode": "standard", "auto_crop": True,
                                   "paste_back": False, "smooth": True, "smooth_strength": 2, "precision": "fp32",
                                   "max_frames": 100}, options, None)
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    request = stage.options(parser.parse_args(argv))
    assert isinstance(request.options.precision, Precision) and request.options.precision.name == "fp32"
    assert (request.options.relative, request.options.crop, request.options.paste_back, request.options.smooth,
            request.options.smooth_strength, request.options.max_frames) == (False, "auto", False, True, 2.0, FRAMES)
    assert request.checkpoint is None and request.out == out and not out.exists()
    with pytest.raises(UserError, match="precision 'fp64'"):
        app_stage.animate_argv(shared_data / PHOTO, shared_data / CLIP, out,
                               {"random_weights": True, "precision": "fp64"}, options, None)
    with pytest.raises(UserError, match="smooth 'yes': expected true or false"):
        app_stage.animate_argv(shared_data / PHOTO, shared_data / CLIP, out,
                               {"random_weights": True, "smooth": "yes"}, options, None)
    with pytest.raises(UserError, match="config '../../etc/passwd'"):
        app_stage.animate_argv(shared_data / PHOTO, shared_data / CLIP, out,
                               {"random_weights": True, "config": "../../etc/passwd"}, options, None)


def test_app_options_are_checked_before_serving():
    from stages import cli
    parser = cli.build_parser("app")
    parsed = app_stage.options(parser.parse_args(["run", "app", "--config", "tiny"]))
    assert (parsed.host, parsed.port, parsed.config, parsed.checkpoint) == ("127.0.0.1", 7860, "tiny", None)
    with pytest.raises(UserError, match="--port 70000"):
        app_stage.options(parser.parse_args(["run", "app", "--port", "70000"]))
    with pytest.raises(UserError, match="--checkpoint 'missing.pth' does not exist"):
        app_stage.options(parser.parse_args(["run", "app", "--config", "tiny", "--checkpoint", "missing.pth"]))
    with pytest.raises(UserError, match="--max-frames 0"):
        app_stage.options(parser.parse_args(["run", "app", "--config", "tiny", "--max-frames", "0"]))


def test_the_command_serves_on_loopback_and_cleans_up_on_sigterm(tmp_path):
    """`pipeline run app` as users start it: on 127.0.0.1, and its folder gone once stopped."""
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "stages.cli", "run", "app", "--config", "tiny", "--port",
                                    str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "app: http://" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"app: http://127.0.0.1:{port}/" in log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        folder = Path(re.search(r"files under (\S+),", log.read_text()).group(1))
        assert folder.is_dir() and folder.name.startswith("motion-transfer-app-")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    assert not folder.exists()
