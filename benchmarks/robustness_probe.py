"""Run the hostile cases of issue 33 as a new user would, and print what happens: a table of cases, before and now.

    python benchmarks/robustness_probe.py                      # every case (a few minutes on 2 cores)
    python benchmarks/robustness_probe.py --only data,errors   # some areas (benchmarks/probes/<area>.py)
    python benchmarks/robustness_probe.py --only shared        # two trainings at once against one alone (~2 min)

Each case builds what it needs in a scratch folder (tiny data, runs of a few steps), does the hostile thing, and
reports a verdict (benchmarks/probes/__init__.py VERDICTS): handled or a clear one-line error pass; a traceback, a
silently wrong result or lost work fail. The exit code is the number of failing cases.
"""

import argparse
import importlib
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from probes import VERDICTS  # noqa: E402

AREAS = ("lost_work", "data", "errors", "shared")
PASSING = ("handled", "clear error")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(AREAS), help=f"comma-separated areas, of {', '.join(AREAS)}")
    args = p.parse_args(argv)
    rows, failing = [], 0
    for area in args.only.split(","):
        if area not in AREAS:
            p.error(f"unknown area {area!r}; choose from {', '.join(AREAS)}")
        for case in importlib.import_module(f"probes.{area}").CASES:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    verdict, what = case.run(Path(tmp))
                except Exception as e:  # a case that crashes is a traceback the user would see
                    verdict, what = "traceback", f"{type(e).__name__}: {e}"
                    traceback.print_exc()
            assert verdict in VERDICTS, verdict
            failing += verdict not in PASSING
            rows.append((case.group, case.name, case.before, verdict, what))
            print(f"[{verdict}] {case.name}: {what}", flush=True)
    print("\n| group | case | before (issue 33) | now | what happens now |\n|---|---|---|---|---|")
    for group, name, before, verdict, what in rows:
        print(f"| {group} | {name} | {before} | **{verdict}** | {what} |")
    counts = {v: sum(r[3] == v for r in rows) for v in VERDICTS}
    print("\n" + ", ".join(f"{v}: {n}" for v, n in counts.items() if n) + f" (of {len(rows)} cases)")
    return failing


if __name__ == "__main__":
    sys.exit(main())
