"""One run counted once: a run is its experiment identity (``spec.identity``: the experiment
settings and the seed), so job folders holding the same identity are one run found several times
(a sweep relaunched into its folder, pooled copies of a sweep, copied job folders). They are merged
into one job; copies that completed with different final test metrics are not the same result, and
the report refuses to pick one."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from regbench.report.jobs import Job, ReportError
from regbench.run.spec import REGULARIZER_KEY, canonical

# metrics.json keys of the final test phase: what two copies of one completed run must agree on.
TEST_PREFIX = "test/"


def run_text(job: Job) -> str:
    """The run in words: its name from metrics.json, else its regularizer and seed."""
    name = job.metrics.get("name")
    if isinstance(name, str):
        return name
    return f"{(job.settings or {}).get(REGULARIZER_KEY, '?')}, seed {job.seed}"


def merge_line(job: Job) -> str:
    """The one line saying which folders were merged into ``job``."""
    folders = ", ".join(f"`{name}`" for name in [job.name, *job.merged])
    return (f"{len(job.merged) + 1} folders hold one run ({run_text(job)}), counted once as "
            f"`{job.name}`: {folders}")


def final_test_metrics(job: Job) -> dict[str, Any]:
    return {key: value for key, value in job.metrics.items() if key.startswith(TEST_PREFIX)}


def first_disagreement(one: Job, other: Job) -> Optional[tuple[str, Any, Any]]:
    """(key, one's value, other's value) of the first final test metric both recorded that
    differs; None when they agree."""
    ours, theirs = final_test_metrics(one), final_test_metrics(other)
    for key in sorted(ours.keys() & theirs.keys()):
        if canonical(ours[key]) != canonical(theirs[key]):
            return key, ours[key], theirs[key]
    return None


def check_agreement(copies: Sequence[Job]) -> None:
    """Completed copies of one run must hold the same final test metrics."""
    done = [job for job in copies if job.completed]
    for other in done[1:]:
        if difference := first_disagreement(done[0], other):
            key, ours, theirs = difference
            raise ReportError(
                f"`{done[0].name}` and `{other.name}` hold the same run ({run_text(done[0])}) with "
                f"different results ({key} {ours} and {theirs}); move the folder that should not "
                "count out of the sweep, or report them separately")


def merge_copies(copies: Sequence[Job]) -> Job:
    """The job kept for one run (its first completed copy, else its first), naming the others."""
    check_agreement(copies)
    kept = next((job for job in copies if job.completed), copies[0])
    kept.merged = [job.name for job in copies if job is not kept]
    return kept


def merge_duplicates(jobs: Sequence[Job]) -> list[Job]:
    """Each run once, in the order of its first folder. Jobs whose settings cannot be read are
    kept apart: their identity is unknown."""
    copies: dict[Any, list[Job]] = {}
    for index, job in enumerate(jobs):
        key = (canonical(job.settings), canonical(job.seed)) if job.settings is not None else index
        copies.setdefault(key, []).append(job)
    return [merge_copies(found) if len(found) > 1 else found[0] for found in copies.values()]
