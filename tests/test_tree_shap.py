"""Tables of SHAP contributions (models.tree_shap) give what LightGBM's pred_contrib gives."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

import models.tree_shap as tree_shap
from models.reasons import top_features
from models.tree_shap import MAX_SPLITS, ContributionTables, shap_contributions

ROWS = 3000


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Numeric columns with NaN, a column that is mostly zero, and a categorical column (0..5)."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.normal(size=ROWS),
            rng.gamma(2.0, 3.0, ROWS),
            np.where(rng.random(ROWS) < 0.6, 0.0, rng.normal(size=ROWS)),
            rng.integers(0, 6, ROWS).astype(np.float64),
            rng.normal(size=ROWS),
        ]
    )
    x[rng.random(ROWS) < 0.15, 0] = np.nan
    x[rng.random(ROWS) < 0.05, 3] = np.nan
    logit = x[:, 1] / 3 - 1 + np.nan_to_num(x[:, 0]) * (x[:, 3] % 2) + 0.8 * (x[:, 2] > 0.2)
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return x, y


def _booster(num_leaves: int, seed: int = 0, **params: object) -> lgb.Booster:
    x, y = _data(seed)
    parameters = {
        "objective": "binary",
        "num_leaves": num_leaves,
        "min_data_in_leaf": 20,
        "learning_rate": 0.1,
        "verbose": -1,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        **params,
    }
    dataset = lgb.Dataset(x, y, categorical_feature=[3], free_raw_data=False)
    return lgb.train(parameters, dataset, num_boost_round=40)


def _rows_to_explain(seed: int) -> np.ndarray:
    """Training-like rows plus the awkward ones: NaN everywhere, unseen, negative and fractional
    categories, exact zeros and values on either side of zero's threshold."""
    x, _ = _data(seed + 100)
    awkward = np.array(
        [
            [np.nan, np.nan, np.nan, np.nan, np.nan],
            [0.0, 0.0, 0.0, 9.0, 0.0],
            [1.0, 5.0, 1e-40, -1.0, -1.0],
            [-1.0, 1.0, -1e-40, 2.7, 1.0],
            [2.0, 20.0, -0.0, 1e9, 2.0],
            [np.inf, -np.inf, np.inf, 0.0, -np.inf],
        ]
    )
    return np.vstack([x, awkward])


def _pred_contrib(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    return booster.predict(x, pred_contrib=True, num_threads=1)[:, :-1]


@pytest.mark.parametrize(
    ("num_leaves", "params"),
    [
        (2, {}),
        (7, {}),
        (7, {"zero_as_missing": True}),
        (7, {"use_missing": False}),
        (MAX_SPLITS + 1, {"max_cat_to_onehot": 8}),
    ],
)
def test_contributions_equal_lightgbm_pred_contrib(num_leaves, params):
    booster = _booster(num_leaves, **params)
    tables = ContributionTables.of(booster)
    assert tables is not None
    x = _rows_to_explain(0)
    expected = _pred_contrib(booster, x)
    got = tables.contributions(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the reasons' order of features is the same as from pred_contrib's numbers
    np.testing.assert_array_equal(top_features(got.copy(), 3), top_features(expected.copy(), 3))


def test_models_with_the_modelled_split_kinds_are_tabled():
    """The boosters above really contain what the test claims to cover."""
    kinds = set()
    for params in ({}, {"zero_as_missing": True}, {"max_cat_to_onehot": 8}):
        model = _booster(7, **params).dump_model()

        def walk(node: dict) -> None:
            if "split_feature" in node:
                kinds.add((node["decision_type"], node["missing_type"]))
                walk(node["left_child"])
                walk(node["right_child"])

        for info in model["tree_info"]:
            walk(info["tree_structure"])
    assert {("<=", "NaN"), ("<=", "None"), ("<=", "Zero"), ("==", "None")} <= kinds


def test_larger_trees_and_several_outputs_keep_lightgbm(monkeypatch):
    booster = _booster(MAX_SPLITS + 2)
    assert ContributionTables.of(booster) is None
    x = _rows_to_explain(1)
    np.testing.assert_array_equal(shap_contributions(booster, x), _pred_contrib(booster, x))

    x_train, y = _data(2)
    multiclass = lgb.train(
        {"objective": "multiclass", "num_class": 3, "num_leaves": 4, "verbose": -1},
        lgb.Dataset(x_train, (y + (x_train[:, 1] > 6)).astype(int)),
        num_boost_round=5,
    )
    assert ContributionTables.of(multiclass) is None

    huge_codes = x_train.copy()
    huge_codes[:, 3] = np.where(huge_codes[:, 3] == 1, 70_000, huge_codes[:, 3])
    wide = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "max_cat_to_onehot": 8},
        lgb.Dataset(huge_codes, y, categorical_feature=[3]),
        num_boost_round=5,
    )
    assert "70000" in wide.model_to_string()
    # a code beyond the tabled range: LightGBM's numbers either way
    np.testing.assert_allclose(
        shap_contributions(wide, huge_codes), _pred_contrib(wide, huge_codes), rtol=0, atol=1e-12
    )


def test_constant_trees_contribute_nothing():
    """A booster whose trees have one leaf (nothing to split on) gives zero contributions."""
    x = np.ones((50, 3))
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 1},
        lgb.Dataset(x, np.arange(50.0)),
        num_boost_round=3,
    )
    tables = ContributionTables.of(booster)
    assert tables is not None
    np.testing.assert_array_equal(tables.contributions(x[:4]), np.zeros((4, 3)))
    np.testing.assert_array_equal(tables.contributions(x[:4]), _pred_contrib(booster, x[:4]))


def test_tables_are_built_once_per_booster_and_check_the_width(monkeypatch):
    booster = _booster(7)
    built = []
    original = ContributionTables.of.__func__

    def counting(cls, model):
        built.append(model)
        return original(cls, model)

    monkeypatch.setattr(ContributionTables, "of", classmethod(counting))
    monkeypatch.setattr(tree_shap, "_TABLES", type(tree_shap._TABLES)())
    x = _rows_to_explain(2)
    first = shap_contributions(booster, x)
    second = shap_contributions(booster, x[:10])
    assert len(built) == 1
    np.testing.assert_array_equal(second, first[:10])
    with pytest.raises(ValueError, match=r"expected \(rows, 5\)"):
        shap_contributions(booster, x[:, :4])
