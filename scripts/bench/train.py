"""Benchmark SAE training: store-fed vs in-memory rows/s, and a 4-SAE sweep vs 4 sequential runs.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/train.py [--d-in 256] [--rows 262144] [--steps 60]

1. The same TopK SAE trains once fed from an on-disk activation store (fp16, through
   ``ActivationStore.shuffled``) and once fed from a float32 tensor already in memory; the ratio
   of training rows/s says whether data loading is the bottleneck (target >= 0.9).
2. Four SAEs (topk, batchtopk, standard, jumprelu) train in one sweep (one data pass) and one after
   another, ``--repeats`` times interleaved; the median ratios sweep / sequential (training time and wall
   time) show what sharing the pass and stepping side by side save.
   ``--only cli`` (also run by default): the same four SAEs through the ``train`` command, as a user runs
   them: one ``vision-sae-lens train --config sweep.toml`` process vs four ``train --config one.toml``
   processes, one after another; wall time of the processes, imports and start-up included.

3. ``--only step``: the bare SAE step (SAELens' ``training_forward_pass``: encode, decode, loss; backward;
   a fused Adam step, on batches already in memory) next to the package's training loop fed from the
   store, for standard / topk / batchtopk at d_in 768 x 8 and x 32 latents; ratio loop / bare (target
   >= 0.9), median of interleaved repeats.

4. ``--only aux``: one training step of a TopK SAE (d_in 768, d_sae 6144, k 32, batch 4096) with every
   latent dead, so the AuxK loss is on: the package's trainer (``FastSAETrainer``) with SAELens'
   ``TopKTrainingSAE`` (its forward and aux loss: dense (batch, d_sae) auxiliary activations, then a
   rescaled copy) vs with ``LeanTopKTrainingSAE`` (on a CPU the sparse TopK forward, and the lean AuxK
   loss: top-k_aux values and indices, ``embedding_bag``). Each variant in a fresh process: peak RSS
   (``ru_maxrss``) over the steps, its growth during them, and the median step time; ratios lean / dense
   (SAELens' own ``SAETrainer.step`` is printed beside them).

5. ``--only ranks`` (also run by default): the same four SAEs as one sweep through ``vision-sae-lens train
   --config``, in one process and as a sweep over 2 ranks (``torchrun --nproc_per_node 2``, gloo on a CPU: each
   rank trains the two SAEs dealt to it); the ratio of the wall times, start-up included.

Times are those of the training loops (``TrainRun.train_seconds``), evaluation excluded, except the
wall-time ratios, which include everything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)

from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store.writer import StoreWriter
from vision_sae_lens.train import TrainConfig, train_sae

SITE = "blocks.0.hook_resid_post"
LAYOUT = TokenLayout(image_size=(224, 224), patch_size=(16, 16), has_cls=True)  # 196 patches


class InMemoryStore:
    """The store interface over a float32 tensor held in memory (the 'no data loading' baseline)."""

    def __init__(self, store, rows_nd: torch.Tensor) -> None:
        self._store, self.rows_nd = store, rows_nd
        for name in (
            "metadata",
            "fingerprint",
            "sites",
            "d_model",
            "layout",
            "tokens",
            "backbone_id",
            "dataset",
        ):
            setattr(self, name, getattr(store, name))
        self.n_rows = rows_nd.shape[0]
        self.path = None

    def __getattr__(self, name):  # everything but the training batches (provenance, evaluation reads)
        return getattr(self._store, name)

    def site_dim(self, site):
        return self.rows_nd.shape[1]

    def shuffled(
        self,
        site,
        batch_size,
        *,
        seed=0,
        start_row=0,
        stop_row=None,
        epochs=1,
        drop_last=True,
        skip_batches=0,
        exclude_images=None,
        prefetch=None,
    ):
        stop = self.n_rows if stop_row is None else stop_row
        rows = torch.arange(start_row, stop)
        if exclude_images is not None:  # the held-out images' rows, as the store's own shuffle drops them
            image_n = torch.from_numpy(self.provenance(start_row, stop)[0])
            rows = rows[~torch.isin(image_n, torch.as_tensor(list(exclude_images), dtype=image_n.dtype))]
        g = torch.Generator().manual_seed(seed)
        n = 0
        for _ in range(epochs):
            perm = rows[torch.randperm(len(rows), generator=g)]
            for i in range(0, len(perm) - batch_size + 1, batch_size):
                if n >= skip_batches:
                    yield self.rows_nd[perm[i : i + batch_size]]
                n += 1

    def ordered(self, site, batch_size, *, start_row=0, stop_row=None):
        return self._store.ordered(site, batch_size, start_row=start_row, stop_row=stop_row)


def build_store(path: Path, n_rows: int, d: int):
    per_image = LAYOUT.n_patches
    n_rows = n_rows // per_image * per_image
    g = np.random.default_rng(0)
    writer = StoreWriter(
        path, backbone_id="bench", sites=[SITE], d_model=d, layout=LAYOUT, tokens="patches", dtype="float16"
    )
    chunk = per_image * 256
    for lo in range(0, n_rows, chunk):
        hi = min(lo + chunk, n_rows)
        rows = g.standard_normal((hi - lo, d), dtype=np.float32)
        idx = np.arange(lo, hi)
        writer.append({SITE: rows}, idx // per_image, idx % per_image + LAYOUT.n_prefix)
    return writer.finish()


STEP_SAES = {
    "standard": lambda d, n: StandardTrainingSAEConfig(d_in=d, d_sae=n, l1_coefficient=1.0),
    "topk": lambda d, n: TopKTrainingSAEConfig(d_in=d, d_sae=n, k=32),
    "batchtopk": lambda d, n: BatchTopKTrainingSAEConfig(d_in=d, d_sae=n, k=32),
}


def bare_step_seconds(make_cfg, batches: list[torch.Tensor], lr: float) -> float:
    """Seconds per step of the SAE's own work: forward + loss, backward, fused Adam; nothing else."""
    from vision_sae_lens.compat import TrainStepInput, get_sae_training_class

    torch.manual_seed(0)
    sae_cfg = make_cfg()
    sae = get_sae_training_class(sae_cfg.architecture())[0](sae_cfg)
    coefficients = {k: (v.value if hasattr(v, "value") else v) for k, v in sae.get_coefficients().items()}
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
    dead = torch.zeros(sae_cfg.d_sae, dtype=torch.bool)
    sae.train()
    t0 = time.perf_counter()
    for i, batch in enumerate(batches):
        out = sae.training_forward_pass(
            TrainStepInput(batch, coefficients, dead, n_training_steps=i, is_logging_step=False)
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / len(batches)


def bench_step(args, tmp: Path) -> None:
    d, bs, steps = 768, args.batch_size, args.steps
    rows = bs * (steps + 2) + LAYOUT.n_patches
    store = build_store(tmp / "step_acts", rows, d)
    batches = [store.read_rows(SITE, i * bs, (i + 1) * bs) for i in range(steps)]
    results = {}
    for expansion in args.expansions:
        for arch, make in STEP_SAES.items():
            make_cfg = lambda make=make, n=d * expansion: make(d, n)  # noqa: E731
            bare, loop = [], []
            for rep in range(args.repeats):  # interleaved: a neighbour's burst hits both alike
                bare.append(bare_step_seconds(make_cfg, batches, 3e-4))
                cfg = TrainConfig(
                    store=store, site=SITE, sae=make_cfg(), training_tokens=bs * steps, batch_size=bs,
                    lr=3e-4, device="cpu", name=f"{arch}-{expansion}-{rep}", eval_fraction=0.0001,
                    max_eval_rows=LAYOUT.n_patches, dead_feature_window=1000,  # no latent dead: as the bare step
                )  # fmt: skip
                run = train_sae(cfg, out_dir=tmp / f"step_{arch}_{expansion}_{rep}", progress=False)
                loop.append(run.train_seconds / steps)
            b, lp = statistics.median(bare), statistics.median(loop)
            results[f"{arch} 768x{expansion}"] = {
                "bare_s_per_step": round(b, 3),
                "loop_s_per_step": round(lp, 3),
                "loop_speed_over_bare": round(b / lp, 3),
            }
            print(
                f"  {arch} 768x{expansion}: bare {b:.3f} s/step, loop {lp:.3f} s/step -> {b / lp:.3f}",
                flush=True,
            )
    print(
        json.dumps(
            {"batch_size": bs, "steps": steps, "threads": torch.get_num_threads(), **results}, indent=1
        )
    )
    print("target: loop_speed_over_bare >= 0.9")


AUX_VARIANTS = {
    "saelens-step": "SAELens' SAETrainer.step",
    "dense-aux": "FastSAETrainer, SAELens' TopKTrainingSAE",
    "lean-aux": "FastSAETrainer, LeanTopKTrainingSAE",
}


def aux_child(variant: str, d: int, d_sae: int, bs: int, steps: int) -> None:
    """One variant in this (fresh) process; prints one JSON line: peak RSS and step times."""
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE

    from vision_sae_lens.compat import SAETrainerConfig
    from vision_sae_lens.train.fast_trainer import FastSAETrainer
    from vision_sae_lens.train.lean_saes import LeanTopKTrainingSAE

    torch.manual_seed(0)
    sae_cls = LeanTopKTrainingSAE if variant == "lean-aux" else TopKTrainingSAE
    sae = sae_cls(TopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=32))
    cfg = SAETrainerConfig(
        total_training_samples=bs * (steps + 1), train_batch_size_samples=bs, lr=3e-4, lr_end=3e-5,
        lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=0, n_restart_cycles=1,
        adam_beta1=0.9, adam_beta2=0.999, device="cpu", autocast=False,
        dead_feature_window=-1,  # every latent counts as dead at every step: the aux loss always runs
        feature_sampling_window=1000, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1,
    )  # fmt: skip
    trainer_cls = SAETrainer if variant == "saelens-step" else FastSAETrainer
    trainer = trainer_cls(cfg=cfg, sae=sae, data_provider=iter(()))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(bs, d, generator=g) for _ in range(steps + 1)]
    step = trainer.step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    in_use = MallocInUse()
    seconds = []
    for batch in batches:
        t0 = time.perf_counter()
        out = step(batch)
        seconds.append(time.perf_counter() - t0)
        assert float(out.losses["auxiliary_reconstruction_loss"].detach()) > 0
        del out  # a training loop keeps no step's output alive into the next step
        trainer.n_training_steps += 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("@@" + json.dumps({"peak_mib": peak, "step_growth_mib": peak - before,
                             "in_use_growth_mib": in_use.stop(), "s_per_step": statistics.median(seconds[1:])}))  # fmt: skip


class MallocInUse:
    """Peak of the bytes glibc's malloc has handed out and not yet got back (``mallinfo2``: heap chunks in
    use + mmapped blocks) above their level at creation, sampled every millisecond by a thread. Unlike
    RSS it does not count freed memory glibc keeps; NaN where glibc (2.33+) is not the allocator."""

    def __init__(self) -> None:
        import ctypes
        import threading

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip

        try:
            self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            self._mallinfo2 = None
            return
        self._mallinfo2.restype = Info
        self._base = self._peak = self._now()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _now(self) -> int:
        info = self._mallinfo2()
        return info.uordblks + info.hblkhd

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self._peak = max(self._peak, self._now())

    def stop(self) -> float:
        """MiB of the peak above the starting level."""
        if self._mallinfo2 is None:
            return float("nan")
        self._done.set()
        self._thread.join()
        return (self._peak - self._base) / 2**20


def bench_aux(args) -> None:
    d, d_sae, bs, steps = 768, 6144, args.batch_size, 3
    print(f"(aux) one step, TopK d_in {d} x d_sae {d_sae}, k 32, batch {bs}, every latent dead; "
          f"each variant in a fresh process, median of {args.repeats} interleaved, {steps} timed steps:")  # fmt: skip
    found: dict[str, list[dict]] = {v: [] for v in AUX_VARIANTS}
    for _ in range(args.repeats):
        for variant in AUX_VARIANTS:
            cmd = [sys.executable, __file__, "--aux-child", variant, str(d), str(d_sae), str(bs), str(steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            found[variant].append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("@@"))[2:]))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in found.items()}
    for variant, m in med.items():
        print(f"  {AUX_VARIANTS[variant]:<36} peak RSS {m['peak_mib']:6.0f} MiB "
              f"(+{m['step_growth_mib']:.0f} MiB during the steps; malloc in use +{m['in_use_growth_mib']:.0f} "
              f"MiB), {m['s_per_step']:.2f} s/step")  # fmt: skip
    dense, lean = med["dense-aux"], med["lean-aux"]
    print(f"  lean / dense forward and aux: peak RSS {lean['peak_mib'] / dense['peak_mib']:.3f}, "
          f"RSS growth during the steps {lean['step_growth_mib'] / dense['step_growth_mib']:.3f}, "
          f"peak malloc in use during the steps {lean['in_use_growth_mib'] / dense['in_use_growth_mib']:.3f}, "
          f"step time {lean['s_per_step'] / dense['s_per_step']:.3f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=256)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", choices=["step", "feed-and-sweep", "cli", "aux", "ranks"], help="run one part")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats (step, sweep and aux parts)")
    ap.add_argument(
        "--expansions",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[8, 32],
        help="latents per input dimension for the step part (comma-separated)",
    )
    ap.add_argument("--aux-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.aux_child:
        variant, *sizes = args.aux_child
        aux_child(variant, *(int(v) for v in sizes))
        return
    if args.only in (None, "aux"):
        bench_aux(args)
        if args.only:
            return
    d, d_sae, bs = args.d_in, args.d_in * args.expansion, args.batch_size
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if args.only in (None, "step"):
        bench_step(args, tmp)
        if args.only:
            return
    t = time.perf_counter()
    store = build_store(tmp / "acts", args.rows, d)
    print(f"store: {store.n_rows} rows x {d} fp16 written in {time.perf_counter() - t:.1f}s ({tmp})")
    if args.only == "cli":
        bench_cli(args, tmp)
        return
    if args.only == "ranks":
        bench_ranks(args, tmp)
        return
    memory = InMemoryStore(store, store.read_rows(SITE, 0, store.n_rows))

    def cfg(src, sae, name):
        return TrainConfig(
            store=src,
            site=SITE,
            sae=sae,
            training_tokens=bs * args.steps,
            batch_size=bs,
            lr=3e-4,
            device=args.device,
            name=name,
            eval_fraction=0.01,
            max_eval_rows=bs,
        )

    def topk():
        return TopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=32)

    results = {}
    train_sae(cfg(store, topk(), "warmup"), out_dir=tmp / "warm", progress=False)  # first-call costs
    from_store = train_sae(cfg(store, topk(), "store"), out_dir=tmp / "a", progress=False)
    from_memory = train_sae(cfg(memory, topk(), "memory"), out_dir=tmp / "b", progress=False)
    rows = bs * args.steps
    results["store_rows_per_s"] = rows / from_store.train_seconds
    results["memory_rows_per_s"] = rows / from_memory.train_seconds
    results["store_over_memory"] = results["store_rows_per_s"] / results["memory_rows_per_s"]

    saes = {
        "topk": topk,
        "batchtopk": lambda: BatchTopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=32),
        "standard": lambda: StandardTrainingSAEConfig(d_in=d, d_sae=d_sae, l1_coefficient=1.0),
        "jumprelu": lambda: JumpReLUTrainingSAEConfig(d_in=d, d_sae=d_sae),
    }

    def sweep_run(rep: int) -> tuple[float, list]:
        t = time.perf_counter()
        configs = [cfg(store, make(), n) for n, make in saes.items()]
        runs = train_sae(configs, out_dir=tmp / f"sweep_{rep}", progress=False)
        return time.perf_counter() - t, runs

    def separate_runs(rep: int) -> tuple[float, list]:
        t = time.perf_counter()
        runs = [train_sae(cfg(store, make(), n), out_dir=tmp / f"seq_{rep}_{n}", progress=False) for n, make in saes.items()]  # fmt: skip
        return time.perf_counter() - t, runs

    ratios: dict[str, list[float]] = {"train": [], "wall": []}
    for rep in range(args.repeats):  # interleaved, the order alternating: a neighbour's burst hits both alike
        if rep % 2 == 0:
            (sweep_wall, sweep), (seq_wall, seq) = sweep_run(rep), separate_runs(rep)
        else:
            (seq_wall, seq), (sweep_wall, sweep) = separate_runs(rep), sweep_run(rep)
        sweep_train, seq_train = max(r.train_seconds for r in sweep), sum(r.train_seconds for r in seq)
        ratios["train"].append(sweep_train / seq_train)
        ratios["wall"].append(sweep_wall / seq_wall)
        print(f"  repeat {rep + 1}: sweep / separate runs, training {sweep_train:.1f} / {seq_train:.1f} s = "
              f"{ratios['train'][-1]:.3f}; wall {sweep_wall:.1f} / {seq_wall:.1f} s = {ratios['wall'][-1]:.3f}; "
              f"per SAE alone {', '.join(f'{r.name} {r.train_seconds:.1f}' for r in seq)} s", flush=True)  # fmt: skip
    results["sweep_over_sequential_train"] = statistics.median(ratios["train"])
    results["sweep_over_sequential_wall"] = statistics.median(ratios["wall"])
    results.update(
        d_in=d,
        d_sae=d_sae,
        batch_size=bs,
        steps=args.steps,
        device=str(sweep[0].sae.device),
        threads=torch.get_num_threads(),
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=1))
    if args.only is None:
        bench_cli(args, tmp)
        bench_ranks(args, tmp)


CLI_SAES = {
    "topk": {"architecture": "topk", "k": 32},
    "batchtopk": {"architecture": "batchtopk", "k": 32},
    "standard": {"architecture": "standard", "l1_coefficient": 1.0},
    "jumprelu": {"architecture": "jumprelu"},
}


def sweep_toml(args, tmp: Path, saes: dict[str, dict]) -> str:
    """A sweep file over the part-2 store: one [[sae]] per entry of ``saes``."""
    defaults = {
        "store": str(tmp / "acts"),
        "site": SITE,
        "training_tokens": args.batch_size * args.steps,
        "batch_size": args.batch_size,
        "lr": 3e-4,
        "device": args.device,
        "eval_fraction": 0.01,
        "max_eval_rows": args.batch_size,
    }
    lines = ["[defaults]", *(f"{k} = {json.dumps(v)}" for k, v in defaults.items())]
    for name, fields in saes.items():
        lines += ["[[sae]]", f'name = "{name}"', f"d_sae = {args.d_in * args.expansion}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def bench_cli(args, tmp: Path) -> None:
    """The four SAEs of the sweep part through the ``train`` command: one sweep process vs four processes."""

    def train(name: str, saes: dict[str, dict]) -> float:
        config = tmp / f"cli_{name}.toml"
        config.write_text(sweep_toml(args, tmp, saes))
        cmd = [sys.executable, "-m", "vision_sae_lens", "train", "--config", str(config)]
        cmd += ["--out-dir", str(tmp / f"cli_{name}"), "--no-progress"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return time.perf_counter() - t

    sweep = train("sweep", CLI_SAES)
    separate = {name: train(name, {name: fields}) for name, fields in CLI_SAES.items()}
    results = {
        "cli_sweep_wall_s": round(sweep, 2),
        "cli_separate_wall_s": {name: round(s, 2) for name, s in separate.items()},
        "cli_sweep_over_separate_wall": round(sweep / sum(separate.values()), 3),
    }
    print("(cli) vision-sae-lens train: one sweep process vs four processes, wall time of the processes:")
    print(json.dumps(results, indent=1))


def bench_ranks(args, tmp: Path) -> None:
    """The four SAEs as one sweep: one ``train`` process vs a sweep over 2 torchrun ranks; wall-time ratio."""
    config = tmp / "ranks.toml"
    config.write_text(sweep_toml(args, tmp, CLI_SAES))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    train = ["-m", "vision_sae_lens", "train", "--config", str(config), "--no-progress"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    walls: dict[str, list[float]] = {"one_process": [], "two_ranks": []}
    for rep in range(args.repeats):  # interleaved, the order alternating
        for kind in ("one_process", "two_ranks") if rep % 2 == 0 else ("two_ranks", "one_process"):
            cmd = [
                sys.executable,
                *(torchrun if kind == "two_ranks" else []),
                *train,
                "--out",
                str(tmp / f"ranks_{kind}_{rep}"),
            ]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            walls[kind].append(time.perf_counter() - t)
    one, two = statistics.median(walls["one_process"]), statistics.median(walls["two_ranks"])
    print(
        "(ranks) the four SAEs as one sweep, wall time of the command: one process vs 2 torchrun ranks (gloo):"
    )
    print(json.dumps({"one_process_wall_s": round(one, 2), "two_ranks_wall_s": round(two, 2),
                      "two_ranks_over_one_process_wall": round(two / one, 3), "repeats": args.repeats,
                      "cpu_cores": os.cpu_count()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
