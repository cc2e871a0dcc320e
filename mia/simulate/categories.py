"""The simulated telco's own offer categories: data of this world, not part of the contract.

Order is stable: it is the category index of the simulator's taste and acceptance matrices.
"""

from __future__ import annotations

CATEGORIES = (
    "tariff",
    "data_addon",
    "minutes_addon",
    "roaming",
    "gb_sharing",
    "gb_market",
    "loyalty_partner",
    "cashback",
    "gift",
    "discount",
    "mini_game",
    "video",
    "music",
    "books",
    "promised_payment",
    "autopay",
    "e_signature",
    "extra_sim",
    "home_internet",
    "insurance",
    "esim",
    "family_plan",
    "cloud_storage",
    "antispam",
)
