"""The science: reading and checking structures, dedup, the relaxation recipe, supercells, phonons and
verdicts. Plain functions over plain records; no I/O beyond their inputs, no potential of their own."""
