"""Why federated rounds lose accuracy: the phone's optimiser, measured in plain JAX FedAvg.

`bench/federated` found that averaging real phones' updates makes the default device part
worse than the base. Phones run a few Adam steps from a fresh state each round, which move
every coordinate by about the learning rate whatever its gradient (sign-like steps, noise
included). This bench runs the same FedAvg loop in JAX, without LiteRT or secure aggregation,
so only the client optimiser differs: each round samples a cohort of federated users, each
trains one epoch on up to `--messages` of its own messages (batch 8 x 16 tokens, like the
phone), the deltas are clipped to norm 1 and averaged, and the server adds the average.
Writes bench/results/client_optimizer.json: held-out top-1 per round for each arm.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# bench/ holds a file named like the `keyboard` package; never import from this folder.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from model import batching, checkpoint, data, network, partition, paths, pipeline, train  # noqa: E402
from model.config import DevicePart  # noqa: E402
from model.vocab import build_vocabulary  # noqa: E402

OUT = Path(__file__).parent / "results" / "client_optimizer.json"
ARMS = {  # name -> client optimiser (fresh state every round, as on the phone)
    "adam_1e-3": lambda: optax.adam(1e-3),
    "adam_1e-4": lambda: optax.adam(1e-4),
    "sgd_0.3": lambda: optax.sgd(0.3),
    "sgd_1.0": lambda: optax.sgd(1.0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--cohort", type=int, default=25)
    p.add_argument("--messages", type=int, default=40, help="messages per user per round")
    p.add_argument("--eval-messages", type=int, default=3000)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    cfg0, base, _ = checkpoint.load(paths.BASE_DIR)
    cfg = cfg0.with_device_part(DevicePart.default())
    params = network.attach_device_part(base, cfg, jax.random.key(0))
    frozen, dev0 = partition.split(params, cfg)
    vocab = build_vocabulary()
    splits = data.load_chitchat(pipeline.data_config("default"))
    fed = {u: data.tokenise({u: m}, vocab) for u, m in splits["federated"].items()}
    held = data.tokenise(splits["heldout"], vocab)
    held = [held[i] for i in np.random.default_rng(0).permutation(len(held))[: args.eval_messages]]
    users = sorted(fed)
    model = network.SplitLM(cfg)

    def loss(tr, inputs, targets):
        logits = model.apply({"params": {**frozen, **tr}}, inputs)
        total, n = train.loss_and_counts(logits, targets)
        return total / jnp.maximum(n, 1.0)

    def evaluate(dev):
        return train.evaluate(cfg, {**frozen, **dev}, held)["top1"]

    base_top1 = evaluate(dev0)
    setup = {k: v for k, v in vars(args).items() if k != "out"}
    report = {"setup": setup | {"base_top1": base_top1, "users": len(users)}, "arms": {}}
    for arm in args.arms.split(","):
        opt = ARMS[arm]()

        @jax.jit
        def step(tr, st, inputs, targets, opt=opt):
            g = jax.grad(loss)(tr, inputs, targets)
            up, st = opt.update(g, st, tr)
            return optax.apply_updates(tr, up), st

        rng = np.random.default_rng(1)
        dev, curve, t0 = dict(dev0), [], time.time()
        for r in range(1, args.rounds + 1):
            deltas = []
            for u in rng.choice(len(users), args.cohort, replace=False):
                msgs = fed[users[u]]
                start = rng.integers(0, max(1, len(msgs) - args.messages))
                mine = msgs[start : start + args.messages]
                tr, st = dict(dev), opt.init(dev)
                for b in batching.batches(batching.pack(mine, 16), 8):
                    tr, st = step(tr, st, jnp.asarray(b.inputs), jnp.asarray(b.targets))
                d = jax.tree.map(lambda a, b: a - b, tr, dev)
                scale = min(1.0, 1.0 / max(float(optax.tree.norm(d)), 1e-12))  # clip to norm 1
                deltas.append(jax.tree.map(lambda x, s=scale: x * s, d))
            avg = jax.tree.map(lambda *xs: sum(xs) / len(xs), *deltas)
            dev = jax.tree.map(lambda a, b: a + b, dev, avg)
            if r % 5 == 0 or r == args.rounds:
                curve.append({"round": r, "top1": evaluate(dev)})
                logging.info("%s round %d: top-1 %.4f", arm, r, curve[-1]["top1"])
        report["arms"][arm] = {"curve": curve, "seconds": time.time() - t0}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| client optimiser | " + " | ".join(f"round {c['round']}" for c in curve) + " |")
    print("|---|" + "---|" * len(curve))
    for arm, a in report["arms"].items():
        print(f"| {arm} | " + " | ".join(f"{100 * c['top1']:.2f}%" for c in a["curve"]) + " |")
    print(f"base: {100 * base_top1:.2f}%  (wrote {args.out})")


if __name__ == "__main__":
    main()
