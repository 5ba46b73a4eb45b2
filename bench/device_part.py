"""bench/device_part: which part of the model should phones train?

From the pretrained base, fine-tune each device-part variant (and, for reference, the whole
model) centrally on the federated users' text for the same number of steps, at each learning
rate of a small grid; keep each variant's best rate by public-validation perplexity; report
held-out top-1/top-3/perplexity, update size, peak training memory and `gain_recovered` (the
share of the full fine-tune's top-1 gain over the base). Writes bench/results/device_part.json.

    ./dev bench device_part                 # ~45 min on 2 cores; finished runs are cached
    ./dev bench device_part --steps 200     # a quick look
"""

import argparse
import json
import logging
from pathlib import Path

import jax

from model import batching, checkpoint, device_part, partition, paths, pipeline, train
from model.config import DevicePart
from model.corpus import build_corpus

OUT = Path(__file__).resolve().parent / "results" / "device_part.json"
CACHE = paths.RUNS / "device_part"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=800, help="training steps per run (batch 64)")
    p.add_argument("--lrs", default="1e-2,3e-2", help="peak learning rates tried per variant")
    p.add_argument("--full-lrs", default="3e-3,1e-2", help="peak learning rates for the full model")
    p.add_argument(
        "--budget-kb",
        type=int,
        default=2237,
        help="FTTE variant's budget in KiB of weights + grads + Adam state (2237 = 10%% of params)",
    )
    p.add_argument(
        "--converge-steps",
        type=int,
        default=3240,
        help="the default part trained this long (as long as `sotto centralize`, 8 epochs) is\n"
        "compared with the converged full fine-tune (runs/centralized); 0 = skip",
    )
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)

    cfg0, base_params, _ = checkpoint.load(paths.BASE_DIR)
    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    fed, valid, held = (corpus.tokens[r] for r in ("federated", "public_valid", "heldout"))
    mem_batch = next(batching.batches(batching.pack(fed[:2000], 32), 64))
    score_batches = list(batching.batches(batching.pack(corpus.tokens["public_train"], 32), 64))[:8]
    parts: list[DevicePart | None] = [None, *device_part.variants()]
    parts.append(
        device_part.budget_part(
            cfg0, base_params, score_batches, args.budget_kb * 1024, jax.random.key(7)
        )
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = {}
    for part in parts:
        name = part.name if part else "full"
        lrs = [float(x) for x in (args.full_lrs if part is None else args.lrs).split(",")]
        best = None
        for lr in lrs:
            cache = CACHE / f"{name}_lr{lr:g}_s{args.steps}.json"
            if cache.exists():
                run = json.loads(cache.read_text())
            else:
                cfg, params, v = device_part.finetune(
                    cfg0, base_params, part, fed, valid, args.steps, lr, jax.random.key(11)
                )
                run = {"lr": lr, "valid": v}
                if best is None or v["perplexity"] < best[0]["valid"]["perplexity"]:
                    q = train.evaluate(cfg, params, held)
                    # the best so far of this variant: kept for bench/personalization
                    checkpoint.save(CACHE / "ckpt" / name, cfg, params, {"kind": name, "lr": lr})
                    _, dev = partition.split(params, cfg)
                    run.update(
                        held=q,
                        params=partition.count(dev) if part else partition.count(params),
                        peak_mem_bytes=device_part.train_memory_bytes(
                            cfg, params, "device" if part else "full", mem_batch
                        ),
                        groups=list(part.groups) if part else ["all"],
                    )
                cache.write_text(json.dumps(run, indent=2))
            logging.info("%s lr %g: valid ppl %.1f", name, lr, run["valid"]["perplexity"])
            if "held" in run and (
                best is None or run["valid"]["perplexity"] < best[0]["valid"]["perplexity"]
            ):
                best = (run, lr)
        rows[name] = best[0]
    base_q = train.evaluate(cfg0, base_params, held)
    full = rows.pop("full")
    gain = full["held"]["top1"] - base_q["top1"]
    total = partition.count(base_params)

    def shape(name, run):
        return {
            "name": name,
            "groups": run["groups"],
            "params": run["params"],
            "params_share": run["params"] / total,
            "update_bytes": 4 * run["params"],
            "peak_mem_bytes": run["peak_mem_bytes"],
            "lr": run["lr"],
            "top1": run["held"]["top1"],
            "top3": run["held"]["top3"],
            "perplexity": run["held"]["perplexity"],
            "gain_recovered": (run["held"]["top1"] - base_q["top1"]) / gain if gain > 0 else None,
        }

    report = {
        "steps": args.steps,
        "batch": 64,
        "trained_on": "federated",
        "evaluated_on": "heldout",
        "selection": "learning rate by public-validation perplexity",
        "variants": [shape(n, r) for n, r in rows.items()],
        "full": shape("full", full),
        "base": {"params": total, **{k: base_q[k] for k in ("top1", "top3", "perplexity")}},
    }
    if args.converge_steps and pipeline.has_checkpoint(paths.CENTRALIZED_DIR):
        report["converged"] = converged(args, cfg0, base_params, fed, valid, held, base_q, rows)
    report["full"]["peak_mem_ratio"] = 1.0
    for v in report["variants"]:
        v["peak_mem_ratio"] = v["peak_mem_bytes"] / full["peak_mem_bytes"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| variant | params (share) | update | peak mem vs full | lr | top-1 | top-3 | ppl | "
        "gain recovered |\n|---|---|---|---|---|---|---|---|---|"
    )
    for v in [*report["variants"], report["full"]]:
        gr = v["gain_recovered"]
        print(
            f"| {v['name']} | {v['params']:,} ({100 * v['params_share']:.1f}%) | "
            f"{v['update_bytes'] / 1024:.0f} KiB | {100 * v['peak_mem_ratio']:.0f}% | "
            f"{v['lr']:g} | {100 * v['top1']:.2f}% | {100 * v['top3']:.2f}% | "
            f"{v['perplexity']:.1f} | {'-' if gr is None else f'{100 * gr:.0f}%'} |"
        )
    print(f"base: top-1 {100 * base_q['top1']:.2f}%  ppl {base_q['perplexity']:.1f}")
    if "converged" in report:
        c = report["converged"]
        print(
            f"converged ({c['steps']} steps): {c['device_part']['name']} top-1 "
            f"{100 * c['device_part']['top1']:.2f}% vs full {100 * c['full']['top1']:.2f}%: "
            f"{100 * c['gain_recovered']:.0f}% of the gain"
        )
    print(f"wrote {args.out}")


def converged(args, cfg0, base_params, fed, valid, held, base_q, rows) -> dict:
    """The default part trained as long as the centralised run, against that run."""
    part = DevicePart.default()
    lr = rows[part.name]["lr"]
    cache = CACHE / f"converged_{part.name}_lr{lr:g}_s{args.converge_steps}.json"
    if cache.exists():
        run = json.loads(cache.read_text())
    else:
        cfg, params, v = device_part.finetune(
            cfg0, base_params, part, fed, valid, args.converge_steps, lr, jax.random.key(11)
        )
        checkpoint.save(CACHE / "ckpt" / f"converged_{part.name}", cfg, params, {"lr": lr})
        run = {"lr": lr, "valid": v, "held": train.evaluate(cfg, params, held)}
        cache.write_text(json.dumps(run, indent=2))
    cfg_c, params_c, _ = checkpoint.load(paths.CENTRALIZED_DIR)
    full_q = train.evaluate(cfg_c, params_c, held)
    keys = ("top1", "top3", "perplexity")
    return {
        "steps": args.converge_steps,
        "device_part": {"name": part.name, "lr": lr, **{k: run["held"][k] for k in keys}},
        "full": {"name": "centralized (sotto centralize)", **{k: full_q[k] for k in keys}},
        "gain_recovered": (run["held"]["top1"] - base_q["top1"])
        / (full_q["top1"] - base_q["top1"]),
    }


if __name__ == "__main__":
    main()
