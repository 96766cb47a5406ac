"""One test per SAELens / TransformerLens seam fenced in vision_sae_lens.compat; each fails naming its seam.

(The fence itself, that no other module reaches inside those libraries, is tests/test_compat_fence.py.)"""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAETrainer
from sae_lens.loading import pretrained_saes_directory

from vision_sae_lens import compat, errors


@pytest.mark.parametrize("seam", list(compat.SEAMS))
def test_seam_holds(seam):
    compat.SEAMS[seam]()


def test_a_broken_seam_fails_loudly_naming_it(monkeypatch):
    monkeypatch.delattr(compat.SAEWrapper, "set_token_mask")
    with pytest.raises(compat.CompatError, match="sae_lens _SAEWrapper"):
        compat.SEAMS["sae_lens _SAEWrapper"]()


def test_compat_error_is_one_of_the_package_errors():
    assert compat.CompatError is errors.CompatError
    assert issubclass(compat.CompatError, errors.VisionSAELensError) and issubclass(
        compat.CompatError, RuntimeError
    )


def _train_step_without_clip(self, sae, sae_in):
    out = self.sae.training_forward_pass(sae_in)
    self.optimizer.step()
    return out


def _save_state_with_an_extra_field(self, checkpoint_path):
    torch.save({"optimizer": 1, "lr_scheduler": 2, "n_training_steps": 3, "new_counter": 4}, checkpoint_path)


def _uncached_directory():
    return {}


BROKEN = {  # seam -> (object, attribute, replacement): an upgrade that changed what the package relies on
    "sae_lens SAETrainer._train_step": (SAETrainer, "_train_step", _train_step_without_clip),
    "sae_lens SAETrainer trainer state": (SAETrainer, "save_trainer_state", _save_state_with_an_extra_field),
    "sae_lens pretrained SAE directory": (
        pretrained_saes_directory,
        "get_pretrained_saes_directory",
        _uncached_directory,
    ),
}


@pytest.mark.parametrize("seam", list(BROKEN))
def test_a_changed_saelens_internal_fails_its_probe(seam, monkeypatch):
    monkeypatch.setattr(*BROKEN[seam])
    with pytest.raises(compat.CompatError, match=seam):
        compat.SEAMS[seam]()
