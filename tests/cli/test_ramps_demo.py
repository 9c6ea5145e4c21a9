"""`flag-scheduler demo`'s ramps: a retried stage moves the next one, a guard alarm halts."""

from __future__ import annotations

from tests.support import cli_env, run_cli


def test_the_demo_ramps_retry_move_the_next_stage_and_halt_on_an_alarm() -> None:
    result = run_cli("demo", env=cli_env())
    assert result.returncode == 0, result.stderr
    out = result.stdout[result.stdout.index("Ramps, from 10:00 UTC") :]
    assert "planned without failures: new-pricing stage 2 due 10:04:00" in out
    assert "new-pricing      stage 1 (rollout=25) failed, retry 1 at 10:04:" in out
    # stage 2's hold counts from stage 1's actual application (10:05), not from 10:02
    assert (
        "new-pricing      stage 1 (rollout=25) applied at 10:05:00 after 1 retry;"
        " stage 2 due 10:07:00 = 10:05:00 + hold 2m"
    ) in out
    assert "10:09:00  new-pricing      ramp completed" in out
    assert "recommendations  stage 1 (rollout=50) failed permanently  (guard_alarm:" in out
    assert "recommendations  ramp HALTED at stage 1 (guard_alarm): no later stage applies" in out
    assert "recommendations  flag now enabled=true rollout=0: the rollback applied" in out
    assert "new-pricing      ramp completed at stage 3; flag enabled=true rollout=100" in out
    assert "recommendations  ramp halted    at stage 1; flag enabled=true rollout=0" in out
