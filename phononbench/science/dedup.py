"""Stage 2, dedup: structures of one generator that pymatgen's StructureMatcher calls the same.

The grouping is pymatgen's ``StructureMatcher.group_structures`` (default tolerances, as published): in
input order, a structure is a duplicate of the first earlier kept structure it ``fit``s, else it is kept.
What makes it fast at 110k structures, with the same result:

- buckets: only structures of one generator with the same reduced formula are compared, and a large
  bucket is split further by the number of sites of the reduced (primitive, Niggli) cell (in a small one
  such pairs fail at once). The site count is safe: with the matcher's
  defaults (no supercells, no subsets) ``fit`` refuses two reduced cells of different sizes before
  anything else (``_strict_match``: the site mask must be square); tests check it against plain ``fit``;
- each structure is reduced once, then ``fit(..., skip_structure_reduction=True)``, as ``group_structures``
  does, instead of reducing both structures again in each of the bucket's ~n^2/2 fits;
- buckets run as tasks on the executor (a local Ray or the cluster), and a large bucket is cut into
  blocks: each block's structures are compared with the structures kept so far by several tasks at once
  (first fit, in order), then the ones that fit none are grouped among themselves by one task; both
  steps follow the greedy rule, which is exactly what one process going through the bucket decides.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable

from pymatgen.core import Structure
from pymatgen.core.structure_matcher import StructureMatcher

from phononbench.science.ingest import InputStructure
from phononbench.tasks import LocalTasks

# a bucket larger than this is cut into blocks shared by several tasks; smaller ones are one task each,
# and many small ones share a task (each task a few hundred structures)
LARGE_BUCKET = 200
SMALL_TASK_STRUCTURES = 400


def matcher() -> StructureMatcher:
    return StructureMatcher()  # default tolerances, as published


# ---------------------------------------------------------------------------------------------
# The work of one task: plain functions over structures (picklable, run on any worker)


def reduce(items: list[InputStructure]) -> list[Structure | None]:
    """Each structure's reduced cell (Niggli, then primitive), as ``group_structures`` prepares it; None for
    a cell the matcher cannot reduce (it is then kept: never called a duplicate)."""
    sm, out = matcher(), []
    for item in items:
        try:
            structure = item.unpacked().structure
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                processed = sm._process_species([structure])[0]
                out.append(sm._get_reduced_structure(processed, sm._primitive_cell, niggli=True))
        except Exception:
            out.append(None)
    return out


def _fits(sm: StructureMatcher, kept: Structure | None, candidate: Structure | None) -> bool:
    if kept is None or candidate is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sm.fit(kept, candidate, skip_structure_reduction=True)
    except Exception:  # a pair the matcher cannot compare is not a match
        return False


def group_among(reduced: list[Structure], candidates: list[int]) -> list[int]:
    """The greedy rule over ``candidates`` in order: each is a duplicate of the first earlier kept one it
    fits, else kept. For each candidate, its owner (itself when it is kept)."""
    sm, kept, owner = matcher(), [], []
    for j in candidates:
        match = next((i for i in kept if _fits(sm, reduced[i], reduced[j])), None)
        if match is None:
            kept.append(j)
        owner.append(j if match is None else match)
    return owner


def group_in_order(reduced: list[Structure]) -> list[int]:
    """For each structure, the index of the kept structure it duplicates (itself when it is kept)."""
    return group_among(reduced, list(range(len(reduced))))


def group_buckets(buckets: list[list[InputStructure]]) -> list[list[int]]:
    """Several small buckets in one task: reduce and group each."""
    return [group_in_order(reduce(bucket)) for bucket in buckets]


def first_fits(reduced: list[Structure], candidates: list[int], kept: list[int]) -> list[int | None]:
    """For each candidate, the first of ``kept`` (in order) it fits, or None."""
    sm = matcher()
    return [next((i for i in kept if _fits(sm, reduced[i], reduced[j])), None) for j in candidates]


# ---------------------------------------------------------------------------------------------
# Spreading the work: buckets and blocks over an executor's tasks


def buckets_of(items: Iterable[InputStructure]) -> dict[tuple[str, str], list[InputStructure]]:
    """Valid structures by (generator, reduced formula), in input order. Generators never match each other."""
    buckets: dict[tuple[str, str], list[InputStructure]] = defaultdict(list)
    for item in items:
        if item.valid:
            buckets[(item.generator, item.formula or item.structure.composition.reduced_formula)].append(item)
    return buckets


def find_duplicates(items: list[InputStructure], executor=None,
                    progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """structure_id of each duplicate -> structure_id of the structure it duplicates.

    Invalid inputs take no part. ``executor`` runs the tasks (``map_tasks``; this process by default);
    ``progress(n)`` is called as n more structures are decided.
    """
    executor = executor or LocalTasks()
    buckets = [b for b in buckets_of(items).values()]
    if progress:
        progress(sum(len(b) for b in buckets if len(b) < 2))  # a structure alone in its bucket is kept
    buckets = [b for b in buckets if len(b) >= 2]
    duplicate_of: dict[str, str] = {}

    def record(bucket: list[InputStructure], owner: list[int]) -> None:
        for j, i in enumerate(owner):
            if i != j:
                duplicate_of[bucket[j].structure_id] = bucket[i].structure_id
        if progress:
            progress(len(bucket))

    small = [b for b in buckets if len(b) <= LARGE_BUCKET]
    tasks, current, size = [], [], 0
    for bucket in small:
        current.append(bucket)
        size += len(bucket)
        if size >= SMALL_TASK_STRUCTURES:
            tasks.append(current)
            current, size = [], 0
    if current:
        tasks.append(current)
    owners = executor.map_tasks(group_buckets, [(task,) for task in tasks])
    for task, task_owners in zip(tasks, owners):
        for bucket, owner in zip(task, task_owners):
            record(bucket, owner)

    for bucket in (b for b in buckets if len(b) > LARGE_BUCKET):
        record(bucket, _group_large(bucket, executor))
    return duplicate_of


def _slices(values: list, n: int) -> list[list]:
    size = max(1, -(-len(values) // n))
    return [values[k:k + size] for k in range(0, len(values), size)]


def _group_large(bucket: list[InputStructure], executor) -> list[int]:
    """One large bucket on several tasks, with the result of ``group_in_order`` on it."""
    slots = max(1, executor.slots())
    reduced = [s for part in executor.map_tasks(reduce, [(p,) for p in _slices(bucket, 4 * slots)]) for s in part]
    # the reduced cells' sizes split the bucket further: cells of different sizes never fit
    by_size: dict[int, list[int]] = defaultdict(list)
    for j, structure in enumerate(reduced):
        by_size[len(structure) if structure is not None else -1].append(j)
    owner = list(range(len(bucket)))
    for members in by_size.values():
        local = [reduced[j] for j in members]
        for k, i in enumerate(_group_blocks(local, executor, parts=4 * slots, block=16 * slots)):
            owner[members[k]] = members[i]
    return owner


def _group_blocks(reduced: list[Structure], executor, parts: int, block: int) -> list[int]:
    """``group_in_order`` in blocks of ``block`` structures: each block's structures are compared with the
    structures kept so far by ``parts`` tasks at once (first fit, in order), then the ones that fit none
    are grouped among themselves by one task. Both steps follow the greedy rule, so the result is the
    same; the first step, where almost all the fits are once a bucket is large, runs in parallel."""
    shared = executor.share(reduced)
    owner, kept = list(range(len(reduced))), []
    for start in range(0, len(reduced), block):
        candidates = list(range(start, min(start + block, len(reduced))))
        unmatched = candidates
        if kept:
            answers = executor.map_tasks(first_fits, [(c, kept) for c in _slices(candidates, parts)], shared=shared)
            firsts = [a for part in answers for a in part]
            unmatched = [j for j, match in zip(candidates, firsts) if match is None]
            for j, match in zip(candidates, firsts):
                if match is not None:
                    owner[j] = match
        if unmatched:
            among = next(iter(executor.map_tasks(group_among, [(unmatched,)], shared=shared)))
            for j, i in zip(unmatched, among):
                owner[j] = i
            kept += [j for j, i in zip(unmatched, among) if i == j]
    return owner
