"""Print the mutation score per area from mutmut's results (mutants/**/*.meta).

Equivalent mutants (a change no test can observe) are listed, each with its
reason, in scripts/mutation-equivalent.txt and set aside. Exit 1 when an area
kills less than 95 % of the rest, naming the survivors, or when a listed
equivalent was killed or no longer exists in a function the run mutated.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import defaultdict
from pathlib import Path

AREAS = {
    "permission history": ["etl.history.*"],
    "document validation": ["etl.api.documents.*"],
    "retry policy": ["etl.api.retry.*"],
    "response sorting": ["etl.api.answers.x_classify*", "etl.api.answers.x_error_info*",
                         "etl.api.answers.x__scalar_text*", "etl.api.answers.x__clip*", "etl.api.answers.x_redact*"],
    "batch store": ["etl.db.batch.*", "etl.db.writer.xǁBatchWriterǁ*", "etl.db.writer.x__count_into_run*"],
    "configuration": ["etl.config.loading.x__from_text*", "etl.config.loading.xǁ_Loadingǁ*",
                      "etl.config.loading.x__take_*", "etl.config.loading.x__assemble*",
                      "etl.config.loading.x_unknown_variables*", "etl.config.showing.*"],
    "doctor": ["etl.doctor.*"],
    "archive and rebuild": ["etl.db.archive.*", "etl.db.rebuild.*"],
    "rate budget": ["etl.api.ratelimit.*", "etl.db.budget.xǁRateBudgetǁlease_tokens*",
                    "etl.db.budget.xǁRateBudgetǁdrain_tokens*", "etl.db.budget.xǁRateBudgetǁ_refilled*",
                    "etl.db.budget.xǁRateBudgetǁbudget_tokens*", "etl.db.budget.x__bounded*",
                    "etl.context.x_budget_key*", "etl.context.xǁStoreLedgerǁ*"],
    "token cache": ["etl.api.auth.*"],
    "fetch path": ["etl.fetch.x_fetch_outcomes*", "etl.fetch.x__window*", "etl.fetch.x__one*",
                   "etl.fetch.xǁPageAheadǁ*"],
    "client": ["etl.api.client.*", "etl.api.answers.*", "etl.api.transport.*", "etl.api.listing.*"],
}
TARGET = 0.95


def main(patterns: list[str]) -> int:
    equivalent = {}
    for line in Path("scripts/mutation-equivalent.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            equivalent[name] = reason.strip()
    results: dict[str, int | None] = {}
    for meta in Path("mutants").glob("**/*.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    failed = False
    for area, globs in AREAS.items():
        names = [n for n in results if any(fnmatch.fnmatch(n, g) for g in globs)
                 and any(fnmatch.fnmatch(n, p) for p in patterns)]
        if not names:
            continue
        counts: dict[str, list[str]] = defaultdict(list)
        for name in names:
            code = results[name]
            kind = ("equivalent" if name in equivalent else "not run" if code is None
                    else "survived" if code == 0 else "killed")
            counts[kind].append(name)
        judged = len(counts["killed"]) + len(counts["survived"])
        score = len(counts["killed"]) / judged if judged else 1.0
        print(f"{area:20} {score:6.1%} killed {len(counts['killed'])} of {judged} "
              f"({len(counts['equivalent'])} equivalent, {len(counts['not run'])} not run)")
        for name in sorted(counts["survived"]):
            print(f"    survived: {name}")
        failed |= score < TARGET
    stale = stale_entries(equivalent, results, patterns)
    for name, why in stale:
        print(f"    stale in scripts/mutation-equivalent.txt: {name} ({why})")
    return 1 if failed or stale else 0


def stale_entries(equivalent: dict[str, str], results: dict[str, int | None],
                  patterns: list[str]) -> list[tuple[str, str]]:
    """Listed equivalents that this run contradicts: killed, or no such mutant in a function it mutated (an edit
    renumbers a function's mutants, so its entries must be looked at again)."""
    mutated = {name.rpartition("__mutmut_")[0] for name in results}
    stale = []
    for name in sorted(equivalent):
        if not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        if name in results and results[name] not in (0, None):
            stale.append((name, "killed"))
        elif name not in results and name.rpartition("__mutmut_")[0] in mutated:
            stale.append((name, "no such mutant"))
    return stale


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["*"]))
