"""regbench's Hydra sweeper plugins (Hydra finds sweepers in the hydra_plugins namespace only)."""
