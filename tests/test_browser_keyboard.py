"""The demo keyboard in real headless Chromium: the page (keyboard/static/index.html) against
the real device process (keyboard/web.py over the shipped LiteRT model), on loopback.

What a person does: types (physical keys and the on-screen keyboard), reads the strip, taps a
suggestion, flips Process on device with a live coordinator, reads the privacy log, and asks
the phone to forget them.
"""

import re
import time

import pytest
from browser import asked, serve_app, type_slowly, wait_for_suggestions

from keyboard.device import Device, DeviceConfig
from keyboard.web import create_app

pytestmark = pytest.mark.browser

NOTHING_LEFT = "Nothing has left this device."
# What an on-device phone may send: no text, no plain update (privacy_log.KINDS).
ON_DEVICE_KINDS = {"checkin", "model_download", "device_part_download", "secagg", "masked_vector"}


def _open(page, url: str) -> None:
    page.goto(url)
    wait_for_suggestions(page, 1)  # the page's first request (empty text) has been answered
    page.click("#text")


def _log_rows(page) -> list[tuple[str, str]]:
    """(kind, text) of every row the privacy log shows, newest first."""
    return page.eval_on_selector_all("#log div", "ds => ds.map(d => [d.className, d.textContent])")


def _screen_key(page, label: str) -> None:
    page.locator("#keys button", has_text=re.compile(f"^{label}$")).click()


@pytest.fixture
def phone(tmp_path):
    device = Device.open(DeviceConfig(tmp_path / "phone"))
    with serve_app(create_app(device)) as url:
        yield device, url


def test_typing_completes_then_predicts_and_a_tap_inserts(chromium, phone):
    device, url = phone
    page = chromium.new_page()
    _open(page, url)
    words = type_slowly(page, "how are yo")
    assert "you" in words and all(w.startswith("yo") for w in words), words
    # The best completion sits in the middle of the strip, as on phone keyboards.
    assert page.inner_text("#strip button.best") == words[0]

    # A space from the on-screen keyboard: next-word suggestions for the new context.
    n = asked(page) + 1
    type_slowly(page, "u")
    _screen_key(page, "space")
    nxt = wait_for_suggestions(page, n + 1)
    assert page.input_value("#text") == "how are you "
    assert len(nxt) == 3 and all(w and not w.startswith("<") for w in nxt), nxt
    assert nxt == device.suggest("how are you ")  # what the model says, shown as it says it

    # Tapping a suggestion inserts it and a space, and the strip moves on to the next word.
    n = asked(page) + 1
    page.click("#strip button.best")
    assert page.input_value("#text") == f"how are you {nxt[0]} "
    after = wait_for_suggestions(page, n)
    assert after == device.suggest(f"how are you {nxt[0]} ")

    # Tapping a completion replaces the partly typed word rather than appending to it.
    page.fill("#text", "")
    type_slowly(page, "see yo")
    n = asked(page) + 1
    page.click("#strip button.best")
    wait_for_suggestions(page, n)
    assert page.input_value("#text") == f"see {device.suggest('see yo')[0]} "

    # Without a coordinator, on-device typing sends nothing at all.
    assert page.inner_text("#log") == NOTHING_LEFT
    assert device.log.entries() == []


@pytest.fixture
def connected_phone(tmp_path):
    from coordinator import testing
    from keyboard import serve

    with testing.live_server(testing.fresh_config(tmp_path / "server")) as (coord_url, _):
        device = Device.open(DeviceConfig(tmp_path / "phone"))
        transport = serve.connect(device, coord_url)
        try:
            with serve_app(create_app(device, on_toggle=transport.set_mode)) as url:
                yield device, url
        finally:
            transport.close()


def test_cloud_mode_shows_the_raw_text_sent_and_on_device_sends_none(chromium, connected_phone):
    device, url = connected_phone
    page = chromium.new_page()
    _open(page, url)
    type_slowly(page, "how are ")
    before = len(device.log.entries())  # enrolment, check-in and the model downloads
    assert before and {e.kind for e in device.log.entries()} - {"enrol"} <= ON_DEVICE_KINDS

    page.click("#toggle")  # Process on device: off
    page.wait_for_function("document.getElementById('status').classList.contains('cloud')")
    assert "sent to the server" in page.inner_text("#status")
    page.focus("#text")  # the tap on the switch took the focus
    words = type_slowly(page, "yo")
    assert words and all(w.startswith("yo") for w in words), words  # the coordinator's answer
    page.wait_for_function(
        "t => [...document.querySelectorAll('#log .raw_text')]"
        ".some(d => d.textContent.includes(t))",
        arg='"how are yo"',
    )
    raw = [text for kind, text in _log_rows(page) if kind == "raw_text"]
    # Every keystroke's context left the phone, verbatim, newest first.
    assert '"how are yo"' in raw[0] and '"how are y"' in raw[1] and "/v1/predict" in raw[0]
    sent = [e.contents for e in device.log.entries() if e.kind == "raw_text"]
    assert sent[-2:] == ["how are y", "how are yo"]
    latest = page.request.get(f"{url}/api/privacy_log?limit=2").json()  # what the page reads
    assert [e["contents"] for e in latest["entries"]] == sent[-2:]
    assert latest["count"] == len(device.log.entries())

    in_cloud = len(device.log.entries())
    page.click("#toggle")  # back on device
    page.wait_for_function("!document.getElementById('status').classList.contains('cloud')")
    page.focus("#text")
    n_raw = len(raw)
    type_slowly(page, "u doing")
    page.click("#strip button.best")
    page.wait_for_timeout(600)  # longer than the log's refresh delay
    new = device.log.entries()[in_cloud:]
    assert new and {e.kind for e in new} <= ON_DEVICE_KINDS, [e.kind for e in new]
    rows = _log_rows(page)
    assert len([r for r in rows if r[0] == "raw_text"]) == n_raw  # nothing new in the clear
    assert rows[0][0] == "checkin" and "mode on_device" in rows[0][1]  # the switch itself


def test_forget_my_data_empties_the_store(chromium, connected_phone, tmp_path):
    device, url = connected_phone
    page = chromium.new_page()
    _open(page, url)
    for message in ("see you at the station tonight", "meet me at the station later"):
        type_slowly(page, message)
        page.keyboard.press("Enter")  # send: kept, sealed, for local learning
        page.wait_for_function("document.getElementById('text').value === ''")
    page.wait_for_function("document.getElementById('stats').textContent.includes('Words typed12')")
    assert len(device.history.messages()) == 2
    # Enrolment and the model downloads, shown once typing pauses.
    page.wait_for_function(f"document.getElementById('log').textContent !== '{NOTHING_LEFT}'")

    page.click("#forget")
    page.wait_for_function("document.getElementById('stats').textContent.includes('Words typed0')")
    page.wait_for_function(f"document.getElementById('log').textContent === '{NOTHING_LEFT}'")
    assert device.history.messages() == [] and device.log.entries() == []
    # On disk too: the same phone reopened from its data directory remembers nothing.
    again = Device.open(DeviceConfig(tmp_path / "phone"))
    assert again.history.messages() == [] and again.log.entries() == []
    assert again.stats()["words_typed"] == 0


def test_an_unreachable_coordinator_is_said_and_forgotten_once_it_answers(chromium, phone):
    device, url = phone
    down = True

    def cloud(typed: str) -> list[str]:  # the coordinator, first down, then back
        if down:
            raise ConnectionError("connection refused")
        return ["you", "your", "yours"]

    device.cloud_predict = cloud
    page = chromium.new_page()
    _open(page, url)
    page.click("#toggle")
    page.focus("#text")
    assert type_slowly(page, "how are ") == ["", "", ""]  # no suggestions, and it says why
    page.wait_for_function("document.getElementById('status').textContent.includes('unreachable')")
    down = False
    assert type_slowly(page, "y") == ["you", "your", "yours"]
    assert page.inner_text("#status") == "Cloud mode: what you type is sent to the server."


def test_editing_mid_message_and_long_messages(chromium, phone):
    device, url = phone
    asked_for: list[str] = []
    device.cloud_predict = lambda typed: asked_for.append(typed) or ["a", "b", "c"]
    page = chromium.new_page()
    _open(page, url)
    # The caret moved back into the message: suggestions are for the word at the caret.
    page.fill("#text", "how are yo tomorrow")
    page.evaluate("document.getElementById('text').setSelectionRange(10, 10)")
    words = type_slowly(page, "u")
    assert page.input_value("#text") == "how are you tomorrow"
    assert words == device.suggest("how are you") and words[0].startswith("you")
    n = asked(page) + 1
    page.click("#strip button.best")
    wait_for_suggestions(page, n)
    assert page.input_value("#text") == f"how are {words[0]} tomorrow"  # no double space
    _screen_key(page, "x")  # the on-screen keys type at the caret too
    assert page.input_value("#text") == f"how are {words[0]} xtomorrow"
    _screen_key(page, "⌫")
    assert page.input_value("#text") == f"how are {words[0]} tomorrow"

    # A long message: only its tail is asked about (the model reads 16 words), so cloud mode
    # keeps working past the coordinator's request limit and sends no more than that.
    page.click("#toggle")
    page.fill("#text", "see you at the station tonight " * 60)
    page.focus("#text")
    assert type_slowly(page, "o") == ["a", "b", "c"]
    assert 300 < len(asked_for[-1]) <= 400 and asked_for[-1].endswith("tonight o")
    assert asked_for[-1].startswith(("see ", "you ", "at ", "the ", "station ", "tonight "))


def test_idle_switch_and_the_background_connection_are_shown(chromium, tmp_path):
    device = Device.open(DeviceConfig(tmp_path / "phone"))
    device.set_pending_contribution(3)
    retry = time.time() + 30

    def connection() -> dict:  # what keyboard.background reports while the coordinator is away
        return {"state": "offline", "retry_at": retry, "last_error": "refused"}

    with serve_app(create_app(device, connection=connection)) as url:
        page = chromium.new_page()
        _open(page, url)
        page.wait_for_function("document.getElementById('conn').textContent !== ''")
        line = page.inner_text("#conn")
        assert line.startswith("Coordinator unreachable: predicting and learning here")
        assert "update (from version 3) waits" in line
        assert page.is_checked("#idle") and device.idle_and_charging
        with page.expect_response("**/api/idle"):
            page.click("#idle")  # the phone is in use: no learning by itself
        assert device.idle_and_charging is False
