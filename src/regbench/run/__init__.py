"""One run: what it is (spec.py), its folder (folder.py), its checkpoints (checkpoint.py), the
training and test loop (engine.py), what it records (recorder.py, tensorboard.py) and what it
measures about itself (probes.py).

Light on purpose: the report imports spec.py and folder.py without torch."""
