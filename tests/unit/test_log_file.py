"""The log file: rotation by size and age with gzip, retention, levels, echo, redaction."""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path

import pytest

from skyward_trio import LogConfig
from skyward_trio._logging import (
    TRACE,
    PoolLog,
    hiding,
    log,
    open_log,
    redact,
    secret_fields,
)
from skyward_trio._model import parse_rotation


def _lines(path: Path) -> list[str]:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode().splitlines()
    return path.read_text().splitlines()


def test_size_rotation_gzips_and_keeps_retention_files(tmp_path: Path) -> None:
    file = tmp_path / "logs" / "run.log"  # the directory is made
    config = LogConfig(file=str(file), rotation="2 KB", retention=2)
    with open_log(config):
        for k in range(200):
            log.info("line %03d %s", k, "x" * 60)
    names = sorted(p.name for p in file.parent.iterdir())
    assert names == ["run.log", "run.log.1.gz", "run.log.2.gz"]
    written = [*_lines(file.parent / "run.log.2.gz"), *_lines(file.parent / "run.log.1.gz")]
    written += _lines(file)
    numbers = [int(line.split("line ")[1][:3]) for line in written]
    assert numbers == list(range(numbers[0], 200))  # the newest lines, in order, none lost
    assert all(len(line) < 200 for line in written)
    assert file.stat().st_size <= 2_000


def test_age_rotation_keeps_retention_files(tmp_path: Path) -> None:
    file = tmp_path / "aged.log"
    with open_log(LogConfig(file=str(file), rotation="1 second", retention=1)):
        for k in range(3):
            log.info("tick %d", k)
            time.sleep(1.1)
        log.info("last")
    rotated = sorted(tmp_path.glob("aged.log.*"))
    assert len(rotated) == 1
    assert rotated[0].suffix == ".gz"
    assert _lines(rotated[0])[-1].endswith("tick 2")
    assert _lines(file)[-1].endswith("last")


def test_levels_filter_records(tmp_path: Path) -> None:
    file = tmp_path / "levels.log"
    with open_log(LogConfig(file=str(file), level="WARNING")):
        log.info("not this")
        log.warning("this")
    assert [line.split("  ")[-1] for line in _lines(file)] == ["this"]
    with open_log(LogConfig(file=str(file), level="TRACE")):
        log.log(TRACE, "fine detail")
    assert _lines(file)[-1].split("  ")[1].strip() == "TRACE"
    log.warning("no pool open: goes nowhere")
    assert "goes nowhere" not in file.read_text()


def test_echo_shows_diagnostics_not_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_log(LogConfig(file=str(tmp_path / "a.log"))):
        log.warning("disk nearly full")
        log.info("pool x: ClusterReady nodes=2", extra={"event": True})
    assert capsys.readouterr().err == "skyward WARNING: disk nearly full\n"
    with open_log(LogConfig(file=str(tmp_path / "a.log"), console=False)):
        log.warning("disk nearly full")
    assert capsys.readouterr().err == ""
    assert "ClusterReady" in (tmp_path / "a.log").read_text()


def test_secrets_never_reach_a_line(tmp_path: Path) -> None:
    file = tmp_path / "s.log"
    with hiding(["sk-fake-123"]), open_log(LogConfig(file=str(file))):
        log.info("connecting with sk-fake-123")
        try:
            raise RuntimeError("auth failed for key sk-fake-123")
        except RuntimeError:
            log.exception("provider said no")
        assert redact("a sk-fake-123 b") == "a *** b"
    text = file.read_text()
    assert "sk-fake-123" not in text
    assert text.count("***") == 3
    assert redact("sk-fake-123") == "sk-fake-123"  # forgotten once its pool closed


def test_credential_fields_of_a_provider_config() -> None:
    import attrs

    @attrs.frozen
    class FakeCloud:
        region: str = "us-east-1"
        api_key: str = "vast-fake-key"
        secret_access_key: str | None = None

    assert secret_fields(FakeCloud()) == ["vast-fake-key"]
    assert secret_fields(object()) == []


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("50 MB", ("size", 50_000_000)),
        ("1 KB", ("size", 1_000)),
        ("1.5 GB", ("size", 1_500_000_000)),
        ("1 day", ("age", 86_400)),
        ("2 hours", ("age", 7_200)),
        ("1 week", ("age", 604_800)),
    ],
)
def test_rotation_forms(text: str, parsed: tuple[str, int]) -> None:
    assert parse_rotation(text) == parsed


@pytest.mark.parametrize(
    "text",
    ["50MB", "fast", "0 MB", "-1 day", "3 fortnights", "MB 5", "inf MB", "1e400 MB", "nan day"],
)
def test_bad_rotation_is_refused_at_construction(text: str) -> None:
    with pytest.raises(ValueError, match=r"rotation must be a size such as '50 MB'"):
        LogConfig(rotation=text)


def test_closing_a_log_restores_the_logger(tmp_path: Path) -> None:
    before = (log.level, list(log.handlers))
    with open_log(LogConfig(file=str(tmp_path / "x.log"), level="DEBUG")):
        assert log.isEnabledFor(logging.DEBUG)
    assert (log.level, list(log.handlers)) == before


def test_a_pool_records_reach_only_its_own_file(tmp_path: Path) -> None:
    with (
        open_log(LogConfig(file=str(tmp_path / "a.log"), console=False), "job-a") as a,
        open_log(LogConfig(file=str(tmp_path / "b.log"), console=False), "job-b") as b,
    ):
        a.info("for a")
        b.info("for b")
        PoolLog("job-c", enabled=True).info("for a pool without a log")
    assert [line.split("  ")[-1].strip() for line in _lines(tmp_path / "a.log")] == ["for a"]
    assert [line.split("  ")[-1].strip() for line in _lines(tmp_path / "b.log")] == ["for b"]


def test_a_log_file_that_cannot_be_written_names_the_setting(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "plain"
    not_a_folder.write_text("")
    for file, why in [(not_a_folder / "x.log", "File exists"), (tmp_path, "Is a directory")]:
        with (
            pytest.raises(ValueError, match=rf"LogConfig\(file='{file}'\): cannot write.*{why}"),
            open_log(LogConfig(file=str(file))),
        ):
            pass
