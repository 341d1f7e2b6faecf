"""What a split's predictions say: classification metrics (metrics.py), calibration errors and their
bins (calibration_errors.py), post-hoc calibrators (calibrators.py), the calibration panel that
applies them (panel.py), the wrong-class views (wrong_class.py) and the figures (figures.py).

Light on purpose: the report imports ``LEVEL`` from here without torch."""

LEVEL = 0.95  # of every interval regbench reports (report/statistics.py, the bootstrap in metrics.py)
