"""SAE quality at equal budget: this package's out-of-the-box SAE vs the reference trainers, one run.

Every implementation trains on the same rows of the same store (the demo's MNIST ViT store, the
training images of one seeded, stratified split, read in the same shuffled batch order), with the
same number of rows and the same batch size, and is scored by the same code: NMSE and L0 on the
held-out images' rows, dead latents by the package's one definition (over the whole store), and
digit accuracy on the 1,000 held-out test digits with the SAE spliced in (no error term).

Implementations (per architecture, topk and batchtopk):
- ``vision_sae_lens``: ``TrainConfig(store, site, sae, training_tokens)``, nothing else set.
- ``saelens-lm-defaults``: SAELens' own LM defaults through the same trainer (lr 3e-4 constant, no
  warm-up, dead-feature window 1000 steps, ``decoder_init_norm`` 0.1, b_dec zeros, AuxK coefficient 1
  on raw pre-activations).
- ``dictionary_learning`` 0.1.0 (TopKTrainer / BatchTopKTrainer, their defaults; warm-up and
  threshold start clipped to a tenth of the run, since their 1000-step defaults exceed it).
- ``sparsify`` 1.3.3 (EleutherAI's SparseCoder and its trainer's step: b_dec = first batch mean,
  unit-norm decoder, parallel-gradient removal, Adam at its default lr, linear warm-up clipped as
  above; topk only: sparsify has no batchtopk).
- ``overcomplete`` 0.3.0 (``TopKSAE`` / ``BatchTopKSAE`` with its default linear encoder and unit-norm
  dictionary, trained by its own ``train_sae`` loop with its ``top_k_auxiliary_loss`` and the README's
  Adam at lr 5e-4; its BatchTopK ``top_k`` counts per *batch*, so it gets k x batch size).

The reference trainers are an optional extra, never a dependency of the package: install them into
a throw-away folder and the script finds them there (torch comes from the package's environment)::

    pip install --target /tmp/refpkgs --no-deps eai-sparsify==1.3.3 dictionary-learning==0.1.0 natsort \
        schedulefree overcomplete==0.3.0
    python scripts/bench/quality.py --refpkgs /tmp/refpkgs

Without them the table lists only the package rows and says which references are missing. (Only
``overcomplete.sae`` is imported: the package's top-level ``__init__`` pulls in plotting code that needs
OpenCV and scikit-image and fails on matplotlib >= 3.9.)

Dead latents are counted twice: over the whole training store (the package's definition) and over the
rows of the 1,000 test digits (49,000 rows no SAE trained on), where a latent that only fires on a few
training rows shows up as dead.
``--tokens`` sets the budget (default 1,000,000 rows, about 5 epochs of the 196,000-row store).
``--seeds`` (default 3) trains every implementation from that many initialisation seeds on the same
batches and prints mean ± standard deviation: one seed is not enough to rank them (on this store the
NMSE of one trainer can move by 10-20% from seed to seed).

``--synthsae DIR`` runs the same comparison on the scaled SynthSAEBench world that
``vision-sae-lens bench synthsae --out DIR`` generated: every implementation trains on its training rows
(``DIR/acts-train``, one pass by default) with that command's width and k, and is scored on its test rows
(``DIR/acts-test``, another seed of the generator); NMSE there is 1 - SynthSAEBench's explained variance.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # sparsify's Triton kernels need a GPU


@dataclass(frozen=True)
class Setup:
    """What every implementation trains: the site of the store, the SAE width and k."""

    site: str = "blocks.1.hook_resid_post"
    d_sae: int = 512
    k: int = 16


DEMO = Setup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, help="training rows per SAE (default 1,000,000; --synthsae: "
                        "its training rows)")  # fmt: skip
    parser.add_argument("--refpkgs", default="/tmp/refpkgs", help="folder holding the reference trainers")
    parser.add_argument("--store", help="existing demo store (default: record one into a temp folder)")
    parser.add_argument("--test-store", help="existing store of the test digits (default: record one)")
    parser.add_argument("--synthsae", type=Path, help="a `bench synthsae --out` folder to compare on instead")
    parser.add_argument("--architectures", default="topk,batchtopk")
    parser.add_argument("--only", help="comma-separated implementations to run")
    parser.add_argument("--seeds", type=int, default=3, help="initialisation seeds per implementation")
    parser.add_argument(
        "--no-spliced", action="store_true", help="skip the spliced accuracy (the slowest part of scoring)"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    refs = _import_references(args.refpkgs)
    tmp = Path(tempfile.mkdtemp(prefix="vsl-quality-"))
    if args.synthsae:
        setup, store, test_store = _synthsae_stores(args.synthsae)
        model = test_digits = None
        tokens = args.tokens or store.n_rows
    else:
        setup, tokens = DEMO, args.tokens or 1_000_000
        model, test_digits, store, test_store = _demo_stores(args, tmp)
        if args.no_spliced:
            model = None
    site = setup.site
    print(f"store: {store.n_rows:,} rows of {site} (d {store.site_dim(site)}), budget {tokens:,} rows")
    impls = {
        "vision_sae_lens": _train_package,
        "saelens-lm-defaults": _train_saelens_lm,
        "dictionary_learning": _train_dictionary_learning if "dictionary_learning" in refs else None,
        "sparsify": _train_sparsify if "sparsify" in refs else None,
        "overcomplete": _train_overcomplete if "overcomplete" in refs else None,
    }
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for arch in args.architectures.split(","):
        template = None
        for name, fn in impls.items():
            if only and name not in only:
                continue
            if fn is None:
                rows.append((arch, name, None, "not installed (see --refpkgs)"))
                continue
            if name == "sparsify" and arch != "topk":
                continue
            started = time.perf_counter()
            reports = []
            for seed in range(args.seeds):
                sae, info = fn(setup, store, arch, tokens, tmp / f"{name}-{arch}-{seed}", template, seed)
                sys.stdout.flush()
                if template is None:
                    template = sae  # the package's run: its metadata and batch size are shared
                reports.append(_score(setup, sae, store, test_store, model, test_digits))
            note = f"{(time.perf_counter() - started) / args.seeds:.0f}s/seed {info}"
            rows.append((arch, name, reports, note))
            _print_table(rows[-1:], header=len(rows) == 1)  # as each finishes; the whole table at the end
    _print_table(rows)


def _demo_stores(args, tmp):
    """The demo backbone, the test digits and their stores (given, or recorded into ``tmp``)."""
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.data import open_images
    from vision_sae_lens.demo import DEMO_BACKBONE_ID
    from vision_sae_lens.store import ActivationStore, cache_activations

    model = HookedSAEViT.from_pretrained(DEMO_BACKBONE_ID)
    test_digits = open_images("demo:mnist:test")

    def record(images, folder):
        return cache_activations(
            model, images, sites=[DEMO.site], tokens="patches", dtype="float32", out_dir=tmp / folder,
            batch_size=256, progress=False,
        )  # fmt: skip

    store = ActivationStore(args.store) if args.store else record(open_images("demo:mnist:train"), "acts")
    test_store = ActivationStore(args.test_store) if args.test_store else record(test_digits, "test-acts")
    return model, test_digits, store, test_store


def _synthsae_stores(folder: Path):
    """The setup, training store and test store of a ``bench synthsae --out`` folder (width and k: its
    package SAE's)."""
    from vision_sae_lens.benchmark.synthsae import SITE
    from vision_sae_lens.store import ActivationStore

    package_cfg = folder / "saes" / "package-topk" / "cfg.json"
    if not package_cfg.is_file():
        sys.exit(
            f"{folder} holds no finished SynthSAEBench run: run `vision-sae-lens bench synthsae --out {folder}`"
        )
    cfg = json.loads(package_cfg.read_text())
    setup = Setup(site=SITE, d_sae=cfg["d_sae"], k=cfg["k"])
    return setup, ActivationStore(folder / "acts-train"), ActivationStore(folder / "acts-test")


# ------------------------------------------------------------------------------ implementations
def _package_config(setup, store, arch, tokens, **overrides):
    from vision_sae_lens.train import TrainConfig, build_sae_config

    sae_fields = {
        k: overrides.pop(k) for k in list(overrides) if k in ("decoder_init_norm", "aux_loss_coefficient")
    }
    return TrainConfig(
        store=store,
        site=setup.site,
        sae=build_sae_config(
            arch, d_in=store.site_dim(setup.site), d_sae=setup.d_sae, k=setup.k, **sae_fields
        ),
        training_tokens=tokens,
        **overrides,
    )


def _train_package(setup, store, arch, tokens, out, template, seed):
    from vision_sae_lens.train import train_sae

    cfg = _package_config(setup, store, arch, tokens, seed=seed)
    run = train_sae(cfg, out_dir=out, progress=False)
    return run.sae, f"batch {cfg.batch_size}, {cfg.n_steps} steps"


def _train_saelens_lm(setup, store, arch, tokens, out, template, seed):
    from vision_sae_lens.train import train_sae

    cfg = _package_config(
        setup, store, arch, tokens, batch_size=4096, lr=3e-4, lr_scheduler="constant", lr_warm_up_steps=0,
        lr_decay_steps=0, dead_feature_window=1000, decoder_init_norm=0.1, b_dec_init="zeros", seed=seed,
        aux_loss_coefficient=1.0, auxk_relu=False,
    )  # fmt: skip
    run = train_sae(cfg, out_dir=out, progress=False)
    return run.sae, f"batch {cfg.batch_size}, {cfg.n_steps} steps"


def _same_batches(store, template_cfg, tokens):
    """The package run's training batches: same split, same seed, same order."""
    from vision_sae_lens.train.feed import batch_stream, split_store

    split = split_store(
        store, eval_fraction=template_cfg.eval_fraction, max_eval_rows=template_cfg.max_eval_rows,
        batch_size=template_cfg.batch_size, seed=template_cfg.split_seed,
    )  # fmt: skip
    steps = tokens // template_cfg.batch_size
    stream = batch_stream(
        store, template_cfg.site, batch_size=template_cfg.batch_size, seed=template_cfg.data_seed, split=split
    )
    return steps, (next(stream) for _ in range(steps))


def _train_dictionary_learning(setup, store, arch, tokens, out, template, seed):
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer

    cfg = _package_config(setup, store, arch, tokens)
    steps, batches = _same_batches(store, cfg, tokens)
    cls = TopKTrainer if arch == "topk" else BatchTopKTrainer
    clip = max(1, steps // 10)
    trainer = cls(
        steps=steps, activation_dim=cfg.sae.d_in, dict_size=setup.d_sae, k=setup.k, layer=0, lm_name="demo",
        warmup_steps=min(1000, clip), threshold_start_step=min(1000, clip), seed=seed, device="cpu",
    )  # fmt: skip
    for step, x in enumerate(batches):
        trainer.update(step, x)
    ae = trainer.ae
    w_enc, b_enc, w_dec, b_dec = ae.encoder.weight.T, ae.encoder.bias, ae.decoder.weight.T, ae.b_dec
    threshold = float(ae.threshold) if arch == "batchtopk" else None
    return _as_saelens(setup, w_enc, b_enc, w_dec, b_dec, template, threshold=threshold), f"{steps} steps"


def _train_sparsify(setup, store, arch, tokens, out, template, seed):
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    cfg = _package_config(setup, store, arch, tokens)
    steps, batches = _same_batches(store, cfg, tokens)
    torch.manual_seed(seed)
    sae = SparseCoder(cfg.sae.d_in, SparseCoderConfig(num_latents=setup.d_sae, k=setup.k), device="cpu")
    adam = torch.optim.Adam(sae.parameters(), lr=2e-4 / (setup.d_sae / 2**14) ** 0.5)
    schedule = get_linear_schedule_with_warmup(adam, min(1000, max(1, steps // 10)), steps)
    for step, x in enumerate(batches):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out_ = sae(x, dead_mask=None)
        out_.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        schedule.step()
    sae.set_decoder_norm_to_unit_norm()
    return _as_saelens(
        setup, sae.encoder.weight.T, sae.encoder.bias, sae.W_dec, sae.b_dec, template
    ), f"{steps} steps"


def _train_overcomplete(setup, store, arch, tokens, out, template, seed):
    from overcomplete.sae import BatchTopKSAE, TopKSAE, train_sae
    from overcomplete.sae.losses import top_k_auxiliary_loss

    cfg = _package_config(setup, store, arch, tokens)
    steps, batches = _same_batches(store, cfg, tokens)
    torch.manual_seed(seed)
    d_in = cfg.sae.d_in
    if arch == "topk":
        sae = TopKSAE(d_in, nb_concepts=setup.d_sae, top_k=setup.k)
    else:  # its top_k is the number kept in the whole batch
        sae = BatchTopKSAE(d_in, nb_concepts=setup.d_sae, top_k=setup.k * cfg.batch_size)
    adam = torch.optim.Adam(sae.parameters(), lr=5e-4)
    train_sae(sae, batches, top_k_auxiliary_loss, adam, nb_epochs=1, monitoring=0)
    sae.eval()  # fuses the normalised dictionary; BatchTopK switches to its running threshold
    linear = sae.encoder.final_block[0]
    threshold = float(sae.running_threshold) if arch == "batchtopk" else None
    return _as_saelens(
        setup,
        linear.weight.T,
        linear.bias,
        sae.get_dictionary(),
        torch.zeros(d_in),
        template,
        threshold=threshold,
    ), f"{steps} steps"


def _as_saelens(setup, w_enc, b_enc, w_dec, b_dec, template, *, threshold=None):
    """A SAELens inference SAE with the reference weights (TopK, or JumpReLU for a global threshold)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig

    d_in, d_sae = w_enc.shape
    if template is None:  # the package's run was left out (--only): no vision metadata to copy
        template = TopKSAE(TopKSAEConfig(d_in=w_enc.shape[0], d_sae=w_enc.shape[1], k=setup.k))
    meta = (
        dataclasses.replace(template.cfg.metadata)
        if dataclasses.is_dataclass(template.cfg.metadata)
        else None
    )
    if threshold is None:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=setup.k, rescale_acts_by_decoder_norm=False))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
        sae.threshold.data[:] = threshold
    with torch.no_grad():
        sae.W_enc.data = w_enc.detach().float().clone().contiguous()
        sae.b_enc.data = b_enc.detach().float().clone()
        sae.W_dec.data = w_dec.detach().float().clone().contiguous()
        sae.b_dec.data = b_dec.detach().float().clone()
    sae.cfg.metadata = meta if meta is not None else template.cfg.metadata
    return sae


# ------------------------------------------------------------------------------------- scoring
def _score(setup, sae, store, test_store, model, test_digits):
    """The package's evaluation on the held-out split, plus NMSE and dead fraction over the test rows."""
    from vision_sae_lens.train.evaluate import evaluate_sae
    from vision_sae_lens.train.feed import split_store

    cfg = _package_config(setup, store, "topk", 4096)
    split = split_store(store, eval_fraction=cfg.eval_fraction, max_eval_rows=cfg.max_eval_rows, batch_size=1)
    report = evaluate_sae(
        sae,
        store,
        site=setup.site,
        split=split,
        model=model,
        images=test_digits,
        n_images=len(test_digits) if test_digits is not None else 0,
        batch_size=4096,
        progress=False,
    )
    on_test = evaluate_sae(
        sae, test_store, site=setup.site, start_row=0, max_rows=test_store.n_rows, progress=False
    )
    report["nmse_test"] = on_test["nmse"]
    report["dead_fraction_test"] = on_test["dead_fraction"]
    return report


def _print_table(rows, *, header: bool = True) -> None:
    if header:
        print(
            f"\n{'arch':<10}{'implementation':<22}{'NMSE':>16}{'NMSE test':>16}{'L0':>7}{'dead store':>14}"
            f"{'dead test':>14}{'spliced acc':>15}  notes"
        )
    for arch, name, reports, note in rows:
        if reports is None:
            print(f"{arch:<10}{name:<22}{'-':>16}{'-':>16}{'-':>7}{'-':>14}{'-':>14}{'-':>15}  {note}")
            continue
        nmse = _mean_sd([r["nmse"] for r in reports], 4)
        nmse_test = _mean_sd([r["nmse_test"] for r in reports], 4)
        dead = _mean_sd([r["dead_fraction"] for r in reports], 3)
        dead_test = _mean_sd([r["dead_fraction_test"] for r in reports], 3)
        acc = _mean_sd([(r.get("downstream") or {}).get("accuracy", float("nan")) for r in reports], 3)
        l0 = sum(r["l0"] for r in reports) / len(reports)
        print(
            f"{arch:<10}{name:<22}{nmse:>16}{nmse_test:>16}{l0:>7.1f}{dead:>14}{dead_test:>14}{acc:>15}  {note}"
        )
    clean = next(
        (r[2][0]["downstream"]["clean_accuracy"] for r in rows if r[2] and "downstream" in r[2][0]), None
    )
    if len(rows) > 1 and any(r[2] for r in rows):
        n = len(next(r[2] for r in rows if r[2]))
        print(
            (f"clean accuracy {clean:.3f}; " if clean is not None else "")
            + f"mean ± sd over {n} seeds; NMSE / L0 on the held-out rows of the training store, NMSE test on "
            "the test store; dead over the whole training store and over the test store's rows"
        )


def _mean_sd(values: list[float], digits: int) -> str:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
    return f"{mean:.{digits}f}±{sd:.{digits}f}"


def _import_references(folder: str) -> set[str]:
    found = set()
    if folder and Path(folder).is_dir() and folder not in sys.path:
        sys.path.append(folder)  # appended: the package's own torch / transformers stay first
    for name in ("dictionary_learning", "sparsify", "overcomplete"):
        try:
            if name == "overcomplete":
                _import_overcomplete_sae()
            else:
                __import__(name)
            found.add(name)
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
            print(f"{name}: not available ({type(exc).__name__}: {exc})")
    return found


def _import_overcomplete_sae() -> None:
    """``overcomplete.sae`` without the package's ``__init__`` (its plotting imports fail, see above)."""
    spec = importlib.util.find_spec("overcomplete")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("overcomplete")
    package = types.ModuleType("overcomplete")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["overcomplete"] = package
    importlib.import_module("overcomplete.sae")


if __name__ == "__main__":
    main()
