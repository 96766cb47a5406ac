"""``vision-sae-lens bench {synthetic,score,synthsae}``: the ground-truth benchmarks from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from vision_sae_lens.errors import escape_control


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench synthetic``, ``bench score`` and ``bench synthsae``."""
    bench = subparsers.add_parser("bench", help="ground-truth benchmark of SAEs (synthetic shapes world)")
    sub = bench.add_subparsers(dest="bench_command", metavar="SUITE")

    syn = sub.add_parser(
        "synthetic",
        help="record the shapes world through demo:shapes-vit, train a small sweep, score and compare it",
    )
    syn.add_argument("--out", required=True, type=Path, help="output folder (stores, SAEs, reports)")
    syn.add_argument("--site", default=None, help="site to record (default blocks.2.hook_resid_post)")
    syn.add_argument("--sweep", default="topk,batchtopk,standard,matryoshka",
                     help="comma-separated SAELens architectures to train at equal budget; '' records only")  # fmt: skip
    syn.add_argument("--d-sae", type=int, default=256, help="latents of every SAE of the sweep")
    syn.add_argument("--k", type=int, default=8, help="k of the top-k style SAEs")
    syn.add_argument("--l1-coefficient", type=float, default=2.0, help="L1 coefficient of the standard SAE")
    syn.add_argument("--training-tokens", type=int, default=400_000, help="rows each SAE trains on")
    syn.add_argument("--batch-size", type=int, default=1024, help="rows per optimizer step")
    syn.add_argument("--train-images", type=int, default=None, help="training images (default 4,000)")
    syn.add_argument("--test-images", type=int, default=None, help="held-out images scored (default 1,000)")
    syn.add_argument(
        "--downstream-images", type=int, default=256, help="images of the spliced metric (0: skip)"
    )
    syn.add_argument("--no-browser", dest="browser", action="store_false", help="skip the feature browsers")
    syn.set_defaults(func=run_bench_synthetic)

    sc = sub.add_parser("score", help="score SAE checkpoint folders trained on demo:shapes-vit activations")
    sc.add_argument("saes", nargs="+", type=Path, metavar="SAE_DIR", help="SAELens checkpoint folders")
    sc.add_argument(
        "--out", required=True, type=Path, help="report folder (one sub-folder per SAE + comparison)"
    )
    sc.add_argument(
        "--store", type=Path, default=None, help="test store to reuse (default: record it into --out)"
    )
    sc.add_argument("--test-images", type=int, default=None, help="held-out images to record (default 1,000)")
    sc.add_argument(
        "--downstream-images", type=int, default=256, help="images of the spliced metric (0: skip)"
    )
    sc.add_argument(
        "--browser", action="store_true", help="also build a feature browser of each factor's best latents"
    )
    sc.set_defaults(func=run_bench_score)

    syn2 = sub.add_parser(
        "synthsae",
        help="SynthSAEBench's world at quarter size: the package's default SAE vs SAELens' recipe, same rows",
    )
    syn2.add_argument("--out", required=True, type=Path, help="output folder (world, stores, SAEs, reports)")
    syn2.add_argument("--quick", action="store_true", help="a tiny world that runs in seconds (a smoke test)")
    syn2.add_argument("--train-rows", type=int, default=None, help="training rows (default 262,144)")
    syn2.add_argument("--test-rows", type=int, default=None, help="scored rows (default 32,768)")
    syn2.add_argument("--seed", type=int, default=0, help="seed of the training rows (test rows: seed + 1)")
    syn2.set_defaults(func=run_bench_synthsae)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)


def run_bench_synthetic(args: argparse.Namespace) -> int:
    """Handler of ``bench synthetic``."""
    from vision_sae_lens.benchmark.suite import DEFAULT_SITE
    from vision_sae_lens.benchmark.sweep import run_synthetic_benchmark

    archs = tuple(a.strip() for a in args.sweep.split(",") if a.strip())
    reports = run_synthetic_benchmark(
        args.out, site=args.site or DEFAULT_SITE, architectures=archs, d_sae=args.d_sae, k=args.k,
        l1_coefficient=args.l1_coefficient, training_tokens=args.training_tokens, batch_size=args.batch_size,
        train_images=args.train_images, test_images=args.test_images, downstream_images=args.downstream_images,
        browser=args.browser,
    )  # fmt: skip
    if reports:
        print(f"\ncomparison: {(args.out / 'comparison.html').resolve().as_uri()}")
    else:
        out = escape_control(args.out)
        print(
            f"recorded the shapes world into {out}; train SAEs on {escape_control(args.out / 'acts-train')}"
        )
    return 0


def run_bench_synthsae(args: argparse.Namespace) -> int:
    """Handler of ``bench synthsae``."""
    from dataclasses import replace

    from vision_sae_lens.benchmark.synthsae import QUARTER, QUICK, run_synthsae_benchmark

    size = QUICK if args.quick else QUARTER
    rows = {"train_rows": args.train_rows, "test_rows": args.test_rows}
    size = replace(size, **{k: v for k, v in rows.items() if v is not None})
    run_synthsae_benchmark(args.out, size=size, seed=args.seed)
    print(f"\ncomparison: {(args.out / 'comparison.html').resolve().as_uri()}")
    return 0


def run_bench_score(args: argparse.Namespace) -> int:
    """Handler of ``bench score``."""
    from vision_sae_lens.benchmark.report import format_table, write_comparison
    from vision_sae_lens.benchmark.suite import score
    from vision_sae_lens.errors import SAEMismatchError

    for folder in args.saes:
        if not (folder / "cfg.json").is_file():
            raise SAEMismatchError(
                f"{folder} is not a SAELens checkpoint folder (no cfg.json); pass SAE folders"
            )
    names = _unique_names(args.saes)
    reports, store = [], args.store
    for folder, name in zip(args.saes, names, strict=False):
        report = score(folder, store=store, out_dir=args.out / name, n_images=args.test_images,
                       downstream_images=args.downstream_images, browser=args.browser, name=name)  # fmt: skip
        reports.append(report)
    write_comparison(reports, args.out, links={n: f"{n}/report.html" for n in names})
    print(format_table(reports))
    print(f"\ncomparison: {(args.out / 'comparison.html').resolve().as_uri()}")
    return 0


def _unique_names(folders: list[Path]) -> list[str]:
    names: list[str] = []
    for folder in folders:
        base = folder.resolve().name or "sae"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names
