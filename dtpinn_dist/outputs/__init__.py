"""Run outputs: the run folder (checked, claimed, cleaned up), ``metrics.json``, the trained model
(``model.pt`` + ``model.json``), the solution at the test points (``.npz``, VTK), PNG plots, the
progress log, and :func:`load_run` to evaluate a saved model. Every file is written atomically
(:mod:`dtpinn_dist.atomic`)."""
from ..atomic import OutputError
from .metrics import REQUIRED_KEYS, prepare_out_dir, read_metrics, write_metrics
from .model_io import ModelFileError, load_model, save_model
from .predict import PointsError, SavedRun, load_run, read_points
from .progress import RunLog
from .run_outputs import write_outputs
from .rundir import OutputExistsError, RunDir, check_run_dir, default_out_dir
from .solution import SolutionFields, solution_fields, write_solution_npz

__all__ = ["OutputError", "OutputExistsError", "default_out_dir", "prepare_out_dir",
           "write_metrics", "read_metrics", "REQUIRED_KEYS", "RunDir", "check_run_dir",
           "save_model", "load_model", "ModelFileError", "load_run", "SavedRun", "read_points",
           "PointsError", "RunLog", "write_outputs", "SolutionFields", "solution_fields",
           "write_solution_npz"]
