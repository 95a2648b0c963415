"""Print the result tables of ``bench/results/{mmd,train,infer}.json`` as Markdown.

Usage: ``.venv/bin/python bench/_report.py > /tmp/tables.md`` (then paste into
``bench/RESULTS.md`` next to the notes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def _sci(value: Any) -> str:
    return "-" if value is None else f"{value:.1e}"


def mmd_tables(data: dict[str, Any]) -> str:
    mib = 1024.0**2
    rows = []
    for c in data["cases"]:
        seed, mfm = c.get("seed"), c["mfm"]
        skip = f"skipped (> {data['mem_cap_gb']:g} GB)"
        rows.append([
            c["n"], c["d"],
            seed["median_s"] * 1e3 if seed else skip, mfm["median_s"] * 1e3,
            _common.ratio(seed["median_s"], mfm["median_s"]) if seed else None,
            seed["allocated_peak_bytes"] / mib if seed else skip,
            mfm["allocated_peak_bytes"] / mib,
            _common.ratio(seed["allocated_peak_bytes"], mfm["allocated_peak_bytes"])
            if seed else None,
            seed["rss_peak_bytes"] / mib if seed else skip, mfm["rss_peak_bytes"] / mib,
            _sci(c.get("rel_diff_float64")),
        ])
    return _common.table(
        ["n", "d", "seed ms", "mfm ms", "time ratio", "seed alloc MiB", "mfm alloc MiB",
         "alloc ratio", "seed RSS MiB", "mfm RSS MiB", "rel. diff (float64)"], rows)


def main() -> int:
    results = _common.RESULTS_DIR
    for name in ("mmd", "train", "infer"):
        path = results / f"{name}.json"
        if not path.is_file():
            print(f"<!-- {path} missing -->\n")
            continue
        data = json.loads(path.read_text())
        m = data["machine"]
        print(f"### {name}\n")
        load_end = [round(x, 2) for x in data.get("loadavg_at_end") or []]
        print(f"`{data['command']}` — {m['date_utc']}, {m['cpu']}, {m['cpu_count']} CPUs, "
              f"{m['threads']} thread(s), torch {m.get('torch', '?')}, load average "
              f"{m.get('loadavg_at_start')} at start, {load_end} at end\n")
        if name == "mmd":
            print(mmd_tables(data))
            print(f"\nmmd_peak_memory_ratio_seed_over_mfm="
                  f"{data['mmd_peak_memory_ratio_seed_over_mfm']:.4g}  ")
            print(f"mmd_time_ratio_seed_over_mfm={data['mmd_time_ratio_seed_over_mfm']:.4g}\n")
        else:
            for title, text in data["tables_markdown"].items():
                print(f"{title}:\n\n{text}\n")
            if name == "train":
                print(f"epoch_time_ratio_mmsa_over_mfm="
                      f"{data['epoch_time_ratio_mmsa_over_mfm']:.4g}  ")
                print(f"peak_rss_ratio_mmsa_over_mfm={data['peak_rss_ratio_mmsa_over_mfm']:.4g}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
