"""`sotto` command line: parses arguments and calls library code, nothing else."""

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from model import paths

__all__ = ["main"]


def _pretrain(args: argparse.Namespace) -> None:
    from model import pipeline

    meta = pipeline.pretrain(
        Path(args.out),
        pipeline.data_config(args.preset),
        pipeline.model_config(args.preset),
        pipeline.pretrain_config(args.preset),
    )
    print(json.dumps({k: meta[k] for k in pipeline.SUMMARY_KEYS if k in meta}, indent=2))


def _centralize(args: argparse.Namespace) -> None:
    from model import pipeline

    meta = pipeline.centralize(
        Path(args.base),
        Path(args.out),
        pipeline.data_config(args.preset),
        pipeline.centralize_config(args.preset),
    )
    print(json.dumps({k: meta[k] for k in pipeline.SUMMARY_KEYS if k in meta}, indent=2))


def _export(args: argparse.Namespace) -> None:
    from model import device_part, export

    parts = {p.name: p for p in device_part.variants()}
    part = parts[args.device_part] if args.device_part else None
    info = export.export_checkpoint(
        Path(args.model), Path(args.out), part, int8=not args.float, with_train=not args.no_train
    )
    print(json.dumps(info, indent=2))


def _keyboard(args: argparse.Namespace) -> None:
    from keyboard import serve

    serve.serve(Path(args.data_dir), args.host, args.port, args.coordinator)


def _data(args: argparse.Namespace) -> None:
    from model import pipeline

    print(json.dumps(pipeline.data_report(pipeline.data_config(args.preset)), indent=2))


def _prompt(args: argparse.Namespace) -> None:
    from model import prompt

    prompt.run(Path(args.model), sys.stdin, sys.stdout)


def _demo(args: argparse.Namespace) -> None:
    from sotto import demo

    demo.run(
        Path(args.base),
        Path(args.data_dir),
        args.host,
        args.port,
        args.coordinator_port,
        args.dashboard_port,
        with_population=not args.no_population,
        with_dashboard=not args.no_dashboard,
        every_s=args.round_every,
    )


def _simulate(args: argparse.Namespace) -> None:
    from keyboard import population
    from keyboard.sim_clock import SpeedProfile

    base = population.PopulationConfig.tiny() if args.preset == "tiny" else None
    base = base or population.PopulationConfig.default()
    drop = dict(base.dropout)
    for item in args.dropout or []:
        stage, _, p = item.partition("=")
        drop[stage] = float(p)
    cfg = dataclasses.replace(
        base,
        devices=args.devices or base.devices,
        cohort_size=args.cohort or base.cohort_size,
        rounds=base.rounds if args.rounds is None else args.rounds,
        transport=args.transport,
        speed=SpeedProfile(args.stragglers, args.slowdown),
        dropout=drop,
        seed=args.seed,
        round_mode=args.mode,
        buffer_size=args.buffer_size or min(base.buffer_size, args.cohort or base.cohort_size),
    )
    reports = population.simulate(cfg, Path(args.data_dir), progress=True)
    print(population.format_reports(reports))


def _coordinator(args: argparse.Namespace) -> None:
    from coordinator import server
    from coordinator.config import CoordinatorConfig

    config = CoordinatorConfig(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        database_url=args.db_url,
        eval_targets=args.eval_targets,
        round_mode=args.round_mode,
        round_interval_s=args.round_interval,
        round_buffer_size=args.buffer_size,
    )
    server.serve(config)


def _round(args: argparse.Namespace) -> None:
    import json

    from coordinator import admin

    token = admin.read_token(Path(args.data_dir))
    act = admin.open_round if args.action == "open" else admin.status
    try:
        print(json.dumps(act(args.url, token), indent=2))
    except RuntimeError as e:
        raise ValueError(str(e)) from e


def _dashboard(args: argparse.Namespace) -> None:
    from dashboard import launch

    code = launch.run(args.db_url, args.host, args.port)
    if code:
        raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sotto", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    presets = ["default", "tiny"]

    s = sub.add_parser("pretrain", help="train the base model on public users only")
    s.add_argument("--out", default=str(paths.BASE_DIR), help="checkpoint directory")
    s.add_argument("--preset", choices=presets, default="default")
    s.set_defaults(func=_pretrain)

    s = sub.add_parser(
        "centralize", help="fine-tune the whole base on federated users' text (upper bound)"
    )
    s.add_argument("--base", default=str(paths.BASE_DIR))
    s.add_argument("--out", default=str(paths.CENTRALIZED_DIR))
    s.add_argument("--preset", choices=presets, default="default")
    s.set_defaults(func=_centralize)

    s = sub.add_parser("export", help="write a LiteRT model (infer + train) for a checkpoint")
    s.add_argument("--model", default=str(paths.BASE_DIR), help="checkpoint directory")
    s.add_argument("--out", default=str(paths.BASE_TFLITE), help="output .tflite path")
    s.add_argument(
        "--device-part",
        default=None,
        help="attach this device-part variant (default: the configured default)",
    )
    s.add_argument("--float", action="store_true", help="keep float32 weights (no int8)")
    s.add_argument("--no-train", action="store_true", help="only the infer signature")
    s.set_defaults(func=_export)

    s = sub.add_parser("keyboard", help="the demo keyboard: one phone with its web UI")
    s.add_argument("--data-dir", default=str(paths.RUNS / "phone"), help="this phone's data")
    s.add_argument("--host", default="127.0.0.1", help="listen address (loopback: the phone)")
    s.add_argument("--port", type=int, default=8600)
    s.add_argument("--coordinator", default=None, help="coordinator URL (default: offline)")
    s.set_defaults(func=_keyboard)

    s = sub.add_parser("data", help="users, words and OOV rate of every split")
    s.add_argument("--preset", choices=presets, default="default")
    s.set_defaults(func=_data)

    s = sub.add_parser("prompt", help="interactive next-word prompt on a checkpoint")
    s.add_argument("--model", default=str(paths.BASE_DIR))
    s.set_defaults(func=_prompt)

    s = sub.add_parser("demo", help="the main job: the coordinator and a phone's keyboard")
    s.add_argument("--base", default=str(paths.BASE_DIR))
    s.add_argument("--data-dir", default=str(paths.RUNS / "phone"), help="the phone's data")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8600, help="the keyboard's port")
    s.add_argument("--coordinator-port", type=int, default=8470)
    s.add_argument("--dashboard-port", type=int, default=8501)
    s.add_argument("--round-every", type=float, default=45.0, help="seconds between rounds")
    s.add_argument("--no-population", action="store_true", help="no simulated phones")
    s.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    s.set_defaults(func=_demo)

    s = sub.add_parser(
        "simulate", help="a simulated population (real device code) in federated rounds"
    )
    s.add_argument("--preset", choices=presets, default="default", help="sizes and data")
    s.add_argument("--devices", type=int, default=None, help="phones (one federated user each)")
    s.add_argument("--cohort", type=int, default=None, help="devices a round asks for")
    s.add_argument("--rounds", type=int, default=None)
    s.add_argument("--transport", choices=["http", "inprocess"], default="http")
    s.add_argument(
        "--mode", choices=["sync", "buffered"], default="sync",
        help="synchronous rounds, or buffered (FedBuff): a round per --buffer-size ready phones",
    )  # fmt: skip
    s.add_argument("--buffer-size", type=int, default=None, help="buffered: updates per round")
    s.add_argument("--stragglers", type=float, default=0.1, help="share of slow devices")
    s.add_argument("--slowdown", type=float, default=10.0, help="how much slower they train")
    s.add_argument(
        "--dropout", action="append", metavar="STAGE=P",
        help="dropout probability at a stage (advertise, share_keys, masked_input, ...)",
    )  # fmt: skip
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--data-dir", default=str(paths.RUNS / "simulate"), help="coordinator + phones' stores"
    )
    s.set_defaults(func=_simulate)

    s = sub.add_parser("coordinator", help="run the coordinator service (HTTP API + database)")
    s.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    s.add_argument("--port", type=int, default=8470)
    s.add_argument("--data-dir", default=str(paths.RUNS / "coordinator"), help="files + SQLite")
    s.add_argument(
        "--db-url", default=None, help="SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db"
    )
    s.add_argument(
        "--eval-targets", type=int, default=2000, help="server-side evaluation size (0 = skip)"
    )
    s.add_argument("--round-mode", choices=["sync", "buffered"], default="sync")
    s.add_argument(
        "--round-interval", type=float, default=0.0, help="sync: open a round every N s (0 = off)"
    )
    s.add_argument("--buffer-size", type=int, default=10, help="buffered: devices ready per round")
    s.set_defaults(func=_coordinator)

    s = sub.add_parser("round", help="operator: open a round now, or show round status")
    s.add_argument("action", choices=["open", "status"])
    s.add_argument("--url", default="http://127.0.0.1:8470", help="the coordinator's URL")
    s.add_argument(
        "--data-dir", default=str(paths.RUNS / "coordinator"), help="holds the operator token"
    )
    s.set_defaults(func=_round)

    s = sub.add_parser("dashboard", help="the Streamlit dashboard over the coordinator database")
    s.add_argument(
        "--db-url",
        default=None,
        help="SQLAlchemy URL (default: $SOTTO_DATABASE_URL, else the coordinator's SQLite file)",
    )
    s.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    s.add_argument("--port", type=int, default=8501)
    s.set_defaults(func=_dashboard)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("jax").setLevel(logging.WARNING)  # "no TPU backend" is not news on a laptop
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the privacy log already lists requests
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"sotto {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    except KeyboardInterrupt:
        raise SystemExit(130) from None
