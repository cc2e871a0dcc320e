"""The `mia` command line: one subcommand per pipeline operation.

Exit codes: 0 success, 1 a run failed, 2 bad input or usage. Progress goes to stderr; results
(tables, paths) go to stdout so they can be piped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from mia.errors import InputError
from mia.lake import Lake, parse_date, run_lock
from mia.progress import PROGRESS_LOGGER, StepProgress
from mia.settings import Settings, load_settings
from mia.text import printable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Piped progress: a line for each new part of a step, else at most one per this many seconds.
PLAIN_PROGRESS_SECONDS = 10.0

app = typer.Typer(
    name="mia",
    help=(
        "Mia: the nightly next-best-offer pipeline. Typical use: `mia simulate` a world (or drop "
        "real files into data/incoming/date=YYYY-MM-DD/), then `mia nightly --date YYYY-MM-DD`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
offers_app = typer.Typer(help="Inspect the ranked offers of a night.", no_args_is_help=True)
audience_app = typer.Typer(help="List and export audience CSVs.", no_args_is_help=True)
app.add_typer(offers_app, name="offers")
app.add_typer(audience_app, name="audience")

# Messages and tables carry text from data (offer ids, cells): never read as markup or emoji.
out = Console(markup=False, highlight=False, emoji=False)
err = Console(stderr=True, markup=False, highlight=False, emoji=False)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data root (default: data/, or MIA_DATA_DIR). Its models are kept in "
        "DATA/mlruns/ unless mlflow_uri and mlflow_artifacts are set.",
        show_default=False,
    ),
]
DateOption = Annotated[str, typer.Option("--date", help="Run date, YYYY-MM-DD.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Settings file (default: ./mia.toml if present).")
]
DaskOption = Annotated[
    str | None,
    typer.Option(
        "--dask",
        help="Address of a Dask scheduler: shard tasks run there, and categories with at least "
        "dask_train_rows training rows train there with lightgbm.dask.",
    ),
]


def _settings(data_dir: Path | None, config: Path | None = None, **overrides: Any) -> Settings:
    return load_settings(config_file=config, data_dir=data_dir, **overrides)


def _date(value: str, name: str = "--date") -> dt.date:
    try:
        return parse_date(value)
    except ValueError as error:
        raise InputError(f"{name} == {value!r}, must be a date as YYYY-MM-DD.") from error


class _ProgressDisplay(logging.Handler):
    """Progress reports (`mia.progress`) on stderr: rich bars, else plain lines with the time."""

    def __init__(self, bars: Progress | None) -> None:
        super().__init__(level=logging.INFO)
        self.bars = bars
        self.tasks: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}
        self.printed: dict[str, tuple[float, str]] = {}  # per step: when, and the part then
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Show a progress record (reports arrive from any thread)."""
        progress = getattr(record, "progress", None)
        if isinstance(progress, StepProgress):
            self.show(progress)

    def show(self, progress: StepProgress) -> None:
        """Show how far `progress.step` is."""
        with self.guard:
            now = time.monotonic()
            if progress.done == 0 or progress.step not in self.started:
                self.started[progress.step] = now  # a step that starts (again)
            elapsed = now - self.started[progress.step]
            if self.bars is not None:
                self._update_bar(progress)
            elif self._line_due(progress, now):
                _say(_progress_line(progress, elapsed), err)  # one line, never wrapped

    def _update_bar(self, progress: StepProgress) -> None:
        label = f"{progress.step}: {progress.item}" if progress.item else progress.step
        label = escape(printable(label))  # item names come from data (categories)
        if progress.step not in self.tasks:
            self.tasks[progress.step] = self.bars.add_task(label, total=progress.total)
        elif progress.done == 0:  # the step starts again: so does its clock
            self.bars.reset(self.tasks[progress.step])
        self.bars.update(
            self.tasks[progress.step],
            description=label,
            completed=progress.done,
            total=progress.total,
        )

    def _line_due(self, progress: StepProgress, now: float) -> bool:
        """A line for a new part, the end, or every PLAIN_PROGRESS_SECONDS in between."""
        last = self.printed.get(progress.step)
        due = (
            last is None
            or progress.done >= progress.total
            or progress.item != last[1]
            or now - last[0] >= PLAIN_PROGRESS_SECONDS
        )
        if due:
            self.printed[progress.step] = (now, progress.item)
        return due


def _progress_line(progress: StepProgress, elapsed: float) -> str:
    if progress.item and progress.done < progress.total:
        where = f"{progress.item} ({progress.done + 1} of {progress.total})"
    else:
        where = f"{progress.done} of {progress.total} done"
    return f"{progress.step}: {where}, {_duration(elapsed)} elapsed"


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minute:02d}m{second:02d}s"
    return f"{minute}m{second:02d}s" if minute else f"{second}s"


@contextmanager
def _progress(description: str = "") -> Iterator[Callable[[int, int], None]]:
    """Show the progress reports of long steps while the block runs: rich bars on a terminal
    (or with MIA_PROGRESS=1), plain lines when piped. Yields `advance(done, total)`, which
    reports progress of `description`."""
    reports = logging.getLogger(PROGRESS_LOGGER)
    bars = err.is_terminal or os.environ.get("MIA_PROGRESS") == "1"
    with (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        if bars
        else nullcontext()
    ) as progress:
        display = _ProgressDisplay(progress)
        propagate, level = reports.propagate, reports.level
        reports.addHandler(display)
        reports.propagate = False  # shown here, not again by the log handlers
        reports.setLevel(logging.INFO)
        try:
            yield lambda done, total: display.show(StepProgress(description, done, total))
        finally:
            reports.removeHandler(display)
            reports.propagate, reports.level = propagate, level


def _say(message: str, console: Console = out, label: str = "", style: str = "") -> None:
    """Print a message as plain text: control characters escaped, lines never wrapped.

    Messages quote data (offer ids, cells): markup in them is shown, never applied, and a long
    line is left to the terminal, never re-wrapped (rich wraps in quadratic time).
    """
    text = Text(label, style=style)
    text.append(printable(message, keep_newlines=True))
    console.print(text, soft_wrap=True)


def _print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """A rich table on a terminal; tab-separated lines with a header when piped.

    Every row has the columns of the first row, in its order (missing values are empty)."""
    if not rows:
        _say(f"{title}: nothing to show.")
        return
    columns = list(rows[0])
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    if not out.is_terminal:
        print("\t".join(_cell(column) for column in columns))
        for line in cells:
            print("\t".join(line))
        return
    table = Table(title=Text(printable(title)))
    for column in columns:
        table.add_column(Text(_cell(column)))
    for line in cells:
        table.add_row(*(Text(cell) for cell in line))
    out.print(table)


def _cell(value: Any) -> str:
    """A table cell: floats to 4 decimals, None empty, control characters escaped."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else printable(str(value))


@app.command()
def simulate(
    data_dir: DataDirOption = None,
    subscribers: Annotated[int, typer.Option(min=10, help="Number of subscribers.")] = 20000,
    days: Annotated[int, typer.Option(min=1, help="Number of days to generate.")] = 120,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2026-01-01",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same world.")] = 7,
    preset: Annotated[
        str,
        typer.Option(
            help="Kind of world: telco (behaviour drives acceptance), taste-heavy (latent "
            "tastes dominate, seen only through responses), cold-start (many new lines, "
            "late offers) or organic (engaged subscribers buy on their own: real organic "
            "demand for uplift to find)."
        ),
    ] = "telco",
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite deliveries already in DATA/incoming/.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Write a synthetic telco world into DATA/incoming/ (one folder per day)."""
    from mia.simulate import SimulationConfig, write_world

    settings = _settings(data_dir, config)
    if file_format not in ("parquet", "csv"):
        raise InputError(f"--format == {file_format!r}, must be parquet or csv.")
    simulation = SimulationConfig(
        subscribers=subscribers,
        days=days,
        start=_date(start, "--start"),
        seed=seed,
        control_share=settings.control_share,
        group_salt=settings.group_salt,
        preset=preset,
    )
    with (
        run_lock(settings.data_dir, owner="simulate"),
        _progress(f"simulating {subscribers:,} subscribers x {days} days") as advance,
    ):
        dates = write_world(
            settings.data_dir,
            simulation,
            file_format=file_format,
            progress=advance,
            overwrite=force,
        )
    _say(
        f"wrote {len(dates)} days ({dates[0]} .. {dates[-1]}) to "
        f"{Lake(settings.data_dir).root / 'incoming'}"
    )


@app.command()
def ingest(
    date: Annotated[
        str | None, typer.Option("--date", help="Day to ingest (default: every day found).")
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Folder with the day's files (default: DATA/incoming/date=D)."),
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Validate a day's input files against the contract and store them under DATA/raw/."""
    from mia.ingest import ingest_day

    settings = _settings(data_dir, config)
    lake = Lake(settings.data_dir)
    if date is None:
        if source is not None:
            raise InputError("--from needs --date: name the day the files belong to.")
        dates = lake.dates("incoming")
        if not dates:
            raise InputError(f"no day folders found in {lake.root / 'incoming'}.")
    else:
        dates = [_date(date)]
    with (
        run_lock(lake.root, owner=f"ingest {dates[0]}..{dates[-1]}"),
        _progress(f"ingesting {len(dates)} day(s)") as advance,
    ):
        for done, day in enumerate(dates, start=1):
            counts = ingest_day(lake, day, source, settings)
            advance(done, len(dates))
    if len(dates) == 1:
        _print_table(f"ingested {dates[0]}", [{"table": t, "rows": n} for t, n in counts.items()])
    else:
        _say(f"ingested {len(dates)} days ({dates[0]} .. {dates[-1]}) into {lake.root / 'raw'}")


@app.command()
def doctor(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Before a first night: say, table by table, what Mia will use, ignore and refuse in the
    data root (days in incoming/ checked with the ingest rules; ingested days from their
    manifests). Writes nothing. Exit 0 when a night can run, 2 when something would be refused."""
    from mia.doctor import diagnose

    settings = _settings(data_dir, config)
    diagnosis = diagnose(settings.data_dir, settings)
    checked, ingested = diagnosis.checked_days, diagnosis.ingested_days
    _say(
        f"data root {diagnosis.root}: {len(checked)} delivered day(s) in incoming/ not ingested "
        f"yet (checked now), {len(ingested)} day(s) already ingested."
    )
    _print_table(
        "tables",
        [
            {
                "table": report.table,
                "contract": report.role,
                "verdict": report.verdict,
                "days": len(report.days),
                "rows": report.rows,
            }
            for report in diagnosis.tables
        ],
    )
    used = [report for report in diagnosis.tables if report.days]
    _say("\nMia will use:")
    for report in used:
        _say(f"  {report.table}: delivered on {len(report.days)} day(s), {report.rows:,} rows")
        for note in report.notes:
            _say(f"    {note}")
    if not used:
        _say("  nothing yet")
    ignored = list(diagnosis.ignored_files)
    for report in diagnosis.tables:
        if report.ignored_columns:
            names = ", ".join(report.ignored_columns)
            ignored.append(f"{report.table}: column(s) outside the contract, dropped: {names}")
        if report.absent_columns:
            names = ", ".join(report.absent_columns)
            ignored.append(
                f"{report.table}: optional column(s) not delivered, read as empty: {names}"
            )
        if report.verdict == "not delivered" and not report.required:
            ignored.append(f"{report.table}: {report.role} never delivered; Mia runs without it")
    _say("\nMia will ignore:")
    for line in ignored or ["nothing"]:
        _say(f"  {line}")
    warnings = [line for report in diagnosis.tables for line in report.warnings]
    if warnings:
        _say("\nWarnings (the rows are kept):")
        for line in warnings:
            _say(f"  {line}")
    problems = diagnosis.problems
    _say("\nMia will refuse:")
    for line in problems or ["nothing"]:
        _say(f"  {line}")
    if problems:
        raise InputError(
            f"a night would be refused: {len(problems)} problem(s) listed above under "
            "'Mia will refuse'; fix the deliveries (see data/README.md) and run `mia doctor` again."
        )
    _say("\nA first night can run: `mia ingest`, then `mia nightly --date YYYY-MM-DD`.")


def _overrides(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _run_flow(flow_fn: Callable[..., Any], **parameters: Any) -> Any:
    """Run a Prefect flow in this process; its own exceptions come back unchanged.

    Against the user's Prefect API, else a local one that dies with this process.
    """
    from flows.local_api import ensure_prefect_api

    ensure_prefect_api()
    with _progress():
        return flow_fn(**parameters)


@app.command()
def nightly(
    date: Annotated[
        str | None, typer.Option("--date", help="Night to run (default: yesterday).")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    shards: Annotated[int | None, typer.Option(min=1, help="Subscriber shards.")] = None,
    dask: DaskOption = None,
    force_train: Annotated[bool, typer.Option(help="Retrain even if models are fresh.")] = False,
) -> None:
    """Run one night end to end and publish offers, audiences and a report."""
    from flows.nightly import nightly_for

    settings = _settings(data_dir, config, n_shards=shards, dask_address=dask)
    nightly_flow = nightly_for(settings)
    as_of = _date(date) if date else None
    _say(f"running the nightly pipeline on {settings.data_dir} ...", err)
    manifest = _run_flow(
        nightly_flow,
        date=as_of.isoformat() if as_of else None,
        data_dir=str(settings.data_dir),
        overrides=_overrides(n_shards=shards, dask_address=dask),
        force_train=force_train,
        config=str(config) if config else None,
    )
    lake = Lake(settings.data_dir)
    night = parse_date(manifest["as_of"])
    _say(f"published night {night} (run {manifest['run_id']})")
    rows = manifest["rows"]
    offers = lake.link("offers", night)
    _say(f"  offers:    {offers / 'offers.parquet'}  ({rows['offers']:,} rows)")
    _say(f"  audiences: {lake.link('audiences', night)}  ({rows['audiences']} offers)")
    _say(f"  report:    {lake.link('reports', night) / 'report.md'}")
    _say(f"  manifest:  {offers / 'manifest.json'}")
    _say(f"  models:    {settings.mlflow_uri} (MLflow store)")


@app.command()
def train(
    date: DateOption,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    dask: DaskOption = None,
) -> None:
    """Train, evaluate and register models as of DATE; promote only through the quality gate."""
    from flows.nightly import train as train_flow

    settings = _settings(data_dir, config, dask_address=dask)
    result = _run_flow(
        train_flow,
        date=_date(date).isoformat(),
        data_dir=str(settings.data_dir),
        overrides=_overrides(dask_address=dask),
        config=str(config) if config else None,
    )
    _say(result.get("note", "trained"))
    _say(f"models: {settings.mlflow_uri}")


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    snapshots: Annotated[bool, typer.Option(help="Also build each day's snapshot.")] = False,
) -> None:
    """Ingest and aggregate every day from --from to --to (history before the first night)."""
    from flows.nightly import backfill as backfill_flow

    settings = _settings(data_dir, config)
    first, last = _date(start, "--from"), _date(end, "--to")
    if last < first:
        raise InputError(f"--to {last} is before --from {first}.")
    done = _run_flow(
        backfill_flow,
        start=first.isoformat(),
        end=last.isoformat(),
        data_dir=str(settings.data_dir),
        config=str(config) if config else None,
        snapshots=snapshots,
    )
    _say(f"backfilled {len(done)} days ({first} .. {last})")


@app.command()
def serve(
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    cron: Annotated[str | None, typer.Option(help="Cron schedule (default 0 3 * * *).")] = None,
    timezone: Annotated[str | None, typer.Option(help="Time zone of the schedule.")] = None,
    register_only: Annotated[
        bool, typer.Option(help="Register the deployment and exit instead of serving it.")
    ] = False,
) -> None:
    """Serve the nightly deployment on its cron schedule against a Prefect server."""
    from flows.serve import serve_nightly

    settings = _settings(data_dir, config, schedule_cron=cron, timezone=timezone)
    result = serve_nightly(settings, register_only=register_only)
    _say(f"registered deployment mia-nightly/{result}" if register_only else "stopped")


def _published_offers(lake: Lake, night: dt.date):
    import polars as pl

    path = lake.offers(night) / "offers.parquet"
    if not path.exists():
        published = [d.isoformat() for d in lake.dates("offers")]
        raise InputError(
            f"no published offers for {night} in {lake.root / 'offers'}; "
            f"published nights: {published[-5:] or 'none'}. Run `mia nightly --date {night}`."
        )
    return pl.read_parquet(path)


SubscriberOption = Annotated[int, typer.Option("--subscriber", help="Subscriber id.")]


@offers_app.command("show")
def offers_show(
    date: DateOption,
    subscriber: Annotated[
        int | None, typer.Option("--subscriber", help="Subscriber id (default: a summary).")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Show one subscriber's ranked offers of a night, or the night's offers per category."""
    import polars as pl

    settings = _settings(data_dir, config)
    night = _date(date)
    offers = _published_offers(Lake(settings.data_dir), night)
    if subscriber is None:
        summary = (
            offers.group_by("category")
            .agg(pl.len().alias("offers"), pl.col("expected_value").sum().alias("expected_value"))
            .sort("offers", "category", descending=[True, False])
        )
        _print_table(f"offers of {night} per category", summary.to_dicts())
        return
    rows = offers.filter(pl.col("subscriber_id") == subscriber).sort("rank")
    columns = ["rank", "offer_id", "category", "p_accept", "value", "expected_value", "reasons"]
    if rows.is_empty():
        _say(
            f"subscriber {subscriber} has no offers on {night} (control group, not covered, "
            "or nothing eligible: try "
            f"`mia offers explain --subscriber {subscriber} --date {night}`)."
        )
        return
    _print_table(f"offers for subscriber {subscriber} on {night}", rows.select(columns).to_dicts())


@offers_app.command("explain")
def offers_explain(
    date: DateOption,
    subscriber: SubscriberOption,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    all_offers: Annotated[
        bool, typer.Option("--all", help="Also list the offers the subscriber is eligible for.")
    ] = False,
) -> None:
    """Say, offer by offer, which eligibility rule removed it for a subscriber."""
    import polars as pl

    from flows.steps import night_inputs
    from offers.eligibility import explain
    from offers.exploration import offer_evidence, posteriors

    settings = _settings(data_dir, config)
    night = _date(date)
    inputs = night_inputs(Lake(settings.data_dir), night, settings, recent_events=False)
    table = explain(
        subscriber,
        inputs["subscribers"],
        inputs["catalog"],
        inputs["holdings"],
        inputs["offer_state"],
        night,
        recent_events=inputs["contact_events"],
        settings=settings,
    ).with_columns(pl.col("failed_rules").list.join(", "))
    # What exploration knows of each offer: Thompson sampling explores those with little evidence.
    evidence = posteriors(offer_evidence(inputs["offer_state"]), inputs["catalog"], settings)
    table = table.join(
        evidence.select("offer_id", "impressions", "accepts", "posterior_mean", "exploring"),
        on="offer_id",
        how="left",
    ).with_columns(pl.col("posterior_mean").round(4))
    if not all_offers:
        table = table.filter(~pl.col("eligible"))
    eligible = int(table["eligible"].sum()) if all_offers else None
    _print_table(
        f"eligibility of subscriber {subscriber} for the night after {night}", table.to_dicts()
    )
    if eligible is not None:
        _say(f"eligible for {eligible} offers")


@audience_app.command("list")
def audience_list(
    date: DateOption, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """List the audiences of a night: size, expected accepts and value, control size."""
    from offers.audience import read_summary

    settings = _settings(data_dir, config)
    night = _date(date)
    summary = read_summary(Lake(settings.data_dir).audiences(night))
    _print_table(f"audiences of {night}", summary.to_dicts())


@audience_app.command("export")
def audience_export(
    date: DateOption,
    offer: Annotated[str, typer.Option("--offer", help="Offer id.")],
    out_file: Annotated[
        Path,
        typer.Option(
            "--out", help="CSV file to write, or an existing folder to write <offer file>.csv into."
        ),
    ],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CSV file.")] = False,
) -> None:
    """Copy one offer's audience CSV for marketing (spreadsheet-safe cells)."""
    from offers.audience import export_audience

    settings = _settings(data_dir, config)
    audiences = Lake(settings.data_dir).audiences(_date(date))
    path = export_audience(audiences, offer, out_file, overwrite=force)
    _say(f"wrote {path}")


@app.command()
def lift(
    start: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    level: Annotated[str, typer.Option(help="offer, category, overall or all.")] = "overall",
    metric: Annotated[str, typer.Option(help="accepts, value or all.")] = "all",
) -> None:
    """Lift of the champion and the impact arms over control, and of the arms over the champion,
    with 95% intervals and Benjamini-Hochberg q-values."""
    import polars as pl

    from flows.steps import groups_for
    from mia.ingest import raw_events, raw_state
    from offers.lift import POPULATION_COLUMNS, measure_impact

    settings = _settings(data_dir, config)
    lake = Lake(settings.data_dir)
    first, last = _date(start, "--from"), _date(end, "--to")
    if last < first:
        raise InputError(f"--to {last} is before --from {first}: the dates are reversed.")
    if level not in ("offer", "category", "overall", "all"):
        raise InputError(f"--level == {level!r}, must be offer, category, overall or all.")
    if metric not in ("accepts", "value", "all"):
        raise InputError(f"--metric == {metric!r}, must be accepts, value or all.")
    events = raw_events(lake, "offer_events", first, last)
    catalog = raw_state(lake, "catalog", last)
    subscribers = raw_state(lake, "subscribers", last, columns=POPULATION_COLUMNS)
    if events is None or catalog is None or subscribers is None:
        raise InputError(f"no ingested offer events, catalog or subscribers up to {last}.")
    table = measure_impact(
        events, catalog, subscribers, groups_for(lake, last, settings), first, last, settings
    )
    if level != "all":
        table = table.filter(pl.col("level") == level)
    if metric != "all":
        table = table.filter(pl.col("metric") == metric)
    shown = table.select(
        "comparison", "level", "key", "metric", "arm_mean", "baseline_mean", "lift", "lift_low",
        "lift_high", "relative_lift", "relative_low", "relative_high", "q_value", "significant",
        "few_events",
    )  # fmt: skip
    _print_table(f"lift {first} .. {last}", shown.to_dicts())


@app.command("evaluate-policy")
def evaluate_policy(
    start: Annotated[str, typer.Option("--from", help="First logged day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--to", help="Last logged day, YYYY-MM-DD.")],
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="champion (the previous night's rank-1 offer), popularity (the eligible offer "
            "of highest acceptance rate), random (uniform over eligible offers) or a settings "
            "file.",
        ),
    ] = "champion",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Also write the table to FILE.json or FILE.csv.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Estimate a policy's accepts (and value) per impression from logged impressions that carry
    their logging propensity: IPS, SNIPS and doubly robust, with 95% bootstrap intervals."""
    from flows.policy import policy_value
    from mia.lake import atomic_path

    settings = _settings(data_dir, config)
    first, last = _date(start, "--from"), _date(end, "--to")
    if last < first:
        raise InputError(f"--to {last} is before --from {first}: the dates are reversed.")
    if out_file is not None:
        if out_file.suffix not in (".json", ".csv"):
            raise InputError(f"--out {out_file}: must end in .json or .csv.")
        if out_file.exists() and not force:
            raise InputError(f"--out {out_file} exists; use --force to replace it.")
    table = policy_value(Lake(settings.data_dir), first, last, policy, settings, n_boot, seed)
    _print_table(f"policy {policy} on impressions {first} .. {last}", table.to_dicts())
    if out_file is not None:
        with atomic_path(out_file) as path:
            if out_file.suffix == ".csv":
                table.write_csv(path)
            else:
                payload = {"from": str(first), "to": str(last), "policy": policy}
                path.write_text(json.dumps({**payload, "estimates": table.to_dicts()}, indent=2))
        _say(f"wrote {out_file}")


@app.command()
def evaluate(
    date: DateOption,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """On a simulated world: compare the champion's scores and the night's audiences with the
    simulator's true probabilities (the oracle) after DATE.

    A champion trained after DATE has seen those outcomes: models trained as of DATE are
    evaluated instead (trained here, not registered; the champion stays)."""
    from flows.publish import read_manifest
    from flows.steps import eligible_for_night, evaluate_audiences
    from models.evaluate import (
        capture_table,
        champion_trained_after,
        check_outcomes_after,
        evaluate_against_oracle,
        oracle_table,
    )
    from models.training import train_models

    settings = _settings(data_dir, config)
    lake = Lake(settings.data_dir)
    night = _date(date)
    if not (lake.root / "truth").is_dir():
        raise InputError(
            f"{lake.root} has no simulator truth: `mia evaluate` works on worlds made by "
            "`mia simulate`."
        )
    check_outcomes_after(lake, night, settings)
    bundle = None
    later = champion_trained_after(settings, night)
    if later:
        _say(f"{later}; training models as of {night} to evaluate (not registered) ...", err)
        bundle = train_models(lake, night, settings, register=False).bundle
    # Mia only ever chooses among eligible offers; so does the oracle it is compared with.
    eligible = eligible_for_night(lake, night, settings)
    result = evaluate_against_oracle(lake, night, settings, bundle=bundle, eligible=eligible)
    _print_table(f"Mia vs oracle after {night}: accepts per category", oracle_table(result))
    _print_table(f"Mia vs oracle after {night}: offer choice", capture_table(result))
    if read_manifest(lake, night) is None:
        _say(f"(no published night {night}: audiences not evaluated)")
        return
    capture = evaluate_audiences(lake, night, settings)
    _print_table(
        f"audiences of {night} vs the oracle's audiences of the same size",
        [{"metric": key, "value": value} for key, value in capture.items()],
    )


@app.command()
def report(
    date: DateOption,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Print the run report of a published night."""
    settings = _settings(data_dir, config)
    lake, night = Lake(settings.data_dir), _date(date)
    path = lake.reports(night) / "report.md"
    if not path.exists():
        raise InputError(f"no report for {date} at {path}; run `mia nightly --date {date}` first.")
    _say(path.read_text())
    _say(f"(plots in {lake.link('reports', night)})")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    _configure_logging(verbose)


def run_command(command: Callable[[], Any]) -> int:
    """Run the CLI, mapping errors to exit codes (2 bad input or usage, 1 failed run)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        command()
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_BAD_INPUT
    except InputError as error:
        _say(str(error), err, label="error: ", style="bold red")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted; the previous outputs are untouched.", err)
        return EXIT_FAILED
    except Exception as error:  # a failed run: say why, keep the traceback in the log
        logging.getLogger("mia").debug("run failed", exc_info=True)
        _say(f"{type(error).__name__}: {error}", err, label="run failed: ", style="bold red")
        return EXIT_FAILED
    return EXIT_OK


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_command(app))
