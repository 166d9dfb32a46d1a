"""Protocol presets (ProtocolSettings): every knob of the benchmark, with its unit and default, in one frozen object."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from phononbench.errors import SetupError
from phononbench.records import verdict_column


@dataclass(frozen=True)
class ProtocolSettings:
    """One benchmark protocol. ``PUBLISHED`` reproduces the PhononBench paper."""

    name: str = "published"
    model: str = "mattersim-5m"

    # ingest: inputs failing these become invalid_input
    max_atoms: int | None = None  # per input cell; None: no limit (the published scripts have none)
    min_distance_a: float = 0.5  # closer atoms are treated as overlapping

    # relax: the published recipe (hyllios/utils benchmark_ph/umlip.py relax_structure, as PhononBench calls it):
    # up to relax_cycles cycles, each a fresh FixSymmetry + FrechetCellFilter + FIRE run to the target for at
    # most relax_steps_per_cycle steps; cycling stops once the filter's largest force (atoms and cell) is below
    # the target; afterwards the structure is relaxed only if that force is at most relax_fmax_ev_per_a.
    relax_fmax_ev_per_a: float = 0.005  # acceptance (eV/A, atoms and Frechet cell forces)
    relax_target_fmax_ev_per_a: float = 0.0025  # each cycle's FIRE target (eV/A): half the acceptance
    relax_cycles: int = 15
    relax_steps_per_cycle: int = 500
    relax_force_guard_ev_per_a: float = 1e4  # a force above this: the potential diverged (relax_failed)
    fix_symmetry: bool = True
    symprec: float = 0.01  # FixSymmetry tolerance (ASE's default)
    # a relaxed structure not bonded in three dimensions (molecule, chain, layer in vacuum) is counted as
    # published (False), or set aside as low_dimensional before phonons (True)
    exclude_low_dimensional: bool = False

    # phonons: phonopy finite displacements on a supercell of the relaxed input cell: either a fixed diagonal
    # supercell (published: 2x2x2 of the input cell) or the smallest supercell whose perpendicular widths
    # are all >= supercell_min_length_a (supercells.py); one of the two is None
    supercell: tuple[int, int, int] | None = (2, 2, 2)
    supercell_min_length_a: float | None = None
    # with a length L: twice the smallest supercell at least L/2 wide instead (also at least L wide), so every
    # q-point whose coordinates are all 0 or 1/2 (the Gamma, X, M, R, L-type points of the zone boundary, not K
    # or W) is commensurate and exact rather than interpolated (supercells.zone_boundary_supercell)
    supercell_zone_boundary: bool = False
    # with a length L: the smallest such supercell whose lattice every rotation of the crystal's point group maps
    # onto itself. One that loses rotations gives force constants with only those it keeps, and interpolated
    # frequencies at equivalent q-points that differ (CaO: 4 of 48 kept at 15zb, up to 1.1 THz apart;
    # docs/VALIDATION.md, "Supercells and the crystal's symmetry")
    supercell_keeps_rotations: bool = False
    # a supercell with more atoms than this is not computed (phonon_failed, saying so); None: no cap
    max_supercell_atoms: int | None = None
    displacement_a: float = 0.01
    subtract_drift: bool = True  # mean force removed from each displaced supercell
    symmetrize_force_constants: bool = True
    # zero the force constants of pairs farther apart than half the supercell's narrowest width, then restore
    # the sum rule (phonons.produce_force_constants). Off in every preset: it removed CHGNet's long-range noise
    # on four materials, but with SevenNet-l3i5 on 50 phonondb_dev materials it called 11 of 24 DFT-stable
    # crystals unstable, against 8 without it (docs/VALIDATION.md, "The half-width cut")
    force_constants_cutoff_at_half_width: bool = False
    # take the undisplaced supercell's forces off each displaced one (phonopy's --fz; one more supercell).
    # Off as published; on in accurate: SevenNet's models break inversion symmetry, so a relaxed centrosymmetric
    # crystal keeps residual forces that phonopy's symmetry-built -u cannot cancel (TbCl2F: -6.28 THz at Gamma
    # without, 0 with; docs/VALIDATION.md, "Residual forces")
    subtract_residual_forces: bool = False
    band_npoints: int = 101  # on the longest seekpath segment; constant q-spacing, as published

    # Brillouin-zone verdict (beside the published one, from the same force constants): the seekpath path
    # expressed in the input cell's reciprocal basis, the supercell's commensurate q-points, and a Gamma-centred
    # mesh with about bz_mesh_length_a x |b_i| / 2 pi points along each reciprocal axis (phonopy's length2mesh)
    bz_mesh_length_a: float = 20.0
    # acoustic modes at interpolated q-points nearer Gamma than any other commensurate point, where the supercell
    # measures nothing: "counted" in the Brillouin-zone verdict, or "set_aside" (its blind spot: an instability
    # longer than the supercell; docs/VALIDATION.md, "acoustic dips next to Gamma")
    acoustic_dips: str = "counted"

    # tiered screening: Gamma frequencies from displacements of the unit cell alone (exact at Gamma);
    # an optical mode below every threshold (minus the margin) there is unstable without the supercell
    gamma_screen: bool = False
    gamma_screen_margin_thz: float = 0.0

    # stability: stable when the lowest band frequency is >= threshold (THz), first one is the headline
    thresholds_thz: tuple[float, ...] = (-0.1, -0.001)
    # which verdict ranks the leaderboard: "path" (the published q-points) or "brillouin_zone"
    headline_verdict: str = "path"
    allow_positive_thresholds: bool = False  # a positive threshold is almost always a sign slip

    @property
    def ranks_by_zone(self) -> bool:
        """The headline (and every reader's stable set) is the Brillouin-zone verdict, not the published path."""
        return self.headline_verdict == "brillouin_zone"

    @property
    def headline_threshold_thz(self) -> float:
        return self.thresholds_thz[0]

    def ensure_runnable(self) -> "ProtocolSettings":
        """Refuse settings that make no sense, before any work, one line each (SetupError)."""
        thresholds = self.thresholds_thz
        if not thresholds:
            raise SetupError("at least one stability threshold is needed", setting="thresholds_thz")
        for t in thresholds:
            if not math.isfinite(t):
                raise SetupError(f"threshold {t} THz is not a finite number", setting="thresholds_thz")
        # told apart by the verdict columns they name (6 significant digits): two thresholds that name
        # one column would write two columns of one name
        named: dict[str, float] = {}
        for k, t in enumerate(thresholds):
            column = verdict_column(t)
            if t in thresholds[:k]:  # 0 and -0 too: one value, whatever the column says
                raise SetupError(f"threshold {t!r} THz is given twice", setting="thresholds_thz")
            if column in named:
                raise SetupError(f"threshold {t!r} THz is the same as {named[column]!r} to 6 significant digits "
                                 f"(both would be the column {column})", setting="thresholds_thz")
            named[column] = t
            if t > 0 and not self.allow_positive_thresholds:
                raise SetupError(f"threshold {t:g} THz is positive: imaginary modes are negative frequencies, so a "
                                 f"positive threshold calls stable crystals unstable (did you mean {-t:g}?)",
                                 setting="thresholds_thz")
        if (self.supercell is None) == (self.supercell_min_length_a is None):
            raise SetupError("give exactly one of a supercell (2x2x2) and a minimum supercell length in A",
                             setting="supercell")
        if self.supercell is not None and not (len(self.supercell) == 3 and all(
                isinstance(n, int) and 1 <= n <= MAX_SUPERCELL_REPEATS for n in self.supercell)):
            raise SetupError(f"supercell {self.supercell}: three whole numbers from 1 to {MAX_SUPERCELL_REPEATS}",
                             setting="supercell")
        length = self.supercell_min_length_a
        if length is not None and not (isinstance(length, (int, float)) and
                                       MIN_SUPERCELL_LENGTH_A <= length <= MAX_SUPERCELL_LENGTH_A):
            raise SetupError(f"supercell length {length} A: give {MIN_SUPERCELL_LENGTH_A:g} to "
                             f"{MAX_SUPERCELL_LENGTH_A:g} A", setting="supercell")
        for flag in ("supercell_zone_boundary", "supercell_keeps_rotations", "subtract_residual_forces",
                     "force_constants_cutoff_at_half_width"):
            if not isinstance(getattr(self, flag), bool):
                raise SetupError(f"{flag} must be true or false (got {getattr(self, flag)!r})", setting=flag)
        if self.supercell_keeps_rotations and length is None:
            raise SetupError("a supercell that keeps the crystal's rotations is sized by a length (e.g. 15zb-sym); "
                             "NxNxN keeps them already", setting="supercell")
        if self.supercell_zone_boundary and length is None:
            raise SetupError("a zone-boundary supercell is sized by a length (e.g. 15zb), not NxNxN",
                             setting="supercell")
        if self.force_constants_cutoff_at_half_width and (length or 0) < MIN_LENGTH_FOR_CUTOFF_A:
            raise SetupError(f"the force-constant cutoff at half the supercell's width needs supercells at least "
                             f"{MIN_LENGTH_FOR_CUTOFF_A:g} A wide (a smaller one would cut real neighbours off); "
                             "give --supercell with a larger length", setting="supercell")
        if self.acoustic_dips not in ACOUSTIC_DIPS:
            raise SetupError(f"acoustic_dips must be one of {', '.join(ACOUSTIC_DIPS)} (got {self.acoustic_dips!r})",
                             setting="acoustic_dips")
        if self.headline_verdict not in HEADLINE_VERDICTS:
            raise SetupError(f"headline_verdict must be one of {', '.join(HEADLINE_VERDICTS)} "
                             f"(got {self.headline_verdict!r})", setting="headline_verdict")
        optional = {"max_atoms": self.max_atoms, "max_supercell_atoms": self.max_supercell_atoms,
                    "supercell_min_length_a": self.supercell_min_length_a,
                    "supercell": None if self.supercell is None else min(self.supercell)}
        positive = {"relax_fmax_ev_per_a": self.relax_fmax_ev_per_a,
                    "relax_target_fmax_ev_per_a": self.relax_target_fmax_ev_per_a, "relax_cycles": self.relax_cycles,
                    "relax_steps_per_cycle": self.relax_steps_per_cycle,
                    "relax_force_guard_ev_per_a": self.relax_force_guard_ev_per_a, "symprec": self.symprec,
                    "displacement_a": self.displacement_a, "band_npoints": self.band_npoints - 1,
                    "bz_mesh_length_a": self.bz_mesh_length_a}
        positive.update({k: v for k, v in optional.items() if v is not None})
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SetupError(f"{name} must be positive (got {getattr(self, name)})", setting=name)
        if not self.min_distance_a >= 0:
            raise SetupError(f"min_distance_a must be zero or more (got {self.min_distance_a})", setting="min_distance_a")
        return self

    def with_overrides(self, **changes) -> "ProtocolSettings":
        """A copy with the given fields changed; ``None`` values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "thresholds_thz" in changes:
            changes["thresholds_thz"] = tuple(float(t) for t in changes["thresholds_thz"])
        return dataclasses.replace(self, **changes)

    def with_supercell(self, text: str | None) -> "ProtocolSettings":
        """A copy with the supercell given as on the command line: ``2x2x2`` (a diagonal supercell), a
        minimum width in A (``15`` or ``15A``), or a zone-boundary one that wide (``15zb``: twice the
        smallest supercell at least 7.5 A wide); ``-sym`` after a length (``15zb-sym``): the smallest such
        supercell that keeps the crystal's rotations; None keeps the preset's."""
        if text is None:
            return self
        spec = text.strip().lower()
        try:
            if "x" in spec:
                sizes = tuple(int(n) for n in spec.split("x"))
                if len(sizes) != 3 or min(sizes) < 1 or max(sizes) > MAX_SUPERCELL_REPEATS:
                    raise ValueError
                return dataclasses.replace(self, supercell=sizes, supercell_min_length_a=None,
                                           supercell_zone_boundary=False, supercell_keeps_rotations=False)
            keeps_rotations = spec.endswith("-sym")
            spec = spec.removesuffix("-sym").strip()
            zone_boundary = spec.endswith("zb")
            length = float(spec.removesuffix("zb").strip().removesuffix("a"))
            if not (math.isfinite(length) and MIN_SUPERCELL_LENGTH_A <= length <= MAX_SUPERCELL_LENGTH_A):
                raise ValueError
            return dataclasses.replace(self, supercell=None, supercell_min_length_a=length,
                                       supercell_zone_boundary=zone_boundary, supercell_keeps_rotations=keeps_rotations)
        except ValueError:
            raise SetupError(f"supercell {text!r}: give NxNxN (e.g. 2x2x2), a minimum width in A from "
                             f"{MIN_SUPERCELL_LENGTH_A:g} to {MAX_SUPERCELL_LENGTH_A:g} (e.g. 15), or that width with every "
                             "q-point of coordinates 0 or 1/2 commensurate (e.g. 15zb), with -sym for one that keeps the crystal's "
                             "rotations (e.g. 15zb-sym)", setting="supercell") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProtocolSettings":
        data = dict(data)
        for key in ("supercell", "thresholds_thz"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


HEADLINE_VERDICTS = ("path", "brillouin_zone")
ACOUSTIC_DIPS = ("counted", "set_aside")
MIN_SUPERCELL_LENGTH_A, MAX_SUPERCELL_LENGTH_A = 3.0, 50.0  # a supercell by length (A)
MAX_SUPERCELL_REPEATS = 20  # per axis, for NxNxN
MIN_LENGTH_FOR_CUTOFF_A = 10.0  # half of it (5 A) keeps every first and second neighbour

PUBLISHED = ProtocolSettings()

# The published protocol plus the Gamma screen: same verdicts, fewer supercells. The margin is the largest
# difference between a unit cell's and its supercell's optical Gamma frequencies measured near a threshold
# (1.15 THz, CHGNet on the demo set: benchmarks/gamma_margin.py), rounded up, so a screen does not flip a verdict.
TIERED = dataclasses.replace(PUBLISHED, name="tiered", gamma_screen=True, gamma_screen_margin_thz=1.2)

# The published protocol counting only crystals: structures that relax into molecules, chains or layers
# with vacuum between them leave the denominator instead of counting as stable (van der Waals-stacked
# layers and molecular crystals stay).
BULK = dataclasses.replace(PUBLISHED, name="bulk", exclude_low_dimensional=True)

# Beyond the published protocol, for verdicts that agree with DFT: the published relaxation, then a supercell
# at least ACCURATE_LENGTH_A wide in every direction (a 2x2x2 of a small cell is 6-10 A wide and cuts its force
# constants off), the zone-boundary one (twice the smallest at least half as wide: every half-point exact; on
# 24 DFT-stable phonondb_dev crystals it took SevenNet-l3i5's false-unstables from 8 to 5; 1.6x the atoms of
# the plain one on 300 MatterGen crystals, 8 of them above 1000: benchmarks/supercell_sizes.py) that keeps the
# crystal's rotations (on the 47 of phonondb_dev's 120 whose plain one loses some, SevenNet-l3i5's headline is
# right on 43 -> 44 at -0.1 THz and 41 -> 43 at -0.001; CHGNet's, on its 43, 30 -> 32 and 29 -> 34; 6% more atoms
# on MatterGen's), residual forces subtracted, force constants as produced (symmetrized, no cut), and the
# Brillouin-zone verdict as the headline, with acoustic dips next to Gamma set aside (all 120 of phonondb_dev with SevenNet-l3i5: accuracy
# 0.883 -> 0.908, false-unstable 9/60 -> 6/60; on the 69 held out when the rule was fixed, 0.884 -> 0.899, no
# DFT-unstable crystal called stable by it; with the rotations kept: 0.917, 5/60; docs/VALIDATION.md).
ACCURATE_LENGTH_A = 15.0
ACCURATE = dataclasses.replace(PUBLISHED, name="accurate", supercell=None, supercell_min_length_a=ACCURATE_LENGTH_A,
                               supercell_zone_boundary=True, supercell_keeps_rotations=True, max_supercell_atoms=2000,
                               headline_verdict="brillouin_zone", subtract_residual_forces=True,
                               acoustic_dips="set_aside")

PRESETS: dict[str, ProtocolSettings] = {"published": PUBLISHED, "tiered": TIERED, "bulk": BULK, "accurate": ACCURATE}


def preset(name: str) -> ProtocolSettings:
    try:
        return PRESETS[name]
    except KeyError:
        raise SetupError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}", setting="preset") from None
