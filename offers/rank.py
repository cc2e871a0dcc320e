"""Nightly ranking: expected value under a contact policy (K per subscriber, M per category,
category diversity in the top positions, capacity per offer).

Policy, applied to eligible pairs of treatment subscribers who are covered tonight:

1. expected_value = p_accept x value x category weight; pairs below `min_probability` are dropped.
2. Per subscriber, offers are ordered by expected value (ties: a stable hash of subscriber and
   offer, so no offer wins a tie by its name, and the order is the same every night). At most
   `max_per_category` (M) offers of one category are kept.
3. Diversity: the best offer of each category is a "leader". The first
   min(D, number of categories available) positions hold the D best leaders, by expected value,
   where D = min(diversity_positions, top_k); the remaining positions take the best of what is left
   (leaders and runners-up alike) by expected value. D = 0 turns diversity off.
4. At most `top_k` (K) offers per subscriber; rank 1..K in that order.
5. Capacity: an offer with capacity C goes to at most C subscribers, those with the highest expected
   value for it (ties: the same hash). A subscriber who loses a capped offer gets the
   policy re-applied without it, so the freed position is filled by the next offer; this repeats
   until no capacity is exceeded. Capacity counts the subscribers in the frame passed in.
6. Exploration: a stable pseudo-random `exploration_share` of subscribers (drawn per run) get their
   last position replaced by the best offer of a category the policy did not pick for them (one
   of their eligible, uncapped categories, drawn per subscriber), flagged `explore`. Without it a
   category whose expected value never reaches anyone's top K is never shown again, its accept
   data dries up and its model can never learn that it was wrong.

Control and uncovered subscribers get no rows. The same inputs give the same frame.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from mia.hashing import pair_hash, stable_hash, text_hash, unit_interval
from mia.schema import (
    CATEGORY,
    EXPECTED_VALUE,
    GROUP,
    MODEL_VERSION,
    OFFER_ID,
    P_ACCEPT,
    PROPENSITY,
    RANK,
    REASONS,
    RUN_ID,
    SUBSCRIBER_ID,
    VALUE,
)
from mia.settings import Settings
from offers.eligibility import Frame, OffersInputError, lazy, require_columns
from offers.exploration import (
    EVIDENCE_COLUMNS,
    EXPLORING,
    WIN_PROBABILITY,
    posteriors,
    thompson_picks,
)
from offers.groups import PROPENSITY_ONLY_ARM, RANDOM_ARM, check_groups, targeted

logger = logging.getLogger(__name__)

CAPACITY = "capacity"
EXPLORE = "explore"
OFFERS_COLUMNS = (
    SUBSCRIBER_ID,
    RANK,
    OFFER_ID,
    CATEGORY,
    P_ACCEPT,
    VALUE,
    EXPECTED_VALUE,
    REASONS,
    MODEL_VERSION,
    RUN_ID,
    EXPLORE,
    PROPENSITY,
)
MAX_CAPACITY_ROUNDS = 50

_CATEGORY_RANK = "_category_rank"
_ROW = "_row"  # a candidate's row number in its frame
_PRIORITY = "_priority"
OFFER_ORDER = "_offer_order"  # position of offer_id in sorted order: an integer offer key
TIE_BREAK = "_tie_break"  # stable hash of (subscriber, offer): breaks equal expected values
_OFFER_HASH = "_offer_hash"
_CATEGORY_CODE = "_category_code"
# Per selected row: how many categories the subscriber could explore tonight (see `explore`).
_EXPLORE_OPTIONS = "_explore_options"


def _examples(frame: pl.DataFrame) -> list[dict]:
    return frame.head(5).to_dicts()


def category_weight_expr(settings: Settings) -> pl.Expr:
    """Weight of each row's category (settings.category_weights, 1 when not configured)."""
    if not settings.category_weights:
        return pl.lit(1.0, dtype=pl.Float64)
    return pl.col(CATEGORY).replace_strict(
        settings.category_weights, default=1.0, return_dtype=pl.Float64
    )


def _check_scores(scores: Frame, pairs_checked: bool = False) -> pl.LazyFrame:
    require_columns(scores, "scores", (SUBSCRIBER_ID, OFFER_ID, P_ACCEPT))
    frame = lazy(scores)
    names = frame.collect_schema().names()
    for optional in (REASONS, MODEL_VERSION):
        if optional not in names:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(optional))
    frame = frame.select(SUBSCRIBER_ID, OFFER_ID, P_ACCEPT, REASONS, MODEL_VERSION)
    not_probability = (
        pl.col(P_ACCEPT).is_null()
        | pl.col(P_ACCEPT).is_nan()
        | ~pl.col(P_ACCEPT).is_between(0.0, 1.0)
    )
    counts = frame.select(
        not_probability.sum().alias("bad"),
        pl.len().alias("rows"),
        # Rows in strictly ascending order of (offer, subscriber) or (subscriber, offer), as the
        # scorer writes them, cannot repeat a pair: no need to count the distinct pairs.
        (
            _strictly_ascending(OFFER_ID, SUBSCRIBER_ID)
            | _strictly_ascending(SUBSCRIBER_ID, OFFER_ID)
        ).alias("ordered"),
    ).collect()
    counts = counts.with_columns(
        pl.col("rows").alias("pairs")
        if pairs_checked or counts["ordered"].item()
        else _distinct_pairs(frame)
    )
    if counts["bad"].item():
        bad = frame.filter(not_probability).head(5).collect()
        raise OffersInputError(
            f"scores: column p_accept, rule: a probability in [0, 1], not null; "
            f"{counts['bad'].item()} row(s) break it, e.g. {_examples(bad)}."
        )
    if counts["pairs"].item() != counts["rows"].item():
        duplicated = (
            frame.group_by(SUBSCRIBER_ID, OFFER_ID)
            .agg(pl.len())
            .filter(pl.col("len") > 1)
            .sort(SUBSCRIBER_ID, OFFER_ID)
            .collect()
        )
        raise OffersInputError(
            f"scores: columns subscriber_id, offer_id, rule: one score per pair; "
            f"{duplicated.height} pair(s) repeat, e.g. {_examples(duplicated)}."
        )
    return frame


def _strictly_ascending(first: str, second: str) -> pl.Expr:
    """Whether every row comes strictly after the one before it by (first, second); true for
    fewer than two rows, false where either holds a null."""
    step = (pl.col(first) > pl.col(first).shift()) | (
        (pl.col(first) == pl.col(first).shift()) & (pl.col(second) > pl.col(second).shift())
    )
    return step.slice(1).fill_null(False).all()


def _distinct_pairs(frame: pl.LazyFrame) -> pl.Series:
    """The number of distinct (subscriber_id, offer_id) pairs of `frame`, as a one-row series."""
    # One integer per pair is far cheaper to count than a struct of an id and a string; it is
    # exact while ids are in [0, 2^43) and there are fewer than 2^20 offers, else the struct is.
    offer_code = pl.col(OFFER_ID).cast(pl.Categorical).to_physical().cast(pl.Int64)
    exact = (pl.col(SUBSCRIBER_ID).min() >= 0) & (pl.col(SUBSCRIBER_ID).max() < 1 << 43)
    counted = frame.select(
        (exact & (offer_code.max() < 1 << 20)).alias("exact"),
        (pl.col(SUBSCRIBER_ID).cast(pl.Int64) * (1 << 20) + offer_code).n_unique().alias("pairs"),
    ).collect()
    if not counted["exact"].item():
        counted = frame.select(pl.struct(SUBSCRIBER_ID, OFFER_ID).n_unique().alias("pairs"))
        counted = counted.collect()
    return counted["pairs"]


def scored_candidates(
    scores: Frame,
    eligible: Frame | None,
    catalog: Frame,
    groups: Frame,
    settings: Settings,
    tie_salt: str | None = "",
    pairs_checked: bool = False,
) -> pl.DataFrame:
    """Eligible scored pairs with catalog value, capacity, group, coverage and expected value.

    `eligible` None means every scored pair is eligible (scores computed for eligible pairs
    only). Pairs with p_accept below settings.min_probability are dropped; both groups are kept.
    `tie_break` is a stable hash of (subscriber, offer, `tie_salt`) that orders equal values;
    with `tie_salt` None there is no such column (for callers that order ties otherwise).
    `pairs_checked`: the caller has already checked that no (subscriber, offer) pair repeats in
    `scores`, so they are not counted again (p_accept is still checked).
    """
    frame = _check_scores(scores, pairs_checked)
    if eligible is not None:
        require_columns(eligible, "eligible", (SUBSCRIBER_ID, OFFER_ID))
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY, VALUE, CAPACITY))
    offers = (
        lazy(catalog)
        .select(OFFER_ID, CATEGORY, VALUE, CAPACITY)
        .with_columns(
            pl.col(OFFER_ID).rank("ordinal").cast(pl.UInt32).alias(OFFER_ORDER),
            pl.col(CATEGORY).rank("dense").cast(pl.UInt32).alias(_CATEGORY_CODE),
        )
        .collect()
    )
    if tie_salt is not None:
        offers = offers.with_columns(
            pl.Series(_OFFER_HASH, text_hash(offers[OFFER_ID], tie_salt), dtype=pl.UInt64)
        )
    offers = offers.lazy()
    unknown = frame.join(offers, on=OFFER_ID, how="anti").select(OFFER_ID).unique().collect()
    if unknown.height:
        raise OffersInputError(
            f"scores: column offer_id, rule: every scored offer is in the catalog; "
            f"{unknown.height} offer(s) are not, e.g. {sorted(unknown[OFFER_ID].to_list())[:5]}."
        )
    if eligible is not None:
        pairs = lazy(eligible).select(SUBSCRIBER_ID, OFFER_ID).unique()
        frame = frame.join(pairs, on=[SUBSCRIBER_ID, OFFER_ID], how="semi")
    candidates = (
        frame.filter(pl.col(P_ACCEPT) >= settings.min_probability)
        .join(offers, on=OFFER_ID, how="inner")
        .join(check_groups(groups).lazy(), on=SUBSCRIBER_ID, how="left")
        .with_columns(
            (pl.col(P_ACCEPT) * pl.col(VALUE) * category_weight_expr(settings)).alias(
                EXPECTED_VALUE
            )
        )
        .collect(engine="streaming")
    )
    if tie_salt is not None:
        candidates = candidates.with_columns(
            pl.Series(
                TIE_BREAK,
                pair_hash(candidates[SUBSCRIBER_ID], candidates[_OFFER_HASH], tie_salt),
                dtype=pl.UInt64,
            )
        ).drop(_OFFER_HASH)
    ungrouped = candidates.filter(pl.col(GROUP).is_null())
    if ungrouped.height:
        raise OffersInputError(
            f"groups: column subscriber_id, rule: every scored eligible subscriber has a group; "
            f"{ungrouped[SUBSCRIBER_ID].n_unique()} subscriber(s) have none, e.g. "
            f"{sorted(ungrouped[SUBSCRIBER_ID].unique().to_list())[:5]}."
        )
    return candidates


def select_offers(
    candidates: pl.DataFrame, top_k: int, max_per_category: int, diversity_positions: int
) -> pl.DataFrame:
    """Apply K, M and the diversity rule per subscriber of `scored_candidates` output; adds
    `rank` (1..K); capacity is not looked at here."""
    diverse = min(diversity_positions, top_k)
    leader = pl.col(_CATEGORY_RANK) == 1
    # Ranked on the four columns that decide, then the kept rows (at most K per subscriber) are
    # gathered from the wide frame: sorting every candidate's strings twice cost more.
    ordered = (
        candidates.select(SUBSCRIBER_ID, _CATEGORY_CODE, EXPECTED_VALUE, TIE_BREAK)
        .with_row_index(_ROW)
        .sort([SUBSCRIBER_ID, EXPECTED_VALUE, TIE_BREAK], descending=[False, True, False])
    )
    category_rank = _position_in_group(
        ordered[SUBSCRIBER_ID].to_numpy(), ordered[_CATEGORY_CODE].to_numpy()
    )
    ranked = (
        ordered.with_columns(pl.Series(_CATEGORY_RANK, category_rank))
        .filter(pl.col(_CATEGORY_RANK) <= max_per_category)
        .with_columns(
            pl.when(leader & (leader.cum_sum().over(SUBSCRIBER_ID) <= diverse))
            .then(0)
            .otherwise(1)
            .alias(_PRIORITY)
        )
        .sort(
            [SUBSCRIBER_ID, _PRIORITY, EXPECTED_VALUE, TIE_BREAK],
            descending=[False, False, True, False],
        )
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(SUBSCRIBER_ID).alias(RANK))
        .filter(pl.col(RANK) <= top_k)
    )
    return candidates[ranked[_ROW]].with_columns(ranked[RANK])


def _position_in_group(subscribers: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """1-based position of each row among the rows of its (subscriber, code), in row order;
    the rows are sorted by subscriber. (A window over two keys in polars was 7x slower.)"""
    if not subscribers.size:
        return np.empty(0, dtype=np.int64)
    starts = np.empty(subscribers.size, dtype=bool)
    starts[0] = True
    starts[1:] = subscribers[1:] != subscribers[:-1]
    codes = codes.astype(np.int64)
    keys = (np.cumsum(starts) - 1) * (int(codes.max()) + 1) + codes
    order = np.argsort(keys, kind="stable")  # each group's rows, still in row order
    grouped = keys[order]
    first = np.ones(grouped.size, dtype=bool)
    first[1:] = grouped[1:] != grouped[:-1]
    positions = np.arange(grouped.size)
    result = np.empty(grouped.size, dtype=np.int64)
    result[order] = positions - np.maximum.accumulate(np.where(first, positions, 0)) + 1
    return result


def _over_capacity(selected: pl.DataFrame) -> pl.DataFrame:
    """Selected (subscriber_id, offer_id) pairs beyond their offer's capacity."""
    return (
        selected.filter(pl.col(CAPACITY).is_not_null())
        .sort([OFFER_ORDER, EXPECTED_VALUE, TIE_BREAK], descending=[False, True, False])
        .filter(pl.int_range(1, pl.len() + 1).over(OFFER_ORDER) > pl.col(CAPACITY))
        .select(SUBSCRIBER_ID, OFFER_ID)
    )


def _select(candidates: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    selected = select_offers(
        candidates, settings.top_k, settings.max_per_category, settings.diversity_positions
    )
    narrow = candidates.select(SUBSCRIBER_ID, _CATEGORY_CODE, CAPACITY)  # all that is counted
    return selected.join(
        _open_categories(narrow, selected)
        .group_by(SUBSCRIBER_ID)
        .agg(pl.col(_CATEGORY_CODE).n_unique().cast(pl.Int64).alias(_EXPLORE_OPTIONS)),
        on=SUBSCRIBER_ID,
        how="left",
    ).with_columns(pl.col(_EXPLORE_OPTIONS).fill_null(0))


def _open_categories(candidates: pl.DataFrame, selected: pl.DataFrame) -> pl.DataFrame:
    """The uncapped candidates of the subscribers of `selected` in categories not selected:
    what exploration draws from (capped offers are never explored, so exploration cannot break
    a capacity)."""
    return (
        candidates.filter(pl.col(CAPACITY).is_null())
        .join(selected.select(SUBSCRIBER_ID).unique(), on=SUBSCRIBER_ID, how="semi")
        .join(  # by the category's code: the same as by its name, and cheaper to match
            selected.select(SUBSCRIBER_ID, _CATEGORY_CODE),
            on=[SUBSCRIBER_ID, _CATEGORY_CODE],
            how="anti",
        )
    )


def _best_per_category(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.sort(
        [SUBSCRIBER_ID, _CATEGORY_CODE, EXPECTED_VALUE, TIE_BREAK],
        descending=[False, False, True, False],
    ).unique([SUBSCRIBER_ID, _CATEGORY_CODE], keep="first", maintain_order=True)


def apply_contact_policy(candidates: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """Ranked offers under K, M, diversity and capacity (see the module docstring)."""
    selected = _select(candidates, settings)
    for round_number in range(1, MAX_CAPACITY_ROUNDS + 1):
        losers = _over_capacity(selected)
        if losers.is_empty():
            break
        logger.debug("capacity round %d: %d pair(s) over capacity", round_number, losers.height)
        candidates = candidates.join(losers, on=[SUBSCRIBER_ID, OFFER_ID], how="anti")
        affected = losers.select(SUBSCRIBER_ID).unique()
        reselected = _select(candidates.join(affected, on=SUBSCRIBER_ID, how="semi"), settings)
        selected = pl.concat([selected.join(affected, on=SUBSCRIBER_ID, how="anti"), reselected])
    else:
        losers = _over_capacity(selected)
        logger.warning(
            "capacity still exceeded after %d rounds; dropping %d pair(s) without refill",
            MAX_CAPACITY_ROUNDS,
            losers.height,
        )
        selected = selected.join(losers, on=[SUBSCRIBER_ID, OFFER_ID], how="anti").with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(SUBSCRIBER_ID).alias(RANK)
        )
    return selected.sort(SUBSCRIBER_ID, RANK)


def _explorers(selected: pl.DataFrame, settings: Settings, salt: str) -> pl.Series:
    """The subscribers of `selected` drawn to explore another category tonight (sorted)."""
    subscribers = selected[SUBSCRIBER_ID].unique().sort()
    drawn = unit_interval(subscribers, salt + ":explorers") < settings.exploration_share
    return subscribers.filter(pl.Series(drawn))


def explore(
    selected: pl.DataFrame,
    candidates: pl.DataFrame,
    settings: Settings,
    salt: str,
    posterior: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Rule 6: swap the last position of a drawn share of subscribers for another category:
    an exploring offer by Thompson sampling where `posterior` (offers.exploration.posteriors)
    names some among the subscriber's candidates, else the best offer of a random category."""
    share = settings.exploration_share
    # Each row's probability under the policy's randomness (whether the subscriber explores,
    # which offer): rows below the last position are always shown; the last of a full list
    # gives way whenever the subscriber explores and has a category to explore.
    replaceable = (pl.col(RANK) == settings.top_k) & (pl.col(_EXPLORE_OPTIONS) > 0)
    flagged = selected.with_columns(
        pl.lit(False).alias(EXPLORE),
        pl.when(replaceable).then(1.0 - share).otherwise(1.0).alias(PROPENSITY),
    )
    if share <= 0 or selected.is_empty():
        return flagged
    explorers = _explorers(selected, settings, salt)
    explorer_rows = pl.col(SUBSCRIBER_ID).is_in(explorers.implode())
    open_rows = _open_categories(candidates.filter(explorer_rows), selected.filter(explorer_rows))
    pool = _best_per_category(open_rows)
    if pool.is_empty():
        return flagged
    options = pool.group_by(SUBSCRIBER_ID).agg(pl.len().cast(pl.Int64).alias(_EXPLORE_OPTIONS))
    sampled = _sampled_offers(open_rows, posterior, salt).with_columns(
        (share * pl.col(WIN_PROBABILITY)).alias(PROPENSITY)
    )
    draw = stable_hash(
        pool[SUBSCRIBER_ID].cast(pl.UInt64) * 4096 + pool[_CATEGORY_CODE].cast(pl.UInt64),
        salt + ":category",
    )
    by_category = (
        pool.with_columns(pl.Series("_draw", draw))
        .join(sampled.select(SUBSCRIBER_ID), on=SUBSCRIBER_ID, how="anti")
        .sort(SUBSCRIBER_ID, "_draw")
        .unique(SUBSCRIBER_ID, keep="first", maintain_order=True)
        .join(options, on=SUBSCRIBER_ID, how="left")
        .with_columns((share / pl.col(_EXPLORE_OPTIONS)).alias(PROPENSITY))
    )
    picks = pl.concat(
        [frame.select(*candidates.columns, PROPENSITY) for frame in (sampled, by_category)]
    )
    kept = flagged.join(picks.select(SUBSCRIBER_ID), on=SUBSCRIBER_ID, how="semi").filter(
        pl.col(RANK) < settings.top_k
    )
    positions = kept.group_by(SUBSCRIBER_ID).agg((pl.len() + 1).cast(pl.Int64).alias(RANK))
    explored = (
        picks.join(positions, on=SUBSCRIBER_ID, how="left")
        .join(options, on=SUBSCRIBER_ID, how="left")
        .with_columns(pl.col(RANK).fill_null(1), pl.lit(True).alias(EXPLORE))
        .select(flagged.columns)
    )
    logger.info(
        "exploration: %d subscriber(s) get another category (%d by Thompson sampling)",
        explored.height,
        sampled.height,
    )
    return pl.concat(
        [flagged.join(picks.select(SUBSCRIBER_ID), on=SUBSCRIBER_ID, how="anti"), kept, explored]
    ).sort(SUBSCRIBER_ID, RANK)


def _sampled_offers(
    open_rows: pl.DataFrame, posterior: pl.DataFrame | None, salt: str
) -> pl.DataFrame:
    """The Thompson pick of each subscriber with exploring offers among its open categories."""
    if posterior is None:
        return open_rows.clear().with_columns(pl.lit(None, dtype=pl.Float64).alias(WIN_PROBABILITY))
    exploring = posterior.filter(pl.col(EXPLORING)).select(OFFER_ID)
    return thompson_picks(
        open_rows.join(exploring, on=OFFER_ID, how="semi"), posterior, salt + ":thompson"
    )


def _version_label(model_versions: Mapping[str, str] | None) -> str | None:
    if not model_versions:
        return None
    return ",".join(f"{name}:{model_versions[name]}" for name in sorted(model_versions))


def rank_offers(
    scores: Frame,
    eligible: Frame,
    catalog: Frame,
    groups: Frame,
    settings: Settings,
    run_id: str,
    model_versions: Mapping[str, str] | None = None,
    evidence: Frame | None = None,
) -> pl.DataFrame:
    """Tonight's ranked offers per targeted subscriber, sorted by subscriber_id, rank.

    `model_versions` (model name -> version) fills model_version where the scores carry none.
    `evidence` ([offer_id, impressions, accepts], offers.exploration.offer_evidence) turns on
    Thompson sampling for the offers with little of it; without it exploration draws categories.
    """
    candidates = _arm_policies(
        scored_candidates(scores, eligible, catalog, groups, settings, _tie_salt(settings))
    )
    policy, random_arm = _split_random_arm(candidates)
    ranked = explore(
        apply_contact_policy(policy, settings),
        policy,
        settings,
        _explore_salt(run_id),
        _posterior(evidence, catalog, settings),
    )
    return _offers_frame(
        _with_random_arm(ranked, random_arm, _explore_salt(run_id)), run_id, model_versions
    )


def _arm_policies(candidates: pl.DataFrame) -> pl.DataFrame:
    """Targeted candidates under their group's policy: the propensity_only arm ranks by p_accept
    alone (no value, no weights); the arms never take capped offers, which stay the champion's."""
    arm = pl.col(GROUP).is_in([RANDOM_ARM, PROPENSITY_ONLY_ARM])
    return (
        candidates.filter(targeted())
        .filter(~arm | pl.col(CAPACITY).is_null())
        .with_columns(
            pl.when(pl.col(GROUP) == PROPENSITY_ONLY_ARM)
            .then(pl.col(P_ACCEPT))
            .otherwise(pl.col(EXPECTED_VALUE))
            .alias(EXPECTED_VALUE)
        )
    )


def _split_random_arm(candidates: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(candidates ranked by the contact policy, candidates of the random arm)."""
    random_arm = pl.col(GROUP) == RANDOM_ARM
    return candidates.filter(~random_arm), candidates.filter(random_arm)


def random_arm_offers(candidates: pl.DataFrame, salt: str) -> pl.DataFrame:
    """One offer per random-arm subscriber, drawn uniformly among its candidates (rank 1,
    propensity 1 / number of candidates)."""
    draw = stable_hash(
        candidates[SUBSCRIBER_ID].cast(pl.UInt64) * (1 << 20) + candidates[OFFER_ORDER],
        salt + ":random-arm",
    )
    return (
        candidates.with_columns(
            pl.Series("_draw", draw),
            (1.0 / pl.len().over(SUBSCRIBER_ID)).alias(PROPENSITY),
            pl.lit(1, dtype=pl.Int64).alias(RANK),
            pl.lit(False).alias(EXPLORE),
        )
        .sort(SUBSCRIBER_ID, "_draw")
        .unique(SUBSCRIBER_ID, keep="first", maintain_order=True)
        .drop("_draw")
    )


def _with_random_arm(ranked: pl.DataFrame, random_arm: pl.DataFrame, salt: str) -> pl.DataFrame:
    if random_arm.is_empty():
        return ranked
    offers = random_arm_offers(random_arm, salt)
    return pl.concat([ranked, offers], how="diagonal_relaxed").sort(SUBSCRIBER_ID, RANK)


def rank_offers_by_shard(
    shards: Sequence[tuple[Frame, Frame | None]],
    catalog: Frame,
    groups: Frame,
    settings: Settings,
    run_id: str,
    model_versions: Mapping[str, str] | None = None,
    evidence: Frame | None = None,
) -> Iterator[pl.DataFrame]:
    """`rank_offers` over (scores, eligible) pairs of disjoint sets of subscribers: the offers of
    each shard in turn (eligible None: every scored pair is eligible).

    The union of the frames equals `rank_offers` on the union of the shards. Memory stays at the
    size of one shard: the per-subscriber policy runs shard by shard and each shard's selection
    waits on disk; only the selected pairs of capped offers are held for the global capacity
    pass, and the subscribers who lose one are re-selected from their shard's scores (read again,
    so LazyFrames over files serve well). Exploration then runs shard by shard: it never offers a
    capped offer, so it does not interact with capacity.
    """
    if not shards:
        raise OffersInputError("shards: rule: at least one shard of scores; got none.")
    salt = _explore_salt(run_id)
    catalog_frame = lazy(catalog).collect()
    groups_frame = lazy(groups).collect()
    posterior = _posterior(evidence, catalog_frame, settings)

    def candidates_of(index: int, subscribers: pl.Series | None = None) -> pl.DataFrame:
        """Targeted candidates of one shard, or of only `subscribers` of it."""
        scores, eligible = shards[index]
        if subscribers is not None:
            members = pl.col(SUBSCRIBER_ID).is_in(subscribers.implode())
            scores = lazy(scores).filter(members)
            eligible = lazy(eligible).filter(members) if eligible is not None else None
        return _arm_policies(
            scored_candidates(
                scores, eligible, catalog_frame, groups_frame, settings, _tie_salt(settings)
            )
        )

    with tempfile.TemporaryDirectory(prefix="mia-rank-") as folder:
        paths = [Path(folder) / f"selected-{index}.parquet" for index in range(len(shards))]
        arm_paths = [Path(folder) / f"random-arm-{index}.parquet" for index in range(len(shards))]
        capped = []
        for index in range(len(shards)):
            policy, random_arm = _split_random_arm(candidates_of(index))
            random_arm.write_parquet(arm_paths[index])
            selected = _select(policy, settings)
            selected.write_parquet(paths[index])
            capped.append(_capped(selected, index))
        held = pl.concat(capped)
        lost = held.clear().select(SUBSCRIBER_ID, OFFER_ID)
        for round_number in range(1, MAX_CAPACITY_ROUNDS + 1):
            losers = _over_capacity(held)
            if losers.is_empty():
                break
            logger.debug("capacity round %d: %d pair(s) over capacity", round_number, len(losers))
            lost = pl.concat([lost, losers])
            affected = held.join(losers.select(SUBSCRIBER_ID).unique(), on=SUBSCRIBER_ID)
            for (index,), rows in affected.partition_by(_SHARD, as_dict=True).items():
                ids = rows[SUBSCRIBER_ID].unique()
                candidates = candidates_of(index, ids).join(
                    lost, on=[SUBSCRIBER_ID, OFFER_ID], how="anti"
                )
                reselected = _select(candidates, settings)
                others = pl.read_parquet(paths[index]).join(
                    ids.to_frame(), on=SUBSCRIBER_ID, how="anti"
                )
                pl.concat([others, reselected]).write_parquet(paths[index])
                held = pl.concat(
                    [
                        held.join(ids.to_frame(), on=SUBSCRIBER_ID, how="anti"),
                        _capped(reselected, index),
                    ]
                )
        else:
            losers = _over_capacity(held)
            logger.warning(
                "capacity still exceeded after %d rounds; dropping %d pair(s) without refill",
                MAX_CAPACITY_ROUNDS,
                losers.height,
            )
            lost = pl.concat([lost, losers])
        for index, path in enumerate(paths):
            selected = pl.read_parquet(path).join(lost, on=[SUBSCRIBER_ID, OFFER_ID], how="anti")
            selected = selected.sort(SUBSCRIBER_ID, RANK).with_columns(
                pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(SUBSCRIBER_ID).alias(RANK)
            )
            candidates = candidates_of(index, _explorers(selected, settings, salt))
            ranked = explore(selected, candidates, settings, salt, posterior)
            random_arm = pl.read_parquet(arm_paths[index])
            yield _offers_frame(_with_random_arm(ranked, random_arm, salt), run_id, model_versions)


_SHARD = "_shard"


def _capped(selected: pl.DataFrame, index: int) -> pl.DataFrame:
    """The selected pairs of capped offers, narrow, tagged with their shard's position."""
    return selected.filter(pl.col(CAPACITY).is_not_null()).select(
        SUBSCRIBER_ID,
        OFFER_ID,
        OFFER_ORDER,
        EXPECTED_VALUE,
        TIE_BREAK,
        CAPACITY,
        pl.lit(index, dtype=pl.Int64).alias(_SHARD),
    )


def _posterior(evidence: Frame | None, catalog: Frame, settings: Settings) -> pl.DataFrame | None:
    if evidence is None:
        return None
    require_columns(evidence, "evidence", EVIDENCE_COLUMNS)
    return posteriors(lazy(evidence).collect(), lazy(catalog).collect(), settings)


def _explore_salt(run_id: str) -> str:
    return f"explore:{run_id}"


def _tie_salt(settings: Settings) -> str:
    # The same every night: with the run id in it, ties would be ordered by a draw that the
    # logged propensity does not account for.
    return f"ties:{settings.group_salt}"


def _offers_frame(
    ranked: pl.DataFrame, run_id: str, model_versions: Mapping[str, str] | None
) -> pl.DataFrame:
    fallback = _version_label(model_versions)
    result = ranked.select(
        pl.col(SUBSCRIBER_ID),
        pl.col(RANK),
        pl.col(OFFER_ID),
        pl.col(CATEGORY),
        pl.col(P_ACCEPT).cast(pl.Float64),
        pl.col(VALUE).cast(pl.Float64),
        pl.col(EXPECTED_VALUE).cast(pl.Float64),
        pl.col(REASONS).cast(pl.String),
        pl.col(MODEL_VERSION).cast(pl.String).fill_null(pl.lit(fallback, dtype=pl.String)),
        pl.lit(run_id, dtype=pl.String).alias(RUN_ID),
        pl.col(EXPLORE),
        pl.col(PROPENSITY).cast(pl.Float64),
    )
    logger.info(
        "ranked %d offers for %d subscribers (run %s)",
        result.height,
        result[SUBSCRIBER_ID].n_unique(),
        run_id,
    )
    return result
