"""Text from data reaches the console as text: no markup, no escape sequences, never wrapped."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

import flows.cli as cli
from flows.cli import EXIT_BAD_INPUT, EXIT_OK, app, run_command
from mia.errors import InputError
from mia.lake import Lake

NIGHT = dt.date(2026, 3, 10)
# An id with rich markup, an ANSI escape sequence (clear screen) and a bidi override.
HOSTILE_ID = "promo_[/bold]_[red]x\x1b[2J\u202eexe.txt"
HOSTILE_SHOWN = "promo_[/bold]_[red]x\\x1b[2J\\u202eexe.txt"


def mia(*arguments: str) -> int:
    return run_command(lambda: app(list(arguments), standalone_mode=True))


def test_error_message_is_shown_as_text_with_control_characters_escaped(capsys):
    def fail():
        raise InputError(f"offer {HOSTILE_ID!r} is bad")

    assert run_command(fail) == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err
    assert "\x1b" not in stderr and "\u202e" not in stderr
    assert "[/bold]" in stderr and "[red]x" in stderr


def test_bad_date_is_echoed_as_given(capsys):
    assert mia("lift", "--from", "[red]x", "--to", "2026-03-10") == EXIT_BAD_INPUT
    assert "--from == '[red]x'" in capsys.readouterr().err


def test_long_errors_are_one_line_each_when_piped(capsys):
    def fail():
        raise InputError("first " + "x" * 5000 + "\nsecond")

    assert run_command(fail) == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: first xxx") and lines[1] == "second"


def test_ingest_shows_the_contract_error_for_a_cell_with_brackets(tmp_path, capsys):
    delivery = tmp_path / "delivery"
    delivery.mkdir()
    (delivery / "usage.csv").write_text(
        "subscriber_id,ts,kind,quantity,charge\n1,2026-03-10 09:30:00,data,[/bold],0\n"
    )
    code = mia(
        "ingest",
        "--data-dir",
        str(tmp_path / "data"),
        "--date",
        "2026-03-10",
        "--from",
        str(delivery),
    )
    assert code == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err
    assert "usage.quantity: rule 'type'" in stderr and "'[/bold]'" in stderr


def write_audience_summary(root: Path) -> None:
    directory = Lake(root).audiences(NIGHT)
    directory.mkdir(parents=True)
    pl.DataFrame(
        {
            "offer_id": [HOSTILE_ID],
            "category": ["[bold]gift"],
            "audience_size": [3],
            "expected_accepts": [0.5],
            "expected_value": [10.0],
            "control_size": [1],
            "file": ["promo.csv"],
        }
    ).write_csv(directory / "summary.csv")


def write_offers(root: Path) -> None:
    directory = Lake(root).offers(NIGHT)
    directory.mkdir(parents=True)
    pl.DataFrame(
        {
            "subscriber_id": [7],
            "rank": [1],
            "offer_id": [HOSTILE_ID],
            "category": ["[bold]gift"],
            "p_accept": [0.25],
            "value": [10.0],
            "expected_value": [2.5],
            "reasons": ["[/]"],
        }
    ).write_parquet(directory / "offers.parquet")


@pytest.fixture(params=["piped", "terminal"])
def console(request, monkeypatch) -> io.StringIO | None:
    """None when stdout is piped (pytest captures it); else a buffer behind a terminal console."""
    if request.param == "piped":
        return None
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, force_terminal=True, width=300))
    return buffer


@pytest.mark.parametrize(
    ("arguments", "shows_offer_id"),
    [
        (("audience", "list"), True),
        (("offers", "show"), False),  # the summary per category
        (("offers", "show", "--subscriber", "7"), True),
    ],
)
def test_tables_show_data_as_text(tmp_path, capsys, console, arguments, shows_offer_id):
    root = tmp_path / "data"
    write_audience_summary(root)
    write_offers(root)
    code = mia(*arguments, "--data-dir", str(root), "--date", NIGHT.isoformat())
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    shown = captured.out if console is None else console.getvalue()
    assert "[bold]gift" in shown
    if shows_offer_id:
        assert HOSTILE_SHOWN in shown
        assert "\u202e" not in shown and "\x1b[2J" not in shown
