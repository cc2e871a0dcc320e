"""The nightly run report: a markdown page with PNG plots of offers, audiences, scores and drift."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from features.drift import drift_level, population_stability_index
from mia.text import markdown_text, plot_text

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
# PNG metadata without the library version, so equal data gives equal bytes.
_PNG_METADATA = {"Software": None}


@dataclass
class ReportInputs:
    """Everything the report shows for one night."""

    as_of: dt.date
    run_id: str
    offers: pl.DataFrame | pl.LazyFrame  # only counts and first-offer scores are collected
    audience_summary: pl.DataFrame
    model_metrics: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)
    training_note: str = ""
    feature_drift: pl.DataFrame | None = None
    previous_scores: pl.Series | None = None
    subscribers: int = 0
    control_subscribers: int = 0
    no_offers_reason: str = ""  # why a night published no offers, when it did not
    input_warnings: list[str] = field(default_factory=list)  # from the ingest of the inputs
    # Categories scored by a prior rather than a model -> why (e.g. never seen in training).
    prior_scored_categories: dict[str, str] = field(default_factory=dict)
    # offers.lift.measure_impact over the lift window (None: no offer events to measure).
    impact: pl.DataFrame | None = None
    impact_window: tuple[dt.date, dt.date] | None = None
    lift_fdr: float = 0.05


def _figure(width: float, height: float) -> tuple[Figure, object]:
    """A figure not registered with pyplot: no global backend, nothing to close."""
    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def _save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=90, metadata=_PNG_METADATA)
    return path.name


def _bar(labels: list[str], values: list[float], title: str, xlabel: str, path: Path) -> str:
    figure, axis = _figure(8, max(3.0, 0.28 * len(labels) + 1))
    shown = [plot_text(str(label)) for label in labels]
    axis.barh(shown[::-1], values[::-1], color="#3b6ea8")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    return _save(figure, path)


def _histogram(current, previous, title: str, path: Path) -> str:
    figure, axis = _figure(8, 3.5)
    bins = [i / 40 for i in range(41)]
    if previous is not None and len(previous):
        axis.hist(previous, bins=bins, alpha=0.5, label="previous night", color="#999999")
    axis.hist(current, bins=bins, alpha=0.7, label="tonight", color="#3b6ea8")
    axis.set_title(title)
    axis.set_xlabel("P(accept | shown)")
    axis.legend()
    return _save(figure, path)


def _markdown_table(frame: pl.DataFrame, limit: int = 30) -> str:
    if frame.is_empty():
        return "_none_\n"
    head = frame.head(limit)
    header = [markdown_text(name) for name in head.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        cells = [
            f"{value:.4f}" if isinstance(value, float) else markdown_text(str(value))
            for value in row
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if frame.height > limit:
        lines.append(f"\n_{frame.height - limit} more rows not shown._")
    return "\n".join(lines) + "\n"


IMPACT_SHOWN = (
    "comparison", "key", "metric", "arm_n", "arm_accepts", "arm_mean", "baseline_n",
    "baseline_accepts", "baseline_mean", "lift", "lift_low", "lift_high", "relative_lift",
    "relative_low", "relative_high", "q_value", "significant", "few_events",
)  # fmt: skip
IMPACT_OFFERS_SHOWN = 20  # offer-level comparisons shown, those with most accept events first


def _impact_section(inputs: ReportInputs) -> list[str]:
    """Lift of the champion and the impact arms over control, and of the arms over the champion:
    overall, per category, and the offers with most evidence."""
    impact = inputs.impact
    start, end = inputs.impact_window or (None, None)
    lines = [
        "## Impact (lift with 95% intervals)",
        "",
        f"Accept events and their catalog value per subscriber, {start} .. {end}; "
        f"q-values by Benjamini-Hochberg per comparison, level and metric, significant at "
        f"{inputs.lift_fdr:g}; comparisons with few accept events are flagged and not tested.",
        "",
    ]
    if impact.is_empty():
        return [*lines, "_no groups to compare (no control group or no contacted group)_", ""]
    for level, title in (("overall", "Overall"), ("category", "Per category")):
        rows = impact.filter(pl.col("level") == level).select(IMPACT_SHOWN)
        lines += [f"### {title}", "", _markdown_table(rows, limit=60)]
    offers = (
        impact.filter(pl.col("level") == "offer")
        .with_columns((pl.col("arm_accepts") + pl.col("baseline_accepts")).alias("_events"))
        .sort(["_events", "comparison", "metric", "key"], descending=[True, False, False, False])
        .head(IMPACT_OFFERS_SHOWN)
        .select(IMPACT_SHOWN)
    )
    return [*lines, "### Offers with most evidence", "", _markdown_table(offers)]


# Audience summary columns shown in the uplift section rather than the audiences table.
_UPLIFT_COLUMNS = ("ranking", "qini", "ranking_reason")


def _uplift_section(summary: pl.DataFrame) -> list[str]:
    """Which ranking each audience used and the uplift model's held-out Qini per offer."""
    if not set(_UPLIFT_COLUMNS) <= set(summary.columns):
        return []
    by_uplift = summary.filter(pl.col("ranking") == "uplift")
    measured = by_uplift["qini"].drop_nulls()
    mean = f"{measured.mean():.3f}" if len(measured) else "not measured"
    return [
        "## Uplift audiences (Qini)",
        "",
        "Audiences are ranked by expected incremental value (predicted uplift x value) where the "
        "control group holds enough data, otherwise by expected value (reason given). Qini: the "
        "uplift model on held-out subscribers' observed outcomes, treated vs control "
        "(1 = perfect order, 0 = random, empty = not measurable).",
        "",
        f"- ranked by uplift: {by_uplift.height} offers; by expected value: "
        f"{summary.height - by_uplift.height} offers",
        f"- mean held-out Qini of the offers ranked by uplift: {mean}",
        "",
        _markdown_table(
            summary.sort(
                ["ranking", "qini", "offer_id"], descending=[True, True, False], nulls_last=True
            ).select(
                "offer_id",
                "ranking",
                pl.col("qini").round(3).cast(pl.String).fill_null(""),
                "ranking_reason",
            ),
            limit=40,
        ),
    ]


def first_offer_scores(offers: pl.DataFrame | pl.LazyFrame) -> pl.Series:
    """P(accept) of each subscriber's first offer (rank 1), read alone from the night's offers."""
    first = offers.lazy().filter(pl.col("rank") == 1).select("p_accept")
    return first.collect(engine="streaming")["p_accept"]


def write_report(inputs: ReportInputs, directory: Path, score_psi_threshold: float = 0.25) -> Path:
    """Write report.md and its plots into `directory`; returns the report path."""
    directory.mkdir(parents=True, exist_ok=True)
    offers = inputs.offers.lazy()
    warnings: list[str] = []

    per_category = (
        offers.group_by("category")
        .agg(pl.len().alias("offers"))
        .sort(["offers", "category"], descending=[True, False])
        .collect(engine="streaming")
    )
    total_offers = int(per_category["offers"].sum())
    nothing_published = ""
    if not total_offers:
        nothing_published = inputs.no_offers_reason or "no subscriber had an eligible offer"
        warnings.append(f"nothing was published: 0 offers ({nothing_published})")
    plots = {}
    if total_offers:
        plots["offers per category"] = _bar(
            per_category["category"].to_list(),
            per_category["offers"].to_list(),
            "Offers per category",
            "offers",
            directory / "offers_per_category.png",
        )
    summary = inputs.audience_summary.sort(["audience_size", "offer_id"], descending=[True, False])
    if summary.height:
        plots["audience sizes"] = _bar(
            summary["offer_id"].head(25).to_list(),
            summary["audience_size"].head(25).to_list(),
            "Audience size (largest 25 offers)",
            "subscribers",
            directory / "audience_sizes.png",
        )
    # Each subscriber with offers has exactly one first offer.
    top_scores = first_offer_scores(offers)
    if total_offers:
        plots["score distribution"] = _histogram(
            top_scores.to_numpy(),
            None if inputs.previous_scores is None else inputs.previous_scores.to_numpy(),
            "P(accept) of each subscriber's first offer",
            directory / "score_distribution.png",
        )
    score_psi = None
    if inputs.previous_scores is not None and len(inputs.previous_scores) and len(top_scores):
        score_psi = population_stability_index(
            inputs.previous_scores.to_numpy(), top_scores.to_numpy()
        )
        if score_psi >= score_psi_threshold:
            warnings.append(f"score drift: PSI of first-offer P(accept) is {score_psi:.3f}")

    auc = {
        key.rsplit(".", 1)[0]: value
        for key, value in inputs.model_metrics.items()
        if key.endswith(".roc_auc")
    }
    if auc:
        names = sorted(auc, key=lambda name: (-auc[name], name))
        plots["model AUC"] = _bar(
            names,
            [auc[name] for name in names],
            "Holdout ROC AUC per model",
            "AUC",
            directory / "model_auc.png",
        )

    warnings += [f"input: {warning}" for warning in inputs.input_warnings]
    drift = inputs.feature_drift
    if drift is not None and not drift.is_empty():
        for row in drift.filter(pl.col("level") == "warning").iter_rows(named=True):
            warnings.append(f"feature drift: {row['column']} PSI {row['psi']:.3f}")

    versions = [f"{k} v{v}" for k, v in sorted(inputs.model_versions.items()) if v]
    lines = [
        f"# Mia nightly report — {inputs.as_of.isoformat()}",
        "",
        f"Run `{inputs.run_id}`. Offers for the night after {inputs.as_of.isoformat()}.",
        "",
    ]
    if nothing_published:
        lines += [
            f"**Nothing was published for the night after {inputs.as_of.isoformat()}: 0 offers, "
            f"because {markdown_text(nothing_published)}.**",
            "",
        ]
    lines += [
        "## Summary",
        "",
        f"- subscribers in the snapshot: {inputs.subscribers:,}",
        f"- subscribers with offers: {len(top_scores):,}; control group (no offers): "
        f"{inputs.control_subscribers:,}",
        f"- offers: {total_offers:,} across {per_category.height} categories",
        f"- audiences: {summary.height} offers, {int(summary['audience_size'].sum()):,} rows, "
        f"{float(summary['expected_accepts'].sum()):,.1f} expected accepts",
        f"- models: {', '.join(versions) or 'none scored tonight'}",
    ]
    if inputs.training_note:
        lines.append(f"- training: {markdown_text(inputs.training_note)}")
    if inputs.prior_scored_categories:
        scored = "; ".join(
            f"{name} ({why})" for name, why in sorted(inputs.prior_scored_categories.items())
        )
        lines.append(f"- categories scored by a prior, not a model: {markdown_text(scored)}")
    if score_psi is not None:
        lines.append(
            f"- score drift vs previous night: PSI {score_psi:.3f} ({drift_level(score_psi)})"
        )
    lines += ["", "## Warnings", ""]
    lines += [f"- ⚠ {markdown_text(warning)}" for warning in warnings] or ["- none"]
    for title, file in plots.items():
        lines += ["", f"## {title.capitalize()}", "", f"![{title}]({file})"]
    lines += ["", "## Offers per category", "", _markdown_table(per_category, limit=40)]
    audiences = summary.drop(_UPLIFT_COLUMNS, strict=False)
    lines += ["## Audiences", "", _markdown_table(audiences, limit=40)]
    lines += _uplift_section(summary)
    if auc:
        metric_rows = pl.DataFrame({"model": list(auc), "roc_auc": list(auc.values())}).sort(
            "model"
        )
        lines += ["## Model metrics (holdout)", "", _markdown_table(metric_rows, limit=60)]
    if drift is not None and not drift.is_empty():
        lines += ["## Feature drift vs previous night (PSI)", "", _markdown_table(drift, limit=20)]
    if inputs.impact is not None:
        lines += _impact_section(inputs)
    path = directory / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    logger.info("report written to %s (%d warnings)", path, len(warnings))
    return path
