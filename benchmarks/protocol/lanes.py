"""A protocol suite's chains split between one-thread lanes (benchmarks/protocol/lanes.sh runs them):

    .venv/bin/python benchmarks/protocol/lanes.py benchmarks/protocol/standard [--lanes 2] [--shell FILE]

An item is a compared label's chain in one run (task order x training seed): the stages
`*-<label>-*-<run>` matches (their names, where a label makes that glob match another chain's stages);
one run, not all of a label's, so a chain added late (a second seed) spreads over the lanes. Each is priced at one
thread (cost.py's rates) over its unfinished stages, finished meaning recorded in the dvc.lock of some
lane's checkout (this one, then `<this checkout>-lane<k>` for k >= 2); a stage several chains need (base,
data, each run's first-step expert) counts once, in the first chain needing it. The unfinished stages
no chain needs but the report (the base's evaluation) are one more item.

Items go to the lanes costliest first, each where the lanes end soonest (what runs first, below, then
the longest lane), then single moves while one ends them sooner; an item with a
killed stage's files in a lane's checkout (outputs of a stage only it needs, not recorded) stays in that
lane, where the stage resumes. The unfinished stages items of two lanes need run *first*, in this
checkout: two lanes never run one stage at once. Prints the plan (`--shell FILE`: also lanes.sh's
lines); runs nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path

import cost

from recall.pipeline import plan
from recall.pipeline.params import Params, load_params
from recall.pipeline.prune import read_lock

REPORT = "report"  # the stage the run of the whole suite ends with, after the lanes
REST = "rest"  # the item of the stages no chain needs


@dataclass(frozen=True)
class Chain:
    """A chain (or the rest): what lanes.sh passes run.sh for it, and its price."""

    name: str  # <label>-<run> (recall-o1-s0), or REST
    globs: tuple[str, ...]  # its stage globs: exactly its stages among the suite's
    stages: tuple[str, ...]  # its own stages (labelled <label>, in the run), in plan order
    needs: tuple[str, ...]  # every stage it needs, its own and their inputs' stages, in plan order
    pending: tuple[str, ...] = ()  # the unfinished stages priced to it
    seconds: float = 0.0


@dataclass(frozen=True)
class Lane:
    number: int  # 1: this checkout
    checkout: Path
    chains: tuple[Chain, ...]
    pending: tuple[str, ...]  # the unfinished stages it runs (not those run first)
    seconds: float

    @property
    def globs(self) -> tuple[str, ...]:
        return tuple(g for c in self.chains for g in c.globs)


@dataclass(frozen=True)
class LanePlan:
    folder: Path
    stages: int
    finished: int
    first: tuple[str, ...]  # unfinished stages items of several lanes need: run first, in lane 1
    first_seconds: float
    lanes: tuple[Lane, ...]

    @property
    def hours(self) -> float:
        """Until the lanes are done: what runs first, then the longest lane."""
        return (self.first_seconds + max((lane.seconds for lane in self.lanes), default=0.0)) / 3600


def checkouts(folder: Path, lanes: int) -> tuple[list[Path], Path]:
    """The lanes' checkouts (this one, then its siblings `<name>-lane<k>`) and the suite's folder in each."""
    folder = folder.resolve()
    root = next((p for p in (folder, *folder.parents) if (p / ".git").exists()), None)
    if root is None:
        raise SystemExit(f"{folder} is not in a git checkout")
    return [root, *(root.parent / f"{root.name}-lane{k}" for k in range(2, lanes + 1))], folder.relative_to(root)


def finished(locks: Iterable[Path]) -> set[str]:
    """The stages recorded in any of these dvc.lock files (one not written yet records none)."""
    return {name for lock in locks for name in read_lock(lock)}


def inputs(stages: Sequence[plan.Stage]) -> dict[str, set[str]]:
    """Each stage's stages: itself, and those writing what it reads, theirs, and so on."""
    writer = {Path(out): s.name for s in stages for out in s.outs}

    def written(path: Path) -> str | None:  # by the stage writing the path or a folder holding it
        return next((writer[p] for p in (path, *path.parents) if p in writer), None)

    direct = {s.name: {w for d in s.deps if (w := written(Path(d))) is not None} for s in stages}
    closed: dict[str, set[str]] = {}
    for s in stages:  # plan order: a stage's inputs come before it
        closed[s.name] = {s.name}.union(*(closed.get(d, {d}) for d in direct[s.name]))
    return closed


def chain_globs(label: str, run: str, own: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    """`*-<label>-*-<run>` if it matches exactly the chain's stages among `names`, else their names."""
    glob = f"*-{label}-*-{run}"
    return (glob,) if {n for n in names if fnmatchcase(n, glob)} == set(own) else tuple(own)


def chains(params: Params, stages: Sequence[plan.Stage], closed: Mapping[str, set[str]]) -> list[Chain]:
    """Every label's chain in each of its runs, in params.yaml's order, with the stages it needs (`closed`:
    `inputs`)."""
    names = [s.name for s in stages]
    order = {name: i for i, name in enumerate(names)}
    out = []
    for label in params.methods:
        for run in (r.label for r in params.runs if r.seed in params.method_seeds(label)):
            own = [s.name for s in stages if s.method == label and s.run == run]
            needs = sorted_by(set().union(*(closed[n] for n in own)), order)
            out.append(Chain(f"{label}-{run}", chain_globs(label, run, own, names), tuple(own), needs))
    return out


def rest(
    stages: Sequence[plan.Stage], closed: Mapping[str, set[str]], chained: Iterable[Chain], done: set[str]
) -> Chain | None:
    """The unfinished stages no chain needs but the report (the base's evaluation), as one more item."""
    needed = set().union(*(c.needs for c in chained))
    own = [s.name for s in stages if s.name not in needed and s.name != REPORT and s.name not in done]
    if not own:
        return None
    order = {s.name: i for i, s in enumerate(stages)}
    return Chain(REST, tuple(own), tuple(own), sorted_by(set().union(*(closed[n] for n in own)), order))


def sorted_by(names: Iterable[str], order: Mapping[str, int]) -> tuple[str, ...]:
    return tuple(sorted(names, key=order.__getitem__))


def price(items: Sequence[Chain], done: set[str], seconds: Mapping[str, float]) -> list[Chain]:
    """Each item with its unfinished stages, a stage several need counted in the first of them."""
    priced, taken = [], set(done)
    for item in items:
        pending = tuple(n for n in item.needs if n not in taken)
        taken.update(pending)
        priced.append(replace(item, pending=pending, seconds=sum(seconds[n] for n in pending)))
    return priced


def place(
    needs: Sequence[Sequence[str]], cost: Mapping[str, float], lanes: int, pinned: Mapping[int, int] | None = None
) -> list[list[int]]:
    """Item indices per lane, given each item's unfinished stages: the pinned (index -> lane) where they
    are, the others costliest first, each where the lanes end soonest (`makespan`; then the lane with
    fewest items, then the first), then single moves while one ends them sooner (two runs sharing a
    prefix: together in one lane, or the prefix first and one in each)."""
    where = dict(pinned or {})
    free = sorted((i for i in range(len(needs)) if i not in where), key=lambda i: (-sum(map(cost.get, needs[i])), i))
    span = lambda w: makespan(w, needs, cost, lanes)  # noqa: E731
    for i in free:
        items_in = Counter(where.values())
        where[i] = min(range(lanes), key=lambda k: (span({**where, i: k}), items_in[k], k))
    moved, now = True, span(where)
    while moved:
        moved = False
        for i, k in ((i, k) for i in free for k in range(lanes) if k != where[i]):
            if (after := span({**where, i: k})) < now - 1e-9:
                where[i], now, moved = k, after, True
    return [sorted(i for i, k in where.items() if k == lane) for lane in range(lanes)]


def makespan(where: Mapping[int, int], needs: Sequence[Sequence[str]], cost: Mapping[str, float], lanes: int) -> float:
    """Seconds until the lanes are done with items placed `where` (index -> lane): the stages items of two
    lanes need, run first, then the longest lane."""
    first, load = 0.0, [0.0] * lanes
    for name, held in holders(where, needs).items():
        if len(held) > 1:
            first += cost[name]
        else:
            load[next(iter(held))] += cost[name]
    return first + max(load)


def holders(where: Mapping[int, int], needs: Sequence[Sequence[str]]) -> dict[str, set[int]]:
    """Each stage the items placed `where` (index -> lane) need, with the lanes that need it."""
    out: dict[str, set[int]] = {}
    for i, lane in where.items():
        for name in needs[i]:
            out.setdefault(name, set()).add(lane)
    return out


def started_in(
    names: Iterable[str], params: Params, stages: Mapping[str, plan.Stage], folders: Sequence[Path]
) -> int | None:
    """The lane whose checkout holds files of one of these unfinished stages (a killed stage's), if any."""
    names = list(names)
    for lane, folder in enumerate(folders):
        for name in names:
            if any((folder / os.path.relpath(out, params.root)).exists() for out in stages[name].outs):
                return lane
    return None


def lane_plan(
    params: Params,
    folders: Sequence[Path],
    checkouts: Sequence[Path] | None = None,
    seconds: Callable[[plan.Stage], float] | None = None,
) -> LanePlan:
    """The suite's items over one lane per folder (the suite's folder in each lane's checkout, this one's
    first): priced by `seconds` (cost.py's at the params' steps and limit by default), placed by `place`."""
    if seconds is None:
        steps, limit = params.sections.finetune.max_steps, cost.limits(params)
        seconds = lambda s: cost.stage_seconds(s, params, steps, limit)  # noqa: E731
    stages = plan.plan(params)
    by_name = {s.name: s for s in stages}
    cost_of = {s.name: seconds(s) for s in stages}
    done = finished(folder / "dvc.lock" for folder in folders) & by_name.keys()
    closed = inputs(stages)
    chained = chains(params, stages, closed)
    items = price([*chained, *filter(None, [rest(stages, closed, chained, done)])], done, cost_of)
    # an item stays where a stage only it needs was killed (its files resume there)
    needers = Counter(n for item in items for n in item.needs)
    mine = [[n for n in item.pending if needers[n] == 1] for item in items]
    started = {i: started_in(mine[i], params, by_name, folders) for i in range(len(items))}
    pinned = {i: lane for i, lane in started.items() if lane is not None}
    unfinished = [[n for n in item.needs if n not in done] for item in items]
    placed = place(unfinished, cost_of, len(folders), pinned)
    # a stage items of two lanes need runs first; each lane runs the rest of its items' unfinished stages
    where = {i: lane for lane, indices in enumerate(placed) for i in indices}
    order = {s.name: i for i, s in enumerate(stages)}
    first = sorted_by((n for n, held in holders(where, unfinished).items() if len(held) > 1), order)
    lanes = []
    for lane, indices in enumerate(placed):
        pending = tuple(n for i in indices for n in items[i].pending if n not in first)
        checkout = (checkouts or folders)[lane]
        placed_items = tuple(items[i] for i in indices)
        lanes.append(Lane(lane + 1, checkout, placed_items, pending, sum(map(cost_of.get, pending))))
    return LanePlan(folders[0], len(stages), len(done), first, sum(map(cost_of.get, first)), tuple(lanes))


def listed(names: Sequence[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def table(p: LanePlan) -> str:
    lines = [
        f"{p.folder}: {p.stages} stages, {p.finished} finished; {len(p.lanes)} one-thread lanes, "
        f"~{p.hours:.1f} h until they are done, then the report",
        f"{'lane':<6} {'pending':>7} {'hours':>6}  chains",
    ]
    if p.first:
        lines.append(f"{'first':<6} {len(p.first):>7} {p.first_seconds / 3600:>6.2f}  {listed(p.first)}")
    for lane in p.lanes:
        names = listed([c.name for c in lane.chains]) or "-"  # every glob is on the lane's line below
        lines.append(f"{lane.number:<6} {len(lane.pending):>7} {lane.seconds / 3600:>6.2f}  {names}")
    lines += [f"lane {lane.number} ({lane.checkout}): {' '.join(lane.globs) or '-'}" for lane in p.lanes]
    return "\n".join(lines)


def shell(p: LanePlan) -> str:
    """lanes.sh's lines, tab-separated: `first NAME...`, then per lane `lane K CHECKOUT GLOB...`."""
    lines = ["\t".join(["first", *p.first])]
    lines += ["\t".join(["lane", str(lane.number), str(lane.checkout), *lane.globs]) for lane in p.lanes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the suite's folder, e.g. benchmarks/protocol/standard")
    parser.add_argument("--lanes", type=int, default=2, help="one-thread lanes (default 2)")
    parser.add_argument("--shell", type=Path, help="also write lanes.sh's lines to this file")
    args = parser.parse_args(argv)
    if args.lanes < 1:
        parser.error("--lanes must be at least 1")
    roots, relative = checkouts(args.folder, args.lanes)
    p = lane_plan(load_params(args.folder / "params.yaml"), [r / relative for r in roots], roots)
    print(table(p))
    if args.shell:
        args.shell.parent.mkdir(parents=True, exist_ok=True)
        args.shell.write_text(shell(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
