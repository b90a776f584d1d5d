"""What a strategy's path is worth: metrics, evaluation records and the bootstrap.

Pure numpy, below both :mod:`ploutos.train` (which produces evaluations) and
:mod:`ploutos.results` (which stores and aggregates them), so neither imports the other.
"""
