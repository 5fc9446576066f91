"""Hydra finds sweepers only in the ``hydra_plugins`` namespace; the work is done in ``seo_cli.tuning``."""
