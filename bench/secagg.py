"""bench/secagg: cost of a SecAgg+ round against a plain (unprotected) sum, same inputs, same run.

For N clients in {10, 100, 1000} and update lengths D in {100k, 1M}, with no dropouts and with
10% of the cohort dropping after ShareKeys plus 5% at Unmasking, one full round runs in process
(secagg.simulate: real keys, real shares, real masks; every client and the server do all their
work). Reported per row:
  client_ms              median over clients of one client's total work (all stages, encoding)
  mask_ms                median of the MaskedInput stage alone (encode + mask + pack)
  server_aggregate_ms    folding all masked inputs into the running sum (+ closing the stage)
  server_unmask_ms       Unmasking: reconstruct and verify secrets, remove masks, decode
  server_other_ms        AdvertiseKeys + ShareKeys + ConsistencyCheck on the server
  upload_bytes_per_client  all bytes one client sends in the round (median); dense float32 = 4 D
  plain_client_ms        plain round, per client: clip + serialise the float32 update
  plain_sum_ms           plain round, server: deserialise and sum the same survivors' updates
  overhead_ratio         (client_ms + all server ms) / (plain_client_ms + plain_sum_ms): a round's
                         critical path with devices working in parallel, protected vs plain
  server_overhead_ratio  (server_aggregate_ms + server_unmask_ms) / plain_sum_ms
  total_cpu_ratio        all clients' + server time / the plain round's (a one-machine simulation)
Anchor rows (degree 10, as the prototype in notes/secagg.md) are added for N = 1000, D = 1M.
Writes bench/results/secagg.json.

    ./dev bench secagg            # ~5 min on 2 cores
    ./dev bench secagg --quick    # N <= 100 only
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# This file is named like the package: make `import secagg` find the package, not this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402

import secagg  # noqa: E402
from secagg import SecAggConfig, encoding, graph, new_round, simulate  # noqa: E402
from secagg.errors import AbortError  # noqa: E402

OUT = _HERE / "results" / "secagg.json"


def _inputs(dim: int, n: int):
    base = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    base *= np.float32(0.5 / np.linalg.norm(base))  # a realistic update: norm below the clip

    def fn(u: int):
        return base * np.float32(1 + (u % 7) / 7), [u % 50, u % 90, 100 + u % 300]

    return fn


def _plain(dim: int, contributors, inputs, clip_norm: float) -> tuple[list[float], float]:
    """The same survivors' updates summed without protection: (client ms each, server ms)."""
    acc = np.zeros(dim, np.float32)
    client_ms, server_ms = [], 0.0
    for u in contributors:
        x, _ = inputs(u)
        t = time.perf_counter()
        payload = encoding.clip(x, clip_norm).tobytes()
        client_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        np.add(acc, np.frombuffer(payload, np.float32), out=acc)
        server_ms += (time.perf_counter() - t) * 1e3
    return client_ms, server_ms


def run_row(n: int, dim: int, dropout: tuple[float, float] | None, degree: int | None = None):
    cfg = SecAggConfig(max_cohort=max(n, 2), expected_dropout=0.15, degree=degree)
    params = new_round(cfg, f"bench-{n}-{dim}-{dropout}-{degree}", list(range(n)), dim)
    inputs = _inputs(dim, n)
    drops = simulate.Dropouts()
    if dropout:
        drops = simulate.Dropouts.fractions(params.cohort, np.random.default_rng(n), *dropout)
    row = {
        "N": n,
        "D": dim,
        "dropout": 0
        if not dropout
        else {"after_share_keys": dropout[0], "at_unmasking": dropout[1]},
        "degree": params.degree,
        "threshold": params.threshold,
        "field_bits": params.spec.width,
    }
    t0 = time.perf_counter()
    try:
        rep = simulate.run_round(params, inputs, drops, enrolment=simulate.enroll(params.cohort))
    except AbortError as e:
        row["aborted"] = str(e)
        return row
    wall = time.perf_counter() - t0
    res = rep.result
    assert np.array_equal(res.field_sum, rep.expected_field_sum.astype(res.field_sum.dtype))
    senders = [u for u in params.cohort if u in rep.mask_ms]
    plain_clients, plain_sum = _plain(dim, res.contributors, inputs, cfg.clip_norm)
    plain_client = statistics.median(plain_clients)
    client_ms = statistics.median(rep.client_ms[u] for u in senders)
    sm = rep.server_ms
    other = sm["advertise_keys"] + sm["share_keys"] + sm["consistency_check"]
    protected = client_ms + sm["masked_input"] + sm["unmasking"] + other
    upload = statistics.median(rep.upload_bytes[u] for u in senders)
    row.update(
        contributors=res.num_contributors,
        client_ms=round(client_ms, 2),
        mask_ms=round(statistics.median(rep.mask_ms.values()), 2),
        server_aggregate_ms=round(sm["masked_input"], 1),
        server_unmask_ms=round(sm["unmasking"], 1),
        server_other_ms=round(other, 1),
        upload_bytes_per_client=int(upload),
        masked_input_bytes=rep.masked_input_bytes,
        dense_float32_bytes=4 * dim,
        bytes_vs_dense=round(upload / (4 * dim), 4),
        plain_client_ms=round(plain_client, 3),
        plain_sum_ms=round(plain_sum, 1),
        overhead_ratio=round(protected / (plain_client + plain_sum), 2),
        server_overhead_ratio=round((sm["masked_input"] + sm["unmasking"]) / plain_sum, 2),
        total_cpu_ratio=round(
            (sum(rep.client_ms.values()) + sum(sm.values())) / (sum(plain_clients) + plain_sum), 2
        ),
        round_wall_s=round(wall, 1),
        exact=True,
    )
    return row


def abort_rate(
    n: int, degree: int, threshold: int, drop: tuple[float, float], trials: int
) -> float:
    """Monte Carlo: share of rounds where 10% + 5% random dropouts starve a neighbourhood."""
    rng = np.random.default_rng(1)
    ids = list(range(n))
    a, b = round(drop[0] * n), round(drop[1] * n)
    aborted = 0
    for i in range(trials):
        nb = graph.harary(ids, degree, i.to_bytes(8, "little"))
        gone = set(rng.permutation(n)[: a + b].tolist())
        aborted += any(sum(v not in gone for v in nb[u]) < threshold for u in ids)
    return aborted / trials


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="only N <= 100")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    ns = [10, 100] if args.quick else [10, 100, 1000]
    rows = []
    for n in ns:
        for dim in (100_000, 1_000_000):
            for dropout in (None, (0.10, 0.05)):
                rows.append(run_row(n, dim, dropout))
                _print(rows[-1])
    anchor = []
    if not args.quick:
        anchor.append(run_row(1000, 1_000_000, None, degree=10))
        _print(anchor[-1])
        for k in (10, 20, 30):
            t = k // 2 + 1
            anchor.append(
                {
                    "N": 1000,
                    "degree": k,
                    "threshold": t,
                    "abort_rate_at_10_plus_5_pct_dropout": abort_rate(1000, k, t, (0.1, 0.05), 200),
                }
            )
            print(
                f"  degree {k}, threshold {t}: abort rate at 10%+5% dropout "
                f"{anchor[-1]['abort_rate_at_10_plus_5_pct_dropout']:.3f} (200 random rounds)"
            )
    out = {
        "rows": rows,
        "anchor": anchor,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pycryptodome": __import__("Crypto").__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "command": "python bench/secagg.py" + (" --quick" if args.quick else ""),
        "notes": (
            "Degree/threshold derived from expected dropout 0.15 and abort probability 1e-2 "
            "(secagg.graph.choose_degree); threshold = strict majority. 8-bit values, field "
            "8 + ceil(log2 N) bits, packed at that width. Clients are timed one at a time on "
            "the same machine; overhead_ratio assumes devices work in parallel."
        ),
        "secagg_modules": secagg.__all__[:13],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def _print(r: dict) -> None:
    if "aborted" in r:
        print(f"N={r['N']:5d} D={r['D']:8d} degree={r['degree']}: ABORTED {r['aborted']}")
        return
    d = "0" if r["dropout"] == 0 else "10%+5%"
    print(
        f"N={r['N']:5d} D={r['D']:8d} drop={d:6s} k={r['degree']:3d} t={r['threshold']:3d} "
        f"w={r['field_bits']}  client {r['client_ms']:7.1f} ms (mask {r['mask_ms']:6.1f})  "
        f"agg {r['server_aggregate_ms']:8.1f}  unmask {r['server_unmask_ms']:8.1f}  "
        f"other {r['server_other_ms']:7.1f}  "
        f"plain {r['plain_client_ms']:.1f}+{r['plain_sum_ms']:.1f}"
        f"  overhead x{r['overhead_ratio']:.2f} (server x{r['server_overhead_ratio']:.2f})  "
        f"up {r['upload_bytes_per_client'] / r['D']:.3f} B/coord",
        flush=True,
    )


if __name__ == "__main__":
    main()
