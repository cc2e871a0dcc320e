"""Stable treatment/control groups and coverage, from a salted hash of subscriber_id.

A subscriber's group and coverage depend only on its id and the salt, never on who else is in the
table, so they are the same every night and do not move when subscribers join or leave. The
simulator draws its control group with the same `mia.hashing.control_mask`, so both agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from mia.hashing import control_mask, coverage_mask, unit_interval
from mia.schema import COVERED, GROUP, SUBSCRIBER_ID
from mia.settings import Settings
from offers.eligibility import Frame, OffersInputError, lazy, require_columns

TREATMENT = "treatment"
CONTROL = "control"
# Impact arms: small persistent groups contacted by a plain policy, to measure the champion against.
RANDOM_ARM = "random"  # a random eligible offer
PROPENSITY_ONLY_ARM = "propensity_only"  # ranked by p_accept alone: no value, no weights
ARMS = (RANDOM_ARM, PROPENSITY_ONLY_ARM)
GROUPS = (TREATMENT, CONTROL, *ARMS)


def assign_groups(
    subscriber_ids: pl.Series | np.ndarray | Iterable[int], settings: Settings
) -> pl.DataFrame:
    """One row per distinct id: subscriber_id, group (GROUPS), covered (bool).

    The control group is drawn first; the arms are drawn among the rest with their own salt, so
    turning arms on or off never moves anyone into or out of the control group.
    """
    ids = pl.Series(SUBSCRIBER_ID, subscriber_ids, dtype=pl.Int64)
    if ids.null_count():
        raise OffersInputError(
            f"subscriber_ids: {ids.null_count()} null value(s); rule: ids must not be null."
        )
    ids = ids.unique().sort()
    control = control_mask(ids, settings.group_salt, settings.control_share)
    covered = coverage_mask(ids, settings.group_salt, settings.coverage)
    arm_draw = unit_interval(ids, settings.group_salt + ":arms")
    random_end = settings.random_arm_share
    propensity_end = random_end + settings.propensity_only_arm_share
    group = np.select(
        [control, arm_draw < random_end, arm_draw < propensity_end],
        [CONTROL, RANDOM_ARM, PROPENSITY_ONLY_ARM],
        TREATMENT,
    )
    return pl.DataFrame(
        {
            SUBSCRIBER_ID: ids,
            GROUP: group,
            COVERED: covered,
        },
        schema={SUBSCRIBER_ID: pl.Int64, GROUP: pl.String, COVERED: pl.Boolean},
    )


def targeted() -> pl.Expr:
    """True for subscribers who may be contacted tonight: covered and not in the control group."""
    return (pl.col(GROUP) != CONTROL) & pl.col(COVERED)


def check_groups(groups: Frame) -> pl.DataFrame:
    """The groups frame after checking its columns, allowed groups and unique ids."""
    require_columns(groups, "groups", (SUBSCRIBER_ID, GROUP, COVERED))
    frame = lazy(groups).select(SUBSCRIBER_ID, GROUP, COVERED).collect()
    bad = frame.filter(~pl.col(GROUP).is_in(GROUPS) | pl.col(COVERED).is_null())
    if bad.height:
        raise OffersInputError(
            f"groups: column group/covered, rule: group in {list(GROUPS)} and covered not null; "
            f"{bad.height} row(s) break it, e.g. {bad.head(5).to_dicts()}."
        )
    duplicated = frame.filter(pl.col(SUBSCRIBER_ID).is_duplicated())
    if duplicated.height:
        raise OffersInputError(
            f"groups: column subscriber_id, rule: unique; {duplicated.height} row(s) break it, "
            f"e.g. {duplicated.head(5).to_dicts()}."
        )
    return frame
