"""The upload page in headless Chromium (Debian's, driven by Playwright) against the real stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A fresh browser page; skips where Playwright or Chromium is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_page_is_self_contained(stack: Stack) -> None:
    resp = httpx.get(stack.url + "/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    # Nothing fetched from elsewhere at run time: no external scripts, styles or fonts.
    assert "http://" not in resp.text and "https://" not in resp.text
    assert "script-src 'unsafe-inline'" in resp.headers["content-security-policy"]


def test_upload_two_images_then_a_text_file(stack: Stack, page: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first.jpg", tmp_path / "second.png"
    first.write_bytes(jpeg(1, (64, 64)))
    second.write_bytes(jpeg(2, (96, 64)))  # JPEG bytes under a .png name: content decides
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")

    page.goto(stack.url + "/")
    page.wait_for_selector(f'#model option[value="{TEST_MODEL}"]', state="attached")
    page.select_option("#model", TEST_MODEL)
    page.fill("#topk", "3")
    page.set_input_files("#files", [str(first), str(second)])
    page.wait_for_selector(".card.ok >> nth=1", timeout=60_000)
    cards = page.locator(".card.ok")
    assert cards.count() == 2
    names = sorted(cards.nth(i).locator("h2").inner_text() for i in range(2))
    assert names == ["first.jpg", "second.png"]
    assert cards.nth(0).locator("li.label").count() == 3
    assert "batch of" in cards.nth(0).locator(".timings").inner_text()
    assert "inference" in cards.nth(0).locator(".timings").inner_text()

    page.set_input_files("#files", [str(notes)])
    error = page.wait_for_selector(".card.error", timeout=30_000)
    text = error.inner_text()
    assert "notes.txt" in text and "unsupported_media_type" in text
    assert page.locator(".card.ok").count() == 2


def _watch(page: Any) -> list[str]:
    """Console errors, failed requests and 4xx/5xx answers the page meets, as text."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    return problems


def test_phone_width_no_console_errors_visible_bars(
    stack: Stack, page: Any, tmp_path: Path
) -> None:
    shots = Path(__file__).resolve().parents[2] / "results"
    shots.mkdir(exist_ok=True)
    images = []
    for i in range(2):
        images.append(tmp_path / f"photo_with_a_rather_long_name_{i}.jpg")
        images[-1].write_bytes(jpeg(20 + i, (96, 64)))
    page.set_viewport_size({"width": 390, "height": 844})
    problems = _watch(page)
    page.goto(stack.url + "/")
    page.wait_for_selector(f'#model option[value="{TEST_MODEL}"]', state="attached")
    page.select_option("#model", TEST_MODEL)
    page.fill("#topk", "20")  # the tail of top-20 holds scores well under 1 %
    page.set_input_files("#files", [str(p) for p in images])
    page.wait_for_selector(".card.ok >> nth=1", timeout=60_000)
    page.screenshot(path=str(shots / "upload-page-390px.png"), full_page=True)

    assert problems == []  # favicon included: no 404 for /favicon.ico
    assert not page.locator("#random").is_visible()  # trained weights: no banner
    assert page.locator(".card.random").count() == 0
    # Usable at 390 px: nothing wider than the screen, every control inside it.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#model", "#topk", "#apikey", "#files", "#drop", ".card >> nth=0"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    bars = page.locator(".card.ok >> nth=0").locator(".bar")
    assert bars.count() == 20
    labels = page.locator(".card.ok >> nth=0").locator("li.label")
    scores = [float(t.rsplit(" ", 1)[1].rstrip("%")) for t in labels.all_inner_texts()]
    assert min(scores) < 1.0 and scores == sorted(scores, reverse=True)
    widths = [bars.nth(i).bounding_box()["width"] for i in range(20)]
    assert min(widths) >= 3, widths  # a 0.1 % score still shows a bar
