"""What the sweep tests share: a deliberately tiny model (TINY) so a trial takes about a second
on CPU (what is under test is the bookkeeping around ``fit``, not the quantizer), and the
check that a study holds exactly its budget."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from vqbench.sweep import load_sweep
from vqbench.sweep.storage import make_storage


TINY = ["device=cpu", "data.limit=32", "data.test_limit=16", "model.channels=4", "model.res_blocks=0",
        "model.latent_dim=4", "quantizer.num_codes=8", "train.kmeans_samples=64", "train.max_steps=2",
        "train.batch_size=16", "train.eval_batch_size=16"]


def tiny(name: str):
    return load_sweep(name).with_base(dataset="cifar10-tiny", overrides=TINY)


def check_study(storage: str, study_name: str, n: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly n complete trials, numbered 0..n-1, none running or waiting, each with its run folder."""
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, [t.state for t in trials]
    assert [t.number for t in trials] == list(range(n))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n  # no trial ran twice
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "summary.json").is_file() and run_dir.name == f"trial-{t.number:04d}"
        assert '"trial": %d' % t.number in (run_dir / "sweep_trial.json").read_text()
    return trials
