"""Config loading: the shipped file is valid; every mistake is named by key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pql import cli, config

ROOT = Path(__file__).resolve().parents[2]

BAD = """\
lake: {root: x}
sources:
  - {name: mixpanel, kind: mixpanel, project_id: -1, residency: mars, projectid: 3}
  - {name: other, kind: segment, project_id: 1}
model:
  kind: weighted
  version: v1
  threshold: 150
  signals:
    - {kind: event, event: Core Feature Used, window_days: 0, points_each: 1, colour: red}
    - {kind: firmographic, field: employees, one_of: [a], points: 3}
    - {kind: bogus}
crm: {kind: hubspot, fields: {score: Bad-Name}}
"""


def test_shipped_config_is_valid():
    cfg = config.load(ROOT / "config" / "pql.yaml")
    assert cfg.sources[0].kind == "mixpanel"
    assert cfg.model.kind == "weighted" and cfg.model.signals
    assert cfg.lake.root.is_absolute()


def test_every_mistake_named_with_key_line_and_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    problems = err.value.problems
    expected = [
        "line 3: sources[0].project_id: Input should be greater than 0",
        "line 3: sources[0].residency: Input should be 'us', 'eu' or 'in' (got 'mars')",
        "line 3: sources[0].projectid: unknown key; allowed here: kind, name, connection_id",
        "line 4: sources[1]: 'kind' must be one of: 'mixpanel'",
        "line 8: model.threshold: Input should be less than or equal to 100 (got 150)",
        "line 10: model.signals[0].window_days: Input should be greater than 0 (got 0)",
        "line 10: model.signals[0].colour: unknown key; allowed here: kind, window_days",
        "line 11: model.signals[1]: 'employees' is a number: use 'at_least'",
        "line 12: model.signals[2]: 'kind' must be one of: 'event', 'active_days'",
        "line 13: crm.fields.score: must be lower-case letters",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    assert len(problems) == len(expected)


def test_missing_sections_and_yaml_errors(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("lake: {root: x}\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert {p.split(":")[0] for p in err.value.problems} == {"sources", "model", "crm"}
    path.write_text("sources: [\n  - a\n")
    with pytest.raises(config.ConfigError, match="line 2: not valid YAML"):
        config.load(path)
    with pytest.raises(config.ConfigError, match="cannot read the file"):
        config.load(tmp_path / "nope.yaml")


def test_lake_root_relative_to_file_and_env_override(tmp_path, monkeypatch):
    text = (ROOT / "config" / "pql.yaml").read_text().replace("root: ../var/lake", "root: lk")
    (tmp_path / "c.yaml").write_text(text)
    assert config.load(tmp_path / "c.yaml").lake.root == (tmp_path / "lk").resolve()
    monkeypatch.setenv("PQL_LAKE", str(tmp_path / "elsewhere"))
    assert config.load(tmp_path / "c.yaml").lake.root == tmp_path / "elsewhere"


def test_pql_validate_command(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["validate", "--config", str(ROOT / "config" / "pql.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = runner.invoke(cli.main, ["validate", "--config", str(bad)])
    assert res.exit_code == 1
    assert "10 problem(s)" in res.output
    assert "model.signals[0].colour: unknown key" in res.output


def test_freshness_is_off_by_default_and_must_leave_export_queries(tmp_path):
    shipped = (ROOT / "config" / "pql.yaml").read_text()
    cfg = config.load(ROOT / "config" / "pql.yaml")
    assert not cfg.freshness.enabled and cfg.intraday_sources() == []
    on = tmp_path / "on.yaml"
    on.write_text(shipped.replace("every_minutes: 0 ", "every_minutes: 5 "))
    cfg = config.load(on)
    assert cfg.freshness.runs_per_hour() == 12
    assert [s.name for s in cfg.intraday_sources()] == ["mixpanel"]
    greedy = tmp_path / "greedy.yaml"
    greedy.write_text(
        shipped.replace("every_minutes: 0 ", "every_minutes: 1 ").replace(
            "queries_per_hour: 60", "queries_per_hour: 60"
        )
    )
    with pytest.raises(config.ConfigError) as err:
        config.load(greedy)
    assert "freshness.every_minutes 1 makes 60 export queries an hour" in str(err.value)
