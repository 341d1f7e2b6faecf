"""The command line: composing the configs, checking a command line before Hydra runs it, and the
hooks configs/config.yaml names (resolvers, the job-name log filter)."""
