"""Which FedAvg recipe moves the default device part: measured in plain JAX, without LiteRT.

`bench/federated` saw the first federated version gain 1.7 points of held-out top-1 and the
later ones lose it all. This bench runs the same FedAvg loop as the phones and coordinator in
JAX, without LiteRT or secure aggregation, so only the recipe differs. Each round samples a
cohort of federated users; each trains from the global device part with a fresh Adam (as the
phone's LiteRT `train` signature does) for `epochs` passes over its messages (batch 8 x 16
tokens); the deltas are clipped to norm `clip` and averaged, and the server applies the average
with its learning rate and momentum (FedAvgM, Hsu et al. 2019). Arms differ in client rate,
epochs, share of each user's text and server momentum.
Writes bench/results/client_optimizer.json: held-out top-1 per round for each arm. Found:
fresh-Adam phones move every rare-word row of the output layer by about the learning rate in
the same direction (mean cosine between phones' updates 0.98 on the output biases, 0.71 on the
embedding update, ~0 elsewhere), so their average is that push, not the users' signal, and
server momentum amplifies it; SGD phones' updates average out their noise, and FedAdam (Reddi
et al. 2021) at 3e-2 turns them into steady progress. Later arms (clip 2, eps 1e-3 as in the
coordinator) found progress bounded by the server's noise, not the phones: 10x the server rate
on the output biases, or per-step clipping with twice the phone rate, changed nothing at 30
rounds; 100 phones per round instead of 25 did better (19.76% against 19.34%); rounds of 10
updates (the buffered mode's K) need FedAdam at 1e-2, not 3e-2. A phone whose SGD diverges is
skipped, as the phone's encoder refuses a non-finite update.
"""

import argparse
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Arm:
    client_lr: float  # Adam rate on the phone (fresh state every round)
    epochs: int  # passes over the user's messages per round
    messages: int | None  # messages per user per round (None: all of them)
    server_momentum: float  # FedAvgM momentum on the averaged delta (server lr 1)
    clip: float = 10.0  # L2 clip of each delta (the coordinator's secagg clip)
    server_adam: float | None = None  # FedAdam (Reddi et al. 2021): server Adam at this rate
    client: str = "adam"  # "adam" (the phone's LiteRT graph) or "sgd"
    client_clip: float | None = None  # per-step gradient-norm clip on the phone (None: off)
    server_eps: float = 1e-8  # FedAdam's eps (the coordinator's is 1e-3)
    bias_lr: float | None = None  # FedAdam rate for the output-layer biases (None: server_adam)


ARMS = {
    # the setting of bench/federated so far: every message, 2 epochs at 3e-3, momentum 0.9
    "adam3e-3_e2_m0.9": Arm(3e-3, 2, None, 0.9),
    "adam3e-3_e2_m0": Arm(3e-3, 2, None, 0.0),
    "adam1e-2_e1_m0": Arm(1e-2, 1, None, 0.0),
    "adam3e-3_e1_fedadam1e-2": Arm(3e-3, 1, None, 0.0, server_adam=1e-2),
    "adam3e-3_e1_fedadam3e-2": Arm(3e-3, 1, None, 0.0, server_adam=3e-2),
    "sgd0.5_e1_fedadam1e-2": Arm(0.5, 1, None, 0.0, server_adam=1e-2, client="sgd"),
    "sgd0.5_e1_m0.9": Arm(0.5, 1, None, 0.9, client="sgd"),
    # SGD at rate 1 diverges (NaN after the first rounds): 0.5 is near the edge.
    "sgd1_e1_fedadam1e-2": Arm(1.0, 1, None, 0.0, server_adam=1e-2, client="sgd"),
    "sgd0.5_e1_fedadam3e-2": Arm(0.5, 1, None, 0.0, server_adam=3e-2, client="sgd"),
    "sgd0.3_e2_fedadam3e-2": Arm(0.3, 2, None, 0.0, server_adam=3e-2, client="sgd"),
    "sgd0.5_e1_fedadam1e-1": Arm(0.5, 1, None, 0.0, server_adam=1e-1, client="sgd"),
    # bench/federated's setting (clip 2), and with 10x the server rate on the output biases
    "sgd0.5_e1_fedadam3e-2_clip2": Arm(
        0.5, 1, None, 0.0, 2.0, server_adam=3e-2, client="sgd", server_eps=1e-3
    ),
    "sgd0.5_e1_fedadam1e-2_clip2": Arm(
        0.5, 1, None, 0.0, 2.0, server_adam=1e-2, client="sgd", server_eps=1e-3
    ),
    "sgd0.5_e1_fedadam1e-1_clip2": Arm(
        0.5, 1, None, 0.0, 2.0, server_adam=1e-1, client="sgd", server_eps=1e-3
    ),
    "sgd1_clip1_e1_fedadam3e-2": Arm(
        1.0, 1, None, 0.0, 2.0, server_adam=3e-2, client="sgd", server_eps=1e-3, client_clip=1.0
    ),
    "sgd1_clip1_e2_fedadam3e-2": Arm(
        1.0, 2, None, 0.0, 4.0, server_adam=3e-2, client="sgd", server_eps=1e-3, client_clip=1.0
    ),
    "sgd0.5_e1_fedadam3e-2_bias3e-1": Arm(
        0.5, 1, None, 0.0, 2.0, server_adam=3e-2, client="sgd", server_eps=1e-3, bias_lr=3e-1
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--cohort", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=2)
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
    logging.info("base top-1 %.4f", base_top1)
    setup = {k: v for k, v in vars(args).items() if k != "out"}
    report = {"setup": setup | {"base_top1": base_top1, "users": len(users)}, "arms": {}}
    for name in args.arms.split(","):
        arm = ARMS[name]
        opt = optax.adam(arm.client_lr) if arm.client == "adam" else optax.sgd(arm.client_lr)
        if arm.client_clip is not None:
            opt = optax.chain(optax.clip_by_global_norm(arm.client_clip), opt)
        server = optax.adam(arm.server_adam, eps=arm.server_eps) if arm.server_adam else None
        if server is not None and arm.bias_lr is not None:
            labels = {k: "bias" if k in ("head_bias", "head_out_bias") else "rest" for k in dev0}
            server = optax.multi_transform(
                {"bias": optax.adam(arm.bias_lr, eps=arm.server_eps), "rest": server}, labels
            )

        @jax.jit
        def step(tr, st, inputs, targets, opt=opt):
            g = jax.grad(loss)(tr, inputs, targets)
            up, st = opt.update(g, st, tr)
            return optax.apply_updates(tr, up), st

        rng = np.random.default_rng(1)
        dev, curve, t0 = dict(dev0), [], time.time()
        velocity = jax.tree.map(jnp.zeros_like, dev0)
        server_state = server.init(dev0) if server else None
        norms, skipped = [], 0
        for r in range(1, args.rounds + 1):
            deltas = []
            for u in rng.choice(len(users), args.cohort, replace=False):
                mine = fed[users[u]]
                if arm.messages is not None:
                    start = rng.integers(0, max(1, len(mine) - arm.messages))
                    mine = mine[start : start + arm.messages]
                tr, st = dict(dev), opt.init(dev)
                for _ in range(arm.epochs):
                    order = rng.permutation(len(mine))
                    packed = batching.pack([mine[i] for i in order], 16)
                    for b in batching.batches(packed, 8):
                        tr, st = step(tr, st, jnp.asarray(b.inputs), jnp.asarray(b.targets))
                d = jax.tree.map(lambda a, b: a - b, tr, dev)
                n = float(optax.tree.norm(d))
                if not np.isfinite(n):  # the phone's encoder refuses it: the phone drops out
                    skipped += 1
                    continue
                norms.append(n)
                scale = min(1.0, arm.clip / max(n, 1e-12))
                deltas.append(jax.tree.map(lambda x, s=scale: x * s, d))
            avg = jax.tree.map(lambda *xs: sum(xs) / len(xs), *deltas)
            if server is not None:  # the negated average delta is the pseudo-gradient
                up, server_state = server.update(jax.tree.map(jnp.negative, avg), server_state)
                dev = optax.apply_updates(dev, up)
            else:
                mom = arm.server_momentum
                velocity = jax.tree.map(lambda v, a, m=mom: m * v + a, velocity, avg)
                dev = jax.tree.map(lambda a, v: a + v, dev, velocity)
            if r % args.eval_every == 0 or r == args.rounds:
                curve.append({"round": r, "top1": evaluate(dev)})
                logging.info("%s round %d: top-1 %.4f (median delta norm %.2f, avg norm %.2f)",
                             name, r, curve[-1]["top1"], np.median(norms),
                             float(optax.tree.norm(avg)))  # fmt: skip
        report["arms"][name] = {
            "arm": dataclasses.asdict(arm),
            "curve": curve,
            "median_delta_norm": float(np.median(norms)),
            "diverged_phones": skipped,
            "seconds": time.time() - t0,
        }
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("| arm | " + " | ".join(f"round {c['round']}" for c in curve) + " |")
    print("|---|" + "---|" * len(curve))
    for name, a in report["arms"].items():
        print(f"| {name} | " + " | ".join(f"{100 * c['top1']:.2f}%" for c in a["curve"]) + " |")
    print(f"base: {100 * base_top1:.2f}%  (wrote {args.out})")


if __name__ == "__main__":
    main()
