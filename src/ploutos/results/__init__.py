"""Run outputs: per-task HDF5 files, aggregation, reports, and atomic file writing."""
