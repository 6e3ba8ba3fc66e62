"""The dashboard's pure parts: session tokens, the limit on wrong passwords, the chart's hour
of samples, the instance counts and the live release of each environment."""

from __future__ import annotations

from meshd.core import dashboard as board
from protocol.releases import DeployAction, Release, ReleaseStatus

PASSWORD = b"correct horse"


def test_a_session_holds_until_it_expires_and_only_under_its_password() -> None:
    token = board.new_session(PASSWORD, now=1000.0)
    assert board.session_valid(token, PASSWORD, now=1000.0 + board.SESSION_S - 1)
    assert not board.session_valid(token, PASSWORD, now=1000.0 + board.SESSION_S)
    assert not board.session_valid(token, b"a new password", now=1001.0)


def test_a_forged_or_stretched_session_is_refused() -> None:
    token = board.new_session(PASSWORD, now=1000.0)
    expires, mac = token.split(".")
    assert not board.session_valid(f"{int(expires) + 3600}.{mac}", PASSWORD, now=1001.0)
    assert not board.session_valid(f"{expires}.{'0' * len(mac)}", PASSWORD, now=1001.0)
    assert not board.session_valid("", PASSWORD, now=1001.0)
    assert not board.session_valid("soon.abc", PASSWORD, now=1001.0)


def test_passwords_compare_exactly() -> None:
    assert board.password_matches("correct horse", PASSWORD)
    assert not board.password_matches("correct horse ", PASSWORD)
    assert not board.password_matches("", PASSWORD)


def test_a_client_waits_after_five_wrong_passwords_until_the_first_leaves_the_window() -> None:
    throttle = board.LoginThrottle()
    for i in range(board.FAILURES_ALLOWED):
        assert throttle.wait("10.0.0.9", now=100.0 + i) == 0
        throttle.failed("10.0.0.9", now=100.0 + i)
    assert throttle.wait("10.0.0.9", now=110.0) == 100.0 + board.FAILURE_WINDOW_S - 110.0
    assert throttle.wait("10.0.0.7", now=110.0) == 0  # another client is not held up
    assert throttle.wait("10.0.0.9", now=100.0 + board.FAILURE_WINDOW_S) == 0


def test_guessing_spread_over_many_clients_waits_too() -> None:
    throttle = board.LoginThrottle()
    for i in range(board.FAILURES_ALLOWED_ALL):
        throttle.failed(f"10.0.{i}.1", now=200.0)
    assert throttle.wait("10.9.9.9", now=201.0) > 0


def test_history_keeps_one_sample_per_interval_for_an_hour() -> None:
    history = board.History()
    for second in range(0, 7200, 5):
        history.add(float(second), healthy=4, failed=0)
    ats = [s.at for s in history.samples]
    assert ats[-1] == 7190.0 and ats[0] >= 7190.0 - board.HISTORY_S
    assert all(b - a >= board.SAMPLE_S for a, b in zip(ats, ats[1:], strict=False))


def test_the_chart_scales_to_the_largest_count_and_spans_the_hour() -> None:
    samples = [board.Sample(3600.0, 4, 0), board.Sample(7200.0, 2, 2)]
    drawn = board.chart(samples, now=7200.0)
    assert drawn["top"] == 4 and drawn["samples"] == 2
    assert drawn["healthy"] == f"0.0,0.0 {board.CHART_WIDTH:.1f},{board.CHART_HEIGHT / 2:.1f}"
    assert drawn["failed"].endswith(f"{board.CHART_WIDTH:.1f},{board.CHART_HEIGHT / 2:.1f}")
    assert (drawn["now_healthy"], drawn["now_failed"]) == (2, 2)


def test_failed_instances_are_those_wanted_and_not_healthy_but_awaiting_a_deploy() -> None:
    status = {
        "services": [
            {"healthy": 2, "desired": 2},
            {"healthy": 1, "desired": 3},
            {"healthy": 0, "desired": 2, "awaiting_deploy": True},
        ]
    }
    assert board.instance_counts(status) == (3, 2)


def release(number: int, status: ReleaseStatus, env: str = "prod") -> Release:
    return Release(
        project="shop",
        env=env,
        number=number,
        action=DeployAction.DEPLOY,
        status=status,
        ref="main",
        sha=f"{number:040d}",
        requested_by="ann@laptop",
        created_at=float(number),
        updated_at=float(number),
        request_id=f"r{number}",
        live_at=float(number) if status == ReleaseStatus.LIVE else None,
    )


def test_each_environment_shows_its_newest_live_release_and_a_newer_one_under_way() -> None:
    rows = board.live_releases(
        [
            release(1, ReleaseStatus.LIVE),
            release(2, ReleaseStatus.LIVE),
            release(3, ReleaseStatus.FAILED),
            release(1, ReleaseStatus.BUILDING, env="uat"),
        ]
    )
    assert [(r["env"], r["live"], r["newest"], r["newest_status"]) for r in rows] == [
        ("prod", 2, 3, "failed"),
        ("uat", None, 1, "building"),
    ]
