"""The dashboard in a real browser: Voila serving ``notebooks/dashboard.ipynb``, Chromium via Playwright.

One Voila server and one page for the whole module (the tests run in file order and share the
page's state). Parts of the page are found by the CSS classes of
``docs/explorer-ui-contract.md``. Screenshots go to ``test-artifacts/`` (not committed).
Skipped when Debian's ``chromium`` or the ``playwright`` package is missing; Playwright's own
browser download is never used.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from psal_widgets.dashboard import (
    BLOCKED_HOST,
    BLOCKED_URL,
    CHROMIUM_ARGS,
    PROFILE_POINT_JS,
    chromium_path,
    launch,
)

from .conftest import ROOT

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = chromium_path()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

ARTIFACTS = ROOT / "test-artifacts"
LOAD_MS = 240_000   # first page: the kernel loads the model and computes the first map (2 shared cores)
UPDATE_MS = 90_000  # one recomputation after a click, a brush or an upload


@pytest.fixture(scope="module")
def dashboard():
    ARTIFACTS.mkdir(exist_ok=True)
    dash = launch(quiet=True, timeout=120, log_path=ARTIFACTS / "voila.log")
    try:
        yield dash
    finally:
        dash.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """The dashboard page and the errors it reported so far."""

    def __init__(self, page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(f"pageerror: {err}"))
        page.on("console", self._console)

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        if BLOCKED_HOST in where or BLOCKED_HOST in msg.text:
            return  # the font request we abort on purpose
        self.errors.append(f"console: {msg.text} ({where})")

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def wait_changed(self, selector: str, what: str, old: str, timeout: float = UPDATE_MS) -> str:
        """Wait until ``what`` (``text`` or ``src``) of ``selector`` differs from ``old``."""
        js = ("([sel, what, old]) => { const e = document.querySelector(sel); if (!e) return false;"
              " const v = what === 'src' ? e.getAttribute('src') : e.innerText; return v !== old; }")
        self.page.wait_for_function(js, arg=[selector, what, old], timeout=timeout)
        el = self.page.query_selector(selector)
        return el.get_attribute("src") if what == "src" else el.inner_text()


#: The two screens the layout must serve: the chart and the input map visible without scrolling.
SMALL = {"width": 1366, "height": 768}
LARGE = {"width": 1600, "height": 1000}


@pytest.fixture(scope="module")
def page(dashboard, browser):
    # The page opens on a laptop screen; test_layout_* then widen it. Voila scrolls inside the
    # page, so a "full page" screenshot holds the viewport: what a person sees.
    context = browser.new_context(viewport=dict(SMALL))
    pg = context.new_page()
    pg.route(BLOCKED_URL, lambda route: route.abort())
    wrapped = Page(pg)
    pg.goto(dashboard.url, timeout=LOAD_MS)
    try:
        yield wrapped
    finally:
        wrapped.shot("dashboard-final")
        context.close()


def selected_ids(text: str) -> set[int]:
    """The filter ids after ``F = `` in the ``.psal-selected`` text."""
    tail = text.split("F =", 1)[-1]
    return {int(t) for t in re.findall(r"\d+", tail.split("\n", 1)[0])}


def click_point(pg: Page, *, rank: int, avoid: set[int]) -> dict:
    point = pg.page.evaluate(PROFILE_POINT_JS, [rank, sorted(avoid)])
    assert point is not None, "the profile chart has no trace with markers"
    # Plotly's drag layer sits over the plot and takes the click: click at the position itself,
    # after a hover as a person does (scattergl may miss a click with no hover first; GUIDE §3).
    pg.page.mouse.move(point["x"], point["y"])
    pg.page.wait_for_timeout(300)
    pg.page.mouse.click(point["x"], point["y"])
    return point


def test_profile_chart_appears(page: Page) -> None:
    page.page.wait_for_selector(".psal-profile .js-plotly-plot", timeout=LOAD_MS)
    page.page.wait_for_function(
        "() => [...document.querySelectorAll('.psal-ready')].some(e => e.innerText.trim() === 'ready')",
        timeout=LOAD_MS)
    page.shot("dashboard")
    n_points = page.page.evaluate(
        "() => document.querySelector('.psal-profile .js-plotly-plot')._fullData"
        ".reduce((n, t) => n + (t.x ? t.x.length : 0), 0)")
    assert n_points > 1000, f"the profile chart shows only {n_points} points"


#: Bounding boxes (viewport coordinates) of the chart, the input map and the whole app, after
#: scrolling every scrollable ancestor back to the top.
BOXES_JS = """
() => {
  for (let e = document.querySelector('.psal-explorer'); e; e = e.parentElement) e.scrollTop = 0;
  window.scrollTo(0, 0);
  const box = sel => { const e = document.querySelector(sel); if (!e) return null;
    const r = e.getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height}; };
  return {chart: box('.psal-profile .js-plotly-plot'), map: box('img.psal-map, .psal-map img, .psal-map'),
          app: box('.psal-explorer'), vw: window.innerWidth, vh: window.innerHeight,
          legend: document.querySelectorAll('.psal-profile .legend .traces').length,
          colorbars: document.querySelectorAll('.psal-colorbar').length,
          explain: document.querySelectorAll('.psal-explain details').length};
}
"""


def _assert_first_screen(page: Page, size: dict, name: str) -> None:
    # The chart follows its column's width (a resize is debounced, then redrawn from Python).
    page.page.wait_for_function(
        "(vw) => { const g = document.querySelector('.psal-profile .js-plotly-plot');"
        " const a = document.querySelector('.psal-explorer');"
        " return g && a && g.getBoundingClientRect().right <= vw"
        " && g.getBoundingClientRect().width > 0.4 * a.getBoundingClientRect().width; }",
        arg=size["width"], timeout=UPDATE_MS)
    page.page.wait_for_timeout(500)
    boxes = page.page.evaluate(BOXES_JS)
    page.shot(name)
    assert (boxes["vw"], boxes["vh"]) == (size["width"], size["height"])
    for part in ("chart", "map"):
        b = boxes[part]
        assert b is not None and b["w"] > 100 and b["h"] > 100, (part, b)
        right, bottom = b["x"] + b["w"], b["y"] + b["h"]
        inside = b["x"] >= 0 and b["y"] >= 0 and right <= boxes["vw"] + 0.5 and bottom <= boxes["vh"] + 0.5
        assert inside, f"{part} {b} is not inside the {size} viewport"
    assert boxes["app"]["w"] >= 0.95 * boxes["vw"] - 40, boxes  # the app uses the window's width
    # Legend: every filter, the boosted set F, and the default model's dead filters (σ = 0).
    assert boxes["legend"] == 3 and boxes["colorbars"] >= 2 and boxes["explain"] >= 6, boxes
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


def test_layout_at_1366x768(page: Page) -> None:
    _assert_first_screen(page, SMALL, "layout-1366x768")


def test_layout_at_1600x1000(page: Page) -> None:
    page.page.set_viewport_size(dict(LARGE))
    _assert_first_screen(page, LARGE, "layout-1600x1000")


def test_click_on_a_filter_updates_the_set_and_the_map(page: Page) -> None:
    before_text = page.text(".psal-selected")
    before = selected_ids(before_text)
    old_src = page.page.get_attribute(".psal-map", "src")
    point = click_point(page, rank=len(before) + 5, avoid=before)
    after = selected_ids(page.wait_changed(".psal-selected", "text", before_text))
    page.wait_changed(".psal-map", "src", old_src)
    page.shot("after-click")
    # One click toggles exactly one filter (the one under the mouse when the chart says which).
    changed = before ^ after
    assert len(changed) == 1 and (point["id"] is None or changed == {int(point["id"])}), (before, after, point)


def test_box_selection_on_the_chart_adds_many_filters(page: Page) -> None:
    before_text = page.text(".psal-selected")
    before = selected_ids(before_text)
    # A box around y = 0 over a tenth of the plot width: hundreds of ordinary filters.
    geo = page.page.evaluate(
        "() => { const gd = document.querySelector('.psal-profile .js-plotly-plot');"
        " const fl = gd._fullLayout, r = gd.getBoundingClientRect();"
        " return {x: r.left + fl._size.l + 0.45 * fl._size.w, w: 0.1 * fl._size.w,"
        "         y: r.top + fl._size.t + fl.yaxis.l2p(0)}; }")
    page.page.mouse.move(geo["x"], geo["y"] - 25)
    page.page.mouse.down()
    page.page.mouse.move(geo["x"] + geo["w"], geo["y"] + 25, steps=10)
    page.page.mouse.up()
    after = selected_ids(page.wait_changed(".psal-selected", "text", before_text))
    page.shot("after-box-select")
    assert after > before and len(after - before) > 10, (len(before), len(after))


def test_box_brush_on_the_image_changes_the_prediction(page: Page) -> None:
    img = page.page.query_selector(".psal-image")
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    old = page.text(".psal-prediction")
    x0, y0 = box["x"] + 0.25 * box["width"], box["y"] + 0.25 * box["height"]
    x1, y1 = box["x"] + 0.75 * box["width"], box["y"] + 0.75 * box["height"]
    page.page.mouse.move(x0, y0)
    page.page.mouse.down()
    page.page.mouse.move(x1, y1, steps=8)
    page.page.mouse.up()
    new = page.wait_changed(".psal-prediction", "text", old)
    page.shot("after-brush")
    assert new.strip() and new != old


def test_corrupt_upload_shows_an_error_and_the_chart_still_works(page: Page) -> None:
    # ipywidgets 8's FileUpload keeps its <input type=file> out of the document and clicks it
    # from the button, so the file goes through the browser's file chooser.
    with page.page.expect_file_chooser(timeout=UPDATE_MS) as chooser:
        page.page.click(".psal-upload")
    chooser.value.set_files(files=[
        {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff\xe0 this is not really a JPEG"}])
    page.page.wait_for_function(
        "() => /error/i.test((document.querySelector('.psal-status') || {}).innerText || '')", timeout=UPDATE_MS)
    page.shot("after-bad-upload")
    before_text = page.text(".psal-selected")
    before = selected_ids(before_text)
    click_point(page, rank=len(before) + 9, avoid=before)
    after = selected_ids(page.wait_changed(".psal-selected", "text", before_text))
    assert len(before ^ after) == 1
    # The action succeeded: the old error leaves the status line; the upload counter is reset.
    page.page.wait_for_function(
        "() => !/error/i.test((document.querySelector('.psal-status') || {}).innerText || '')", timeout=UPDATE_MS)
    assert "(1)" not in page.text(".psal-upload")


#: Text of every error the explorer logged so far (the status panel's log keeps them all).
ERRORS_JS = "() => ((document.querySelector('.psal-explorer') || {}).textContent || '').split('error (').length - 1"


def _map_filters(pg: Page) -> set[int] | None:
    ids = pg.page.get_attribute(".psal-map-filters", "data-filters")
    return None if ids is None else {int(t) for t in ids.split(",") if t}


def test_fifty_fast_clicks_end_on_the_map_of_the_final_selection(page: Page, dashboard) -> None:
    page.page.wait_for_selector(".psal-map-filters", state="attached", timeout=LOAD_MS)  # first map shown
    log = Path(dashboard.log_path)
    log_start = log.stat().st_size
    errors_before = page.page.evaluate(ERRORS_JS)
    before = selected_ids(page.text(".psal-selected"))
    avoid = set(before)
    for i in range(50):  # ten clicks a second: faster than any person, each after a brief hover
        point = page.page.evaluate(PROFILE_POINT_JS, [len(before) + 12 + i, sorted(avoid)])
        assert point is not None and point["id"] is not None, point
        page.page.mouse.move(point["x"], point["y"])
        # plotly takes a click for the point it found on hover: with no hover processed first,
        # a loaded machine dropped 42 of 50 clicks (GUIDE §3).
        page.page.wait_for_timeout(100)
        page.page.mouse.click(point["x"], point["y"])
        avoid.add(int(point["id"]))
    # Settled: the map on show was computed for the F on show, and nothing changes any more.
    # Up to LOAD_MS: run first in the module, the map competes with the kernel pool's refill.
    deadline = time.monotonic() + LOAD_MS / 1000
    while True:
        final, shown = selected_ids(page.text(".psal-selected")), _map_filters(page)
        busy = page.page.evaluate("() => getComputedStyle(document.querySelector('.psal-busy')).visibility")
        if shown == final and busy == "hidden":
            page.page.wait_for_timeout(2000)
            if selected_ids(page.text(".psal-selected")) == final and _map_filters(page) == final:
                break
        assert time.monotonic() < deadline, f"the map shows {shown}, F is {final}"
        page.page.wait_for_timeout(250)
    page.shot("after-50-clicks")
    # Each click aimed at a filter outside F; plotly toggles the point it finds under the mouse
    # (a neighbour, at times), and a click without a hover first may miss (GUIDE §3): many, not
    # all, must have reached the explorer.
    assert len(final ^ before) >= 10, f"only {len(final ^ before)} of 50 clicks changed F"
    assert page.page.evaluate(ERRORS_JS) == errors_before
    assert "error" not in page.text(".psal-status").lower()
    tail = log.read_text(errors="replace")[log_start:]
    assert "Traceback" not in tail and "Exception" not in tail, tail[-3000:]


def test_no_errors_in_the_page(page: Page) -> None:
    assert page.errors == []
