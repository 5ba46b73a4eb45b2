"""The Streamlit app under Streamlit's own AppTest: each tab shows the right figures for a
database filled by a real short federated run, a fresh database its empty state, and a
database that cannot be read a clear error."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import create_engine, text
from streamlit.testing.v1 import AppTest

from coordinator import db, devices, rounds, testing
from coordinator.service import Coordinator
from dashboard import queries as q
from dashboard import sample
from secagg import crypto

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return sample.run(tmp_path_factory.mktemp("dash-app") / "data")


def _app(monkeypatch, url: str) -> AppTest:
    monkeypatch.setenv(q.ENV_URL, url)
    monkeypatch.delenv(q.ENV_LEDGER, raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_every_tab_shows_the_run(monkeypatch, run):
    at = _app(monkeypatch, run.url)
    assert [t.label for t in at.tabs] == ["Quality", "Rounds", "Bytes", "Privacy", "Devices"]
    assert not at.error and "No rounds yet" not in _texts(at.info)
    e = q.connect(run.url)
    m = _metrics(at)
    quality = q.quality(e).set_index("version")
    bytes_ = q.bytes_per_round(e).set_index("round")
    eps = q.privacy(e, q.ledger_path(run.url))["epsilon_spent"]
    top_up = max(up for up, _ in run.round_bytes[4].values())
    v4 = quality.loc[4]
    ppl = v4["public_perplexity"]
    assert m == {
        # Quality
        "Current version": "4",
        "Public top-1 (server-side), v4": f"{v4['public_top1']:.1%}",
        "Federated top-1, v4": "25.0%",  # 4 hits in 16 words, from the masked sum
        "Keystroke savings (server-side), v4": f"{v4['public_keystroke_savings']:.1%}",
        "Perplexity (server-side), v4": "–" if pd.isna(ppl) else f"{ppl:.1f}",
        # Rounds
        "Rounds done": "3",
        "Rounds aborted": "1",
        "Running": "0",
        "Dropouts (all rounds)": "5",
        "Mode (latest round)": "buffered",
        # Bytes
        "Upload of one device, round 4": f"{top_up / 1000:,.1f} kB",
        "Mean download per device, round 4": (
            f"{bytes_.loc[4, 'bytes_down_per_device'] / 1000:,.1f} kB"
        ),
        "Dense float32 update, full model": "5.7 MB",
        "Compression vs dense": f"{5_727_800 / top_up:.1f}x",
        # Privacy
        "ε spent": f"{eps:.3f}",
        "ε budget": "10",
        "δ": "1e-05",
        "Clip norm (L2)": "1",
        # Devices
        "Devices enrolled": "5",
        "On device": "4",
        "Cloud": "1",
        "Raw text received from cloud devices": "23 B",
    }
    frames = [d.value for d in at.dataframe]
    rounds = next(f for f in frames if "dropped_masked_input" in f.columns)
    assert rounds["status"].tolist() == ["done", "done", "aborted", "done"]
    assert rounds["mode"].tolist() == ["sync", "sync", "sync", "buffered"]
    assert rounds["dropped_masked_input"].tolist() == [0, 1, 0, 0]
    per_round = next(f for f in frames if "compression_vs_full" in f.columns)
    assert per_round["bytes_up_total"].tolist() == [
        sum(up for up, _ in run.round_bytes.get(r, {}).values()) for r in (1, 2, 3, 4)
    ]
    stale = next(f for f in frames if list(f.columns) == ["round", "client", "staleness", "weight"])
    assert stale[["round", "client", "staleness"]].values.tolist() == [
        [4, 0, 1], [4, 1, 0], [4, 2, 0], [4, 3, 0]
    ]  # fmt: skip
    cloud = next(
        f for f in frames if list(f.columns) == ["device", "requests", "bytes", "updated_at"]
    )
    assert cloud[["device", "requests", "bytes"]].values.tolist() == [["thin", 2, 23]]
    in_use = next(f for f in frames if list(f.columns) == ["model_version", "devices"])
    assert in_use.values.tolist() == [["not reported", 1], ["2", 1], ["4", 3]]
    # Privacy: what the server saw, and the progress against the budget.
    assert "exactly as the server received it, masked" in _texts(at.markdown)
    assert "Noise multiplier: 2" in _texts(at.markdown)


def _charts(at: AppTest) -> list:
    return [_chart_data(c) for c in at.get("vega_lite_chart")]


def _chart_by_y(at: AppTest, field: str):
    """The data of the (single-layer) chart whose y axis is `field`."""
    for c in at.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        if spec.get("encoding", {}).get("y", {}).get("field") == field:
            return _chart_data(c)[0]
    raise AssertionError(f"no chart of {field}")


def test_quality_tab_charts_keystroke_savings_and_perplexity(monkeypatch, run):
    at = _app(monkeypatch, run.url)
    quality = q.quality(q.connect(run.url))
    ks = _chart_by_y(at, "public_keystroke_savings")
    assert ks["version"].tolist() == [1, 2, 3, 4]
    assert ks["public_keystroke_savings"].tolist() == quality["public_keystroke_savings"].tolist()
    # Versions whose perplexity is finite (the sample's DP noise may wreck later ones).
    ppl = _chart_by_y(at, "public_perplexity")
    finite = quality.dropna(subset=["public_perplexity"])
    assert 1 in ppl["version"].tolist()
    assert ppl["version"].tolist() == finite["version"].tolist()
    assert ppl["public_perplexity"].tolist() == finite["public_perplexity"].tolist()


def test_rounds_tab_charts_the_staleness_distribution(monkeypatch, run):
    at = _app(monkeypatch, run.url)
    dist = _chart_by_y(at, "updates")
    assert dist.values.tolist() == [[0, 3], [1, 1]]  # three fresh updates, one a version behind


def test_privacy_tab_shows_the_masked_upload_beside_the_unmasked_aggregate(monkeypatch, run):
    at = _app(monkeypatch, run.url)
    h = q.upload_histograms(q.connect(run.url))
    shown = [d[0] for d in _charts(at) if {"what", "bin"} <= set(d[0].columns)]
    assert [sorted(set(d["what"])) for d in shown] == [["masked upload"], ["unmasked aggregate"]]
    for d in shown:  # the latest round that has both: round 4
        want = h[(h["round"] == 4) & (h["what"] == d["what"].iloc[0])]
        assert d["count"].tolist() == want["count"].tolist() and len(d) == 32
        assert d["lo"].tolist() == want["lo"].tolist()


def _chart_data(chart) -> list:
    """The data sets of an Altair chart as Streamlit sends them (Arrow IPC), in layer order."""
    by_name = {d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets}
    spec = json.loads(chart.proto.spec)
    return [by_name[layer["data"]["name"]] for layer in spec.get("layer", [spec])]


def test_quality_chart_has_both_evaluations_and_the_reference_lines(monkeypatch, run):
    at = _app(monkeypatch, run.url)
    chart = at.get("vega_lite_chart")[0]  # the first chart: the Quality tab
    lines, refs = _chart_data(chart)
    spec = json.loads(chart.proto.spec)
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["line", "rule"]
    fed = lines[lines["measure"] == "federated top-1"]
    assert fed[["version", "accuracy"]].values.tolist() == [[2, 0.25], [3, 0.25], [4, 0.25]]
    server = lines[lines["measure"] == "server top-1"]
    quality = q.quality(q.connect(run.url))
    assert server["accuracy"].tolist() == quality["public_top1"].tolist()
    bench = json.loads((ROOT / "bench" / "results" / "quality.json").read_text())
    held = bench["chitchat_heldout"]
    assert dict(refs.values.tolist()) == {
        "3-gram baseline top-1": held["ngram"]["top1"],
        "3-gram baseline top-3": held["ngram"]["top3"],
        "centralised (upper bound) top-1": held["centralized"]["top1"],
        "centralised (upper bound) top-3": held["centralized"]["top3"],
    }


def test_auto_refresh_toggle_offers_an_interval(monkeypatch, run):
    at = _app(monkeypatch, run.url)
    assert not at.sidebar.number_input
    at.sidebar.toggle[0].set_value(True).run()
    assert not at.exception
    assert at.sidebar.number_input[0].value == 5
    assert _metrics(at)["Rounds done"] == "3"  # the body still renders inside the fragment


def test_fresh_database_shows_the_empty_state(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    db.Database(url).close()  # the coordinator's tables, nothing in them
    at = _app(monkeypatch, url)
    assert not at.error
    info = _texts(at.info)
    assert "No rounds yet" in info and "No model versions yet" in info
    assert "No devices enrolled yet" in info
    assert _metrics(at)["Devices enrolled"] == "0"
    assert "Differential privacy is off" in _texts(at.warning)


def test_a_running_round_shows_while_the_coordinator_holds_the_database(monkeypatch, tmp_path):
    coord = Coordinator.open(testing.fresh_config(tmp_path, round_cohort_size=2))
    try:
        for i in range(3):
            devices.enrol(coord.db, f"d{i}", crypto.new_identity()[1], "on_device")
        rid = rounds.open_round(coord, np.random.default_rng(0))
        at = _app(monkeypatch, coord.config.db_url)
        assert "A round is running." in _texts(at.caption)
        m = _metrics(at)
        assert (m["Running"], m["Rounds done"], m["Devices enrolled"]) == ("1", "0", "3")
        frames = [d.value for d in at.dataframe]
        table = next(f for f in frames if "dropped_masked_input" in f.columns)
        assert table[["round", "status", "cohort"]].values.tolist() == [[rid, "running", 3]]
        assert table["duration_s"].isna().all()
        stages = next(f for f in frames if list(f.columns)[:3] == ["round", "stage", "status"])
        assert stages[["stage", "status"]].values.tolist() == [["advertise", "open"]]
    finally:
        coord.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-dir/sub/coordinator.sqlite3",
        "postgresql+psycopg://nobody@127.0.0.1:9/x",
    ],
)
def test_unreachable_database_shows_an_error(monkeypatch, url):
    at = _app(monkeypatch, url)
    assert len(at.error) == 1
    assert "Database unavailable" in at.error[0].value
    assert "cannot open the database" in at.error[0].value
    assert not at.tabs and not at.metric


def test_database_without_sotto_tables_shows_an_error(monkeypatch, tmp_path):
    path = tmp_path / "other.sqlite3"
    other = create_engine(f"sqlite:///{path}")
    with other.begin() as c:
        c.execute(text("CREATE TABLE notes (x INTEGER)"))
    other.dispose()
    at = _app(monkeypatch, f"sqlite:///{path}")
    assert len(at.error) == 1 and "not a Sotto coordinator database" in at.error[0].value
    assert not at.tabs
