"""Subspace schedules are pure functions of the step/epoch: values at known steps, validation of bad settings."""

import pytest

from callbacks.schedules import RankSchedule, gap_at, rank_at, refresh_due, schedule_for


def test_fixed_gap_refreshes_at_multiples_of_the_gap():
    assert [s for s in range(30) if refresh_due(s, gap=7)] == [0, 7, 14, 21, 28]
    assert refresh_due(7_000_000, gap=7) and not refresh_due(7_000_001, gap=7)


def test_geometric_gap_grows_then_stays_at_its_cap():
    steps = [s for s in range(200) if refresh_due(s, gap=5, growth=2.0, max_gap=40)]
    assert steps == [0, 5, 15, 35, 75, 115, 155, 195]  # gaps 5, 10, 20, 40, 40, ...
    assert [gap_at(s, 5, 2.0, 40) for s in (0, 4, 5, 14, 15, 80, 10_000)] == [5, 5, 10, 10, 20, 40, 40]


def test_slow_geometric_growth_is_not_mistaken_for_a_fixed_gap():
    # round(1.2**i) stays 1 for a while, then grows: the schedule must keep following it
    assert [s for s in range(12) if refresh_due(s, gap=1, growth=1.2)] == [0, 1, 2, 3, 5, 7, 9]


def test_uncapped_geometric_gap_keeps_growing():
    assert [s for s in range(100) if refresh_due(s, gap=3, growth=3.0)] == [0, 3, 12, 39]


@pytest.mark.parametrize(
    "kwargs",
    [dict(gap=0), dict(gap=2.5), dict(gap=5, growth=0.5), dict(gap=5, growth=float("inf")), dict(gap=5, max_gap=4)],
)
def test_invalid_gap_settings_raise(kwargs):
    with pytest.raises(ValueError):
        refresh_due(0, **kwargs)


def test_constant_rank_is_start_everywhere():
    s = RankSchedule(start=0.3)
    assert [s(t) for t in (0, 10, 10**6)] == [0.3, 0.3, 0.3]


def test_step_rank_jumps_at_each_milestone_to_reach_end_at_the_last():
    s = RankSchedule("step", start=[8, 8, 4], end=[2, 2, 1], milestones=[3, 6])
    assert [s(t) for t in (0, 2, 3, 5, 6, 100)] == [[8, 8, 4], [8, 8, 4], [5, 5, 3], [5, 5, 3], [2, 2, 1], [2, 2, 1]]


def test_linear_int_rank_is_rounded_and_float_rank_is_not():
    ints = RankSchedule("linear", start=16, end=4, begin=2, until=6)
    assert [ints(t) for t in range(9)] == [16, 16, 16, 13, 10, 7, 4, 4, 4]
    floats = RankSchedule("linear", start=0.5, end=0.1, until=4)
    assert floats(1) == pytest.approx(0.4) and isinstance(floats(1), float)


def test_cosine_rank_follows_a_half_cosine():
    s = RankSchedule("cosine", start=0.5, end=0.1, begin=10, until=20)
    assert [s(t) for t in (0, 10, 20, 30)] == [0.5, 0.5, pytest.approx(0.1), pytest.approx(0.1)]
    assert s(15) == pytest.approx(0.3)
    assert s(12) == pytest.approx(0.5 - 0.4 * (1 - 0.8090169943749475) / 2)


def test_rank_at_reads_the_unit_the_schedule_names():
    by_epoch = RankSchedule("step", start=0.5, end=0.25, milestones=[2], unit="epoch")
    by_step = RankSchedule("step", start=0.5, end=0.25, milestones=[2], unit="step")
    assert rank_at(by_epoch, step=100, epoch=1) == 0.5 and rank_at(by_epoch, step=0, epoch=2) == 0.25
    assert rank_at(by_step, step=2, epoch=0) == 0.25


def test_first_matching_override_wins_else_the_default():
    default, first, second = RankSchedule(start=0.25), RankSchedule(start=0.5), RankSchedule(start=0.1)
    overrides = {"fno_blocks.convs.0.*": first, "*convs.*": second}
    assert schedule_for("fno_blocks.convs.0.weight", overrides, default) is first
    assert schedule_for("fno_blocks.convs.3.weight", overrides, default) is second
    assert schedule_for("lifting.weight", overrides, default) is default
    assert schedule_for("lifting.weight", None, None) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="linear", start=0.5, end=0.1, until=None), "until"),
        (dict(kind="cosine", start=0.5, end=0.1, begin=5, until=5), "until"),
        (dict(kind="step", start=0.5, end=0.1, milestones=[]), "milestones"),
        (dict(kind="step", start=0.5, end=0.1, milestones=[4, 2]), "milestones"),
        (dict(kind="linear", start=16, end=0.1, until=3), "mix an int"),
        (dict(kind="linear", start=[4, 4], end=[2, 2, 2], until=3), "equal length"),
        (dict(kind="linear", start=0.5, until=3), "end rank"),
        (dict(kind="wobble"), "kind"),
        (dict(unit="minute"), "unit"),
        (dict(start=1.5), "rank"),
    ],
)
def test_invalid_rank_schedules_raise_naming_the_problem(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RankSchedule(**kwargs)
