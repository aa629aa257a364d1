"""Optuna sweeps: ``sweep(load_sweep("gamma"))`` tunes a sweep file's search space with ``fit``.

- :mod:`.spec`: ``sweeps/NAME.yaml`` (base run, space, objectives, sampler, pruner, budget);
- :mod:`.space`: the search space's entries (``Param``), each checked on load;
- :mod:`.study`: ``sweep``, which opens (or resumes, or joins) the study and starts workers;
- :mod:`.worker`: one worker's loop and the trial objective;
- :mod:`.storage`: where the study lives, the lock that keeps the budget exact, lost trials;
- :mod:`.rdb`: the RDB storage that rides out a database restart (bounded retries);
- :mod:`.reporting`: ``report``, the trials as a table, the best trial or Pareto front, plots.
"""
from .rdb import StorageUnavailable
from .reporting import SweepReport, report, trials_dataframe
from .space import Param
from .spec import Objective, SweepSpec, available_sweeps, load_sweep
from .storage import DEFAULT_OUT, redact
from .study import SweepResult, open_study, sweep
from .worker import TrialObjective, run_worker

__all__ = ["DEFAULT_OUT", "Objective", "Param", "StorageUnavailable", "SweepReport", "SweepResult", "SweepSpec",
           "TrialObjective",
           "available_sweeps", "load_sweep", "open_study", "redact", "report", "run_worker", "sweep",
           "trials_dataframe"]
