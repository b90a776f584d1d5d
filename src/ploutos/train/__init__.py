"""Walk-forward folds, the trainer of one fold x member, evaluation and metrics."""
