"""The dashboard in real headless Chromium: `sotto dashboard`'s Streamlit server over a database
filled by a real short federated run (dashboard.sample), loaded as an operator would."""

import pytest
from browser import dashboard_server

from dashboard import sample

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHART = '[data-testid="stVegaLiteChart"]'


def test_the_running_dashboard_shows_the_quality_chart(chromium, tmp_path):
    run = sample.run(tmp_path / "data")
    with dashboard_server(run.url) as url:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        # Streamlit renders after its websocket session starts; vega-embed draws the SVG last.
        page.wait_for_selector(f'[role="tabpanel"] {CHART} svg.marks', timeout=60_000)
        assert page.inner_text("h1") == "Sotto: federated keyboard dashboard"
        tabs = page.eval_on_selector_all(
            '[role="tab"]', "ts => ts.map(t => [t.innerText, t.getAttribute('aria-selected')])"
        )
        assert tabs[0] == ["Quality", "true"]
        assert [t for t, _ in tabs] == ["Quality", "Rounds", "Bytes", "Privacy", "Devices"]
        # The chart is the quality chart: its axis, its measures and the reference lines.
        words = page.eval_on_selector(f"{CHART} svg.marks", "svg => svg.textContent")
        for label in ("global version", "next-word accuracy", "server top-1", "federated top-1"):
            assert label in words, label
        assert "3-gram baseline top-1" in words
        # One point per global version on the server-side line (versions 1, 2 and 3).
        assert page.locator(f"{CHART} svg.marks .mark-symbol path").count() >= 3
        assert page.locator('[data-testid="stException"]').count() == 0
