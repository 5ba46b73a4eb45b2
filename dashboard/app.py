"""The Sotto dashboard (Streamlit): global model quality, rounds, bytes, privacy, devices.

Thin: reads the database URL (`SOTTO_DATABASE_URL`, else the coordinator's default SQLite
file), calls `dashboard.queries` and draws. Run with `sotto dashboard` or
`streamlit run dashboard/app.py`.
"""

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries as q  # the installed package (pip install -e .)
from model import paths

REFERENCE_FILE = paths.ROOT / "bench" / "results" / "quality.json"
EMPTY_ROUNDS = "No rounds yet: start the coordinator, enrol on-device phones and open a round."
SEEN = (
    "Left: the value histogram of one device's upload exactly as the server received it, "
    "masked: uniform over the secure-aggregation field whatever the update was, so it reveals "
    "nothing. Right: the unmasked aggregate, the average of the whole cohort's updates (with DP "
    "noise when on), the only vector the server ever decodes. No single device's unmasked "
    "update exists on the server, in memory, logs or database."
)
NO_HISTOGRAM = "No round has reached Unmasking yet: nothing to show."


def _pct(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.1%}"


def _bytes(n) -> str:
    if n is None or pd.isna(n):
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def _per_version(where, df, column: str, title: str, axis: alt.Axis | None = None) -> None:
    """One server-side metric per global version, as a line (nothing if never measured)."""
    measured = df.dropna(subset=[column])
    if measured.empty:
        return
    y = alt.Y(f"{column}:Q", title=title, **({"axis": axis} if axis else {}))
    chart = alt.Chart(measured).mark_line(point=True)
    where.altair_chart(
        chart.encode(x=alt.X("version:O", title="global version"), y=y), width="stretch"
    )


def _quality(engine) -> None:
    df = q.quality(engine)
    if df.empty:
        st.info("No model versions yet: the coordinator registers version 1 when it starts.")
        return
    evaluated = df.dropna(subset=["public_top1"])
    federated = df.dropna(subset=["fed_top1"])
    c = st.columns(5)
    c[0].metric("Current version", int(df["version"].iloc[-1]))
    last = evaluated.iloc[-1] if len(evaluated) else None
    c[1].metric(
        "Public top-1 (server-side)" + (f", v{int(last['version'])}" if last is not None else ""),
        _pct(None if last is None else last["public_top1"]),
    )
    fed = federated.iloc[-1] if len(federated) else None
    c[2].metric(
        "Federated top-1" + (f", v{int(fed['version'])}" if fed is not None else ""),
        _pct(None if fed is None else fed["fed_top1"]),
    )
    tag = f", v{int(last['version'])}" if last is not None else ""
    ks = None if last is None else last["public_keystroke_savings"]
    ppl = None if last is None else last["public_perplexity"]
    c[3].metric("Keystroke savings (server-side)" + tag, _pct(ks))
    c[4].metric(
        "Perplexity (server-side)" + tag, "–" if ppl is None or pd.isna(ppl) else f"{ppl:.1f}"
    )
    long = df.melt(
        id_vars=["version"],
        value_vars=["public_top1", "public_top3", "fed_top1", "fed_top3"],
        var_name="measure",
        value_name="accuracy",
    ).dropna()
    names = {
        "public_top1": "server top-1",
        "public_top3": "server top-3",
        "fed_top1": "federated top-1",
        "fed_top3": "federated top-3",
    }
    long["measure"] = long["measure"].map(names)
    lines = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("version:O", title="global version"),
            y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), title="next-word accuracy"),
            color="measure:N",
        )
    )
    refs = [
        {"reference": f"{name} top-{k}", "accuracy": v[f"top{k}"]}
        for name, v in q.reference_quality(REFERENCE_FILE).items()
        for k in (1, 3)
    ]
    chart = lines
    if refs:
        rules = (
            alt.Chart(pd.DataFrame(refs))
            .mark_rule(strokeDash=[4, 4])
            .encode(y="accuracy:Q", color=alt.Color("reference:N"), tooltip=["reference"])
        )
        chart = alt.layer(lines, rules).resolve_scale(color="independent")
    st.altair_chart(chart, width="stretch")
    st.caption(
        "Server-side: public held-out users only. Federated: hits/words summed inside the "
        "masked aggregate. Dashed: 3-gram baseline and centralised model on chitchat held-out "
        "users (bench/results/quality.json)."
    )
    left, right = st.columns(2)
    ks_axis = alt.Axis(format="%")
    _per_version(left, df, "public_keystroke_savings", "keystroke savings (server-side)", ks_axis)
    _per_version(right, df, "public_perplexity", "perplexity (server-side, lower is better)")
    st.dataframe(df, hide_index=True)


def _rounds(engine) -> None:
    df = q.rounds(engine)
    if df.empty:
        st.info(EMPTY_ROUNDS)
        return
    c = st.columns(5)
    c[0].metric("Rounds done", int((df["status"] == "done").sum()))
    c[1].metric("Rounds aborted", int((df["status"] == "aborted").sum()))
    c[2].metric("Running", int((df["status"] == "running").sum()))
    c[3].metric("Dropouts (all rounds)", int(df["dropped_total"].sum()))
    c[4].metric("Mode (latest round)", str(df["mode"].iloc[-1]))
    st.dataframe(df, hide_index=True)
    st.subheader("Staleness of buffered-round updates")
    stale = q.staleness(engine)
    if stale.empty:
        st.caption("No buffered rounds yet: in synchronous rounds every update has staleness 0.")
    else:
        dist = stale.groupby("staleness").size().reset_index(name="updates")
        st.altair_chart(
            alt.Chart(dist)
            .mark_bar()
            .encode(
                x=alt.X("staleness:O", title="staleness (versions behind)"),
                y=alt.Y("updates:Q", title="updates"),
                tooltip=["staleness", "updates"],
            ),
            width="stretch",
        )
        st.caption("Each update is weighted by (1 + staleness)^-1/2 before masking (FedBuff).")
        st.dataframe(stale, hide_index=True)
    every = q.stages(engine)
    st.subheader("Stages: duration and secure-aggregation bytes")
    g = every.dropna(subset=["duration_s"])  # the open stage of a running round has none yet
    if not g.empty:
        st.altair_chart(
            alt.Chart(g)
            .mark_bar()
            .encode(
                x=alt.X("round:O"),
                y=alt.Y("duration_s:Q", title="seconds"),
                color=alt.Color("stage:N", sort=list(q.STAGES)),
                tooltip=["round", "stage", "status", "duration_s", "bytes_in", "bytes_out"],
            ),
            width="stretch",
        )
    st.dataframe(every, hide_index=True)


def _bytes_tab(engine) -> None:
    df = q.bytes_per_round(engine)
    took_part = df[df["devices"] > 0]
    if took_part.empty:
        st.info(EMPTY_ROUNDS)
    else:
        last = took_part.iloc[-1]
        c = st.columns(4)
        c[0].metric(
            f"Upload of one device, round {int(last['round'])}",
            _bytes(last["max_bytes_up_device"]),
        )
        c[1].metric(
            f"Mean download per device, round {int(last['round'])}",
            _bytes(last["bytes_down_per_device"]),
        )
        c[2].metric("Dense float32 update, full model", _bytes(q.DENSE_UPDATE_BYTES))
        c[3].metric("Compression vs dense", f"{last['compression_vs_full']:.1f}x")
        bars = pd.DataFrame(
            [
                {"what": "upload of one device (Sotto)", "bytes": last["max_bytes_up_device"]},
                {"what": "dense float32, device part", "bytes": last["dense_device_part_bytes"]},
                {"what": "dense float32, full model", "bytes": q.DENSE_UPDATE_BYTES},
            ]
        ).dropna()
        st.altair_chart(
            alt.Chart(bars)
            .mark_bar()
            .encode(x=alt.X("bytes:Q", scale=alt.Scale(type="log")), y=alt.Y("what:N", sort=None)),
            width="stretch",
        )
        st.caption(
            f"A dense float32 update of the whole network is {q.FULL_MODEL_PARAMS:,} parameters "
            "x 4 bytes; only the device part travels, quantised and packed at the field width."
        )
        st.dataframe(df, hide_index=True)
    st.subheader("All traffic by kind")
    st.dataframe(q.traffic_by_kind(engine), hide_index=True)


def _privacy(engine, url: str) -> None:
    p = q.privacy(engine, q.ledger_path(url))
    c = st.columns(4)
    spent, limit = p["epsilon_spent"], p["epsilon_limit"]
    c[0].metric("ε spent", "–" if spent is None else f"{spent:.3f}")
    c[1].metric("ε budget", "unknown" if limit is None else f"{limit:g}")
    c[2].metric("δ", "–" if p["delta"] is None else f"{p['delta']:g}")
    c[3].metric("Clip norm (L2)", "–" if p["clip_norm"] is None else f"{p['clip_norm']:g}")
    if not p["dp"]:
        st.warning("Differential privacy is off: no noise is added and no ε is accounted.")
    else:
        noise = p["noise_multiplier"]
        st.write(f"Noise multiplier: {noise:g}" if noise is not None else "Noise multiplier: –")
        if spent is not None and limit:
            st.progress(min(spent / limit, 1.0), text=f"ε {spent:.3f} of {limit:g} spent")
        elif limit is None:
            st.caption("The ε limit is in the coordinator's privacy ledger, which was not found.")
        per = p["per_version"].dropna(subset=["epsilon"])
        if not per.empty:
            st.altair_chart(
                alt.Chart(per)
                .mark_line(point=True)
                .encode(x="version:O", y=alt.Y("epsilon:Q", title="cumulative ε")),
                width="stretch",
            )
        st.dataframe(p["per_version"], hide_index=True)
    st.subheader("What the server saw of one upload")
    h = q.upload_histograms(engine)
    both = h.groupby("round")["what"].nunique()
    both = both[both == 2]
    if both.empty:
        st.info(NO_HISTOGRAM)
    else:
        rid = int(both.index.max())
        st.write(SEEN)
        left, right = st.columns(2)
        for col, what in ((left, "masked upload"), (right, "unmasked aggregate")):
            part = h[(h["round"] == rid) & (h["what"] == what)]
            col.altair_chart(
                alt.Chart(part)
                .mark_bar()
                .encode(
                    x=alt.X("lo:Q", bin="binned", title=f"{what}, round {rid}: value"),
                    x2="hi:Q",
                    y=alt.Y("count:Q", title="coordinates"),
                ),
                width="stretch",
            )
    st.caption("Masked vectors received per round (bytes, whole cohort):")
    t = q.stages(engine)
    st.dataframe(
        t[t["stage"] == "masked_input"][["round", "bytes_in"]].rename(
            columns={"bytes_in": "masked vectors received (bytes, whole cohort)"}
        ),
        hide_index=True,
    )


def _devices(engine) -> None:
    d, ct = q.devices(engine), q.cloud_text(engine)
    by_mode = d["mode"].value_counts()
    c = st.columns(4)
    c[0].metric("Devices enrolled", len(d))
    c[1].metric("On device", int(by_mode.get("on_device", 0)))
    c[2].metric("Cloud", int(by_mode.get("cloud", 0)))
    c[3].metric("Raw text received from cloud devices", _bytes(int(ct["bytes"].sum())))
    if d.empty:
        st.info("No devices enrolled yet.")
        return
    st.subheader("Versions in use")
    used = d["model_version"].fillna(0).astype(int).value_counts().sort_index()
    # One type per column (Arrow): version numbers as text, 0 = the device never reported one.
    label = [str(v) if v else "not reported" for v in used.index]
    st.dataframe(pd.DataFrame({"model_version": label, "devices": used.values}), hide_index=True)
    st.subheader("Devices")
    st.dataframe(d, hide_index=True)
    st.subheader("Raw typed text received (cloud mode; counts only, the text is never stored)")
    st.dataframe(ct, hide_index=True)


@st.cache_resource
def _engine(url: str):
    return q.connect(url)


def _body(url: str) -> None:
    try:
        engine = _engine(url)
        q.check(engine)
        _pages(engine, url)
    except q.DashboardError as e:
        st.error(f"Database unavailable. {e}")


def _pages(engine, url: str) -> None:
    s = q.summary(engine)
    if s["rounds"] == 0:
        st.info(EMPTY_ROUNDS)
    elif s["round_running"]:
        st.caption("A round is running.")
    tabs = st.tabs(["Quality", "Rounds", "Bytes", "Privacy", "Devices"])
    with tabs[0]:
        _quality(engine)
    with tabs[1]:
        _rounds(engine)
    with tabs[2]:
        _bytes_tab(engine)
    with tabs[3]:
        _privacy(engine, url)
    with tabs[4]:
        _devices(engine)


def main() -> None:
    st.set_page_config(page_title="Sotto dashboard", layout="wide")
    url = q.default_url()
    st.title("Sotto: federated keyboard dashboard")
    st.caption(f"Database: {q.display_url(url)}")
    auto = st.sidebar.toggle(
        "Auto-refresh", value=False, help="re-read the database while rounds run"
    )
    every = st.sidebar.number_input("every (seconds)", 2, 300, 5) if auto else None
    # A fragment reruns on its own timer without reloading the page or the sidebar.
    st.fragment(run_every=every)(_body)(url)


main()
