"""bench/litert: the on-device model file: size, speed, int8 accuracy, parity, training memory.

The global model (the default device part, fine-tuned centrally by bench/device_part if that
has run, else the pretrained base with a zero-update device part) is exported to LiteRT as
float32 and as int8 (base baked in: dynamic range for `infer`, weight-only for `train`), both
with `infer` and `train`. All figures come from the LiteRT runtime on one thread; times are
medians over many calls.
Writes bench/results/litert.json.

    ./dev bench litert          # ~5 min
"""

import argparse
import json
import logging
import platform
from pathlib import Path

import jax
import numpy as np

from keyboard import memprobe
from keyboard.runtime import DeviceModel
from model import checkpoint, device_part, export, litert_eval, network, partition, paths, pipeline
from model.config import DevicePart
from model.corpus import build_corpus

OUT = Path(__file__).resolve().parent / "results" / "litert.json"
SCRATCH = paths.RUNS / "litert"


def global_model() -> tuple:
    part = DevicePart.default()
    trained = device_part.trained_checkpoint(part)
    if trained is not None:
        cfg, params, _ = checkpoint.load(trained)
        return cfg, params, f"{part.name} fine-tuned centrally ({trained.name}, bench/device_part)"
    cfg0, base, _ = checkpoint.load(paths.BASE_DIR)
    cfg = cfg0.with_device_part(part)
    return cfg, network.attach_device_part(base, cfg, jax.random.key(0)), "base, zero update"


def memory_rows(base_cfg, base_params) -> list[dict]:
    """LiteRT training memory of each device-part variant against training everything."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    rows = []
    for part in [*device_part.variants(), DevicePart.full()]:
        cfg = base_cfg.with_device_part(part)
        params = network.attach_device_part(base_params, cfg, jax.random.key(0))
        full = part.name == "full"
        # Full training keeps every weight in float32: nothing is frozen to quantise.
        flat = export.export(cfg, params, int8=not full)
        path = SCRATCH / f"{part.name}.tflite"
        path.write_bytes(flat)
        peak = [memprobe.train_peak_bytes(path) for _ in range(3)]
        rows.append(
            {
                "name": part.name,
                "device_params": partition.count(partition.split(params, cfg)[1]),
                "file_bytes": len(flat),
                "train_peak_bytes": int(np.median(peak)),
            }
        )
        logging.info("%s: %s", part.name, rows[-1])
    full_peak = rows[-1]["train_peak_bytes"]
    for r in rows:
        r["ratio_vs_full"] = r["train_peak_bytes"] / full_peak
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--targets", type=int, default=20_000, help="held-out targets for accuracy")
    p.add_argument("--calls", type=int, default=2_000, help="timed infer calls per model")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)

    cfg, params, source = global_model()
    spec = export.ExportSpec()
    flat_f = export.export(cfg, params, spec, int8=False)
    flat_q = export.export(cfg, params, spec, int8=True)
    infer_only_q = export.export(cfg, params, spec, int8=True, with_train=False)
    _, device = partition.split(params, cfg)
    device = {k: np.asarray(v, np.float32) for k, v in device.items()}
    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    held = corpus.tokens["heldout"]
    ctx, tgt = litert_eval.windows(held, spec.context_len, args.targets)

    def model(flat):
        return DeviceModel(flat, corpus.vocab, device, spec.context_len, num_threads=1)

    acc_f = litert_eval.runtime_accuracy(model(flat_f), ctx, tgt)
    acc_q = litert_eval.runtime_accuracy(model(flat_q), ctx, tgt)
    parity = litert_eval.infer_parity(model(flat_f), cfg, params, ctx[:500])
    parity_q = litert_eval.infer_parity(model(flat_q), cfg, params, ctx[:500])
    batches = litert_eval.train_batches(held, spec.train_batch, spec.train_len, 20)
    chain = litert_eval.train_chain_parity(model(flat_f), cfg, params, batches, 1e-2)
    chain_q = litert_eval.train_chain_parity(model(flat_q), cfg, params, batches, 1e-2)
    # federated rounds take SGD steps (rate 0.5), so check that path through int8 too
    chain_q_sgd = litert_eval.train_chain_parity(model(flat_q), cfg, params, batches, 0.5, "sgd")

    windows = [(w[None, :],) for w in ctx[: args.calls]]
    t_inf_q = litert_eval.time_calls(model(flat_q).infer_window, windows, args.calls)
    t_inf_f = litert_eval.time_calls(model(flat_f).infer_window, windows, args.calls)
    tr_q, tr_f = model(flat_q), model(flat_f)
    t_tr_q = litert_eval.time_calls(
        lambda b: tr_q.train_step(*b, 1e-3), [(b,) for b in batches], 200
    )
    t_tr_f = litert_eval.time_calls(
        lambda b: tr_f.train_step(*b, 1e-3), [(b,) for b in batches], 200
    )

    base_cfg, base_params, _ = checkpoint.load(paths.BASE_DIR)
    mem = memory_rows(base_cfg, base_params)
    default_mem = next(r for r in mem if r["name"] == DevicePart.default().name)

    report = {
        "model": source,
        "device_part": DevicePart.default().name,
        "device_params": partition.count(device),
        "float_size_bytes": len(flat_f),
        "int8_size_bytes": len(flat_q),
        "int8_infer_only_size_bytes": len(infer_only_q),
        "infer_p50_ms": float(np.median(t_inf_q)),
        "infer_p95_ms": float(np.percentile(t_inf_q, 95)),
        "float_infer_p50_ms": float(np.median(t_inf_f)),
        "train_step_p50_ms": float(np.median(t_tr_q)),
        "float_train_step_p50_ms": float(np.median(t_tr_f)),
        "train_batch": [spec.train_batch, spec.train_len],
        "threads": 1,
        "float_top1": acc_f["top1"],
        "float_top3": acc_f["top3"],
        "int8_top1": acc_q["top1"],
        "int8_top3": acc_q["top3"],
        "int8_top1_delta": 100 * (acc_q["top1"] - acc_f["top1"]),
        "int8_top3_delta": 100 * (acc_q["top3"] - acc_f["top3"]),
        "accuracy_targets": acc_f["targets"],
        "accuracy_note": "held-out chitchat users, 16-word context window, every target counts",
        "parity_logits_max_abs_diff": parity["max_abs_diff"],
        "parity_top3_agreement": parity["top3_agreement"],
        "int8_parity_logits_max_abs_diff": parity_q["max_abs_diff"],
        "int8_parity_top3_agreement": parity_q["top3_agreement"],
        "parity_train_chain_max_param_diff": chain["max_param_diff"],
        "parity_train_chain_losses": [chain["loss_litert"], chain["loss_jax"]],
        "int8_train_chain_max_param_diff": chain_q["max_param_diff"],
        "int8_sgd_train_chain_max_param_diff": chain_q_sgd["max_param_diff"],
        "train_peak_mem_ratio": default_mem["ratio_vs_full"],
        "train_peak_mem": mem,
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "command": "./dev bench litert",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    print(f"model: {source}; device part {report['device_part']} ({report['device_params']:,})")
    print("| figure | value | anchor |\n|---|---|---|")
    rows = [
        ("int8 file (infer + train)", f"{len(flat_q) / 1e6:.2f} MB", "Gboard 1.4 MB; aim 1.6"),
        ("int8 file (infer only)", f"{len(infer_only_q) / 1e6:.2f} MB", ""),
        ("float32 file (infer + train)", f"{len(flat_f) / 1e6:.2f} MB", ""),
        (
            "infer p50 / p95 (int8)",
            f"{report['infer_p50_ms']:.3f} / {report['infer_p95_ms']:.3f} ms",
            "aim < 0.5 ms; 20 ms budget",
        ),
        ("train step p50 (int8, batch 8x16)", f"{report['train_step_p50_ms']:.2f} ms", ""),
        (
            "int8 - float top-1 / top-3",
            f"{report['int8_top1_delta']:+.2f} / {report['int8_top3_delta']:+.2f} points",
            "within 0.5",
        ),
        ("float LiteRT vs JAX: max |score diff|", f"{parity['max_abs_diff']:.2e}", ""),
        ("20 chained train steps: max |param diff|", f"{chain['max_param_diff']:.2e}", ""),
        (
            "train memory, default part vs full",
            f"{100 * report['train_peak_mem_ratio']:.0f}%",
            "FTTE -80%; aim <= 20%",
        ),
    ]
    for name, value, anchor in rows:
        print(f"| {name} | {value} | {anchor} |")
    print("\n| device part | params | LiteRT train peak | vs full |\n|---|---|---|---|")
    for r in mem:
        print(
            f"| {r['name']} | {r['device_params']:,} | {r['train_peak_bytes'] / 2**20:.1f} MiB | "
            f"{100 * r['ratio_vs_full']:.0f}% |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
