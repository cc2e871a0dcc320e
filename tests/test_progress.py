"""Long steps show progress a person can read: which part, n of N, elapsed time."""

from __future__ import annotations

import re
import threading

from flows import cli
from mia import progress
from mia.progress import report_progress


def test_piped_progress_is_plain_lines_naming_the_part_n_of_n_and_the_time(capsys, monkeypatch):
    monkeypatch.delenv("MIA_PROGRESS", raising=False)
    with cli._progress():
        worker = threading.Thread(  # flows report from their task threads
            target=lambda: [
                report_progress("propensity models", done, 2, item)
                for done, item in enumerate(["tariffs", "[red]roaming" + "_long" * 20])
            ]
        )
        worker.start()
        worker.join()
        report_progress("propensity models", 2, 2)
    lines = [line.rsplit(", ", 1) for line in capsys.readouterr().err.splitlines()]
    assert [where for where, _ in lines] == [
        "propensity models: tariffs (1 of 2)",
        "propensity models: [red]roaming" + "_long" * 20 + " (2 of 2)",  # one line, not wrapped
        "propensity models: 2 of 2 done",
    ]
    assert all(re.fullmatch(r"\d+s elapsed", elapsed) for _, elapsed in lines)


def test_progress_bars_show_names_from_data_as_text(capsys, monkeypatch):
    monkeypatch.setenv("MIA_PROGRESS", "1")
    with cli._progress():
        report_progress("propensity models", 0, 2, "[bold]roaming[/bold]")
    assert "[bold]roaming[/bold]" in capsys.readouterr().err


def test_durations_read_as_hours_minutes_seconds():
    assert [cli._duration(s) for s in (5, 65, 3 * 3600 + 62)] == ["5s", "1m05s", "3h01m02s"]


def test_timed_parts_add_up_per_name_inside_a_collection_only(monkeypatch):
    clock = iter([0.0, 2.0, 10.0, 13.0, 20.0, 21.0])  # (start, end) of three timed blocks
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    cpu = iter([0.0, 1.0, 5.0, 9.0, 20.0, 20.5])
    monkeypatch.setattr(progress.time, "process_time", lambda: next(cpu))
    # The process's high-water mark: fit raises it by 100, load by 0, the failed fit by 50.
    peak = iter([1000, 1100, 1100, 1100, 1100, 1150])
    monkeypatch.setattr(progress, "peak_rss_bytes", lambda: next(peak))
    with progress.timed_part("ignored"):  # nothing collects: no clock is read
        pass
    with progress.collect_part_seconds() as seconds:
        with progress.timed_part("fit"):
            pass
        with progress.timed_part("load"):
            pass
        try:
            with progress.timed_part("fit"):
                raise ValueError("a failed part still counts")
        except ValueError:
            pass
    assert seconds.wall == {"fit": 3.0, "load": 3.0}
    assert seconds.cpu == {"fit": 1.5, "load": 4.0}
    assert seconds.peak_rise == {"fit": 150, "load": 0}
    with progress.timed_part("after"):  # the collection has ended
        pass
    assert "after" not in seconds.wall
