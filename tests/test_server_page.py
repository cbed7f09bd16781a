"""The search page and similarity playground at /, driven in headless Chromium (Debian's package) by playwright.

A screenshot of each is saved under test-artifacts/ (git-ignored) and its path printed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from conftest import serving
from embedsmith.rerankers import Reranker
from embedsmith.server import ServerSettings, create_app

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "page-key-42"
DOCS = [
    {"id": "slab", "text": "Heat conduction in composite slabs <b>not bold</b>.", "metadata": {"source": "slabs.txt"}},
    {"id": "cool", "text": "Transpiration cooling of a porous plate.", "metadata": {"source": "cooling.md"}},
    {"id": "wing", "text": "Boundary layer transition on swept wings.", "metadata": {"source": "wings.pdf"}},
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def url(minilm_onnx, tiny_reranker, tmp_path_factory):  # type: ignore[no-untyped-def]
    settings = ServerSettings(store=str(tmp_path_factory.mktemp("store")), api_key=KEY)
    app = create_app(settings, encoders={"minilm": minilm_onnx}, reranker=Reranker(tiny_reranker))
    with serving(app) as base:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(base + "/v1/collections", json={"name": "aero"}, headers=auth).status_code == 201
        assert httpx.post(base + "/v1/collections/aero/documents", json={"documents": DOCS},
                          headers=auth).status_code == 200
        yield base


@pytest.fixture(scope="module")
def page(url):  # type: ignore[no-untyped-def]
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
        assert not errors, errors


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    print(f"screenshot: {path}")


def test_search_page_finds_highlights_and_reranks(page, url):
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('not connected')")
    page.fill("#apikey", KEY)
    page.dispatch_event("#apikey", "change")
    page.wait_for_function("document.getElementById('status').textContent.includes('1 collection')")
    assert page.locator("#collection option").all_inner_texts() == ["aero (3)"]
    assert not page.is_disabled("#rerank")

    page.fill("#query", "heat conduction in slabs")
    page.select_option("#mode", "hybrid")
    page.click("#search-button")
    page.wait_for_selector(".hit")
    hits = page.locator(".hit")
    assert hits.count() == 3
    first = hits.nth(0)
    assert "slab" in first.inner_text() and "slabs.txt" in first.inner_text()
    assert {m.lower() for m in first.locator("mark").all_inner_texts()} >= {"heat", "conduction", "slabs"}
    assert first.locator("b").count() == 0 and "<b>not bold</b>" in first.inner_text()  # stored text is escaped

    page.check("#rerank")
    page.click("#search-button")
    page.wait_for_selector(".hit .meta >> text=logit")
    scores = [float(s) for s in page.locator(".hit .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    shot(page, "search-page.png")

    page.fill("#query", "?!")
    page.select_option("#mode", "bm25")
    page.uncheck("#rerank")
    page.click("#search-button")
    page.wait_for_function("document.getElementById('search-error').textContent.length > 0")
    assert "no searchable words" in page.inner_text("#search-error")


def test_similarity_playground_shows_the_matrix(page, url):
    page.goto(url + "/")  # the key is remembered
    page.wait_for_function("document.getElementById('status').textContent.includes('models: minilm')")
    page.click("#compare")
    page.wait_for_selector("table.matrix")
    rows = page.locator("table.matrix tr")
    assert rows.count() == 4
    cells = [[float(x) for x in rows.nth(i).locator("td").all_inner_texts()] for i in range(1, 4)]
    assert all(abs(cells[i][i] - 1.0) < 1e-3 for i in range(3))
    assert cells[0][1] > cells[0][2] + 0.3  # cat/feline beat cat/stock market
    shot(page, "similarity-playground.png")
