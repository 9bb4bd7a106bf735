"""Progress on a log file: plain lines with counts, rate and time left, and a last line."""

import io

from shards.progress import Progress


def test_progress_writes_plain_lines_when_not_on_a_terminal():
    log = io.StringIO()  # not a TTY, like a SLURM log
    with Progress(100, "sim-eyes real", unit="img", every=0.0, stream=log) as bar:
        bar.update(40)
        bar.set_postfix({"step": "4/10"})
        bar.update(60)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("sim-eyes real: 40/100 img (40%), ") and "left" in lines[0]
    assert lines[-1].startswith("sim-eyes real: 100/100 img (100%)")
    assert lines[-1].endswith("; step 4/10") and "left" not in lines[-1]
    assert "\r" not in log.getvalue()


def test_progress_is_quiet_when_disabled_or_between_intervals():
    log = io.StringIO()
    with Progress(10, "x", enabled=False, every=0.0, stream=log) as bar:
        bar.update(10)
    assert log.getvalue() == ""
    with Progress(10, "y", every=3600.0, stream=log) as bar:
        for _ in range(10):
            bar.update(1)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]  # the end only
    assert log.getvalue().startswith("y: 10/10")
