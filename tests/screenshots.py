"""`./dev screenshot`: the README's pictures, taken in headless Chromium (tests/browser.py).

- assets/screenshots/keyboard.png: a phone connected to a coordinator, after a person typed two
  messages, asked for one cloud suggestion (the privacy log shows the raw text it sent) and
  went back on device, mid-word so the strip shows completions.
- assets/screenshots/dashboard.png: the dashboard over a short real federated run
  (dashboard.sample), full page, wide.

Everything runs on loopback in temporary directories.
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, before any installed copy

import numpy as np  # noqa: E402
from browser import (  # noqa: E402
    chromium,
    dashboard_server,
    serve_app,
    type_slowly,
    wait_for_suggestions,
)
from playwright.sync_api import Browser  # noqa: E402

OUT = ROOT / "assets" / "screenshots"


def keyboard_png(browser: Browser, work: Path, path: Path) -> None:
    from coordinator.config import CoordinatorConfig
    from coordinator.server import running
    from keyboard import serve
    from keyboard.background import Background
    from keyboard.device import Device, DeviceConfig
    from keyboard.web import create_app

    cfg = CoordinatorConfig(port=0, data_dir=work / "coordinator", eval_targets=0)
    with running(cfg) as (coord_url, _):
        device = Device.open(DeviceConfig(work / "phone"))
        transport = serve.connect(device, coord_url)
        # The phone's background worker, stepped once so the page shows it online.
        worker = Background(device, transport, np.random.default_rng(0))
        worker.tick()
        app = create_app(device, on_toggle=transport.set_mode, connection=worker.status)
        try:
            with serve_app(app) as url:
                page = browser.new_page(viewport={"width": 420, "height": 900})
                page.goto(url)
                wait_for_suggestions(page, 1)
                page.focus("#text")
                for message in ("see you at the station tonight", "meet me there later"):
                    type_slowly(page, message)
                    page.keyboard.press("Enter")
                    page.wait_for_function("document.getElementById('text').value === ''")
                page.click("#toggle")  # cloud mode: the context leaves the phone
                page.focus("#text")
                type_slowly(page, "how are ")
                page.click("#toggle")  # and back on device
                page.focus("#text")
                page.fill("#text", "")
                type_slowly(page, "see you at the sta")
                page.wait_for_timeout(600)  # the privacy log refreshes once typing pauses
                page.locator(".phone").screenshot(path=str(path))
        finally:
            transport.close()


def dashboard_png(browser: Browser, work: Path, path: Path) -> None:
    from dashboard import sample

    run = sample.run(work / "dashboard")
    with dashboard_server(run.url) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.wait_for_selector('[data-testid="stVegaLiteChart"] svg.marks', timeout=60_000)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
        # Streamlit's own toolbar (Deploy, menu) is not part of the product.
        page.add_style_tag(content='[data-testid="stToolbar"] { display: none; }')
        page.wait_for_timeout(1000)  # the table's canvas paints after it is attached
        page.screenshot(path=str(path), full_page=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sotto-screenshot-") as tmp, chromium() as browser:
        keyboard_png(browser, Path(tmp), OUT / "keyboard.png")
        dashboard_png(browser, Path(tmp), OUT / "dashboard.png")
    for name in ("keyboard.png", "dashboard.png"):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
