"""hydra/launcher=submitit_slurm and submitit_local: hydra-submitit-launcher's launchers, requeued jobs
resuming from their last checkpoint. Registered by ``seo_cli.config.register_configs``, as the sweeper is."""
