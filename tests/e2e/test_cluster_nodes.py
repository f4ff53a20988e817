"""A node lost in the middle of a distributed grading run: a Ray cluster of two 1-CPU worker nodes
simulated on this machine (``ray.cluster_utils.Cluster``), one of them removed while it grades.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
from helpers import SHIPPED_ASSETS
from ray.cluster_utils import Cluster

from stages.submission import read_table, validate
from training.cluster.grade import GradeOptions, GradeReport, ResultsTable, grade_archive
from training.cluster.pool import PoolConfig

pytestmark = pytest.mark.slow

ASSETS = SHIPPED_ASSETS


@pytest.fixture
def two_nodes() -> Iterator[tuple[Cluster, list]]:
    """A head without CPUs (the driver's) and two worker nodes of 1 CPU each."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def test_a_lost_node_loses_no_finished_result(
    two_nodes: tuple[Cluster, list],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    generated: Callable[..., Path],
) -> None:
    cluster, nodes = two_nodes
    data = generated(6, 33)
    names = list(read_table(data / "submission_format.csv")["filename"])
    out = tmp_path / "out"
    marks = tmp_path / "marks"
    marks.mkdir()
    # the first slide is held in flight by whichever worker takes it: certainly in flight when
    # its node goes
    options = GradeOptions(hold_on=frozenset({names[0]}), hold_marks=str(marks))
    reports: list[GradeReport] = []
    errors: list[BaseException] = []

    def grade() -> None:
        try:
            reports.append(grade_archive(data, out, ASSETS, PoolConfig(), options))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=grade)
    worker.start()
    deadline = time.monotonic() + 240  # bounds a hang only
    while not (
        list(marks.glob("*.held"))
        and (out / "results.csv").is_file()
        and len(ResultsTable(out / "results.csv").rows()) >= 1
    ):
        assert time.monotonic() < deadline and worker.is_alive(), errors
        time.sleep(0.05)
    (held,) = marks.glob("*.held")
    node_id = held.name.removeprefix(f"{names[0]}.").removesuffix(".held")
    (lost,) = [n for n in nodes if n.node_id == node_id]
    finished = dict(ResultsTable(out / "results.csv").rows()["class"])
    assert names[0] not in finished
    cluster.remove_node(lost, allow_graceful=False)  # as a machine that goes down
    (marks / "release").touch()  # the slide may now be graded, on the node left
    worker.join(timeout=300)
    assert not worker.is_alive() and not errors, errors
    rows = ResultsTable(out / "results.csv").rows()
    (report,) = reports
    assert report.done == report.total == 6 and sorted(rows.index) == sorted(report.graded)
    for name, cls in finished.items():  # what was finished before the loss is kept as it was
        assert rows.at[name, "class"] == cls
    # the lost node's slide in flight was tried again on the other node, not given the fallback
    assert f"{names[0]}: its worker was lost" in caplog.text
    assert set(rows["source"]) == {"patches"}, rows[["source", "errors"]]
    validate(read_table(out / "submission.csv"), read_table(data / "submission_format.csv"))
