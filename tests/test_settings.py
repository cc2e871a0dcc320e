"""Settings: defaults, then mia.toml, then MIA_* variables, then explicit overrides."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from mia.errors import InputError
from mia.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def empty_working_folder(tmp_path, monkeypatch):
    """No ./mia.toml: only the sources a test names."""
    monkeypatch.chdir(tmp_path)


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
        "MIA_TOP_K": "4",
        "MIA_DASK_ADDRESS": "",  # empty: not set
    }
    settings = load_settings(environ=environ, n_shards="3")  # a flag's text parses too
    assert settings.category_weights == {"roaming": 1.5, "gift": 0.5}
    assert settings.windows == (7, 30)
    assert settings.control_share == 0.2
    assert settings.top_k == 4 and settings.n_shards == 3 and settings.dask_address is None
    assert settings.category_weight("roaming") == 1.5 and settings.category_weight("tariff") == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"top_k": 0}, "top_k == 0, must be >= 1."),
        ({"top_k": 5.7}, "top_k == 5.7, must be a whole number"),
        ({"top_k": True}, "top_k == True, must be a whole number"),
        ({"top_k": "5"}, "top_k == '5', must be a whole number"),
        ({"control_share": 0.95}, "control_share == 0.95, must be <= 0.9"),
        ({"control_share": math.nan}, "control_share == nan, must be a finite number"),
        ({"random_arm_share": 0.6}, "random_arm_share == 0.6, must be <= 0.5"),
        (
            {"random_arm_share": 0.3, "propensity_only_arm_share": 0.25},
            "propensity_only_arm_share == 0.25, with random_arm_share, must sum to <= 0.5",
        ),
        ({"coverage": math.nan}, "coverage == nan, must be a finite number"),
        ({"exploration_share": math.nan}, "exploration_share == nan, must be a finite number"),
        ({"min_probability": math.nan}, "min_probability == nan, must be a finite number"),
        ({"retrain_interval_days": -1}, "retrain_interval_days == -1, must be >= 1"),
        ({"min_positives": -5}, "min_positives == -5, must be >= 1"),
        ({"gate_tolerance": -0.1}, "gate_tolerance == -0.1, must be >= 0"),
        ({"als_factors": 0}, "als_factors == 0, must be >= 1"),
        ({"num_threads": 100000}, "num_threads == 100000, must be <= 1024"),
        ({"event_max_age_days": 0}, "event_max_age_days == 0, must be >= 1"),
        ({"keep_night_versions": 0}, "keep_night_versions == 0, must be >= 1"),
        ({"group_salt": ""}, "group_salt == '', must not be empty"),
        ({"group_salt": "  "}, "group_salt == '  ', must not be blank"),
        ({"timezone": "Europe/Berlim"}, "did you mean 'Europe/Berlin'?"),
        ({"timezone": "Mars/Olympus"}, "timezone == 'Mars/Olympus', must be an IANA time zone"),
        ({"schedule_cron": "every night"}, "schedule_cron == 'every night', must be a cron"),
        ({"schedule_cron": "0 25 * * *"}, "hour '25' is not a value or range within 0-23"),
        ({"category_weights": {"gift": -1.0}}, "category_weights['gift'] == -1.0, must be >= 0"),
        ({"category_weights": {"gift": math.inf}}, "category_weights['gift'] == inf, must be a"),
        ({"category_weights": {" ": 1.0}}, "category names must not be blank"),
        ({"windows": (7, 0)}, "windows[1] == 0, must be >= 1"),
        ({"windows": (7, 7)}, "windows == (7, 7), must be distinct"),
        ({"top_kk": 3}, "unknown setting 'top_kk'; did you mean 'top_k'?"),
    ],
)
def test_bad_values_are_refused_with_the_rule(changes, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings(**changes)
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings().replace(**changes)


def test_settings_are_frozen_and_replace_keeps_the_rest():
    settings = Settings(top_k=3, category_weights={"roaming": 2.0})
    changed = settings.replace(max_per_category=1)
    assert (changed.top_k, changed.max_per_category, changed.category_weights) == (
        3,
        1,
        {"roaming": 2.0},
    )
    with pytest.raises(ValueError, match="frozen"):
        settings.top_k = 4


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("MIA_TOP_K", "5.7", "top_k == '5.7' (from MIA_TOP_K), must be a whole number"),
        ("MIA_TOP_K", "true", "top_k == 'true' (from MIA_TOP_K), must be a whole number"),
        ("MIA_TOP_K", "many", "top_k == 'many' (from MIA_TOP_K), must be a whole number"),
        ("MIA_CONTROL_SHARE", "nan", "control_share == nan (from MIA_CONTROL_SHARE), must be a"),
        ("MIA_TOP_K", "0", "top_k == 0 (from MIA_TOP_K), must be >= 1"),
        ("MIA_WINDOWS", "7,x", "windows == '7,x' (from MIA_WINDOWS), must be a whole number"),
        ("MIA_CATEGORY_WEIGHTS", "roaming", "must be name=value pairs"),
        ("MIA_TOPK", "5", "unknown environment variable MIA_TOPK; did you mean 'MIA_TOP_K'?"),
    ],
)
def test_environment_values_are_parsed_strictly_and_named(variable, text, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(environ={variable: text})


def test_file_values_keep_their_type_and_name_the_file(tmp_path):
    config = tmp_path / "mia.toml"
    config.write_text("[mia]\ntop_k = 5.7\n")
    with pytest.raises(SettingsError, match=re.escape(f"top_k == 5.7 (from {config}), must be a")):
        load_settings(config_file=config, environ={})
    config.write_text("coverage = nan\n")
    with pytest.raises(SettingsError, match=re.escape(f"coverage == nan (from {config})")):
        load_settings(config_file=config, environ={})
    config.write_text("top_k = true\n")
    with pytest.raises(SettingsError, match=re.escape(f"top_k == True (from {config})")):
        load_settings(config_file=config, environ={})


def test_an_override_names_its_argument():
    with pytest.raises(SettingsError, match=re.escape("(from argument top_k), must be >= 1")):
        load_settings(environ={}, top_k=0)
    with pytest.raises(SettingsError, match=re.escape("'5.5' (from argument n_shards)")):
        load_settings(environ={}, n_shards="5.5")
    with pytest.raises(SettingsError, match=re.escape("unknown setting 'shards'")):
        load_settings(environ={}, shards=3)


def test_unknown_or_unreadable_settings_files_are_bad_input(tmp_path):
    config = tmp_path / "mia.toml"
    config.write_text("top_kk = 3\n")
    with pytest.raises(InputError, match="unknown setting 'top_kk'.*did you mean 'top_k'"):
        load_settings(config_file=config, environ={})
    with pytest.raises(InputError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})
    with pytest.raises(InputError, match="MIA_CONFIG: settings file .*missing.toml does not exist"):
        load_settings(environ={"MIA_CONFIG": str(tmp_path / "missing.toml")})
    config.write_text("top_k = \n")
    with pytest.raises(InputError, match=f"settings file {re.escape(str(config))} is not valid"):
        load_settings(config_file=config, environ={})
    config.write_text("top_k = 3\n[mia]\nseed = 2\n")
    with pytest.raises(InputError, match=r"\['top_k'\] outside the \[mia\] table"):
        load_settings(config_file=config, environ={})


def test_a_mia_table_holds_the_settings(tmp_path):
    config = tmp_path / "mia.toml"
    config.write_text("[mia]\ntop_k = 3\nwindows = [7, 28]\n[mia.category_weights]\ngift = 0.5\n")
    settings = load_settings(config_file=config, environ={})
    assert (settings.top_k, settings.windows) == (3, (7, 28))
    assert settings.category_weights == {"gift": 0.5}


def test_other_mia_variables_are_not_settings(tmp_path):
    assert load_settings(environ={"MIA_PROGRESS": "1"}) == Settings()


@pytest.mark.parametrize(
    "cron", ["0 3 * * *", "*/15 1-5 * * mon-fri", "30 2 1,15 jan-jun 0", "@daily", "5/10 0 * * 7"]
)
def test_cron_schedules_accepted_here_are_accepted_by_prefect(cron):
    from prefect.client.schemas.schedules import CronSchedule

    settings = Settings(schedule_cron=cron, timezone="Europe/Moscow")
    CronSchedule(cron=settings.schedule_cron, timezone=settings.timezone)


def test_category_weights_are_checked_against_the_catalog():
    settings = Settings(category_weights={"roamin": 1.5, "gift": 0.5})
    settings.check_categories(["gift", "roamin", "tariff"])
    with pytest.raises(InputError, match=re.escape("categories: ['gift', 'roaming', 'tariff']")):
        settings.check_categories(["gift", "roaming", "tariff"])
    with pytest.raises(InputError, match=re.escape("['roamin'] ('roamin': did you mean 'roaming'")):
        settings.check_categories(["gift", "roaming", "tariff"])


def test_a_night_refuses_weights_of_categories_its_catalog_lacks(tmp_path):
    from flows.steps import night_inputs
    from mia.ingest import ingest_day
    from mia.lake import Lake
    from tests.test_contracts import DAY, valid_day
    from tests.test_ingest import deliver

    lake = Lake(tmp_path / "data")
    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    assert night_inputs(lake, DAY, Settings(category_weights={"roaming": 2.0}))["catalog"].height
    with pytest.raises(InputError, match=f"the catalog of {DAY} does not have: \\['roamin'\\]"):
        night_inputs(lake, DAY, Settings(category_weights={"roamin": 2.0}))


def test_the_mlflow_store_defaults_into_the_data_root():
    settings = load_settings(environ={"MIA_DATA_DIR": "/srv/operator"})
    assert settings.mlflow_uri == "sqlite:////srv/operator/mlruns/mlflow.db"
    assert settings.mlflow_artifacts == Path("/srv/operator/mlruns/artifacts")
    assert Settings().mlflow_uri == "sqlite:///data/mlruns/mlflow.db"
    moved = settings.replace(data_dir=Path("/srv/other"))
    assert moved.mlflow_uri == "sqlite:////srv/other/mlruns/mlflow.db"
    shared = load_settings(
        environ={"MIA_MLFLOW_URI": "sqlite:////srv/models.db", "MIA_SHARED_REGISTRY": "true"}
    )
    assert shared.mlflow_uri == "sqlite:////srv/models.db" and shared.shared_registry is True
    assert shared.replace(data_dir=Path("/x")).mlflow_uri == "sqlite:////srv/models.db"
