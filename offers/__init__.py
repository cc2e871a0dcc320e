"""offers layer of Mia: eligibility, groups, ranking under a contact policy, audiences and lift."""

from offers.audience import (
    audience_summary,
    build_audiences,
    csv_safe,
    export_audience,
    read_summary,
    safe_file_name,
    write_audiences,
)
from offers.eligibility import RULES, OffersInputError, eligible_pairs, explain
from offers.exploration import offer_evidence, posteriors
from offers.groups import CONTROL, TREATMENT, assign_groups
from offers.lift import measure_impact, measure_lift, organic_baseline
from offers.ope import PolicyEvaluationError, estimate_policy_value
from offers.rank import rank_offers

__all__ = [
    "CONTROL",
    "RULES",
    "TREATMENT",
    "OffersInputError",
    "PolicyEvaluationError",
    "assign_groups",
    "audience_summary",
    "build_audiences",
    "csv_safe",
    "eligible_pairs",
    "estimate_policy_value",
    "explain",
    "export_audience",
    "measure_impact",
    "measure_lift",
    "offer_evidence",
    "organic_baseline",
    "posteriors",
    "rank_offers",
    "read_summary",
    "safe_file_name",
    "write_audiences",
]
