"""Training SAEs with SAELens from an activation store, sweeps in one data pass, and evaluation.

``train_sae(TrainConfig(...) | [configs], out_dir=...)`` writes SAELens checkpoint folders (vision
facts in ``cfg.json`` metadata, ``eval.json`` beside them); ``evaluate_sae`` measures an SAE on held-out
store rows and, given a backbone and images, how much of the model's behaviour survives splicing.
"""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

__all__ = [
    "TrainConfig",
    "TrainRun",
    "train_sae",
    "evaluate_sae",
    "measure_downstream",
    "load_sweep",
    "build_sae_config",
    "training_architectures",
]

if TYPE_CHECKING:
    from vision_sae_lens.train.config import TrainConfig, build_sae_config, training_architectures
    from vision_sae_lens.train.downstream import measure_downstream
    from vision_sae_lens.train.evaluate import evaluate_sae
    from vision_sae_lens.train.outputs import TrainRun
    from vision_sae_lens.train.sweep import load_sweep
    from vision_sae_lens.train.trainer import train_sae

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "TrainConfig": "vision_sae_lens.train.config",
        "TrainRun": "vision_sae_lens.train.outputs",
        "train_sae": "vision_sae_lens.train.trainer",
        "evaluate_sae": "vision_sae_lens.train.evaluate",
        "measure_downstream": "vision_sae_lens.train.downstream",
        "load_sweep": "vision_sae_lens.train.sweep",
        "build_sae_config": "vision_sae_lens.train.config",
        "training_architectures": "vision_sae_lens.train.config",
    },
)
