"""PhononBench: how many generated crystals are dynamically stable.

The stages, in order: ``ingest`` -> ``dedup`` -> ``relax`` -> ``phonons`` -> ``stability`` -> ``results``;
``pipeline`` runs them, ``cli`` is the command line.
"""

__version__ = "0.1.0"
