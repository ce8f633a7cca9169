"""Policy models and files: durations, edge values, unknown fields, clear errors naming the
field, YAML and JSON files holding one policy or a list."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from novaquota.schemas.policies import (
    Policy,
    PolicyFileError,
    load_policies,
    parse_duration,
    parse_policies,
)

EXAMPLES = Path(__file__).parents[2] / "examples" / "policies"


def one(**rule: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "r", "when": {"utilization": {"above": 90}}, "then": "suspend"}
    return {"name": "p", "rules": [{**base, **rule}]}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0),
        ("0", 0),
        ("45s", 45),
        ("90m", 5400),
        ("1h", 3600),
        ("1h30m", 5400),
        ("7d", 604800),
        ("2w", 1209600),
        (3600, 3600),
        (" 1h 30m ", 5400),
    ],
)
def test_durations(text: Any, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad",
    ["1x", "h", "", "1.5h", "-1h", -1, True, "1h-", "m30", 1.5, float("inf"), float("nan"), None],
)
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_bad_duration_in_a_policy_names_the_field() -> None:
    with pytest.raises(PolicyFileError) as err:
        parse_policies(one(when={"utilization": {"above": 90, "for": "1x"}}))
    assert err.value.problems[0].startswith("rules[0].when.utilization.for (p): ")


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ({"when": {"utilization": {"above": 90, "below": 10}}}, "rules[0].when.utilization"),
        ({"when": {"utilization": {"abov": 90}}}, "rules[0].when.utilization.abov"),
        ({"when": {"utilisation": {"above": 90}}}, "rules[0].when"),
        ({"when": {"all": []}}, "rules[0].when.all"),
        (
            {"when": {"violations": {"at_least": 0, "within": "1h"}}},
            "rules[0].when.violations.at_least",
        ),
        ({"when": {"violations": {"at_least": 1, "within": 0}}}, "rules[0].when.violations.within"),
        (
            {"when": {"time_of_day": {"from": "25:00", "to": "01:00"}}},
            "rules[0].when.time_of_day.from",
        ),
        (
            {"when": {"time_of_day": {"from": "01:00", "to": "02:00", "weekdays": ["sunday"]}}},
            "rules[0].when.time_of_day.weekdays[0]",
        ),
        ({"then": {"adjust_limit": {"step": 0}}}, "rules[0].then[0].adjust_limit"),
        ({"then": {"adjust_limit": {"factor": 1}}}, "rules[0].then[0].adjust_limit"),
        ({"then": {"adjust_limit": {"factor": 0}}}, "rules[0].then[0].adjust_limit.factor"),
        ({"then": {"adjust_limit": {"step": 1, "factor": 2}}}, "rules[0].then[0].adjust_limit"),
        (
            {"then": {"adjust_limit": {"step": 1, "floor": 5, "ceiling": 4}}},
            "rules[0].then[0].adjust_limit",
        ),
        ({"then": {"alert": {"severity": "loud"}}}, "rules[0].then[0].alert.severity"),
        ({"then": "explode"}, "rules[0].then[0]"),
        ({"then": []}, "rules[0].then"),
        ({"cooldown_seconds": "soon"}, "rules[0].cooldown_seconds"),
        ({"hysteresis": {"points": -1}}, "rules[0].hysteresis.points"),
        ({"surprise": 1}, "rules[0].surprise"),
    ],
)
def test_invalid_rules_name_the_field(rule: dict[str, Any], where: str) -> None:
    with pytest.raises(PolicyFileError) as err:
        parse_policies(one(**rule))
    assert any(p.startswith(f"{where} (p): ") for p in err.value.problems), err.value.problems


def test_edge_values_that_are_valid() -> None:
    p = Policy.model_validate(
        one(
            when={"utilization": {"below": 0, "for": 0}},
            then=[{"adjust_limit": {"step": -1, "floor": 4, "ceiling": 4, "headroom": "0%"}}],
            cooldown_seconds=0,
        )
    )
    rule = p.rules[0]
    assert rule.cooldown_seconds == 0 and p.version == 1 and p.ref == "p@1"
    assert rule.then[0].adjust_limit.headroom.percent == 0  # type: ignore[union-attr]
    assert Policy.model_validate(one(then="resume")).rules[0].then[0].model_dump() == {"resume": {}}


def test_policy_level_errors() -> None:
    for bad, where in [
        ({"name": "p", "version": 0, "rules": one()["rules"]}, "version"),
        ({"name": "p", "rules": []}, "rules"),
        ({"rules": one()["rules"]}, "name"),
        ({**one(), "scope": {"levels": ["galaxy"]}}, "scope.levels[0]"),
        ({**one(), "scope": {"resource_types": ["unicorns"]}}, "scope.resource_types[0]"),
        ({**one(), "owner": "me"}, "owner"),
        ({"name": "p", "rules": [one()["rules"][0], one()["rules"][0]]}, "rules"),
    ]:
        with pytest.raises(PolicyFileError) as err:
            parse_policies(bad)
        assert any(p.startswith(where) for p in err.value.problems), (where, err.value.problems)


def test_a_list_with_one_bad_policy_reports_its_index_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError) as err:
        parse_policies([one(), {**one(), "name": "q", "version": -2}])
    assert err.value.problems == [
        "policies[1].version (q): Input should be greater than or equal to 1"
    ]
    with pytest.raises(PolicyFileError, match="appears more than once"):
        parse_policies([one(), one()])
    with pytest.raises(PolicyFileError, match="no policy"):
        parse_policies([])


def test_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "p.yaml"
    # unquoted 18:30 is a YAML 1.1 sexagesimal number: read back as the time it was meant to be
    yaml_file.write_text(
        "- name: night\n  rules:\n  - name: r\n    when: {time_of_day: {from: 18:30, to: 06:00}}\n"
        "    then: suspend\n- name: other\n  rules:\n  - name: r\n    when: {tier: {in: [free]}}\n"
        "    then: [{alert: {severity: info}}]\n"
    )
    a, b = load_policies(yaml_file)
    assert b.name == "other"
    assert a.rules[0].when.time_of_day.from_ == "18:30"  # type: ignore[union-attr]
    json_file = tmp_path / "p.json"
    json_file.write_text(
        '{"name": "j", "rules": [{"name": "r", "when": {"tier": {"in": ["x"]}},'
        ' "then": [{"adjust_limit": {"factor": 1.25}}]}]}'
    )
    (j,) = load_policies(json_file)
    assert j.rules[0].then[0].adjust_limit.factor == Decimal("1.25")  # type: ignore[union-attr]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(PolicyFileError, match="not valid yaml"):
        load_policies(broken)
    with pytest.raises(PolicyFileError, match="No such file"):
        load_policies(tmp_path / "missing.yaml")


def test_the_shipped_built_ins_are_valid() -> None:
    names = {p.name for f in sorted(EXAMPLES.glob("*.yaml")) for p in load_policies(f)}
    assert {"autogrow", "idle-shrink"} <= names


def test_a_policy_round_trips_through_its_json() -> None:
    p = load_policies(EXAMPLES / "autogrow.yaml")[0]
    assert Policy.model_validate(p.model_dump(mode="json")) == p
    assert p.model_dump(mode="json")["rules"][0]["when"]["utilization"]["for"] == 3600
