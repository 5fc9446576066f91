"""The Hydra sweeper behind ``seo-train hparams_search=optuna``: a shim over ``seo_cli.tuning.run_study``."""

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: str = "tpe",
        direction: str | None = None,
        n_trials: int = 20,
        seed: int | None = None,
        pruner: str = "median",
        max_failure_rate: float = 0.5,
        study_name: str = "seo",
        storage: str | None = None,
        n_jobs: int = 1,
        params: dict[str, str] | None = None,
    ) -> None:
        self.settings: dict[str, Any] = {
            "sampler": sampler,
            "direction": direction,
            "n_trials": n_trials,
            "seed": seed,
            "pruner": pruner,
            "max_failure_rate": max_failure_rate,
            "study_name": study_name,
            "storage": storage,
            "n_jobs": n_jobs,
            "params": {str(k): str(v) for k, v in (params or {}).items()},
        }

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from seo_cli.errors import UserError, exit_on_user_error
        from seo_cli.files import write_text

        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        except UserError as err:
            raise SystemExit(str(err)) from None  # one sentence, where Hydra would print a traceback
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(
            arguments
        )
        # Sweep syntax on the command line joins the search space; everything else is fixed for all trials.
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        params = self.settings["params"] | {
            o.get_key_element(): o.get_value_element_as_str() for o in parsed if o.is_sweep_override()
        }
        with exit_on_user_error():  # a user's mistake is one logged sentence and exit 1, not a traceback
            return self._run(sweep_dir, fixed, params)

    def _run(self, sweep_dir: Path, fixed: list[str], params: dict[str, str]) -> Any:
        # optuna and torch: imported by tuning runs only, not for `seo-train --help`
        from seo_cli.metrics import metric_mode
        from seo_cli.study_storage import shown, storage_url
        from seo_cli.tuning import StudySettings, job_outcome, run_study

        storage = storage_url(self.settings["storage"] or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}")
        settings = StudySettings(
            **{
                **self.settings,
                "params": params,
                "direction": self.settings["direction"]
                or ("maximize" if metric_mode(self.config.objective) == "max" else "minimize"),
                "storage": storage,
            }
        )
        log.info(
            "Study %s in %s, %d trial(s) at once; job folders in %s",
            settings.study_name,
            shown(storage),
            settings.n_jobs,
            sweep_dir,
        )

        def launch(batch: list[list[str]], first_job: int) -> list[tuple[str, float]]:
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=first_job)
            return [job_outcome(Path(r.hydra_cfg.hydra.runtime.output_dir)) for r in returns]

        n_jobs = settings.n_jobs
        if not (isinstance(n_jobs, int) and n_jobs > 1):
            return run_study(settings, fixed, launch)
        trials = self._trial_processes(sweep_dir, n_jobs)
        previous = signal.signal(signal.SIGTERM, trials.pass_on)  # a scheduler's or `kill`'s stop
        try:
            return run_study(settings, fixed, trials)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _trial_processes(self, sweep_dir: Path, n_jobs: int) -> Any:
        """n_jobs trials at once, each its own seo-train process (training is CPU and GPU work: threads
        of one process would share one interpreter), composed from the same config sources as this one."""
        import torch

        from seo_cli.tuning import TrialProcesses, trial_slots

        device = self.config.device
        slots = trial_slots(
            n_jobs, device.type, device.strategy, device.num_devices, os.environ, torch.cuda.device_count()
        )
        command = [sys.executable, "-m", "seo_cli.train", "--config-name", self.config.hydra.job.config_name]
        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "command-line" and source.schema == "file":  # --config-dir
                command += ["--config-dir", source.path]
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
        return TrialProcesses(command, sweep_dir, slots, threads)
