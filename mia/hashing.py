"""Stable, salted hashing of subscriber ids: groups, coverage and shards that never move.

The hash is SplitMix64 over the id mixed with a salt digest, computed in numpy, so it does not
depend on the version of any dataframe library and is the same on every machine and every night.
Files are identified by a SHA-256 of their bytes (`file_digest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _salt_value(salt: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))


def stable_hash(ids: np.ndarray | pl.Series, salt: str) -> np.ndarray:
    """64-bit SplitMix64 hash of integer ids mixed with `salt` (uint64 array)."""
    values = np.asarray(ids.to_numpy() if isinstance(ids, pl.Series) else ids).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = values + _salt_value(salt) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        return z ^ (z >> np.uint64(31))


def text_hash(values: np.ndarray | pl.Series | list[str], salt: str) -> np.ndarray:
    """64-bit hash of strings (such as offer ids) mixed with `salt` (uint64 array)."""
    texts = values.to_list() if isinstance(values, pl.Series) else list(values)
    digests = {
        text: int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "little")
        for text in set(texts)
    }
    return np.array([digests[text] for text in texts], dtype=np.uint64)


def pair_hash(
    ids: np.ndarray | pl.Series, text_hashes: np.ndarray | pl.Series, salt: str
) -> np.ndarray:
    """64-bit hash of (integer id, string) pairs, such as (subscriber, offer), mixed with `salt`;
    the strings come as their `text_hash` (computed once per distinct string)."""
    keys = text_hashes.to_numpy() if isinstance(text_hashes, pl.Series) else text_hashes
    return stable_hash(stable_hash(ids, salt) ^ np.asarray(keys, dtype=np.uint64), salt)


def unit_interval(ids: np.ndarray | pl.Series, salt: str) -> np.ndarray:
    """A stable pseudo-uniform number in [0, 1) per id."""
    return (stable_hash(ids, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


SHARD_SALT = "mia-shards-v1"
SHARD_KEY_BITS = 16
SHARD_KEYS = 1 << SHARD_KEY_BITS


def shard_key(ids: np.ndarray | pl.Series) -> np.ndarray:
    """Stable 16-bit key per id (uint16); shards are contiguous ranges of keys."""
    return (stable_hash(ids, SHARD_SALT) >> np.uint64(64 - SHARD_KEY_BITS)).astype(np.uint16)


def _check_shards(n_shards: int) -> None:
    if not 1 <= n_shards <= SHARD_KEYS:
        raise ValueError(f"n_shards == {n_shards}, must be in [1, {SHARD_KEYS}].")


def shard_of(ids: np.ndarray | pl.Series, n_shards: int) -> np.ndarray:
    """Shard number in [0, n_shards) per id, stable across runs and subscriber counts."""
    _check_shards(n_shards)
    return (shard_key(ids).astype(np.int64) * n_shards) >> SHARD_KEY_BITS


def shard_key_range(shard: int, n_shards: int) -> tuple[int, int]:
    """[low, high) of the shard keys of `shard`: its ids are exactly those with a key inside.

    Data stored sorted by shard key (mia.lake.keyed_by_shard) is read per shard by skipping
    every Parquet row group outside this range, so a shard costs its own rows only.
    """
    _check_shards(n_shards)
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard == {shard}, must be in [0, {n_shards}).")
    return -(-shard * SHARD_KEYS // n_shards), -(-(shard + 1) * SHARD_KEYS // n_shards)


def control_mask(ids: np.ndarray | pl.Series, salt: str, control_share: float) -> np.ndarray:
    """True for subscribers in the persistent control group (a stable `control_share` of ids)."""
    return unit_interval(ids, salt + ":control") < control_share


def coverage_mask(ids: np.ndarray | pl.Series, salt: str, coverage: float) -> np.ndarray:
    """True for subscribers covered by tonight's offers (a stable `coverage` share of ids)."""
    return unit_interval(ids, salt + ":coverage") < coverage


def file_digest(paths: Iterable[Path | str]) -> str:
    """SHA-256 (hex) of the files' names, sizes and bytes, in the order given."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
