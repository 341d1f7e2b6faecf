"""regbench's default launcher for sweeps (Hydra finds launchers in the hydra_plugins namespace only)."""
