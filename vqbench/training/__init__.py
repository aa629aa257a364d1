"""One training run: ``fit(config)`` and the pieces it is made of.

- :mod:`.run`: ``fit``, the library's one call for a run;
- :mod:`.trainer`: ``Trainer``, preflight checks, the epoch loop, resume, the summaries;
- :mod:`.step`: ``TrainStep``, one optimiser step; :mod:`.graph`: ``GraphedStep``, the same
  step replayed from one CUDA graph;
- :mod:`.optim` (AdamW and the lr schedule), :mod:`.evaluation` (test metrics),
  :mod:`.kmeans` (codebook initialisation), :mod:`.setup` (device, seeds, model, compile),
  :mod:`.checkpoint`, :mod:`.summary` and :mod:`.ddp` (DistributedDataParallel, torchrun).
"""
from .evaluation import evaluate, mean_image_mse
from .graph import GraphedStep, check_cuda_graph
from .optim import lr_factor, lrs_as_tensors, make_optimizer, make_scheduler, quantizer_param_groups
from .run import fit
from .setup import build_model, compile_model, inductor_workarounds, resolve_device, seed_everything
from .step import DivergenceError, TrainStep
from .summary import RunResult, steady_throughput
from .trainer import Trainer

__all__ = ["DivergenceError", "GraphedStep", "RunResult", "Trainer", "TrainStep", "build_model", "check_cuda_graph",
           "compile_model", "evaluate", "fit", "inductor_workarounds", "lr_factor", "lrs_as_tensors",
           "make_optimizer", "make_scheduler", "mean_image_mse", "quantizer_param_groups", "resolve_device",
           "seed_everything", "steady_throughput"]
