"""The dashboard's dataset view in a real browser (Voila + Debian's Chromium via Playwright).

A dashboard served with ``--data`` (12 shared ImageNet images) and a profile index built for
them. A person opens the "Dataset view" tab, hovers a point of the saliency-space map and
clicks it: that image opens in the explorer (the map's star moves onto the clicked point and
the status line names the file); picking a row of the error table opens that row's image.
Skipped without Debian's chromium, playwright or ``../shared/data``.
"""
from __future__ import annotations

import csv

import pytest

from psal_widgets.dashboard import BLOCKED_URL, CHROMIUM_ARGS, chromium_path, launch

from .conftest import ROOT, VAL800, needs_data

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = chromium_path()
VAL = VAL800 / "labels.csv"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.data,
    needs_data(VAL),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

ARTIFACTS = ROOT / "test-artifacts"
LOAD_MS = 240_000
UPDATE_MS = 90_000
N = 12

#: Viewport position of dataset row ``row`` on the saliency-space map (scattergl: no element per
#: point, so the position comes from plotly's axis transforms), and of the star (trace 2).
MAP_POINT_JS = """
([row]) => {
  const gd = document.querySelector('.psal-dataset-map .js-plotly-plot');
  if (!gd || !gd._fullLayout) return null;
  gd.scrollIntoView({block: 'center'});
  const box = gd.getBoundingClientRect();
  const full = gd._fullLayout;
  const at = (tr, i) => {
    const xa = full[(tr.xaxis || 'x').replace('x', 'xaxis')];
    const ya = full[(tr.yaxis || 'y').replace('y', 'yaxis')];
    return {x: box.left + xa._offset + xa.l2p(tr.x[i]), y: box.top + ya._offset + ya.l2p(tr.y[i])};
  };
  const out = {point: null, star: null};
  gd._fullData.forEach((tr, t) => {
    if (!tr.x) return;
    if (t === 2 && tr.x.length) out.star = at(tr, 0);
    if (t > 1) return;
    for (let i = 0; i < tr.x.length; i++) {
      const c = tr.customdata ? tr.customdata[i] : null;
      const r = c == null ? null : Number(typeof c === 'object' ? c[0] : c);
      if (r === row) out.point = at(tr, i);
    }
  });
  return out;
}
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 12-image labels CSV (absolute paths) and its profile index, built by ``psal index``."""
    from psal_widgets.cli import main

    folder = tmp_path_factory.mktemp("dataset-view")
    with VAL.open() as f:
        rows = list(csv.DictReader(f))[:N]
    data = folder / "labels.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for r in rows:
            w.writerow([str(VAL.parent / r["file"]), r["label"]])
    index = folder / "index"
    assert main(["index", "--data", str(data), "--out", str(index), "--quiet"]) in (0, None)
    return data, index, [r["file"].rsplit("/", 1)[-1] for r in rows]


@pytest.fixture(scope="module")
def page(dataset):
    data, index, _ = dataset
    ARTIFACTS.mkdir(exist_ok=True)
    dash = launch(data=data, index=index, quiet=True, timeout=120, log_path=ARTIFACTS / "voila-dataset.log")
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            pg = context.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda err: errors.append(str(err)))
            pg.route(BLOCKED_URL, lambda route: route.abort())
            pg.goto(dash.url, timeout=LOAD_MS)
            pg.wait_for_function(
                "() => [...document.querySelectorAll('.psal-ready')].some(e => e.innerText.trim() === 'ready')",
                timeout=LOAD_MS)
            try:
                yield pg, errors
            finally:
                pg.screenshot(path=str(ARTIFACTS / "dataset-view-final.png"))
                browser.close()
    finally:
        dash.stop()


def _hover_click(pg, x: float, y: float) -> None:
    # As a person does: move there, wait for the hover, then click (GUIDE §3: scattergl may drop
    # a click that arrives without a hover first).
    pg.mouse.move(x, y)
    pg.wait_for_timeout(300)
    pg.mouse.click(x, y)


def _open_tab(pg) -> None:
    tab = pg.locator(".lm-TabBar-tab", has_text="Dataset view").first
    box = tab.bounding_box()
    assert box is not None, "no 'Dataset view' tab"
    _hover_click(pg, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    # The first showing computes the view on the worker, after at most one step of the idle-time
    # basis build: allow a loaded machine's first-load time.
    pg.wait_for_selector(".psal-dataset-map .js-plotly-plot", timeout=LOAD_MS)
    pg.wait_for_function(
        "() => { const g = document.querySelector('.psal-dataset-map .js-plotly-plot');"
        " return g && g._fullData && g._fullData.slice(0, 2).reduce((n, t) => n + (t.x ? t.x.length : 0), 0) > 0; }",
        timeout=LOAD_MS)


def test_clicking_a_map_point_opens_that_image(page, dataset):
    pg, errors = page
    names = dataset[2]
    _open_tab(pg)
    pg.screenshot(path=str(ARTIFACTS / "dataset-view.png"))
    row = 7  # not the image the explorer opened on
    where = pg.evaluate(MAP_POINT_JS, [row])
    assert where and where["point"], f"row {row} is not on the map: {where}"
    before = pg.inner_text(".psal-status")
    _hover_click(pg, where["point"]["x"], where["point"]["y"])
    pg.wait_for_function(
        "([old, name]) => { const e = document.querySelector('.psal-status');"
        " return e && e.innerText !== old && e.innerText.includes(name); }",
        arg=[before, names[row]], timeout=UPDATE_MS)
    # The star (the open image) moves onto the clicked point.
    pg.wait_for_function(
        "([js, row]) => { const r = eval(js)([row]); return r && r.star && r.point"
        " && Math.abs(r.star.x - r.point.x) < 2 && Math.abs(r.star.y - r.point.y) < 2; }",
        arg=[MAP_POINT_JS, row], timeout=UPDATE_MS)
    pg.screenshot(path=str(ARTIFACTS / "dataset-view-after-click.png"))
    assert not errors, errors


def test_picking_a_table_row_opens_that_image(page, dataset):
    pg, errors = page
    names = dataset[2]
    _open_tab(pg)
    select = pg.locator(".psal-dataset-table select").first
    values = select.locator("option").evaluate_all("os => os.map(o => [o.value, o.innerText])")
    assert len(values) >= 2, values
    # The second row of the table (sorted by loss): its text names the file.
    value, text = values[1]
    row = next(i for i, n in enumerate(names) if n in text or n.rsplit(".", 1)[0] in text)
    option = select.locator("option").nth(1)
    box = option.bounding_box()
    before = pg.inner_text(".psal-status")
    _hover_click(pg, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    pg.wait_for_function(
        "([old, name]) => { const e = document.querySelector('.psal-status');"
        " return e && e.innerText !== old && e.innerText.includes(name); }",
        arg=[before, names[row]], timeout=UPDATE_MS)
    assert not errors, errors
