"""A sweep with a stand-in for Hydra's launcher, run as a process of its own (multiprocessing's spawn):
imports only seo_cli.tuning (optuna and hydra), not the test modules' torch, so it starts in a second."""

import time
from typing import Any

from seo_cli.tuning import StudySettings, run_study


def sweep_process(storage: str, index: int, ran: str, start: Any) -> None:
    """One of several sweeps sharing a study of 12 trials; each trial scores x^2 in 10 ms and appends
    "<index> <trial number>" to the file ``ran``. ``start``: a barrier the sweeps pass together, so that
    one which started first does not run every trial before the others have imported anything."""

    def launch(batch: list[list[str]], first_job: int) -> list[tuple[str, float]]:
        with open(ran, "a") as log:  # O_APPEND: whole lines from every process
            log.write(f"{index} {first_job}\n")
        time.sleep(0.01)  # the others claim meanwhile
        x = float(dict(o.split("=", 1) for o in batch[0])["x"])
        return [("ok", x * x)]

    settings = StudySettings(
        study_name="shared",
        storage=storage,
        direction="minimize",
        sampler="random",
        pruner="none",
        n_trials=12,
        seed=0,  # the same in every process, as the same command gives it: the draws still differ
        max_failure_rate=0.5,
        params={"x": "interval(-2.0, 2.0)"},
    )
    start.wait()
    run_study(settings, [], launch)
