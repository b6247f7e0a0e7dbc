from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from genmeasures.errors import MeasureError, SpaceError
from genmeasures.validation import (
    Custom,
    Flag,
    IncreasingIntegers,
    Integer,
    Maybe,
    OneOf,
    Real,
    Rejected,
    Settings,
    build,
    check,
    check_settings,
    declared,
    setting,
    settings_table,
)


@dataclass(frozen=True)
class Interval(Settings):
    WHERE = "measure 'toy'"
    ERROR = MeasureError

    low: float = setting(0.0, Real(0.0), "lower end")
    high: float = setting(2.0, Real(0.0, open_minimum=True), "upper end")
    steps: int = setting(20, Integer(1), "bisection steps")
    rule: str = setting("gradient", OneOf(("gradient", "sign")), "ascent rule")
    subset: int | None = setting(None, Maybe(Integer(1)), "examples scored")

    @classmethod
    def check_together(cls, values: dict[str, Any]) -> tuple[str, str, Any] | None:
        if values["low"] >= values["high"]:
            return "low", f"less than high ({values['high']})", values["low"]
        return None


def test_spellings_of_one_value_are_one_value() -> None:
    assert Interval(high=2) == Interval(high=2.0) == Interval(high=np.float32(2.0))
    assert isinstance(Interval(high=2).high, float)
    assert Interval(steps=np.int64(3)).steps == 3
    assert type(Interval(steps=np.int64(3)).steps) is int
    assert Interval(low=-0.0).low == 0.0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"high": 0}, "measure 'toy': high expected a finite number > 0, received 0."),
        ({"high": float("nan")}, "high expected a finite number > 0, received nan."),
        ({"steps": True}, "steps expected an integer >= 1, received True."),
        ({"steps": 2.0}, "steps expected an integer >= 1, received 2.0."),
        ({"rule": "Sign"}, "rule expected one of 'gradient', 'sign', received 'Sign'."),
        ({"subset": 0}, "subset expected None or an integer >= 1, received 0."),
        ({"low": 3.0}, "low expected less than high (2.0), received 3.0."),
        ({"hi": 1}, "measure 'toy': unknown option(s) hi; accepted: low, high, steps, rule"),
    ],
)
def test_rejections_share_one_grammar(given: dict[str, Any], message: str) -> None:
    with pytest.raises(MeasureError) as caught:
        build(Interval, given, kind="option")
    assert message in str(caught.value)


def test_where_and_error_can_name_the_caller() -> None:
    with pytest.raises(SpaceError, match=r"^quick.toml: steps expected"):
        check_settings(Interval, {"steps": 0}, where="quick.toml", error=SpaceError)


def test_direct_construction_checks_too() -> None:
    with pytest.raises(MeasureError, match="measure 'toy': steps expected"):
        Interval(steps=0)


def test_declarations_and_table() -> None:
    assert list(declared(Interval)) == ["low", "high", "steps", "rule", "subset"]
    rows = settings_table(Interval)
    assert rows[1] == {
        "name": "high",
        "default": 2.0,
        "accepts": "a finite number > 0",
        "doc": "upper end",
    }
    assert Interval().as_dict()["rule"] == "gradient"


@pytest.mark.parametrize(
    ("constraint", "good", "canonical", "bad"),
    [
        (Integer(0, 5), 5, 5, 6),
        (Integer(maximum=3), -7, -7, 4),
        (Real(0.0, 1.0, open_maximum=True), 0, 0.0, 1.0),
        (Flag(), False, False, 0),
        (IncreasingIntegers(), [3, 7], (3, 7), [7, 3]),
        (IncreasingIntegers(), (), (), "37"),
    ],
)
def test_constraints(constraint: Any, good: Any, canonical: Any, bad: Any) -> None:
    assert constraint.parse(good) == canonical
    with pytest.raises(Rejected):
        constraint.parse(bad)


def test_custom_constraint_and_check() -> None:
    def even(value: object) -> int:
        if not isinstance(value, int) or value % 2:
            raise Rejected
        return value

    constraint = Custom("an even integer", even)
    assert check(4, constraint, where="model 'x'", parameter="depth", error=SpaceError) == 4
    with pytest.raises(SpaceError, match=r"model 'x': depth expected an even integer, received 3"):
        check(3, constraint, where="model 'x'", parameter="depth", error=SpaceError)
