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
from keyboard import sim_clock  # noqa: E402
from keyboard.device import read_device_part  # noqa: E402
from keyboard.runtime import DeviceModel  # noqa: E402
from model import litert_eval, metrics, paths, pipeline  # noqa: E402
from model.corpus import build_corpus  # noqa: E402
from model.device_part import DevicePart, trained_checkpoint  # noqa: E402
from secagg import dp  # noqa: E402
from secagg.config import DPConfig  # noqa: E402
from sotto.demo import DEMO_NOISE_MULTIPLIER  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "federated.json"
CACHE = paths.RUNS / "federated"
FULL_MODEL_PARAMS = 1_431_950  # the whole network (README "Model"): a dense float32 update
DELTA = 1e-5  # DP delta (< 1 / 822 federated users)


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


def train_reference(steps: int, out: Path | None = None) -> Path:
    """The centralised upper bound: the default device part fine-tuned centrally on every
    federated user's text (the text the simulated phones hold), as long as the centralised
    full-model run; saved where `bench/device_part` keeps its converged checkpoint."""
    import jax

    from model import checkpoint, device_part

    part = DevicePart.default()
    cfg0, base, _ = checkpoint.load(paths.BASE_DIR)
    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    cfg, params, _ = device_part.finetune(
        cfg0, base, part, corpus.tokens["federated"], corpus.tokens["public_valid"], steps,
        part.peak_lr, jax.random.key(11),
    )  # fmt: skip
    out = out or paths.RUNS / "device_part" / "ckpt" / f"converged_{part.name}"
    checkpoint.save(out, cfg, params, {"lr": part.peak_lr, "steps": steps})
    return out


@dataclasses.dataclass(frozen=True)
class Run:
    """One federated run of the plan."""

    rounds: int
    noise: float | None = None  # DP noise multiplier z (None: no DP)
    upload_fraction: float = 1.0  # random-mask share of coordinates uploaded
    value_bits: int = 12  # bits per quantised coordinate
    straggler_share: float = 0.1
    mode: str = "sync"  # or "buffered"
    server_lr: float | None = None  # FedAdam rate (None: --server-lr)


def plan(args: argparse.Namespace) -> dict[str, Run]:
    """Every run `bench/federated` makes, by name."""
    r, rd = args.rounds, args.dp_rounds
    runs = {
        "federated_secagg": Run(r),
        "federated_secagg_compressed": Run(r, upload_fraction=args.upload_fraction,
                                           value_bits=args.compressed_bits),
        "federated_secagg_dp": Run(rd, noise=DEMO_NOISE_MULTIPLIER),
        "sync_stragglers90": Run(args.straggler_rounds, straggler_share=0.9),
        "buffered_stragglers90": Run(
            args.straggler_rounds * args.cohort // args.buffer_size, straggler_share=0.9,
            mode="buffered", server_lr=args.buffered_server_lr,
        ),
    }  # fmt: skip
    for z in (float(x) for x in args.dp_curve.split(",") if x):
        runs[f"federated_secagg_dp_z{z:g}"] = Run(rd, noise=z)
    return runs


def population_for(run: Run, args: argparse.Namespace) -> pop.PopulationConfig:
    sync_deadline = args.straggler_deadline if run.straggler_share > 0.5 else 4.0
    return pop.PopulationConfig(
        devices=args.devices,
        cohort_size=args.cohort,
        rounds=run.rounds,
        typing_rounds=1,  # every user's text is on the phone from the start, and a phone
        min_new_words=0,  # trains on all of it whenever it is picked (as bench/client_optimizer)
        transport="inprocess",
        speed=sim_clock.SpeedProfile(straggler_share=run.straggler_share),
        # A buffered round's members have finished training when it opens; a synchronous one
        # must wait for its cohort's training (stragglers included) before MaskedInput.
        masked_deadline_s=4.0 if run.mode == "buffered" else sync_deadline,
        round_mode=run.mode,
        buffer_size=args.buffer_size,
        local_epochs=args.local_epochs,
        lr=args.lr,
        seed=args.seed,
        poll_s=0.05,
    )


def federated_run(name: str, run: Run, users, vocab, held, args) -> dict:
    cfg = population_for(run, args)
    q = cfg.cohort_size * (1 + cfg.overselect) / min(cfg.devices, len(users))
    dpc = None
    if run.noise is not None:
        dpc = DPConfig(noise_multiplier=run.noise, delta=DELTA,
                       sampling_probability=min(1.0, q), epsilon_limit=1e12)  # fmt: skip
    print(f"\n== {name}: {run}", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"sotto-fed-{name}-", dir=args.work_dir))
    t0 = time.monotonic()
    try:
        ccfg = pop.coordinator_config(
            cfg, work / "coordinator", dp=dpc, eval_targets=0,
            server_optimizer=args.server_optimizer,
            server_learning_rate=run.server_lr or args.server_lr,
            server_momentum=args.server_momentum, upload_fraction=run.upload_fraction,
        )  # fmt: skip
        # Rotation (randomised Hadamard, as in Kairouz et al. 2021) bounds each coordinate by
        # 4 sigma instead of the clip norm, so quantisation noise stays far below FedAdam's
        # eps; without it, 12-bit rounding noise on the ~10^5 coordinates no phone moved was
        # turned into steps in random directions and the model got worse round after round.
        sa = dataclasses.replace(
            ccfg.secagg, clip_norm=args.clip, value_bits=run.value_bits, rotate=True
        )
        ccfg = dataclasses.replace(ccfg, secagg=sa)
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
            "run": dataclasses.asdict(run),
            "population": dataclasses.asdict(cfg),
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


def time_to_target(rounds: list[dict], target: float) -> float | None:
    """Simulated seconds until held-out top-1 first reaches `target` in two evaluations in a
    row (one noisy evaluation does not count)."""
    scored = [r for r in rounds if r.get("heldout")]
    for a, b in zip(scored, scored[1:], strict=False):
        if a["heldout"]["top1"] >= target and b["heldout"]["top1"] >= target:
            return a["sim_time"]
    return None


def table(res: dict) -> str:
    f = res["final"]
    rows = [
        "| run | top-1 | top-3 | keystroke savings | share of centralised gain | note |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("base", "ngram", "centralized_device_part", "centralized_same_budget",
                 "federated_secagg",
                 "federated_secagg_compressed", "federated_secagg_dp"):  # fmt: skip
        r = f[name]
        g = res["gain_recovered"].get(name)
        ks = r.get("keystroke_savings")
        rows.append(
            f"| {name} | {r['top1']:.2%} | {r['top3']:.2%} | "
            f"{'' if ks is None else f'{ks:.2%}'} | {'' if g is None else f'{g:.0%}'} | "
            f"{r.get('note', '')} |"
        )
    head = (f"| DP noise z | epsilon (delta {DELTA:.0e}) | rounds | top-1 | top-1, per-round "
            f"targets | no DP, same round and targets |")  # fmt: skip
    rows += ["", head, "|---|---|---|---|---|---|"]
    for d in res["dp_curve"]:
        same, last = d["no_dp_top1_same_round"], d["top1_last_round"]
        rows.append(f"| {d['noise_multiplier']} | {d['epsilon']:.3g} | {d['rounds']} | "
                    f"{d['top1']:.2%} | {'' if last is None else f'{last:.2%}'} | "
                    f"{'' if same is None else f'{same:.2%}'} |")  # fmt: skip
    t = res["straggler_sim_seconds_to_target"]
    sp = res["straggler_speedup_buffered_vs_sync"]
    mem = res["device_peak_memory"]
    full = res["upload_bytes_per_device_round_uncompressed"]
    rows += [
        "",
        f"upload per device per round: {res['upload_bytes_per_device_round']:,.0f} B compressed "
        f"({res['upload_compression_ratio']:.1f}x smaller than a dense float32 full-model update"
        f" of {res['dense_float32_bytes']:,} B), {full:,.0f} B uncompressed "
        f"({res['upload_compression_ratio_uncompressed']:.1f}x)",
        f"90% stragglers, simulated seconds to top-1 {res['straggler_target_top1']}: sync "
        f"{t['sync']}, buffered {t['buffered']}: speedup {'n/a' if sp is None else f'{sp:.1f}x'}"
        f"; updates aggregated per simulated hour: {res['straggler_updates_per_sim_hour']}",
        f"device training peak memory: device part {mem['device_part']:,} B, full model "
        f"{mem['full_model']:,} B ({1 - mem['reduction']:.0%} of the full model's)",
    ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=822, help="simulated phones (822 = all)")
    ap.add_argument("--cohort", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dp-rounds", type=int, default=6, help="rounds of each DP run")
    ap.add_argument("--straggler-rounds", type=int, default=12, help="sync rounds, 90%% slow")
    ap.add_argument(
        "--straggler-deadline",
        type=float,
        default=10.0,
        help="simulated s a sync round waits for masked inputs with 90%% stragglers",
    )
    ap.add_argument("--buffer-size", type=int, default=10, help="buffered rounds' K")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.5, help="phones' SGD rate")
    ap.add_argument("--server-optimizer", default="adam")
    ap.add_argument("--server-lr", type=float, default=3e-2)
    ap.add_argument(
        "--buffered-server-lr",
        type=float,
        default=1e-2,
        help="FedAdam rate of buffered rounds (K updates each, fewer than a cohort: noisier)",
    )
    ap.add_argument("--server-momentum", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=2.0, help="L2 clip (median SGD update ~1)")
    ap.add_argument(
        "--upload-fraction",
        type=float,
        default=0.24,
        help="compressed run (0.24: 32,115 coordinates, padded to 2^15 for rotation)",
    )
    ap.add_argument("--compressed-bits", type=int, default=8, help="compressed run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-targets", type=int, default=3_000, help="held-out targets per round")
    ap.add_argument("--final-targets", type=int, default=10_000)
    ap.add_argument("--ks-words", type=int, default=300, help="keystroke-savings words")
    ap.add_argument("--dp-curve", default="0.1,0.3", help="noise levels besides the demo's")
    ap.add_argument(
        "--reference-steps",
        type=int,
        default=3240,
        help="steps of the centralised reference (the centralised full run's)",
    )
    ap.add_argument("--reference", type=Path, default=None, help="centralised checkpoint to use")
    ap.add_argument("--only", default="", help="compute only these runs, then stop")
    ap.add_argument("--runs", default="all", help="comma-separated run names to (re)compute")
    ap.add_argument(
        "--work-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the temporary runs live (tmpfs: the sealed stores fsync)",
    )
    ap.add_argument("--cache-dir", type=Path, default=CACHE, help="finished runs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()  # fmt: skip
    t0 = time.monotonic()

    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    vocab, held = corpus.vocab, corpus.tokens["heldout"]
    users = pop.federated_users("default")
    base_model = paths.BASE_TFLITE.read_bytes()
    base_part = read_device_part(paths.BASE_TFLITE.with_suffix(".device.npz").read_bytes())
    args.cache_dir.mkdir(parents=True, exist_ok=True)

    def cached(name: str, compute) -> dict:
        """A finished run from runs/federated (resumable, and two processes can share the
        plan); `--runs` names the ones to compute again."""
        path = args.cache_dir / f"{name}.json"
        if path.exists() and name not in args.runs.split(","):
            return json.loads(path.read_text())
        out = compute()
        path.write_text(json.dumps(out, default=float) + "\n")
        return out

    if args.only:  # a share of the plan (e.g. one process per core); assemble later
        for name, run in plan(args).items():
            if name in args.only.split(","):
                cached(name, lambda n=name, r=run: federated_run(n, r, users, vocab, held, args))
        return

    final: dict = {}
    final["base"] = cached("base", lambda: evaluate(
        base_model, base_part, vocab, held, args.final_targets, args.ks_words))  # fmt: skip
    per_round_base = cached("base_per_round", lambda: evaluate(
        base_model, base_part, vocab, held, args.eval_targets, 0))  # fmt: skip
    quality = json.loads((OUT.parent / "quality.json").read_text())["chitchat_heldout"]
    final["ngram"] = {
        **{k: quality["ngram"][k] for k in ("top1", "top3", "keystroke_savings")},
        "targets": quality["ngram"]["words"],
        "note": "bench/results/quality.json: all held-out targets, keystroke savings on 20k words",
    }
    ref = args.reference or trained_checkpoint(DevicePart.default())
    if ref is None or not (args.reference or ref.name.startswith("converged_")):
        ref = train_reference(args.reference_steps)
    final["centralized_device_part"] = {
        **cached("centralized_device_part", lambda: evaluate(
            base_model, centralized_part(ref), vocab, held, args.final_targets, args.ks_words)),
        "note": f"the same device part trained centrally on all federated users' text "
                f"({args.reference_steps} steps of 64 x 32 tokens)",
    }  # fmt: skip
    print(f"base {final['base']['top1']:.2%}, centralised device part "
          f"{final['centralized_device_part']['top1']:.2%}", flush=True)  # fmt: skip

    runs = {
        name: cached(name, lambda n=name, r=run: federated_run(n, r, users, vocab, held, args))
        for name, run in plan(args).items()
    }
    for name in ("federated_secagg", "federated_secagg_compressed", "federated_secagg_dp"):
        final[name] = runs[name]["final"]

    # A second, data-matched reference: the same device part trained centrally on as many
    # tokens as the phones of `federated_secagg` trained on in all (one pass per contribution).
    fed_tokens = corpus.tokens["federated"]
    per_user = sum(len(m) for m in fed_tokens) / len(users)
    contributions = sum(r["contributors"] for r in runs["federated_secagg"]["rounds"]
                        if r["status"] == "done")  # fmt: skip
    matched_steps = max(1, round(contributions * per_user / (64 * 32)))
    final["centralized_same_budget"] = {
        **cached("centralized_same_budget", lambda: evaluate(
            base_model, centralized_part(train_reference(
                matched_steps, paths.RUNS / "federated" / "ckpt_same_budget")),
            vocab, held, args.final_targets, args.ks_words) | {"steps": matched_steps}),
        "note": f"the same device part trained centrally on as many tokens as the federated "
                f"phones trained on ({contributions} contributions, {matched_steps} steps)",
    }  # fmt: skip

    base1 = final["base"]["top1"]
    cgain = final["centralized_device_part"]["top1"] - base1
    gain = {k: (final[k]["top1"] - base1) / cgain for k in final if cgain}
    mgain = final["centralized_same_budget"]["top1"] - base1
    gain_matched = {k: (final[k]["top1"] - base1) / mgain for k in final if mgain > 0}
    dense = FULL_MODEL_PARAMS * 4
    up = runs["federated_secagg_compressed"]["upload_bytes_per_device_round"]
    up_full = runs["federated_secagg"]["upload_bytes_per_device_round"]
    curve = []
    for name, r in runs.items():
        if r["run"]["noise"] is None:
            continue
        d = r["dp"]
        eps = r["final"]["dp_epsilon"]
        if eps is None:  # no round released anything: what the plan would have cost
            eps = dp.epsilon(d["noise_multiplier"], d["sampling_probability"], r["run"]["rounds"],
                             DELTA)  # fmt: skip
        no_dp = next((x for x in runs["federated_secagg"]["rounds"]
                      if x["round_id"] == r["run"]["rounds"]), None)  # fmt: skip
        curve.append(
            {"run": name, "noise_multiplier": d["noise_multiplier"], "epsilon": eps,
             "delta": DELTA, "top1": r["final"]["top1"], "top3": r["final"]["top3"],
             # on the per-round targets, like `no_dp_top1_same_round`
             "top1_last_round": next((x["heldout"]["top1"] for x in reversed(r["rounds"])
                                      if x.get("heldout")), None),
             "rounds": r["rounds_done"], "demo": d["noise_multiplier"] == DEMO_NOISE_MULTIPLIER,
             "no_dp_top1_same_round": no_dp and no_dp["heldout"]["top1"]}
        )  # fmt: skip
    curve.sort(key=lambda d: d["noise_multiplier"])

    # Stragglers: time to a target both modes can reach, half of the synchronous run's gain
    # over the base on the per-round targets.
    sync, buf = runs["sync_stragglers90"], runs["buffered_stragglers90"]
    best_sync = max(x["heldout"]["top1"] for x in sync["rounds"] if x.get("heldout"))
    target = per_round_base["top1"] + 0.5 * (best_sync - per_round_base["top1"])
    t_sync, t_buf = time_to_target(sync["rounds"], target), time_to_target(buf["rounds"], target)
    speedup = t_sync / t_buf if t_sync and t_buf else None
    if best_sync - per_round_base["top1"] < 0.002:  # no gain to reach: a target means nothing
        target, t_sync, t_buf, speedup = None, None, None, None

    def updates_per_sim_hour(r: dict) -> float:
        """Updates aggregated into released versions per simulated hour."""
        done = [x for x in r["rounds"] if x["status"] == "done"]
        return 3600 * sum(x["contributors"] for x in done) / max(r["rounds"][-1]["sim_time"], 1)

    throughput = {"sync": updates_per_sim_hour(sync), "buffered": updates_per_sim_hour(buf)}

    litert = json.loads((OUT.parent / "litert.json").read_text())
    mem = {m["name"]: m["train_peak_bytes"] for m in litert["train_peak_mem"]}
    part_name = DevicePart.default().name
    res = {
        "setup": {
            "devices": args.devices,
            "cohort": args.cohort,
            "clip_norm": args.clip,
            "phone_optimizer": f"sgd lr {args.lr}, {args.local_epochs} epoch(s) per round",
            "server_optimizer": f"{args.server_optimizer} lr {args.server_lr}",
            "heldout_targets_final": args.final_targets,
            "heldout_targets_per_round": args.eval_targets,
            "keystroke_words": args.ks_words,
            "transport": "in-process (same device and protocol code as HTTP)",
            "plan": {k: dataclasses.asdict(v) for k, v in plan(args).items()},
        },
        "final": final,
        "gain_recovered": gain,
        "gain_target": 0.9,
        "gain_recovered_vs_same_budget": gain_matched,
        "upload_bytes_per_device_round": up,
        "upload_bytes_per_device_round_uncompressed": up_full,
        "dense_float32_bytes": dense,
        "upload_compression_ratio": dense / up if up else None,
        "upload_compression_ratio_uncompressed": dense / up_full if up_full else None,
        "dp_curve": curve,
        "straggler_target_top1": target,
        "straggler_base_top1": per_round_base["top1"],
        "straggler_sim_seconds_to_target": {"sync": t_sync, "buffered": t_buf},
        "straggler_speedup_buffered_vs_sync": speedup,
        "straggler_updates_per_sim_hour": throughput,
        "straggler_throughput_ratio_buffered_vs_sync": throughput["buffered"]
        / max(throughput["sync"], 1e-9),
        "device_peak_memory": {
            "source": "bench/results/litert.json (LiteRT train signature, fresh process)",
            "device_part": mem.get(part_name),
            "full_model": mem.get("full"),
            "reduction": 1 - mem[part_name] / mem["full"] if part_name in mem else None,
        },
        "runs": runs,
        "seconds": time.monotonic() - t0,
    }
    args.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print("\n" + table(res))
    print(f"\nwrote {args.out} in {res['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
