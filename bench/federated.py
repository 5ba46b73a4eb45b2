"""Federated training of the default device part by a simulated population, on held-out users.

`./dev bench federated` -> bench/results/federated.json and a Markdown table.

Every federated run is a fresh coordinator (SQLite in a temporary directory) and the federated
chitchat users as simulated phones (`keyboard.population`): real sealed stores, LiteRT training,
the SecAgg+ client, synchronous rounds with dropouts and 10% stragglers on the simulated clock,
through the in-process transport (the same protocol code as HTTP, without sockets). After each
round the new global version is scored on held-out chitchat users (never trained on) with the
coordinator's own evaluation code (`coordinator.evaluation.evaluate`: the version's LiteRT file
run as a phone runs it), plus keystroke savings with the same LiteRT model. Runs:

- `base`: the shipped model (public text only); `centralized_device_part`: the same device part
  trained centrally on the federated users' text to convergence (`bench/device_part`'s
  checkpoint), both scored here on the same targets; `ngram`: the KN 3-gram on public +
  federated text, from `bench/results/quality.json` (all held-out targets, JAX evaluation).
- `federated_secagg`: SecAgg+ on, no DP; `federated_secagg_dp`: with the demo's central DP; the
  `dp_curve` adds two more noise levels (epsilon from the coordinator's RDP accountant).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator import evaluation  # noqa: E402
from keyboard import population as pop  # noqa: E402
from keyboard.device import read_device_part  # noqa: E402
from keyboard.runtime import DeviceModel  # noqa: E402
from model import litert_eval, metrics, paths, pipeline  # noqa: E402
from model.corpus import build_corpus  # noqa: E402
from model.device_part import DevicePart, trained_checkpoint  # noqa: E402
from secagg import dp  # noqa: E402
from secagg.config import DPConfig  # noqa: E402
from sotto.demo import DEMO_NOISE_MULTIPLIER  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "federated.json"
FULL_MODEL_PARAMS = 1_431_950  # the whole network (README "Model"): a dense float32 update
DELTA = 1e-5  # DP delta (< 1 / 822 federated users)


def sim_config(args: argparse.Namespace) -> pop.PopulationConfig:
    return pop.PopulationConfig(
        devices=args.devices,
        cohort_size=args.cohort,
        rounds=args.rounds,
        typing_rounds=max(1, args.rounds // 2),
        transport="inprocess",
        local_epochs=args.local_epochs,
        lr=args.lr,
        seed=args.seed,
        poll_s=0.05,
    )


def evaluate(model: bytes, part: dict, vocab, messages, targets: int, ks_words: int) -> dict:
    """Top-1/top-3 (the coordinator's evaluation) and keystroke savings of one version."""
    out = evaluation.evaluate(model, part, vocab, messages, targets)
    ctx, tgt = litert_eval.windows(messages, evaluation.CONTEXT_LEN, ks_words)
    dm = DeviceModel(model, vocab, part, context_len=evaluation.CONTEXT_LEN)
    saved = needed = 0
    for w, t in zip(ctx, tgt, strict=True):
        s, n = metrics.keystrokes_with(
            vocab.tokens[t], int(t), lambda p, w=w: dm.infer_window(w[None, :], dm.allowed(p))[0]
        )
        saved, needed = saved + s, needed + n
    return {**out, "keystroke_savings": saved / max(needed, 1), "keystroke_words": len(tgt)}


def centralized_part(ckpt: Path | None) -> dict | None:
    from model import checkpoint, partition

    if ckpt is None or not pipeline.has_checkpoint(ckpt):
        return None
    cfg, params, _ = checkpoint.load(ckpt)
    _, part = partition.split(params, cfg)
    return {k: np.asarray(v, np.float32) for k, v in part.items()}


def federated_run(
    name: str, cfg: pop.PopulationConfig, dpc: DPConfig | None, users, vocab, held, args
) -> dict:
    print(f"\n== {name}: {cfg.devices} devices, cohort {cfg.cohort_size}, {cfg.rounds} rounds"
          f"{'' if dpc is None else f', DP z={dpc.noise_multiplier}'}", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix=f"sotto-fed-{name}-", dir=args.work_dir))
    t0 = time.monotonic()
    try:
        ccfg = pop.coordinator_config(
            cfg, work / "coordinator", dp=dpc, eval_targets=0, server_learning_rate=args.server_lr
        )
        sa = dataclasses.replace(ccfg.secagg, clip_norm=args.clip, value_bits=args.value_bits)
        ccfg = dataclasses.replace(ccfg, secagg=sa, server_momentum=args.server_momentum)
        per_round = []
        with pop.running_population(cfg, work, ccfg, users=users) as (p, _):
            reg = p.coord.registry

            def on_round(r: pop.RoundReport) -> None:
                row = r.to_json()
                if r.version is not None:
                    row["heldout"] = evaluate(
                        reg.model_bytes(r.version), reg.device_part(r.version), vocab, held,
                        args.eval_targets, args.ks_words,
                    )  # fmt: skip
                    v = reg.get(r.version).metrics
                    row["fed_top1"] = v.get("fed_top1")
                    row["dp_epsilon"] = v.get("dp_epsilon")
                    h = row["heldout"]
                    print(
                        f"  round {r.round_id}: v{r.version} contributors {r.contributors} "
                        f"top-1 {h['top1']:.2%} top-3 {h['top3']:.2%} "
                        f"sim {r.sim_time:.0f}s wall {r.wall_seconds:.0f}s",
                        flush=True,
                    )
                per_round.append(row)

            p.run(progress=False, on_round=on_round)
            last = reg.current()
            final = evaluate(
                reg.model_bytes(last.id), reg.device_part(last.id), vocab, held,
                args.final_targets, args.ks_words,
            )  # fmt: skip
            eps = last.metrics.get("dp_epsilon")
        done = [r for r in per_round if r["status"] == "done"]
        return {
            "final": {**final, "version": last.id, "dp_epsilon": eps},
            "rounds": per_round,
            "rounds_done": len(done),
            "contributors_mean": float(np.mean([r["contributors"] for r in done])) if done else 0,
            "upload_bytes_per_device_round": float(np.mean([r["upload_bytes"] for r in done]))
            if done
            else None,
            "masked_input_bytes": float(np.mean([r["masked_bytes"] for r in done]))
            if done
            else None,
            "sim_minutes": per_round[-1]["sim_time"] / 60 if per_round else 0,
            "wall_minutes": (time.monotonic() - t0) / 60,
            "dp": None if dpc is None else dataclasses.asdict(dpc),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(res: dict) -> str:
    f = res["final"]
    rows = [
        "| run | top-1 | top-3 | keystroke savings | share of centralised gain | note |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("base", "ngram", "centralized_device_part", "federated_secagg",
                 "federated_secagg_dp"):  # fmt: skip
        if name not in f:
            continue
        r = f[name]
        g = res["gain_recovered"].get(name)
        ks = r.get("keystroke_savings")
        rows.append(
            f"| {name} | {r['top1']:.2%} | {r['top3']:.2%} | "
            f"{'' if ks is None else f'{ks:.2%}'} | {'' if g is None else f'{g:.0%}'} | "
            f"{r.get('note', '')} |"
        )
    rows += ["", f"| DP noise z | epsilon (delta {DELTA:.0e}) | top-1 |", "|---|---|---|"]
    for d in res["dp_curve"]:
        rows.append(f"| {d['noise_multiplier']} | {d['epsilon']:.3g} | {d['top1']:.2%} |")
    rows.append(f"\nupload per device per round: {res['upload_bytes_per_device_round']:,.0f} B, "
                f"dense float32 full model {res['dense_float32_bytes']:,} B: "
                f"{res['upload_compression_ratio']:.1f}x smaller")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=400)
    ap.add_argument("--cohort", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument("--server-momentum", type=float, default=0.9)
    ap.add_argument("--clip", type=float, default=10.0, help="L2 clip (median update norm ~6)")
    ap.add_argument("--value-bits", type=int, default=12, help="bits per quantised coordinate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-targets", type=int, default=3_000, help="held-out targets per round")
    ap.add_argument("--final-targets", type=int, default=10_000)
    ap.add_argument("--ks-words", type=int, default=500, help="keystroke-savings words")
    ap.add_argument("--dp-curve", default="0.1,0.3", help="noise levels besides the demo's")
    ap.add_argument("--reference", type=Path, default=None, help="centralised device part ckpt")
    ap.add_argument(
        "--work-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the temporary runs live (tmpfs: the sealed stores fsync every message)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.monotonic()

    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    vocab, held = corpus.vocab, corpus.tokens["heldout"]
    users = pop.federated_users("default")
    cfg = sim_config(args)
    base_model = paths.BASE_TFLITE.read_bytes()
    base_part = read_device_part(paths.BASE_TFLITE.with_suffix(".device.npz").read_bytes())

    final: dict = {}
    final["base"] = evaluate(base_model, base_part, vocab, held, args.final_targets, args.ks_words)
    print(f"base: {final['base']}", flush=True)
    quality = json.loads((OUT.parent / "quality.json").read_text())["chitchat_heldout"]
    final["ngram"] = {
        **{k: quality["ngram"][k] for k in ("top1", "top3", "keystroke_savings")},
        "targets": quality["ngram"]["words"],
        "note": "bench/results/quality.json: all held-out targets, keystroke savings on 20k words",
    }
    ref = args.reference or trained_checkpoint(DevicePart.default())
    cpart = centralized_part(ref)
    if cpart is not None:
        final["centralized_device_part"] = evaluate(
            base_model, cpart, vocab, held, args.final_targets, args.ks_words
        )
        final["centralized_device_part"]["note"] = f"converged checkpoint {Path(ref).name}"
    else:
        conv = json.loads((OUT.parent / "device_part.json").read_text())["converged"]
        final["centralized_device_part"] = {
            "top1": conv["device_part"]["top1"], "top3": conv["device_part"]["top3"],
            "note": "bench/results/device_part.json (checkpoint not found: JAX, all targets)",
        }  # fmt: skip
    print(f"centralized_device_part: {final['centralized_device_part']}", flush=True)

    q = cfg.cohort_size * (1 + cfg.overselect) / min(cfg.devices, len(users))
    runs: dict = {}
    levels = [DEMO_NOISE_MULTIPLIER] + [float(z) for z in args.dp_curve.split(",") if z]
    plan = [("federated_secagg", None)] + [
        ("federated_secagg_dp" if z == DEMO_NOISE_MULTIPLIER else f"federated_secagg_dp_z{z}",
         DPConfig(noise_multiplier=z, delta=DELTA, sampling_probability=min(1.0, q),
                  epsilon_limit=1e12))
        for z in levels
    ]  # fmt: skip
    for name, dpc in plan:
        runs[name] = federated_run(name, cfg, dpc, users, vocab, held, args)
        final[name] = runs[name]["final"]

    base1 = final["base"]["top1"]
    cgain = final["centralized_device_part"]["top1"] - base1
    gain = {
        k: (final[k]["top1"] - base1) / cgain if cgain else None
        for k in ("ngram", "federated_secagg", "federated_secagg_dp")
        if k in final
    }
    gain["centralized_device_part"] = 1.0
    dense = FULL_MODEL_PARAMS * 4
    up = runs["federated_secagg"]["upload_bytes_per_device_round"]
    rounds_for_eps = cfg.rounds
    curve = []
    for name, dpc in plan[1:]:
        eps = runs[name]["final"]["dp_epsilon"]
        if eps is None:  # no round released anything: what the plan would have cost
            eps = dp.epsilon(dpc.noise_multiplier, dpc.sampling_probability, rounds_for_eps, DELTA)
        curve.append(
            {"run": name, "noise_multiplier": dpc.noise_multiplier, "epsilon": eps,
             "delta": DELTA, "top1": runs[name]["final"]["top1"],
             "top3": runs[name]["final"]["top3"], "rounds": runs[name]["rounds_done"],
             "demo": dpc.noise_multiplier == DEMO_NOISE_MULTIPLIER}
        )  # fmt: skip
    curve.sort(key=lambda d: d["noise_multiplier"])
    res = {
        "setup": {
            "population": dataclasses.asdict(cfg),
            "clip_norm": args.clip,
            "server_learning_rate": args.server_lr,
            "server_momentum": args.server_momentum,
            "value_bits": args.value_bits,
            "heldout_targets_final": args.final_targets,
            "heldout_targets_per_round": args.eval_targets,
            "keystroke_words": args.ks_words,
            "transport": "in-process (same device and protocol code as HTTP)",
        },
        "final": final,
        "gain_recovered": gain,
        "gain_target": 0.9,
        "upload_bytes_per_device_round": up,
        "masked_input_bytes": runs["federated_secagg"]["masked_input_bytes"],
        "dense_float32_bytes": dense,
        "upload_compression_ratio": dense / up if up else None,
        "dp_curve": curve,
        "straggler_speedup_buffered_vs_sync": None,
        "straggler_speedup_reason": (
            "buffered (FedBuff) rounds are being added to the coordinator on another branch and"
            " were not available to the simulator; the simulated clock and speed profile are"
            " ready for them (keyboard/sim_clock.py)"
        ),
        "runs": runs,
        "seconds": time.monotonic() - t0,
    }
    args.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print("\n" + table(res))
    print(f"\nwrote {args.out} in {res['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
