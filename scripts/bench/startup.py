"""Start-up cost: import time and resident memory of ``import vision_sae_lens`` vs ``import sae_lens``,
and of ``vision-sae-lens --help``, each in a fresh interpreter. Every number is a median over
interleaved repeats measured in one run; memory is the peak RSS of the child minus that of a bare
interpreter (what the import adds).

Targets: ``import vision_sae_lens`` adds <= 1.1x the memory of ``import sae_lens`` (and takes less time).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/startup.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# The child times its own work and reports its peak RSS; the interpreter's start-up is measured by the
# "bare" case and subtracted.
CHILD = """
import resource, sys, time
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
print("@@", dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(sys.modules), file=sys.stderr)
"""

CASES = {
    "bare": "pass",
    "import vision_sae_lens": "import vision_sae_lens",
    "import sae_lens": "import sae_lens",
    "vision-sae-lens --help": (
        "from vision_sae_lens.cli import main\n"
        "sys.argv = ['vision-sae-lens', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    ),
}


def run_case(body: str) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(body=body)], capture_output=True, text=True, check=True
    )
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("@@"))
    _, dt, rss_kib, n_modules = line.split()
    return float(dt), int(rss_kib) / 1024, int(n_modules)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in CASES}
    for _ in range(args.repeats):  # interleaved: a neighbour's burst hits every case alike
        for name, body in CASES.items():
            samples[name].append(run_case(body))
    med = {
        name: {
            "seconds": statistics.median(s[0] for s in rows),
            "rss_mib": statistics.median(s[1] for s in rows),
            "modules": statistics.median(s[2] for s in rows),
        }
        for name, rows in samples.items()
    }
    bare = med["bare"]["rss_mib"]
    for m in med.values():
        m["added_rss_mib"] = m["rss_mib"] - bare
    ours, theirs, cli = med["import vision_sae_lens"], med["import sae_lens"], med["vision-sae-lens --help"]
    result = {
        "repeats": args.repeats,
        **{name: {k: round(v, 3) for k, v in m.items()} for name, m in med.items()},
        "import_time_ratio_vsl_over_sae_lens": round(ours["seconds"] / theirs["seconds"], 3),
        "import_added_rss_ratio_vsl_over_sae_lens": round(ours["added_rss_mib"] / theirs["added_rss_mib"], 3),
        "help_time_ratio_over_sae_lens_import": round(cli["seconds"] / theirs["seconds"], 3),
        "help_added_rss_ratio_over_sae_lens_import": round(cli["added_rss_mib"] / theirs["added_rss_mib"], 3),
    }
    print(json.dumps(result, indent=1))
    print("target: import_added_rss_ratio_vsl_over_sae_lens <= 1.1")


if __name__ == "__main__":
    main()
