"""What a build states before it starts: the directory, the backend and where its requests
go, the phases, the projected cost and the budget, where deploy commits, and notes about the
directory. `foundry build` asks the user to confirm it on a terminal; `foundry mcp` returns
it as the first result of a build it starts. One source for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foundry.orchestrator.plan import PreparedBuild


@dataclass(frozen=True)
class BuildFacts:
    action: str  # build, or resume (of the build named by resume_of)
    name: str
    directory: str
    mode: str
    backend: str
    model: str
    endpoint: str | None  # where requests (and the key) go, when not the API's own host
    phases: list[str]
    budget_usd: float | None
    projected_cost_usd: float | None
    ceiling_cost_usd: float | None
    deploy_target: str | None
    resume_of: dict[str, Any] | None  # id, status, phases done
    notes: list[str]

    def headline(self) -> str:
        """One sentence: what will run where, with what, for how much."""
        from foundry.formatting import money

        what = f"build {self.name}"
        if self.resume_of is not None:
            done = ",".join(self.resume_of["done"]) or "none"
            what = f"resume {what} ({self.resume_of['id'][:12]}, {self.resume_of['status']}; "
            what += f"done: {done})"
        at = f" at {self.endpoint}" if self.endpoint else ""
        budget = f"; budget {money(self.budget_usd)}" if self.budget_usd is not None else ""
        return (
            f"foundry will {what} in {self.directory} ({self.mode} project) with "
            f"{self.backend} {self.model}{at}; phases {','.join(self.phases)}; projected cost "
            f"{money(self.projected_cost_usd)} (ceiling {money(self.ceiling_cost_usd)}){budget}"
        )


def build_facts(prepared: PreparedBuild) -> BuildFacts:
    from foundry.config import is_default_endpoint
    from foundry.orchestrator.deploy import describe_target

    plan, backend, projection = prepared.plan, prepared.backend, prepared.projection
    resume_of = None
    if prepared.resume is not None:
        resume_of = {
            "id": prepared.resume.id,
            "status": prepared.resume.status,
            "done": list(prepared.resume.phases_done),
        }
    deploys = "deploy" in plan.phases
    return BuildFacts(
        action="resume" if resume_of else "build",
        name=plan.name,
        directory=str(plan.workdir),
        mode=plan.mode,
        backend=backend.name,
        model=backend.model,
        endpoint=None if is_default_endpoint(backend.endpoint) else str(backend.endpoint),
        phases=list(plan.phases),
        budget_usd=plan.max_cost,
        projected_cost_usd=projection["total"]["cost_usd"],
        ceiling_cost_usd=projection["ceiling"]["cost_usd"],
        deploy_target=describe_target(plan.workdir, own_repo=plan.own_repo) if deploys else None,
        resume_of=resume_of,
        notes=workdir_notes(prepared),
    )


def workdir_notes(prepared: PreparedBuild) -> list[str]:
    """What the directory already holds that the user may not expect: another build's files."""
    from foundry.orchestrator.phases import earlier_build

    plan = prepared.plan
    if not plan.workdir.is_dir():
        return []
    earlier = earlier_build(plan.workdir)
    if earlier is None or (prepared.resume and earlier["build_id"] == prepared.resume.id):
        return []
    which = f"build {earlier['name']}" if earlier["name"] else "an earlier build"
    if earlier["build_id"]:
        which += f" ({str(earlier['build_id'])[:12]}, {earlier['status']})"
    return [
        f"{plan.workdir} already holds {which}: this build works on top of its files and "
        "replaces its .foundry/ reports; use --dir for a fresh directory"
    ]
