"""regbench: which regularizer helps this model on this data, and what does it do to its confidence?"""

__version__ = "0.1.0"
