"""The page at / in a real browser: Debian's Chromium, headless, driven by Playwright (never `playwright install`).

A small real model and tiny jobs on an in-process server. What a person does: load the page, pick a photo and a
painting, Stylize, watch previews and progress, download, cancel, make a mistake, give a token. What the page
shows is checked against the server itself: the downloaded bytes against the gRPC result for the same seed, the
error against the gRPC status message, a cancellation against the server's metrics.

`NST_UPDATE_DOCS=1` also writes the mid-job screenshot to docs/page.png, the one the README shows.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import InProcessServer, running_server
from PIL import Image

from tests.images import png

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it when missing
SAMPLES = ROOT / "deploy" / "samples"
DOCS_SCREENSHOT = ROOT / "docs" / "page.png"
TOKEN = "page-token-81c4"
WAIT_MS = 120_000  # the longest any step may take on a loaded 2-core machine; never a measurement
# Records what #picture and #status showed, in order, so that "a preview before the result" is a fact of the
# page's own history rather than of when the test happened to look.
RECORDER = """
window.shown = [];
window.statuses = [];
new MutationObserver(() => {
  const picture = document.getElementById("picture"), status = document.getElementById("status");
  if (picture && picture.dataset.kind && window.shown.at(-1) !== picture.src)
    window.shown.push(picture.src), window.shown.push(picture.dataset.kind);
  if (status && window.statuses.at(-1) !== status.textContent) window.statuses.push(status.textContent);
}).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
"""

pytestmark = [
    pytest.mark.slow,  # a browser and jobs: seconds each
    # .ci/run installs it and sets NST_REQUIRE_BROWSER=1, so that in CI a missing browser fails instead.
    pytest.mark.skipif(
        not CHROMIUM.exists() and os.environ.get("NST_REQUIRE_BROWSER") != "1",
        reason="needs Debian's chromium (apt-get install chromium)",
    ),
]


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[InProcessServer]:
    flags = ("--max-concurrent", "1", "--max-queue", "2", "--max-evaluations", "100000", "--drain", "0")
    with running_server([model_dir], *flags, "--http-port", "0") as server:
        yield server


@pytest.fixture(name="page")
def _page(browser: Any, server: InProcessServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.add_init_script(RECORDER)
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(server.http_url + "/")
    yield page
    context.close()


def _pick(page: Any, photo: bytes, paintings: list[bytes], name: str = "photo.png") -> None:
    page.set_input_files("#content", files=[{"name": name, "mimeType": "image/png", "buffer": photo}])
    page.set_input_files(
        "#styles",
        files=[
            {"name": f"painting{i}.png", "mimeType": "image/png", "buffer": data} for i, data in enumerate(paintings)
        ],
    )


def _settings(page: Any, size: int, budget: int, optimiser: str, preview: int, seed: int) -> None:
    page.fill("#size", str(size))
    page.fill("#budget", str(budget))
    page.select_option("#optimizer", optimiser)
    page.fill("#preview", str(preview))
    page.fill("#seed", str(seed))


def _status(page: Any, text: str) -> None:
    playwright.expect(page.locator("#status")).to_contain_text(text, timeout=WAIT_MS)


def _non_blank(path: Path) -> None:
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.std() > 10, f"{path} looks blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200, f"{path} has too few colours to be the page"


def test_loads_names_the_model_and_labels_every_control(page: Any, model_dir: Path) -> None:
    """No console error; the header names the model; every control has a label a screen reader announces."""
    playwright.expect(page.locator("#model")).to_contain_text(model_dir.name, timeout=WAIT_MS)
    assert page.locator("#token-section").is_hidden()  # no token on this server
    unlabelled = page.evaluate(
        "() => [...document.querySelectorAll('input, select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.textContent.trim() && !e.getAttribute('aria-label'))"
        ".map(e => e.id)"
    )
    assert unlabelled == []
    page.keyboard.press("Tab")  # the first stop is a control the keyboard can use
    assert page.evaluate("document.activeElement.tagName") in {"INPUT", "SELECT", "BUTTON"}
    assert page.errors == []


def test_stylize_shows_previews_then_the_result_and_downloads_its_bytes(
    page: Any, server: InProcessServer, tmp_path: Path
) -> None:
    """Previews appear before the result, progress text moves, the result has the requested size, the download
    is byte for byte the server's result (the same job over gRPC, same seed), and the finished page is kept."""
    photo, painting = png(64, 48, seed=1), png(64, 64, seed=2)
    _pick(page, photo, [painting])
    _settings(page, size=64, budget=12, optimiser="adam", preview=2, seed=9)
    page.click("#stylize")
    _status(page, "Done")
    shown = page.evaluate("window.shown")[1::2]
    assert "preview" in shown
    assert shown[-1] == "result"
    assert shown.index("preview") < shown.index("result")
    iterations = [text for text in page.evaluate("window.statuses") if "Iteration" in text]
    assert len(set(iterations)) >= 2, iterations
    playwright.expect(page.locator("#picture")).to_have_attribute("alt", "Result, 64 by 48 pixels")

    with page.expect_download() as download_info:
        page.click("#download")
    downloaded = Path(download_info.value.path()).read_bytes()
    assert Image.open(io.BytesIO(downloaded)).size == (64, 48)
    request = pb.StylizeRequest(
        content_image=photo,
        style_images=[pb.StyleImage(image=painting)],
        options=pb.StylizeOptions(
            max_side_px=64, max_evaluations=12, optimizer=pb.OPTIMIZER_ADAM, preview_every=2, seed=9,
            colour_preservation=pb.COLOUR_PRESERVATION_NONE, output_format=pb.IMAGE_FORMAT_PNG,
        ),
    )  # fmt: skip
    with grpc.insecure_channel(server.address) as channel:
        *_, last = pb_grpc.StyleTransferServiceStub(channel).Stylize(request, timeout=120)
    assert downloaded == last.result.image

    screenshot = tmp_path / "finished.png"
    page.screenshot(path=str(screenshot), full_page=True)
    _non_blank(screenshot)
    print(f"screenshot of the finished page: {screenshot}")
    assert page.errors == []


def test_cancel_stops_the_job_on_the_server(page: Any, server: InProcessServer, tmp_path: Path) -> None:
    """Cancel during a long job: the page says cancelled and the server counts the job cancelled."""
    before = server.outcomes()
    _pick(page, (SAMPLES / "tubingen.jpg").read_bytes(), [(SAMPLES / "starry_night.jpg").read_bytes()])
    _settings(page, size=256, budget=5000, optimiser="adam", preview=2, seed=1)
    page.click("#stylize")
    playwright.expect(page.locator("#picture")).to_have_attribute("data-kind", "preview", timeout=WAIT_MS)
    _status(page, "Iteration")
    screenshot = tmp_path / "mid-job.png"
    page.evaluate("window.scrollTo(0, 0)")  # clicking Stylize scrolled it into view
    page.screenshot(path=str(screenshot))
    _non_blank(screenshot)
    if os.environ.get("NST_UPDATE_DOCS") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
    page.click("#cancel")
    _status(page, "cancelled")
    server.wait_outcome("cancelled", since=before)
    playwright.expect(page.locator("#stylize")).to_be_enabled()
    assert page.locator("#error").is_hidden()


def test_bad_input_shows_the_servers_message(page: Any, server: InProcessServer) -> None:
    """A file that is not an image: the page shows the message the server sends (the same as over gRPC)."""
    _pick(page, b"these are notes, not a photo", [png(64, 64, seed=2)], name="notes.png")
    _settings(page, size=64, budget=4, optimiser="adam", preview=0, seed=0)
    page.click("#stylize")
    playwright.expect(page.locator("#error")).to_be_visible(timeout=WAIT_MS)
    request = pb.StylizeRequest(
        content_image=b"these are notes, not a photo", style_images=[pb.StyleImage(image=png(64, 64, seed=2))]
    )
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as error:
        list(pb_grpc.StyleTransferServiceStub(channel).Stylize(request, timeout=60))
    playwright.expect(page.locator("#error")).to_have_text(f"Invalid Argument: {error.value.details()}")


def test_asks_for_the_token_when_the_server_has_one(browser: Any, model_dir: Path, tmp_path: Path) -> None:
    """With a token on the server, the page asks for it and, given it, names the model."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    flags = ("--token-file", str(token_file), "--http-port", "0", "--drain", "0")
    with running_server([model_dir], *flags) as server:
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.http_url + "/")
        playwright.expect(page.locator("#token")).to_be_visible(timeout=WAIT_MS)
        playwright.expect(page.locator("#model")).to_have_text("this server needs an access token")
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        playwright.expect(page.locator("#model")).to_contain_text(model_dir.name, timeout=WAIT_MS)
        assert page.locator("#token-section").is_hidden()
        context.close()
