"""The failure detector's protocol simulation (`sim.detector`) on small meshes: the real pure
detector code on a simulated clock and network, so these read as the detector's promises:
crashes are confirmed once and in time, pauses and loss are not, the work per agent does not
grow with the mesh."""

from __future__ import annotations

import json

import pytest

from meshd.watchers.detector.watch import CONFIRM_AFTER_S
from sim.detector import Scenario, main, percentile, simulate

pytestmark = pytest.mark.unit


def test_each_crash_is_confirmed_once_within_the_window() -> None:
    found = simulate(Scenario(droplets=12, seconds=40, crashes=3, seed=3))
    assert len(found.crashed) == 3
    assert sorted(found.confirmed) == sorted(found.crashed)  # one record each, nothing else
    assert found.undetected == 0
    assert found.false_confirmations == 0
    assert len(found.detection_s) == 3
    assert all(0 < took < 5.0 for took in found.detection_s)
    # Without loss every monitor heard the last beat: never confirmed sooner, and soon after.
    assert all(CONFIRM_AFTER_S <= silent < 5.0 for silent in found.silence_s)


def test_each_monitor_counting_a_majority_tries_the_record_yet_one_is_written() -> None:
    found = simulate(Scenario(droplets=15, seconds=30, crashes=1, seed=5))
    assert found.confirmed == found.crashed
    assert 1 < found.record_attempts <= 3  # KV create refused the others; monitors alone try


def test_the_votes_about_a_crash_reach_its_monitors_alone_whatever_the_mesh_s_size() -> None:
    small = simulate(Scenario(droplets=15, seconds=30, crashes=1, seed=5))
    large = simulate(Scenario(droplets=150, seconds=30, crashes=1, seed=5))
    assert small.confirmed == small.crashed and large.confirmed == large.crashed
    # Each of three monitors votes, each vote to the two others (the target is dead).
    assert 0 < small.votes_sent <= 20
    assert 0 < large.votes_sent <= 20


def test_a_two_second_pause_is_suspected_refuted_and_never_confirmed() -> None:
    found = simulate(Scenario(droplets=15, seconds=60, pauses=6, seed=11))
    assert len(found.paused) == 6
    assert found.suspicions >= 6  # the pauses were noticed
    assert found.refutations >= 6  # and each paused droplet answered its suspicion
    assert found.confirmed == ()
    assert found.false_confirmations == 0


def test_a_pause_longer_than_the_window_counts_as_a_false_confirmation() -> None:
    found = simulate(Scenario(droplets=15, seconds=40, pauses=2, pause_s=4.0, seed=11))
    assert sorted(found.confirmed) == sorted(found.paused)
    assert found.false_confirmations == 2


def test_one_percent_loss_confirms_the_crashed_and_nobody_alive() -> None:
    found = simulate(Scenario(droplets=20, seconds=60, loss=0.01, crashes=2, pauses=4, seed=2))
    assert sorted(found.confirmed) == sorted(found.crashed)
    assert found.false_confirmations == 0
    assert all(took < 5.0 for took in found.detection_s)


def test_a_droplet_cut_off_from_everyone_is_confirmed() -> None:
    found = simulate(Scenario(droplets=12, seconds=30, partitions=1, seed=4))
    assert found.cut_confirmed == 1
    assert len(found.confirmed) == 1
    assert found.false_confirmations == 0


def test_the_same_seed_gives_the_same_outcome() -> None:
    scenario = Scenario(droplets=12, seconds=30, loss=0.05, crashes=1, pauses=1, seed=9)
    assert simulate(scenario) == simulate(scenario)
    other = Scenario(droplets=12, seconds=30, loss=0.05, crashes=1, pauses=1, seed=10)
    assert simulate(other) != simulate(scenario)


def test_the_work_per_droplet_does_not_grow_with_the_mesh() -> None:
    small = simulate(Scenario(droplets=10, seconds=30, loss=0.01, seed=1))
    large = simulate(Scenario(droplets=100, seconds=30, loss=0.01, seed=1))
    assert small.sent_per_droplet_s > 1.0  # beats alone are 1.4 a second
    assert large.sent_per_droplet_s <= small.sent_per_droplet_s * 1.2
    assert large.received_per_droplet_s <= small.received_per_droplet_s * 1.2


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.99, None),
        ([3.0], 0.5, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),
        ([float(v) for v in range(1, 101)], 0.99, 99.0),
        ([float(v) for v in range(1, 21)], 0.99, 20.0),
    ],
)
def test_percentiles_are_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_a_mesh_of_two_is_refused() -> None:
    with pytest.raises(ValueError, match="provider"):
        Scenario(droplets=2)


def test_the_command_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--droplets", "10", "--seconds", "20", "--crashes", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["droplets"] == 10
    assert len(found["confirmed"]) == 1


def test_the_command_refuses_a_scenario_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--droplets", "5", "--crashes", "5"]) == 2
    assert "more faults than droplets" in capsys.readouterr().err
