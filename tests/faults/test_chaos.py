"""Chaos at default settings: 2 APIs, 3 CPU workers, one Redis with AOF, steady load.

A seeded loop SIGKILLs and SIGTERMs workers, SIGKILLs an API process, SIGSTOPs a worker
for longer than the heartbeat, and restarts Redis once. Bounded: each kind of fault once,
about 3 s apart (some 15 s of faults; the run goes on past its 15 s until every kind has
been injected), then the drain and the books. ``visionq chaos --minutes N`` runs the same
for longer, with more faults of each kind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.chaos.run import FAULTS, run_chaos, write_report
from tests.conftest import TEST_MODEL
from tests.faults.conftest import TUNED, record_figure
from tests.integration.conftest import stack_env

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)  # process start-ups on a loaded 2-core machine, then ~15 s of faults
def test_chaos_loses_nothing_and_stores_each_result_once(models_file: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update({k: v for k, v in stack_env(models_file).items() if k not in TUNED})
    seed = int(os.environ.get("CHAOS_SEED", "7"))  # another order of faults: CHAOS_SEED=N
    report = run_chaos(0.25, seed=seed, period_s=3.0, workdir=tmp_path, env=env, model=TEST_MODEL)
    write_report(report, Path(__file__).with_name("chaos.json"))
    kinds = {fault.kind for fault in report.faults}
    assert kinds >= {*FAULTS, "redis_restart"}, kinds
    assert report.accepted > 30, report.to_json()
    assert report.lost == [], report.to_json()
    assert report.duplicates == []
    assert report.bad_5xx == []
    assert report.leftovers == dict.fromkeys(report.leftovers, 0)
    assert all(f.recovered_s is not None for f in report.faults), report.faults
    for kind in (*FAULTS, "redis_restart"):
        for attr in ("recovered_s", "restored_s"):
            worst = report.worst((kind,), attr)
            if worst is not None:
                record_figure(f"chaos_worst_{kind}_{attr}", worst)
    record_figure("chaos_accepted_jobs", report.accepted)
    record_figure("chaos_faults", len(report.faults))
