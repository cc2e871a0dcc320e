"""The identity of a data root: a random id written once into the root.

Models registered from a root carry its id (`models.registry`), so a champion is never used to
score another root's data by accident. The id lives in `<root>/.mia-root.json`, created on first
use (atomically: a complete file appears under its name, or none) and never overwritten, so it
follows the root when the folder is moved or copied with its hidden files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from mia.errors import InputError
from mia.lake import temporary_sibling

ROOT_ID_FILE = ".mia-root.json"


class RootIdentityError(InputError):
    """A data root's identity file exists but cannot be read."""


@dataclass(frozen=True)
class RootIdentity:
    """A data root's id and its absolute path."""

    id: str
    path: Path


def read_root_identity(root: Path | str) -> RootIdentity | None:
    """The identity of `root`, or None when it has none yet (nothing is written)."""
    path = Path(root).absolute()
    file = path / ROOT_ID_FILE
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _damaged(file, error) from error
    try:
        root_id = json.loads(text)["root_id"]
        uuid.UUID(hex=root_id)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise _damaged(file, error) from error
    return RootIdentity(root_id, path)


def root_identity(root: Path | str) -> RootIdentity:
    """The identity of `root`, created on first use (the root folder must exist)."""
    found = read_root_identity(root)
    if found is not None:
        return found
    path = Path(root).absolute()
    if not path.is_dir():
        raise InputError(f"data root {path} does not exist (or is not a folder).")
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    payload = {"root_id": uuid.uuid4().hex, "created": created}
    temporary = temporary_sibling(path / ROOT_ID_FILE)
    try:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        # A hard link never replaces an existing name: of two first uses, one id wins.
        os.link(temporary, path / ROOT_ID_FILE)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    return read_root_identity(path)


def _damaged(file: Path, error: Exception) -> RootIdentityError:
    return RootIdentityError(
        f"{file} cannot be read ({error}); it holds this data root's id, which its registered "
        "models carry (MLflow model version tag mia.data_root_id). Restore the file from a "
        'backup, or write {"root_id": "<that tag>"} into it.'
    )
