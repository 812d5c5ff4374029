"""From `foundry build`'s options to a plan: every check that can fail without a model (task,
name, directory, phases, config, template, backend) runs here, before the ledger is touched
or a model is called. The command then confirms, runs and reports; it decides nothing."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from foundry.errors import LedgerError, UsageError, WorkspaceError
from foundry.fsutil import SAFE_NAME_RULE, is_safe_name, kind_beneath, list_beneath, unlink_beneath

if TYPE_CHECKING:
    from foundry.backends.base import Backend, Ttl
    from foundry.config import FoundryConfig
    from foundry.ledger.builds import BuildRecord
    from foundry.orchestrator.build import BuildPlan
    from foundry.pricing import PricingTable
    from foundry.prompt.split import SplitPrompt
    from foundry.prompt.template import Mode

IGNORED_FOR_MODE = {".foundry", ".git"}


def is_build_id(value: str) -> bool:
    """The shape of an id the ledger makes (uuid4().hex): a caller choosing one matches it."""
    return len(value) == 32 and set(value) <= set("0123456789abcdef")


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for, as given (None: not given, take the config's default)."""

    name: str
    task: str
    dir: Path | None = None
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None  # a server backend's address (--base-url)
    ttl: str | None = None
    phases: str | None = None
    max_test_iterations: int | None = None
    max_turns: int | None = None
    max_cost: float | None = None
    estimate: bool = False
    config: Path | None = None
    template: Path | None = None
    db: Path | None = None
    mode: Mode | None = None  # None: from the directory (a resume keeps the first attempt's)
    own_repo: bool | None = None  # None: from the directory (a resume keeps the first attempt's)
    build_id: str | None = None  # None: the ledger makes one (foundry mcp chooses its own)


@dataclass
class PreparedBuild:
    config: FoundryConfig
    plan: BuildPlan
    backend: Backend  # created, not yet checked: nothing heavy has loaded
    prompt: SplitPrompt
    pricing: PricingTable
    projection: dict[str, Any]  # what --estimate prints and the confirmation quotes
    db: Path
    resume: BuildRecord | None = None  # the earlier attempt this one continues


@dataclass(frozen=True)
class ResumeOptions:
    """`foundry resume BUILD`: the build's own task, directory, backend, model and phases;
    only the limits may change."""

    build: str  # a name (its latest build) or an id
    base_url: str | None = None  # where the server now is, if it moved
    max_test_iterations: int | None = None
    max_turns: int | None = None
    max_cost: float | None = None
    config: Path | None = None
    db: Path | None = None


@dataclass
class HeldWorkdir:
    """.foundry/lock of a directory that exists, taken before the user is asked, so a second
    build is refused before its confirmation, and held by the build that follows."""

    workdir: Path
    fd: int
    made_artifact_dir: bool  # .foundry/ was made for the lock alone

    @classmethod
    def take(cls, workdir: Path) -> HeldWorkdir | None:
        """None for a directory not made yet: the build takes its lock when it makes it."""
        if not workdir.is_dir():
            return None
        from foundry.orchestrator.phases import ARTIFACT_DIR, lock_workdir

        made = kind_beneath(workdir, ARTIFACT_DIR) is None
        return cls(workdir, lock_workdir(workdir), made)

    def release(self) -> None:
        """Unlock; a .foundry/ made for the lock alone (the user said no, a check failed)
        is not left behind in the user's directory."""
        from foundry.orchestrator.phases import ARTIFACT_DIR, LOCK_FILE, unlock_workdir

        if self.made_artifact_dir and list_beneath(self.workdir, ARTIFACT_DIR) == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                unlink_beneath(self.workdir, f"{ARTIFACT_DIR}/{LOCK_FILE}")
                os.rmdir(self.workdir / ARTIFACT_DIR)  # only when empty
        unlock_workdir(self.fd)


def is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_name(name: str) -> None:
    if not is_safe_name(name):
        raise UsageError(f"{name!r} is not a valid build name", SAFE_NAME_RULE)


def check_workdir(workdir: Path) -> Mode:
    """Refuse unusable directories; return the mode: "new" or "existing"."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkspaceError(f"--dir {workdir} is a file, not a directory", "choose a directory")
    probe = workdir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise WorkspaceError(f"cannot create {workdir}: {probe} is a file", "choose another --dir")
    if not is_writable(probe):
        raise WorkspaceError(f"{probe} is not writable", "choose a directory you can write to")
    if workdir.is_dir() and any(p.name not in IGNORED_FOR_MODE for p in workdir.iterdir()):
        return "existing"
    return "new"


def check_ledger_path(db: Path) -> None:
    """Refuse a ledger path that cannot be opened (a directory, a path under a file, a place
    that cannot be written or looked into) before a server is contacted or a model loaded:
    the ledger is otherwise only opened once those checks have passed. Nothing is created;
    a file that is there but not a foundry ledger is still for Ledger.open to say."""
    path = Path(os.path.abspath(db))
    # os.path rather than Path: these say False for a place that cannot be looked into.
    if os.path.isdir(path):
        raise LedgerError(f"ledger path {db} is a directory", "give the path of a file to --db")
    if os.path.exists(path):  # through a symlink, as SQLite opens it
        if not os.path.isfile(path):
            raise LedgerError(f"ledger path {db} is not a regular file", "choose another --db")
        if not os.access(path, os.R_OK | os.W_OK):
            raise LedgerError(f"ledger {db} is not writable", "choose a file you can write to")
        return
    probe = path.parent
    while not os.path.lexists(probe):
        probe = probe.parent
    if not os.path.isdir(probe):
        raise LedgerError(
            f"cannot create the ledger {db}: {probe} is not a directory", "check --db"
        )
    if not is_writable(probe):
        raise LedgerError(
            f"cannot create the ledger {db}: {probe} is not writable",
            "choose a place you can write to",
        )


def commits_in_own_repo(workdir: Path, mode: Mode, *, named: bool) -> bool:
    """Whether deploy commits into the directory's own repository (made if needed) rather than
    into a repository around it: always, but for an existing directory the user named with
    --dir that foundry did not make itself. A directory foundry made for an earlier build
    (./NAME by default) never commits into the checkout it happens to sit in."""
    from foundry.orchestrator.phases import made_by_foundry

    return not (named and mode == "existing" and not made_by_foundry(workdir))


def check_ttl(ttl: str | None, config: FoundryConfig) -> Ttl | None:
    if ttl is None:
        return config.caching.ttl if config.caching.enabled else None
    if ttl not in ("5m", "1h"):
        raise UsageError(f"--ttl must be 5m or 1h, not '{ttl}'", "use --ttl 5m or --ttl 1h")
    return cast("Ttl", ttl)


def _check_test_phase(phases: tuple[str, ...], workdir: Path) -> None:
    """Without architect and builder nothing can change the answer before the test phase."""
    from foundry.orchestrator.phases import saved_test_command
    from foundry.orchestrator.test_detect import detect_test_command

    if (
        "test" in phases
        and not {"architect", "builder"} & set(phases)
        and not saved_test_command(workdir)
        and detect_test_command(workdir) is None
    ):
        raise UsageError(
            "the test phase needs a test command: no earlier build recorded one and none "
            f"can be detected in {workdir}",
            "include architect in --phases, or add tests foundry can detect (test_*.py, "
            "a package.json test script, go.mod, Cargo.toml)",
        )


def prepare_build(options: BuildOptions, config: FoundryConfig | None = None) -> PreparedBuild:
    """`config`: already loaded from options.config (a resume loads it once, so a notice
    about an ignored config file is said once)."""
    from foundry.backends.registry import create_backend, is_local, resolve_backend
    from foundry.config import ledger_path, load_config
    from foundry.orchestrator.build import BuildPlan
    from foundry.orchestrator.deploy import check_own_git, require_git
    from foundry.orchestrator.estimate import estimate_build
    from foundry.orchestrator.phases import artifact_dir, parse_phases
    from foundry.orchestrator.sandbox import require_available
    from foundry.orchestrator.tools import tool_specs
    from foundry.pricing import PricingTable
    from foundry.prompt.split import render_split
    from foundry.prompt.template import TaskConfig, load_template

    if options.build_id is not None and not is_build_id(options.build_id):
        raise UsageError(
            f"--build-id {options.build_id!r} is not 32 lowercase hex digits",
            "leave it out and the ledger makes one",
        )

    task = options.task.strip()
    if not task:
        raise UsageError("the task is empty", 'say what to build: foundry build NAME "TASK"')
    check_name(options.name)
    if options.max_cost is not None and not 0 < options.max_cost < math.inf:
        raise UsageError(
            f"--max-cost must be a positive, finite amount, not {options.max_cost}",
            "give a USD amount such as --max-cost 2.50",
        )
    config = config or load_config(options.config)
    phases = parse_phases(options.phases)
    ttl = check_ttl(options.ttl, config)
    workdir = Path(os.path.abspath((options.dir or Path(options.name)).expanduser()))
    detected = check_workdir(workdir)  # refuses an unusable directory either way
    mode = options.mode or detected
    if workdir.is_dir():
        artifact_dir(workdir)  # a planted .foundry symlink is refused before anything runs
    _check_test_phase(phases, workdir)
    if "deploy" in phases and not options.estimate:
        require_git()
        if workdir.is_dir():  # deploy would refuse it anyway: say so before the model runs
            check_own_git(workdir)
    db = ledger_path(config, options.db)
    if not options.estimate:  # an estimate never opens the ledger
        check_ledger_path(db)
    backend_name = resolve_backend(config, options.backend, options.model)
    model = options.model
    if model is not None and is_local(backend_name):
        from foundry.local.model_dirs import absolute_model

        # Recorded for a resume, which may run from another directory (the working one).
        model = absolute_model(model)
    backend = create_backend(backend_name, config, model, options.base_url)
    if not options.estimate:
        require_available(config.build.sandbox)  # build.sandbox "require" without one: refused
    iterations = options.max_test_iterations or config.build.max_test_iterations
    turns = options.max_turns or config.build.max_turns_per_phase
    task_config = TaskConfig(
        name=options.name,
        task=task,
        workdir=str(workdir),
        mode=mode,
        phases=phases,
        max_test_iterations=iterations,
    )
    prompt = render_split(
        load_template(options.template), task_config, marker=config.caching.boundary_marker
    )
    pricing = PricingTable(config)
    projection = estimate_build(
        static=prompt.static,
        dynamic=prompt.dynamic,
        tools=tool_specs(),
        phases=phases,
        backend=backend.name,
        local=backend.local,
        model=backend.model,
        ttl=ttl,
        pricing=pricing,
        max_turns=turns,
        max_test_iterations=iterations,
    )
    plan = BuildPlan(
        name=options.name,
        task=task,
        workdir=workdir,
        mode=mode,
        phases=phases,
        max_test_iterations=iterations,
        max_turns=turns,
        max_cost=options.max_cost,
        ttl=ttl,
        max_tokens=backend.max_tokens,
        base_url=options.base_url,
        template=str(options.template) if options.template else None,
        own_repo=(
            options.own_repo
            if options.own_repo is not None
            else commits_in_own_repo(workdir, mode, named=options.dir is not None)
        ),
        build_id=options.build_id,
    )
    return PreparedBuild(config, plan, backend, prompt, pricing, projection, db)


def prepare_resume(options: ResumeOptions) -> PreparedBuild:
    """A plan that continues an unfinished build where it stopped: the same build row, working
    directory and artifacts; the phases it finished are not run again."""
    from dataclasses import replace

    from foundry.config import ledger_path, load_config
    from foundry.ledger import Ledger
    from foundry.ledger.builds import RESUMABLE

    config = load_config(options.config)
    db = ledger_path(config, options.db)
    ledger = Ledger.open_existing(db)
    if ledger is None:
        raise UsageError(f"no ledger at {db}, so no build to resume", "check --db")
    with ledger:
        record = pick_build(ledger.find_builds(options.build), options.build, db)
    if record.status not in RESUMABLE:
        raise UsageError(
            f"build {record.name} ({record.id[:12]}) is {record.status}; nothing to resume",
            "start a new build with `foundry build`",
        )
    if not Path(record.workdir).is_dir():
        raise WorkspaceError(
            f"build {record.name}'s directory {record.workdir} is gone",
            "a resumed build continues in its own directory; start a new build instead",
        )
    # What the first attempt ran with, unless this resume says otherwise.
    first = record.settings
    template = first.get("template")
    prepared = prepare_build(
        BuildOptions(
            name=record.name,
            task=record.task,
            dir=Path(record.workdir),
            backend=record.backend,
            model=record.model,
            base_url=options.base_url or first.get("base_url"),
            ttl=first.get("ttl"),
            phases=",".join(record.phases) or None,
            max_test_iterations=options.max_test_iterations or first.get("max_test_iterations"),
            max_turns=options.max_turns or first.get("max_turns"),
            max_cost=options.max_cost if options.max_cost is not None else first.get("max_cost"),
            config=options.config,
            template=Path(template) if template else None,
            db=options.db,
            # The files an earlier attempt wrote make the directory look "existing".
            mode=first.get("mode") if first.get("mode") in ("new", "existing") else None,
            # A build recorded before own_repo was: its own repository, no surprise commit.
            own_repo=bool(first.get("own_repo", True)),
        ),
        config,
    )
    return replace(prepared, resume=record)


def pick_build(records: list[BuildRecord], asked: str, db: Path) -> BuildRecord:
    """The build `foundry resume NAME` means: the only one, or the only unfinished one of that
    name; several unfinished ones are listed, never guessed between."""
    from foundry.ledger.builds import RESUMABLE

    if not records:
        raise UsageError(
            f"no build named or with id '{asked}' in {db}",
            "see `foundry costs --by build` for the builds on this ledger",
        )
    unfinished = [r for r in records if r.status in RESUMABLE]
    if len(unfinished) <= 1:
        return unfinished[0] if unfinished else records[0]
    listed = "; ".join(
        f"{r.id[:12]} ({r.status}, started {r.started_at}, in {r.workdir})" for r in unfinished
    )
    raise UsageError(
        f"{len(unfinished)} builds named {asked} can be resumed: {listed}",
        "resume one by its id: foundry resume ID (its first 12 characters will do)",
    )
