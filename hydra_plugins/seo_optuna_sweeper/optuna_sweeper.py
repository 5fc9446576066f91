"""The Hydra sweeper behind ``seo-train hparams_search=optuna``: a shim over ``seo_cli.tuning.run_study``."""

from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


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
            "params": {str(k): str(v) for k, v in (params or {}).items()},
        }

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from seo_cli.errors import UserError
        from seo_cli.files import write_text
        from seo_cli.tuning import (  # optuna: imported by tuning runs only
            StudySettings,
            job_outcome,
            run_study,
        )

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
        from seo_cli.metrics import metric_mode  # imports torch: not for `seo-train --help`

        objective = self.config.objective
        settings = StudySettings(
            **{
                **self.settings,
                "params": params,
                "direction": self.settings["direction"]
                or ("maximize" if metric_mode(objective) == "max" else "minimize"),
                "storage": self.settings["storage"] or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}",
            }
        )

        def launch(batch: list[list[str]], first_job: int) -> list[tuple[str, float]]:
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=first_job)
            return [job_outcome(Path(r.hydra_cfg.hydra.runtime.output_dir)) for r in returns]

        return run_study(settings, fixed, launch)
