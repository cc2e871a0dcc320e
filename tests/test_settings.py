"""Settings: defaults, then mia.toml, then MIA_* variables, then explicit overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mia.errors import InputError
from mia.settings import Settings, SettingsError, load_settings


def test_later_sources_win(tmp_path):
    config = tmp_path / "mia.toml"
    config.write_text('top_k = 3\nmax_per_category = 1\ndata_dir = "lake"\n')
    environ = {"MIA_CONFIG": str(config), "MIA_MAX_PER_CATEGORY": "2", "MIA_SEED": "11"}
    settings = load_settings(environ=environ, seed=5)
    assert settings.top_k == 3  # file over default
    assert settings.max_per_category == 2  # environment over file
    assert settings.seed == 5  # override over environment
    assert settings.data_dir == Path("lake")
    assert settings.horizon_days == Settings().horizon_days  # default


def test_values_are_typed_from_text(tmp_path):
    environ = {
        "MIA_CATEGORY_WEIGHTS": "roaming=1.5, gift=0.5",
        "MIA_WINDOWS": "7,30",
        "MIA_CONTROL_SHARE": "0.2",
        "MIA_CONFIG": str(tmp_path / "absent.toml"),
    }
    settings = load_settings(environ=environ)
    assert settings.category_weights == {"roaming": 1.5, "gift": 0.5}
    assert settings.windows == (7, 30)
    assert settings.control_share == 0.2
    assert settings.category_weight("roaming") == 1.5 and settings.category_weight("tariff") == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"top_k": 0}, "top_k == 0, must be >= 1"),
        ({"control_share": 0.95}, "control_share == 0.95, must be <= 0.9"),
        ({"category_weights": {"gift": -1.0}}, "category_weights['gift'] == -1.0, must be >= 0"),
        ({"windows": (7, 0)}, "windows == (7, 0)"),
    ],
)
def test_bad_values_are_refused_with_the_rule(changes, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings(**changes)


def test_unknown_or_unreadable_settings_are_bad_input(tmp_path):
    config = tmp_path / "mia.toml"
    config.write_text("top_kk = 3\n")
    with pytest.raises(InputError, match="unknown setting 'top_kk'"):
        load_settings(config_file=config, environ={})
    with pytest.raises(InputError, match="MIA_TOP_K == 'many' cannot be read as int"):
        load_settings(environ={"MIA_TOP_K": "many", "MIA_CONFIG": str(tmp_path / "none")})
    with pytest.raises(InputError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})
