"""Every DAG's schedule with a fixed clock: unpausing (or starting the stack) never starts the run of a past tick.

The timetable is the one the scheduler uses (the DAG serialised and read back, as the dag-processor stores it),
asked for its next run with no scheduled run yet, as after ``bertops stack up``, at times just after a weekly
tick and mid-week. Cause of the surprise run it guards against: Airflow 3.3's ``CronTriggerTimetable`` treats
``run_immediately=False`` like ``None``, so a tick less than a tenth of the period ago (16.8 h for ``@weekly``)
counted as due and started at once; and ``bert_data``/``bert_monitor``'s plain ``@daily``/``@hourly`` schedule with
``catchup=False`` ran the interval that had just closed: a data run seconds after ``make demo``, whose asset event
then started a retrain nobody asked for. All three now use ``dag_defaults.future_ticks_only``.
"""

from __future__ import annotations

import pendulum
import pytest
from tests.orchestration.conftest import REPO_ROOT

TICK = pendulum.datetime(2026, 12, 6, tz="UTC")  # a Sunday 00:00: a @weekly tick
NEXT_TICK = TICK.add(weeks=1)


def _scheduler_view(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def _next_run_after(dag, now: pendulum.DateTime, monkeypatch: pytest.MonkeyPatch) -> pendulum.DateTime:
    import airflow.timetables.trigger as trigger

    monkeypatch.setattr(trigger, "utcnow", lambda: now)  # the fixed clock
    info = _scheduler_view(dag).next_dagrun_info(last_automated_run_info=None)
    assert info is not None
    return info.run_after


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="module")
def retrain_dag(dagbag):
    return dagbag.dags["bert_retrain"]


@pytest.mark.parametrize("after", [pendulum.duration(seconds=1), pendulum.duration(minutes=30),
                                   pendulum.duration(hours=16), pendulum.duration(days=3)])  # fmt: skip
def test_unpausing_after_a_tick_waits_for_the_next_one(retrain_dag, after, monkeypatch) -> None:
    now = TICK + after
    assert _next_run_after(retrain_dag, now, monkeypatch) == NEXT_TICK


# params.yaml's schedules: bert_data @daily, bert_monitor @hourly. Each is asked just after a tick and mid-period.
@pytest.mark.parametrize(
    ("dag_id", "period", "after"),
    [("bert_data", pendulum.duration(days=1), pendulum.duration(seconds=1)),
     ("bert_data", pendulum.duration(days=1), pendulum.duration(hours=2)),
     ("bert_monitor", pendulum.duration(hours=1), pendulum.duration(seconds=1)),
     ("bert_monitor", pendulum.duration(hours=1), pendulum.duration(minutes=5))],
)  # fmt: skip
def test_data_and_monitor_dags_wait_for_their_next_tick(dagbag, dag_id, period, after, monkeypatch) -> None:
    assert _next_run_after(dagbag.dags[dag_id], TICK + after, monkeypatch) == TICK + period


def test_run_immediately_false_alone_would_have_started_a_run(retrain_dag, monkeypatch) -> None:
    """The cause, shown on the same DAG with Airflow's ``run_immediately=False``."""
    from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

    dag = retrain_dag.partial_subset(["check_params"], include_upstream=False)
    dag.timetable = AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("@weekly", timezone="UTC", run_immediately=False),
        assets=[Asset("bertops_data")],
    )
    assert _next_run_after(dag, TICK + pendulum.duration(minutes=30), monkeypatch) == TICK
