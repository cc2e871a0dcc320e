"""`make demo`: simulate the demo world, run the nightly pipeline on its last day, say where
everything is."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from flows.cli import run_command


def _mia(*arguments: str) -> None:
    from flows.cli import app

    code = run_command(lambda: app(list(arguments), standalone_mode=True))
    if code != 0:
        sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Simulate (unless the world is already there), run one night, print the outputs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--subscribers", type=int, default=20000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--start", default="2026-01-01")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    last_day = dt.date.fromisoformat(args.start) + dt.timedelta(days=args.days - 1)
    incoming = args.data_dir / "incoming" / f"date={last_day.isoformat()}"
    if incoming.is_dir():
        print(f"demo world already simulated in {args.data_dir}/incoming (reusing it)")
    else:
        print(f"simulating {args.subscribers:,} subscribers x {args.days} days ...", flush=True)
        _mia(
            "simulate",
            "--data-dir", str(args.data_dir),
            "--subscribers", str(args.subscribers),
            "--days", str(args.days),
            "--start", args.start,
            "--seed", str(args.seed),
            # an interrupted simulation of the demo world is simulated again, never a delivery
            *(["--force"] if (args.data_dir / "truth" / "meta.json").exists() else []),
        )  # fmt: skip
    print(f"running the nightly pipeline for {last_day} ...", flush=True)
    _mia("nightly", "--data-dir", str(args.data_dir), "--date", last_day.isoformat())
    root = args.data_dir
    print(
        f"""
Demo finished in {time.perf_counter() - started:.0f} s. Where things are:
  ranked offers   {root}/offers/date={last_day}/offers.parquet
                  mia offers show --data-dir {root} --date {last_day} --subscriber <id>
  audiences       {root}/audiences/date={last_day}/  (one CSV per offer + summary.csv)
                  mia audience list --data-dir {root} --date {last_day}
  report          {root}/reports/date={last_day}/report.md
  manifest        {root}/offers/date={last_day}/manifest.json
  MLflow UI       .venv/bin/mlflow ui --backend-store-uri sqlite:///{root}/mlruns/mlflow.db
"""
    )


if __name__ == "__main__":
    main()
