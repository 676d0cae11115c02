"""Run outputs (metrics.json)."""
from .metrics import (REQUIRED_KEYS, OutputExistsError, default_out_dir, prepare_out_dir,
                      read_metrics, write_metrics)

__all__ = ["OutputExistsError", "default_out_dir", "prepare_out_dir", "write_metrics",
           "read_metrics", "REQUIRED_KEYS"]
