"""Training on 2 ranks (gloo, CPU): a sweep dealt to the ranks writes the single-process folders byte for byte
(per-SAE resume included), data-parallel training equals one process with the same global batch, a failed or
killed rank stops the others with a clear error, and --resume continues on another number of processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import D_IN, SITE
from kill_at import tree_bytes
from sae_lens import StandardTrainingSAEConfig
from safetensors.torch import load_file

from vision_sae_lens.fsutil import DirLock
from vision_sae_lens.train import TrainConfig, load_sweep, train_sae
from vision_sae_lens.train.checkpoint import list_checkpoints

REPO = Path(__file__).parents[2]
BATCH, STEPS, EVERY = 128, 12, 4
NAMES = ("standard", "topk", "batchtopk", "matryoshka")


def _sweep_file(path: Path, store_path: Path) -> Path:
    """Four architectures; the features a data-parallel run must reduce: a short dead-latent window (wide SAEs
    with few active latents, so AuxK is on), b_dec from the first batch's mean, an estimated activation scale,
    BatchTopK's choice and threshold."""
    path.write_text(
        f"""
[defaults]
store = "{store_path}"
site = "{SITE}"
training_tokens = {BATCH * STEPS}
batch_size = {BATCH}
lr = 0.003
dead_feature_window = 2
checkpoint_every_tokens = {BATCH * EVERY}
device = "cpu"
log_every = 4
[[sae]]
name = "standard"
architecture = "standard"
d_sae = 64
[[sae]]
name = "topk"
architecture = "topk"
d_sae = 512
k = 2
b_dec_init = "mean"
normalize_activations = "expected_average_only_in"
n_batches_for_norm_estimate = 2
[[sae]]
name = "batchtopk"
architecture = "batchtopk"
d_sae = 256
k = 2
[[sae]]
name = "matryoshka"
architecture = "matryoshka"
d_sae = 256
k = 2
matryoshka_widths = [64, 256]
"""
    )
    return path


@pytest.fixture(scope="module")
def single(store, tmp_path_factory):
    """The sweep trained in this one process: the reference every multi-process run is compared with."""
    root = tmp_path_factory.mktemp("distributed")
    sweep = _sweep_file(root / "sweep.toml", store.path)
    configs, _ = load_sweep(sweep)
    train_sae(configs, out_dir=root / "single", progress=False)
    return sweep, root / "single"


def _env(**extra: str) -> dict[str, str]:
    # One intra-op thread per rank, as torchrun sets by default (the reference runs with one too: conftest)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "vision_sae_lens", *args, "--no-progress", "--dist-timeout", "120"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)


def _ranks(argvs: list[list[str]], logs: Path) -> list[tuple[int, str]]:
    """Each argv run as one rank of a job started by hand (env://, no torchrun agent that would stop the other
    ranks itself): (exit code, stderr) per rank. An argv starting with ``--kill-at-step N`` dies at that step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, argv in enumerate(argvs):
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(len(argvs)), LOCAL_WORLD_SIZE=str(len(argvs)))  # fmt: skip
        if argv[0] == "--kill-at-step":
            code = f"import sys; sys.path.insert(0, 'tests'); from kill_at import cli_killed_at_step; sys.exit(cli_killed_at_step({argv[1]}, sys.argv[1:]))"  # noqa: E501
            cmd = [sys.executable, "-c", code, *argv[2:]]
        else:
            cmd = [sys.executable, "-m", "vision_sae_lens", *argv]
        err = (logs / f"rank{rank}.err").open("w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO), err))
    ended = []
    for rank, (proc, err) in enumerate(procs):
        proc.wait(timeout=600)
        err.close()
        ended.append((proc.returncode, (logs / f"rank{rank}.err").read_text()))
    return ended


@pytest.mark.slow
def test_sweep_over_two_ranks_writes_the_single_process_folders(single, tmp_path):
    sweep, reference = single
    out = tmp_path / "sweep"
    # per-SAE resume: one SAE already finished, one interrupted after its checkpoint at step 8, two not begun
    shutil.copytree(reference / "standard", out / "standard")
    shutil.copytree(reference / "checkpoints" / "standard", out / "checkpoints" / "standard")
    shutil.copytree(reference / "checkpoints" / "topk", out / "checkpoints" / "topk")
    assert list_checkpoints(out / "checkpoints" / "topk") == [4, 8]
    done = _torchrun("train", "--config", str(sweep), "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-4000:]
    # by latents x rows: topk (512) to rank 0, batchtopk and matryoshka (256 each) to rank 1, standard (64) to 0
    assert "SAEs per rank: [0, 0, 1, 1]" in done.stderr
    assert (
        "resuming ['topk'] from step 8" in done.stderr and "run 'standard' is already finished" in done.stderr
    )
    assert len(done.stdout.splitlines()) == 4  # rank 0 prints every run once
    # Every file of every SAE folder, every checkpoint, sweep.json and its plot: the bytes one process wrote
    assert tree_bytes(out, skip=(".vsl.lock",)) == tree_bytes(reference, skip=(".vsl.lock",))


@pytest.mark.slow
def test_data_parallel_equals_one_process_with_the_same_global_batch(single, tmp_path):
    sweep, reference = single
    out = tmp_path / "ddp"
    done = _torchrun("train", "--config", str(sweep), "--out", str(out), "--distributed", "ddp")
    assert done.returncode == 0, done.stderr[-4000:]
    for name in NAMES:
        ours, theirs = load_file(out / name / "sae_weights.safetensors"), load_file(reference / name / "sae_weights.safetensors")  # fmt: skip
        assert ours.keys() == theirs.keys()
        for key in ours:  # BatchTopK's threshold (saved as JumpReLU's) included
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=f"{name} {key}")
        assert not torch.equal(ours["W_enc"], theirs["W_enc"])  # two processes did sum in another order
        torch.testing.assert_close(
            load_file(out / name / "sparsity.safetensors")["sparsity"],
            load_file(reference / name / "sparsity.safetensors")["sparsity"],
        )
        ours_report, their_report = (
            json.loads((d / name / "eval.json").read_text()) for d in (out, reference)
        )
        assert ours_report["nmse"] == pytest.approx(their_report["nmse"], rel=1e-4)
        assert (
            json.loads((out / name / "cfg.json").read_text())["metadata"]["training_tokens"] == BATCH * STEPS
        )
        # The dead-latent window over the whole batch: the same latents counted dead, the same firing counts
        ours_state, their_state = (
            torch.load(d / "checkpoints" / name / "8" / "trainer" / "trainer_state.pt", weights_only=True)
            for d in (out, reference)
        )
        for key in ("n_forward_passes_since_fired", "act_freq_scores"):
            assert torch.equal(ours_state[key], their_state[key]), (name, key)
        if name != "standard":  # AuxK was on: latents had been dead longer than the window
            assert bool((their_state["n_forward_passes_since_fired"] > 2).any()), name
    assert sorted(p.name for p in (out / "checkpoints" / "topk").iterdir() if p.is_dir()) == ["4", "8"]


def _standard(store, steps: int, every: int) -> TrainConfig:
    return TrainConfig(store=store, site=SITE, sae=StandardTrainingSAEConfig(d_in=D_IN, d_sae=64),
                       training_tokens=64 * steps, batch_size=64, lr=0.003, checkpoint_every_tokens=64 * every,
                       device="cpu", name="std")  # fmt: skip


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_resume_continues_on_one_process(store, tmp_path, caplog):
    out = tmp_path / "job"
    argv = ["train", "--store", str(store.path), "--site", SITE, "--architecture", "standard", "--d-sae", "64",
            "--training-tokens", str(64 * 40), "--batch-size", "64", "--lr", "0.003", "--device", "cpu",
            "--checkpoint-every-tokens", str(64 * 10), "--name", "std", "--out", str(out), "--no-progress",
            "--dist-timeout", "60"]  # fmt: skip
    (rank0, err0), (rank1, _) = _ranks([argv, ["--kill-at-step", "25", *argv]], tmp_path)
    assert rank1 == -signal.SIGKILL
    assert rank0 == 1 and "RankFailedError: rank 0 lost contact with another rank" in err0, err0[-3000:]
    assert "--resume (any number of processes)" in err0
    assert list_checkpoints(out / "checkpoints" / "std") == [10, 20] and not (out / "std").exists()

    caplog.set_level("INFO")
    run = train_sae(_standard(store, 40, 10), out_dir=out, resume=True, progress=False)  # one process now
    assert "resuming ['std'] from step 20" in caplog.text
    assert run.sae.cfg.metadata.training_tokens == 64 * 40
    uninterrupted = train_sae(_standard(store, 40, 10), out_dir=tmp_path / "one", progress=False)
    ours, theirs = load_file(run.path / "sae_weights.safetensors"), load_file(uninterrupted.path / "sae_weights.safetensors")  # fmt: skip
    for key in ours:  # the first 20 steps on 2 ranks, the last 20 on one: one process's run
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_failing_rank_stops_the_sweep_with_its_error_and_a_held_output_is_refused(store, tmp_path):
    out = tmp_path / "sweep"
    config = tmp_path / "sweep.toml"
    config.write_text(
        f'[defaults]\nstore = "{store.path}"\nsite = "{SITE}"\nbatch_size = 64\ndevice = "cpu"\n'
        '[[sae]]\nname = "good"\narchitecture = "standard"\nd_sae = 256\ntraining_tokens = 6400000\n'
        '[[sae]]\nname = "bad"\narchitecture = "standard"\nd_sae = 16\ntraining_tokens = 6400\nlr = 1e30\n'
    )
    argv = ["train", "--config", str(config), "--out", str(out), "--no-progress", "--dist-timeout", "60"]
    with DirLock(out, what="train run"):  # another train run holds the folder: the job is refused, every rank
        refused = _ranks([argv, argv], tmp_path)
    assert [code for code, _ in refused] == [1, 1]
    assert all("OutputLockedError" in err and "is in use by another train run" in err for _, err in refused)

    (rank0, err0), (rank1, err1) = _ranks([argv, argv], tmp_path)
    assert rank1 == 1 and "TrainingError: run 'bad': the loss became" in err1, err1[-3000:]
    # rank 0 (training 'good', 100,000 steps) stops with rank 1's error instead of finishing or hanging
    assert (
        rank0 == 1 and "RankFailedError: rank 1 failed: TrainingError: run 'bad': the loss became" in err0
    ), err0[-3000:]
    assert not (out / "good").exists()
