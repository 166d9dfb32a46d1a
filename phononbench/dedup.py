"""Stage 2, dedup: structures of one generator that pymatgen's StructureMatcher calls the same.

Only structures with the same reduced formula are compared, so the cost grows with the largest
formula group, not with the square of the generator's size. The first structure of a group (in
input order) is kept; the others point at it.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

from pymatgen.analysis.structure_matcher import StructureMatcher

from phononbench.ingest import InputStructure


def find_duplicates(items: list[InputStructure], matcher: StructureMatcher | None = None) -> dict[str, str]:
    """structure_id of each duplicate -> structure_id of the structure it duplicates.

    Invalid inputs take no part. Generators never match each other.
    """
    matcher = matcher or StructureMatcher()  # default tolerances, as published
    groups: dict[tuple[str, str], list[InputStructure]] = defaultdict(list)
    for item in items:
        if item.valid:
            groups[(item.generator, item.structure.composition.reduced_formula)].append(item)

    duplicate_of: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        kept: list[InputStructure] = []
        for item in members:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                match = next((k for k in kept if matcher.fit(k.structure, item.structure)), None)
            if match is None:
                kept.append(item)
            else:
                duplicate_of[item.structure_id] = match.structure_id
    return duplicate_of
