"""SHAP contributions of small LightGBM trees from tables: LightGBM's `pred_contrib`, faster.

Path-dependent TreeSHAP (what `booster.predict(x, pred_contrib=True)` computes) gives each row,
in each tree, the exact Shapley values of the game v(S) = sum over leaves of the leaf value times,
for every split on the leaf's path, 1/0 (does the row take that branch) when the split's feature
is in S, else the share of training rows that took it. Those values depend on the row only
through the direction it takes at each of the tree's splits, so a tree of s splits has at most
2**s different contribution vectors. For trees of at most `MAX_SPLITS` splits (the category
models have 6) `ContributionTables` computes all of them once per booster; a row then needs one
comparison per split and one table lookup per tree instead of TreeSHAP's walk over every leaf
and path, about a tenth of the work. The numbers equal LightGBM's up to rounding (the tests
compare to 1e-9 on rows with missing values, unseen and negative categories); boosters with
larger trees, or features LightGBM splits on in ways this module does not model, keep
`pred_contrib`.

For one leaf with the set F of distinct features on its path (m of them), and per feature j
a_j = 1 if the row takes every branch on j along the path (else 0) and b_j the product of the
shares of training rows along those branches, the Shapley value of i in F is

    value * (a_i - b_i) * sum_k k! (m - 1 - k)! / m! * [z^k] prod_{j in F, j != i} (b_j + a_j z)

and a tree's contribution to feature i is the sum of that over its leaves.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from scipy import sparse

MAX_SPLITS = 8  # 2**8 direction patterns per tree: the tables stay small
_ROWS_PER_BLOCK = 1024  # rows per pass: a block's split values (64 bytes a tree) stay in cache
_MAX_CODE = 1 << 16  # largest category code tabled (a bit per code and categorical split)
_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float) for missing_type Zero


@dataclass(frozen=True)
class _Tree:
    """One tree of a dumped model: its splits in pre-order and its leaves' paths."""

    features: list[int]  # per split
    thresholds: list[float]  # per numerical split (NaN for categorical ones)
    categories: list[frozenset[int] | None]  # per categorical split, else None
    default_left: list[bool]
    missing: list[str]  # "None", "Zero" or "NaN"
    leaf_values: list[float]
    paths: list[list[tuple[int, bool, float]]]  # per leaf: (split, goes left, share of rows)
    linear: list[bool]  # per leaf: has a linear model (not modelled here)


def _parse_tree(root: dict) -> _Tree:
    """A dumped tree (`Booster.dump_model()["tree_info"][i]["tree_structure"]`) as flat lists."""
    tree = _Tree([], [], [], [], [], [], [], [])

    def count(node: dict) -> float:
        return float(node["leaf_count"] if "leaf_index" in node else node["internal_count"])

    def walk(node: dict, path: list[tuple[int, bool, float]]) -> None:
        if "leaf_index" in node:
            tree.leaf_values.append(float(node["leaf_value"]))
            tree.paths.append(path)
            tree.linear.append("leaf_coeff" in node)
            return
        split = len(tree.features)
        tree.features.append(int(node["split_feature"]))
        if node["decision_type"] == "==":
            tree.thresholds.append(math.nan)
            tree.categories.append(frozenset(int(c) for c in str(node["threshold"]).split("||")))
        else:
            tree.thresholds.append(float(node["threshold"]))
            tree.categories.append(None)
        tree.default_left.append(bool(node["default_left"]))
        tree.missing.append(str(node["missing_type"]))
        total = count(node)
        for child, left in ((node["left_child"], True), (node["right_child"], False)):
            walk(child, [*path, (split, left, count(child) / total)])

    walk(root, [])
    return tree


def _shapley_weights(depth: int) -> np.ndarray:
    """weights[m, k] = k! (m - 1 - k)! / m! for 0 <= k < m <= depth, else 0."""
    weights = np.zeros((depth + 1, depth + 1))
    for m in range(1, depth + 1):
        for k in range(m):
            weights[m, k] = math.factorial(k) * math.factorial(m - 1 - k) / math.factorial(m)
    return weights


def _tree_table(tree: _Tree) -> tuple[np.ndarray, np.ndarray]:
    """(features, table): the tree's distinct split features and table[pattern, slot], the
    contribution to features[slot] of a row whose bit s of pattern is set when it goes left at
    split s."""
    splits = len(tree.features)
    features = np.array(sorted(set(tree.features)), dtype=np.int64)
    slot_of = {int(feature): slot for slot, feature in enumerate(features)}
    patterns = np.arange(1 << splits)
    left = ((patterns[:, None] >> np.arange(splits)) & 1).astype(bool)  # [pattern, split]
    table = np.zeros((len(patterns), len(features)))
    weights = _shapley_weights(max(len(path) for path in tree.paths))
    for value, path in zip(tree.leaf_values, tree.paths, strict=True):
        distinct = sorted({tree.features[split] for split, _, _ in path})
        taken = np.ones((len(distinct), len(patterns)))  # a_j per pattern
        share = np.ones(len(distinct))  # b_j
        for split, goes_left, fraction in path:
            j = distinct.index(tree.features[split])
            taken[j] *= left[:, split] == goes_left
            share[j] *= fraction
        m = len(distinct)
        for i in range(m):
            # coefficients of prod_{j != i} (b_j + a_j z), one column per pattern
            poly = np.zeros((m + 1, len(patterns)))
            poly[0] = 1.0
            for j in range(m):
                if j != i:
                    poly[1:] = share[j] * poly[1:] + taken[j] * poly[:-1]
                    poly[0] = share[j] * poly[0]
            weighted = weights[m, : m + 1] @ poly
            table[:, slot_of[distinct[i]]] += value * (taken[i] - share[i]) * weighted
    return features, table


class ContributionTables:
    """A booster's trees as direction-pattern tables: `contributions(x)` equals
    `booster.predict(x, pred_contrib=True)[:, :-1]` up to rounding."""

    def __init__(self, trees: list[_Tree], n_features: int) -> None:
        self.n_features = n_features
        trees = [tree for tree in trees if tree.features]  # one leaf: no contributions
        shape = (len(trees), MAX_SPLITS)  # every tree's splits padded to MAX_SPLITS
        self._split_feature = np.zeros(shape, dtype=np.int64)
        # padding splits compare with NaN, which is never true: their bit stays 0
        self._threshold = np.full(shape, np.nan)
        self._nan_left = np.zeros(shape, dtype=bool)
        zero_missing, categorical, codes = [], [], []
        tables, entry_tree, entry_offset, entry_stride, entry_feature = [], [], [], [], []
        offset = 0
        for t, tree in enumerate(trees):
            for s, feature in enumerate(tree.features):
                self._split_feature[t, s] = feature
                if tree.categories[s] is not None:
                    categorical.append((t, s))
                    codes.append(tree.categories[s])
                    continue
                threshold, default_left = tree.thresholds[s], tree.default_left[s]
                self._threshold[t, s] = threshold
                # NaN goes the default way when missing values are NaN or zero, else as 0.0
                missing = tree.missing[s]
                as_zero = threshold >= 0
                self._nan_left[t, s] = default_left if missing in ("NaN", "Zero") else as_zero
                if missing == "Zero":
                    zero_missing.append((t, s, default_left))
            features, table = _tree_table(tree)
            tables.append(table.ravel())
            for slot, feature in enumerate(features):
                entry_tree.append(t)
                entry_offset.append(offset + slot)
                entry_stride.append(len(features))
                entry_feature.append(feature)
            offset += table.size
        self._zero_missing = zero_missing
        # categorical splits: left when the value's integer part is a code in the split's set
        self._categorical = (
            np.array([t for t, _ in categorical], dtype=np.int64),
            np.array([s for _, s in categorical], dtype=np.int64),
        )
        width = max((max(c) for c in codes), default=0) + 2  # last column: out of range, right
        self._category_left = np.zeros((len(codes), width), dtype=bool)
        for row, left_codes in enumerate(codes):
            self._category_left[row, sorted(left_codes)] = True
        self._table = np.concatenate(tables) if tables else np.zeros(0)
        self._entry_tree = np.array(entry_tree, dtype=np.int64)
        self._entry_offset = np.array(entry_offset, dtype=np.int32)
        self._entry_stride = np.array(entry_stride, dtype=np.int32)
        # [feature, entry]: sums each feature's entries, in tree order
        self._feature_of_entry = sparse.csr_matrix(
            (np.ones(len(entry_feature)), (entry_feature, np.arange(len(entry_feature)))),
            shape=(n_features, len(entry_feature)),
        )

    @classmethod
    def of(cls, booster: lgb.Booster) -> ContributionTables | None:
        """Tables of `booster`, or None when a tree has more than MAX_SPLITS splits, linear
        leaves, a category code of _MAX_CODE or more, or several outputs per row (those keep
        LightGBM's `pred_contrib`)."""
        model = booster.dump_model()
        if model.get("num_tree_per_iteration", 1) != 1 or model.get("average_output", False):
            return None
        trees = []
        for info in model["tree_info"]:
            if info["num_leaves"] - 1 > MAX_SPLITS:
                return None
            if info["num_leaves"] > 1:
                trees.append(_parse_tree(info["tree_structure"]))
        if any(any(tree.linear) for tree in trees):
            return None
        codes = [max(c) for tree in trees for c in tree.categories if c is not None]
        if max(codes, default=0) >= _MAX_CODE:
            return None
        return cls(trees, booster.num_feature())

    def _patterns(self, columns: np.ndarray) -> np.ndarray:
        """patterns[tree, row] of feature columns [feature, row]: bit s set when the row goes
        left at the tree's split s."""
        values = columns[self._split_feature]  # [tree, split, row]
        with np.errstate(invalid="ignore"):
            left = values <= self._threshold[:, :, None]
        missing = np.isnan(values)
        if missing.any():
            left |= missing & self._nan_left[:, :, None]
        for t, s, default_left in self._zero_missing:
            row = values[t, s]
            zero = np.isnan(row) | ((row >= -_ZERO) & (row <= _ZERO))
            left[t, s] = np.where(zero, default_left, left[t, s])
        if len(self._category_left):
            trees, splits = self._categorical
            out_of_range = self._category_left.shape[1] - 1
            # NaN and negative values go right; others by their integer part, as LightGBM does
            with np.errstate(invalid="ignore"):
                whole = np.trunc(values[trees, splits])
                inside = (whole >= 0) & (whole < out_of_range)
            code = np.where(inside, whole, out_of_range).astype(np.intp)
            left[trees, splits] = self._category_left[np.arange(len(trees))[:, None], code]
        bits = left.view(np.uint8)
        patterns = bits[:, 0].astype(np.int32)
        for s in range(1, MAX_SPLITS):
            patterns |= bits[:, s].astype(np.int32) << s
        return patterns

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per row of `x` (float64, one column per booster feature) the SHAP value of every
        feature: `booster.predict(x, pred_contrib=True)` without its expected-value column."""
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x has shape {x.shape}; expected (rows, {self.n_features}).")
        out = np.zeros((self.n_features, x.shape[0]))
        stride = self._entry_stride[:, None]
        offset = self._entry_offset[:, None]
        for start in range(0, x.shape[0], _ROWS_PER_BLOCK):
            block = slice(start, start + _ROWS_PER_BLOCK)
            columns = np.ascontiguousarray(x[block].T, dtype=np.float64)  # [feature, row]
            patterns = self._patterns(columns)[self._entry_tree]  # [entry, row]
            out[:, block] = self._feature_of_entry @ self._table[patterns * stride + offset]
        return out.T


_TABLES: weakref.WeakKeyDictionary[lgb.Booster, ContributionTables | None] = (
    weakref.WeakKeyDictionary()
)


def shap_contributions(booster: lgb.Booster, x: np.ndarray, num_threads: int = 0) -> np.ndarray:
    """`booster.predict(x, pred_contrib=True)` without its last (expected value) column, from
    tables built once per booster where its trees are small enough, else from LightGBM."""
    if booster not in _TABLES:
        _TABLES[booster] = ContributionTables.of(booster)
    tables = _TABLES[booster]
    if tables is None:
        contributions = booster.predict(x, pred_contrib=True, num_threads=num_threads)
        return np.asarray(contributions)[:, :-1]
    return tables.contributions(x)
