"""PhononBench: how many generated crystals are dynamically stable.

The stages, in order: ``ingest`` -> ``dedup`` -> ``relax`` -> ``phonons`` -> ``stability`` -> ``results``.
``method`` composes relax -> phonons -> stability once for every ``engines`` engine; a ``worker`` runs it
on chunks wherever an ``executors`` executor puts it; ``pipeline`` drives a whole run; ``cli`` is the
command line.
"""

__version__ = "0.1.0"
