"""The MCP tools that only read: repos, generations, files and repo maps of a generation, changesets.

Files are read from git objects of the generation's commit, never from a checkout, so what a
client reads is exactly what the gate would apply a patch to, and no path can leave the repo.
"""

from __future__ import annotations

from orchestrator.agents import repomap
from orchestrator.errors import UsageError, WorkspaceError
from orchestrator.gate import audit
from orchestrator.mcp import guard
from orchestrator.mcp.values import (
    CAN,
    CANNOT,
    LIMITS,
    BudgetArg,
    Capabilities,
    ChangesetArg,
    ChangesetView,
    FileContent,
    GenerationArg,
    GenerationInfo,
    Generations,
    GoalArg,
    PathArg,
    RepoArg,
    RepoInfo,
    RepoMapText,
    Repos,
)
from orchestrator.store import changesets, generations, gitops
from orchestrator.store.generations import Generation
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import read_model
from orchestrator.store.workspace import Workspace

SYMLINK_MODE = "120000"


def generation_of(ws: Workspace, repo: str, number: int | None) -> Generation:
    """Generation ``number`` of ``repo`` (default: the current one), or a UsageError naming the known ones."""
    if number is None:
        return generations.current(ws, repo)
    lineage = generations.lineage(ws, repo)
    for gen in lineage:
        if gen.number == number:
            return gen
    known = ", ".join(str(g.number) for g in lineage)
    raise UsageError(f"generation {number} of {repo}: no such generation (known: {known})")


def repo_info(ws: Workspace, name: str) -> RepoInfo:
    """A registered repo with its current generation."""
    record = ws.repo(name)
    gen = generations.current(ws, name)
    return RepoInfo(name=name, generation=gen.number, commit=gen.commit, is_self=record.is_self)


def changeset_view(ws: Workspace, cs_id: str) -> ChangesetView:
    """A changeset as a client sees it, its signatures and digests verified now."""
    cs = changesets.load(ws, guard.identifier("changeset", cs_id))
    problems = [str(problem) for problem in audit.check(ws, cs)]
    failed: list[str] = []
    report_path = changesets.artifact_path(ws, cs.id, changesets.REPORT)
    if report_path.exists():
        try:
            report = read_model(report_path, TestReport)
            failed = [*report.failed, *report.errored]
        except WorkspaceError as exc:
            problems.append(str(exc))
    diff_path = changesets.artifact_path(ws, cs.id, changesets.DIFF)
    diff = diff_path.read_text(encoding="utf-8", errors="replace") if diff_path.exists() else ""
    return ChangesetView(
        id=cs.id,
        repo=cs.repo,
        run=cs.run,
        status=cs.status,
        verdict=cs.verdict,
        risk=cs.risk,
        reasons=cs.reasons,
        tests=cs.tests,
        tests_failed=failed,
        commit=cs.commit,
        base=cs.base,
        generation=cs.generation,
        attestation=cs.attestation,
        verified=not problems,
        problems=problems,
        message=cs.message,
        author=cs.author,
        created=cs.created,
        decided_by=cs.decided_by,
        reason=cs.reason,
        diff=diff[: guard.MAX_DIFF_CHARS],
        diff_truncated=len(diff) > guard.MAX_DIFF_CHARS,
    )


class ReadTools:
    """Tools that look and change nothing (their docstrings are the descriptions the model reads)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def capabilities(self) -> Capabilities:
        """What you can and cannot do through Converge, and the size limits of each argument.
        Call it when unsure whether Converge lets an agent do something (it never lets one
        approve, promote, change policy or roll back)."""
        return Capabilities(can=CAN, cannot=CANNOT, limits=LIMITS)

    def repos(self) -> Repos:
        """List the repos registered in the Converge workspace, each with its current generation
        (the numbered, promoted state every other tool reads by default)."""
        return Repos(repos=[repo_info(self.ws, record.name) for record in self.ws.repos()])

    def generations(self, repo: RepoArg) -> Generations:
        """List a repo's generations, oldest first: number, commit, parent, status (current,
        superseded, failed, rolled-back) and the changesets each one promoted."""
        self.ws.repo(repo)
        lineage = generations.lineage(self.ws, repo)
        current = next(g.number for g in lineage if g.status == "current")
        infos = [GenerationInfo.model_validate(g.to_json()) for g in lineage]
        return Generations(repo=repo, current=current, generations=infos)

    def read_file(self, repo: RepoArg, path: PathArg, generation: GenerationArg = None) -> FileContent:
        """Read a text file of a repo as committed in a generation (default: the current one).
        Files over 256 KiB come back cut, with `truncated` true; binary files are refused."""
        rel = guard.repo_path(path)
        self.ws.repo(repo)
        gen = generation_of(self.ws, repo, generation)
        where = f"{rel} in generation {gen.number} of {repo}"
        source = self.ws.repo_path(repo)
        listing = gitops.read_objects(source, "ls-tree", "-l", "-z", gen.commit, "--", rel, ids=[gen.commit])
        meta, _, name = listing.partition(b"\0")[0].partition(b"\t")
        fields = meta.decode().split()
        if len(fields) != 4 or name != rel.encode("utf-8", "surrogateescape"):
            raise UsageError(f"{where}: no such file; `repo_map` lists the files")
        mode, kind, oid, size_text = fields
        if kind != "blob":
            what = "a directory" if kind == "tree" else "a submodule"
            raise UsageError(f"{where}: {what}, not a file; `repo_map` lists the files")
        size = int(size_text)
        if size > guard.MAX_FILE_READ:
            raise UsageError(f"{where}: {size} bytes, too big to read here; use `sandbox_run` with head or sed")
        data = gitops.read_objects(source, "cat-file", "blob", oid, ids=[oid])
        if mode == SYMLINK_MODE:
            raise UsageError(f"{where}: a symbolic link to {data.decode(errors='replace')!r}; read that path")
        if b"\0" in data[:8192]:
            raise UsageError(f"{where}: a binary file ({size} bytes); only text files are returned")
        shown = data[: guard.MAX_FILE_BYTES]
        return FileContent(
            repo=repo,
            path=rel,
            generation=gen.number,
            commit=gen.commit,
            size=size,
            truncated=len(shown) < size,
            content=shown.decode("utf-8", errors="replace"),
        )

    def repo_map(self, repo: RepoArg, goal: GoalArg = "", budget: BudgetArg = 4000) -> RepoMapText:
        """A ranked outline of a repo's current generation: every file, with the classes, functions
        and signatures of its Python modules, what each imports and which tests cover it. Start
        here to find where a change belongs, then read the files with `read_file`."""
        guard.within("budget", budget, *guard.MAP_BUDGET)
        if len(goal) > guard.MAX_GOAL_CHARS:
            raise UsageError(f"goal: {len(goal)} characters is over the limit of {guard.MAX_GOAL_CHARS}")
        self.ws.repo(repo)
        gen = generations.current(self.ws, repo)
        rmap = repomap.repo_map_at(self.ws, repo, gen.commit)
        text = rmap.render(goal, budget)
        return RepoMapText(repo=repo, generation=gen.number, commit=gen.commit, files=len(rmap.files), map=text)

    def changeset(self, id: ChangesetArg) -> ChangesetView:
        """A changeset (what `submit_patch` or a run produced): status (pending, approved,
        rejected), the policy's verdict, risk and reasons, the sandbox tests, its diff, and
        whether its commit signature and signed attestation verify right now."""
        return changeset_view(self.ws, id)
