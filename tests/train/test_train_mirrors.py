"""The package's CPU training step as SAELens-style classes: the one choice of step, the mirror probes, and
checkpoints of the lean training SAEs read by plain SAELens."""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SAETrainer,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)

from vision_sae_lens.compat import CompatError, TrainStepInput, get_sae_training_class
from vision_sae_lens.train import mirrors
from vision_sae_lens.train.build import training_classes
from vision_sae_lens.train.fast_trainer import FastSAETrainer
from vision_sae_lens.train.lean_saes import LEAN_TRAINING_CLASSES

D_IN, D_SAE = 8, 32
LEAN_CONFIGS = {
    "standard": lambda: StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE),
    "topk": lambda: TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=3),
    "batchtopk": lambda: BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=3),
    "matryoshka_batchtopk": lambda: MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=3, matryoshka_widths=[8, D_SAE]
    ),
}


@pytest.mark.parametrize("mirror", list(mirrors.MIRRORS))
def test_mirror_holds(mirror):
    mirrors.MIRRORS[mirror]()


def test_a_changed_saelens_method_fails_its_mirror_naming_it(monkeypatch):
    def calculate_topk_aux_loss(self, sae_in, sae_out, hidden_pre, dead_neuron_mask):
        return (sae_in - sae_out).pow(2).sum(dim=-1).mean()  # a new AuxK: ours no longer equals it

    monkeypatch.setattr(TopKTrainingSAE, "calculate_topk_aux_loss", calculate_topk_aux_loss)
    with pytest.raises(CompatError, match="TopK AuxK loss and standard L1"):
        mirrors.MIRRORS["TopK AuxK loss and standard L1"]()


@pytest.mark.parametrize("arch", [*LEAN_CONFIGS, "jumprelu"])
def test_the_step_is_chosen_once_cpu_gets_the_package_step_other_devices_saelens(arch):
    sae_cls = get_sae_training_class(arch)[0]
    lean_cls, trainer_cls = training_classes(sae_cls, "cpu")
    assert trainer_cls is FastSAETrainer
    assert lean_cls is LEAN_TRAINING_CLASSES.get(sae_cls, sae_cls) and issubclass(lean_cls, sae_cls)
    assert (lean_cls is sae_cls) == (arch == "jumprelu")  # JumpReLU: SAELens' class, the fast trainer
    for device in ("cuda", "cuda:1", "mps"):
        assert training_classes(sae_cls, device) == (sae_cls, SAETrainer)


@pytest.mark.parametrize("arch", list(LEAN_CONFIGS))
def test_a_lean_sae_saves_what_saelens_saves_and_plain_saelens_loads_it(arch, tmp_path):
    """Same seed: the same initial weights; after a training step, the inference folder of the lean SAE equals
    the SAELens class's (same architecture, same tensors) and loads with ``SAE.load_from_disk``."""
    sae_cls = get_sae_training_class(arch)[0]
    saes = []
    for cls in (sae_cls, LEAN_TRAINING_CLASSES[sae_cls]):
        torch.manual_seed(0)
        saes.append(cls(LEAN_CONFIGS[arch]()))
    theirs, ours = saes
    assert theirs.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in ours.state_dict().items())
    step_input = TrainStepInput(
        sae_in=torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1)), coefficients={"l1": 1.0},
        dead_neuron_mask=torch.ones(D_SAE, dtype=torch.bool), n_training_steps=0, is_logging_step=False,
    )  # fmt: skip
    for sae in saes:
        sae.training_forward_pass(step_input).loss.backward()  # BatchTopK: its threshold moves
    copy.deepcopy(ours)  # a periodic checkpoint copies the training SAE: nothing of the step is left on it
    for name, sae in (("theirs", theirs), ("ours", ours)):
        sae.save_inference_model(tmp_path / name)
    loaded = {name: SAE.load_from_disk(tmp_path / name) for name in ("theirs", "ours")}
    assert loaded["ours"].cfg.architecture() == loaded["theirs"].cfg.architecture()
    assert (tmp_path / "ours" / "cfg.json").read_text() == (tmp_path / "theirs" / "cfg.json").read_text()
    assert loaded["theirs"].state_dict().keys() == loaded["ours"].state_dict().keys()
    for name, a in loaded["theirs"].state_dict().items():
        assert torch.allclose(a, loaded["ours"].state_dict()[name], rtol=1e-5, atol=1e-6), name
