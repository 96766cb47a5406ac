"""Training under torchrun, the parts one process can check: dealing SAEs to ranks, the data-parallel BatchTopK
choice made from per-rank slices, the refusals before work, and the single-process job outside torchrun."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from helpers import D_IN, SITE
from sae_lens import BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, TopKTrainingSAEConfig

from vision_sae_lens.compat import BatchTopK
from vision_sae_lens.errors import ConfigError, OutputLockedError
from vision_sae_lens.fsutil import DirLock
from vision_sae_lens.train import TrainConfig, train_sae
from vision_sae_lens.train.data_parallel import (
    DataParallelBatchTopK,
    check_data_parallel,
    global_cut,
    keep_from_cut,
    largest_entries,
)
from vision_sae_lens.train.ranks import assign_to_ranks, join_ranks
from vision_sae_lens.train.sweep import training_cost


def _best_makespan(costs: list[float], world: int) -> float:
    """Brute force: the smallest largest load over every assignment of jobs to ranks."""
    best = float("inf")
    for owners in itertools.product(range(world), repeat=len(costs)):
        loads = [0.0] * world
        for cost, owner in zip(costs, owners, strict=True):
            loads[owner] += cost
        best = min(best, max(loads))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_saes_are_dealt_within_four_thirds_of_the_best_balance(seed):
    g = torch.Generator().manual_seed(seed)
    n, world = int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
    costs = [float(c) for c in torch.randint(1, 50, (n,), generator=g)]
    owners = assign_to_ranks(costs, world)
    assert owners == assign_to_ranks(costs, world)  # deterministic: every rank computes the same deal
    assert all(0 <= o < world for o in owners) and len(owners) == n
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(world)]
    assert max(loads) <= 4 / 3 * _best_makespan(costs, world) + 1e-9  # Graham's bound for LPT


def test_longest_first_onto_the_least_loaded_rank():
    # 8 to rank 0, 7 to rank 1, 6 to rank 1 (7 < 8), 5 to rank 0 (8 < 13): loads 13 and 13; ties: lower rank
    assert assign_to_ranks([5, 8, 6, 7], 2) == [0, 0, 1, 1]
    assert assign_to_ranks([1, 1, 1], 3) == [0, 1, 2]
    assert assign_to_ranks([], 4) == []


def test_cost_is_latents_times_rows_trained(store):
    small = TrainConfig(store=store, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
                        training_tokens=128 * 10, batch_size=128)  # fmt: skip
    wide = TrainConfig(store=store, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=256, k=4),
                       training_tokens=128 * 10, batch_size=128)  # fmt: skip
    long = TrainConfig(store=store, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
                       training_tokens=64 * 40, batch_size=64)  # fmt: skip
    assert training_cost(small) == 64 * 128 * 10
    assert training_cost(wide) == 4 * training_cost(small) and training_cost(long) == 2 * training_cost(small)


@pytest.mark.parametrize("k", [0.5, 3, 7.5, 12])
@pytest.mark.parametrize("world", [2, 3])
def test_the_choice_from_rank_slices_is_batchtopk_over_the_whole_batch(k, world):
    x = torch.randn(6 * world, 16, generator=torch.Generator().manual_seed(world))
    x[0, :4] = -1.0  # some rows with few positive entries: k x B may exceed what is positive (k = 12)
    wanted = int(k * x.shape[0])
    slices = [part.relu().flatten() for part in x.chunk(world)]
    cut = global_cut([largest_entries(flat, wanted) for flat in slices], wanted)
    ours = torch.cat([keep_from_cut(flat, cut).view(-1, 16) for flat in slices])
    assert torch.equal(ours, BatchTopK(k)(x))


def test_gradients_reach_the_kept_entries_only():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    flat = x.relu().flatten()
    kept = keep_from_cut(flat, global_cut([largest_entries(flat, 6)], 6))
    kept.sum().backward()
    assert x.grad is not None and int((x.grad != 0).sum()) == 6 == int((kept != 0).sum())


def test_outside_a_job_the_data_parallel_choice_is_batchtopk():
    x = torch.randn(8, 32)
    assert torch.equal(DataParallelBatchTopK(4)(x), BatchTopK(4)(x))


def test_outside_torchrun_one_process_is_the_whole_job(tmp_path):
    ranks = join_ranks("auto", 3)
    assert (ranks.mode, ranks.rank, ranks.world_size, ranks.lead, ranks.data_parallel) == (
        "single",
        0,
        1,
        True,
        False,
    )
    assert ranks.mine([3.0, 1.0, 2.0]) == [0, 1, 2]
    assert ranks.lead_only(lambda: 7) == 7 and ranks.all_gather("x") == ["x"]
    # the job's hold is the ordinary lock of a train run
    with ranks.holding_output(tmp_path), pytest.raises(OutputLockedError):
        DirLock(tmp_path, what="train run").acquire()
    ranks.finish()
    ranks.close(clean=True)


def test_bad_distributed_settings_are_refused_before_work(store, tmp_path):
    cfg = TrainConfig(store=store, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=16, k=2),
                      training_tokens=256, batch_size=128)  # fmt: skip
    with pytest.raises(ConfigError, match="distributed must be one of"):
        train_sae(cfg, out_dir=tmp_path / "a", distributed="fsdp")
    with pytest.raises(ConfigError, match="dist_timeout"):
        train_sae(cfg, out_dir=tmp_path / "b", dist_timeout=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_data_parallel_refuses_unknown_architectures_and_uneven_slices(store):
    batchtopk = TrainConfig(store=store, site=SITE, sae=BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=16, k=2),
                            training_tokens=300, batch_size=150)  # fmt: skip
    check_data_parallel([batchtopk], ["b"], 2)
    with pytest.raises(ConfigError, match="does not split into 4 equal slices"):
        check_data_parallel([batchtopk], ["b"], 4)
    jumprelu = TrainConfig(store=store, site=SITE, sae=JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=16),
                           training_tokens=256, batch_size=128)  # fmt: skip
    check_data_parallel([jumprelu], ["j"], 2)  # per-row losses: supported
    from vision_sae_lens.train.config import build_sae_config

    other = TrainConfig(store=store, site=SITE, sae=build_sae_config("matching_pursuit", d_in=D_IN, d_sae=16),
                        training_tokens=256, batch_size=128)  # fmt: skip
    with pytest.raises(ConfigError, match="cannot train data-parallel"):
        check_data_parallel([other], ["m"], 2)


def test_saved_config_keys_are_sorted(store, tmp_path):
    # SAELens lists an SAE config's fields from a set: sorted, two processes write the same bytes
    cfg = TrainConfig(store=store, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=16, k=2),
                      training_tokens=256, batch_size=128, checkpoint_every_tokens=128)  # fmt: skip
    run = train_sae(cfg, out_dir=tmp_path, progress=False)
    for path in [run.path / "cfg.json", *tmp_path.glob("checkpoints/*/*/trainer/cfg.json")]:
        keys = list(json.loads(path.read_text()))
        assert keys == sorted(keys), path


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("auxk_relu", [True, False])
def test_data_parallel_batchtopk_keeps_the_chosen_step_and_auxk(device, auxk_relu):
    """The data-parallel class of a BatchTopK-family SAE is a subclass of the class one process would train
    (the lean CPU one or SAELens' own, with or without the ReLU AuxK), made once; per-row classes stay as
    they are."""
    from sae_lens import BatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAE, TopKTrainingSAE

    from vision_sae_lens.train.build import training_classes
    from vision_sae_lens.train.data_parallel import BatchTopKAcrossRanks, DataParallelSAETrainer

    for cls in (BatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAE):
        single, _ = training_classes(cls, device, auxk_relu=auxk_relu)
        parallel, trainer = training_classes(cls, device, auxk_relu=auxk_relu, data_parallel=True)
        assert trainer is DataParallelSAETrainer
        assert issubclass(parallel, BatchTopKAcrossRanks) and issubclass(parallel, single)
        assert parallel is training_classes(cls, device, auxk_relu=auxk_relu, data_parallel=True)[0]
    single, _ = training_classes(TopKTrainingSAE, device, auxk_relu=auxk_relu)
    assert training_classes(TopKTrainingSAE, device, auxk_relu=auxk_relu, data_parallel=True)[0] is single
