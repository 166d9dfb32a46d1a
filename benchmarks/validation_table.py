"""The whole validation table of docs/VALIDATION.md: every potential x supercell of a recipe (docs/validation/table.toml),
each row the union of its per-material CSVs as ``validation_union.py`` makes it, scored on every verdict and threshold.

    python benchmarks/validation_table.py docs/validation/table.toml --markdown docs/validation/table.md

Writes Markdown: the summary (accuracy with its 95% Wilson interval and false-unstable count per verdict), every
metric per verdict and threshold (F1 both ways, false-unstable and false-stable rates), the cost (supercell atoms,
wall seconds), and per potential the materials whose headline verdict changes with the supercell, with each
supercell's lowest frequency and its q-point. A row whose CSVs are not there yet is listed as not measured.
Last line JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import pandas as pd

from phononbench.reading.report import markdown_cell
from phononbench.reading.validation import changes_markdown, stable_column, verdict_changes
from validation_union import table, union

THRESHOLDS = (-0.1, -0.001)
HEADLINE = "beyond_acoustic_dips"  # accurate's verdict; also computed on the 2x2x2 runs, so supercells compare
_VERDICT_NAMES = {"path": "path", "brillouin_zone": "zone", "commensurate": "commensurate",
                  HEADLINE: "headline"}


_KEYS = {"potential": str, "supercell": str, "preset": str, "setting": str, "measured": str, "note": str,
         "per_material": list, "fits": list, "instead": list}
_FILES = ("per_material", "fits", "instead")


def read_recipe(path: Path) -> list[dict]:
    """The recipe's rows, each checked before any CSV is read: a typo in a key must not score another row."""
    try:
        rows = tomllib.loads(path.read_text()).get("row", [])
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SystemExit(f"{path}: cannot read the recipe ({error})") from None
    if not rows:
        raise SystemExit(f"{path}: no [[row]] in the recipe")
    for number, row in enumerate(rows, 1):
        where = f"{path}, row {number}"
        unknown = sorted(set(row) - set(_KEYS))
        if unknown:
            raise SystemExit(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(_KEYS)})")
        wrong = [k for k, v in row.items() if not isinstance(v, _KEYS[k])]
        if wrong or any(not isinstance(name, str) for k in _FILES for name in row.get(k, [])):
            raise SystemExit(f"{where}: {', '.join(wrong) or 'a file name'}: of the wrong type "
                             "(the files are lists of names, the rest text)")
        if "potential" not in row or "supercell" not in row or not row.get("per_material", []) + row.get("fits", []):
            raise SystemExit(f"{where}: give potential, supercell and per_material or fits")
        for key in _FILES:
            row[key] = [path.parent / name for name in row.get(key, [])]
    named = [(row["potential"], label(row)) for row in rows]
    twice = sorted({" ".join(n) for n in named if named.count(n) > 1})
    if twice:
        raise SystemExit(f"{path}: {', '.join(twice)}: more than one row (name the supercells apart)")
    return rows


def absent(recipe: dict) -> list[str]:
    return [p.name for key in _FILES for p in recipe[key] if not p.exists()]


def measure(recipe: dict) -> tuple[pd.DataFrame, list[dict]] | None:
    """The row's materials and its scores, or None when one of its CSVs is not there (yet)."""
    if absent(recipe):
        return None
    materials = union(recipe["per_material"], recipe["fits"], recipe["instead"], recipe.get("setting"))
    return materials, table(materials, THRESHOLDS)


def label(recipe: dict) -> str:
    """The supercell as the tables name it, in Markdown."""
    return markdown_cell(recipe["supercell"]) + (f" (`{recipe['preset']}`)" if "preset" in recipe else "")


def _cost(materials: pd.DataFrame) -> tuple[str, str]:
    """Mean and largest supercell, and median wall seconds, over the structures that have them (a supercell above
    the atom cap has no recorded size; a refit no wall time)."""
    atoms = materials["n_supercell_atoms"].astype(float).dropna()
    wall = materials["wall_s"].astype(float).dropna()
    seconds = f"{wall.median():.0f}" + ("" if len(wall) == len(materials) else f" ({len(wall)} run)") if len(wall) else "—"
    size = f"{atoms.mean():.0f} (max {atoms.max():.0f}" + ("" if len(atoms) == len(materials) else f"; {len(atoms)} computed") + ")"
    return size, seconds


def _score(scores: list[dict], verdict: str, threshold: float) -> dict | None:
    return next((s for s in scores if s["verdict"] == verdict and s["threshold_thz"] == threshold), None)


def _with_interval(s: dict) -> str:
    low, high = s["accuracy_ci"]
    return f"{s['accuracy']:.3f} ({low:.3f}-{high:.3f})"


def _accuracy(s: dict | None) -> str:
    return "—" if s is None else f"{_with_interval(s)}, {s['fn']}"


def summary(measured: list[tuple[dict, tuple | None]]) -> str:
    lines = ["| potential | supercell | n | supercell atoms, mean | wall s, median | path, -0.1 | zone, -0.1 | "
             "commensurate, -0.1 | headline, -0.1 | headline, -0.001 |", "|---" * 10 + "|"]
    for recipe, result in measured:
        if result is None:
            lines.append(f"| {markdown_cell(recipe['potential'])} | {label(recipe)} | not measured (no {', '.join(absent(recipe))}) | | | | | | | |")
            continue
        materials, scores = result
        cells = [_accuracy(_score(scores, v, -0.1)) for v in ("path", "brillouin_zone", "commensurate", HEADLINE)]
        lines.append(f"| {markdown_cell(recipe['potential'])} | {label(recipe)} | {len(materials)} | " + " | ".join(_cost(materials))
                     + " | " + " | ".join(cells) + f" | {_accuracy(_score(scores, HEADLINE, -0.001))} |")
    return "\n".join(lines) + "\n"


def every_metric(measured: list[tuple[dict, tuple | None]]) -> str:
    lines = ["| potential | supercell | verdict | threshold (THz) | accuracy (95% Wilson) | F1 stable | F1 imaginary | "
             "false-unstable | false-stable |", "|---" * 9 + "|"]
    for recipe, result in measured:
        for s in [] if result is None else result[1]:
            lines.append(f"| {markdown_cell(recipe['potential'])} | {label(recipe)} | {_VERDICT_NAMES[s['verdict']]} | {s['threshold_thz']:g} | "
                         f"{_with_interval(s)} | {s['f1_stable']:.3f} | {s['f1_unstable']:.3f} | "
                         f"{s['false_unstable_rate']:.3f} ({s['fn']}/{s['fn'] + s['tp']}) | {s['fp']}/{s['fp'] + s['tn']} |")
    return "\n".join(lines) + "\n"


def changing_with_supercell(potential: str, rows: list[tuple[dict, pd.DataFrame]]) -> tuple[str, int]:
    """The materials whose headline verdict differs between this potential's supercells at either threshold,
    among the supercells that computed them (a failure is unstable; a supercell without the headline is left out)."""
    settings = {}
    for recipe, materials in rows:
        if materials[f"missing {HEADLINE}"].astype(bool).any():
            continue
        frequency = materials[HEADLINE].astype(float)
        computed = materials["status"] == "ok"
        settings[label(recipe)] = materials.assign(frequency=frequency, qpoint=materials["headline_qpoint"], **{
            stable_column(t): computed & (frequency >= t) for t in THRESHOLDS}).set_index("material")
    left_out = [label(recipe) for recipe, _ in rows if label(recipe) not in settings]
    if len(settings) < 2:
        return f"{potential}: fewer than two supercells record the headline ({', '.join(left_out)} do not)\n", 0
    changes = verdict_changes(settings, THRESHOLDS)
    thresholds = " / ".join(f"{t:g}" for t in THRESHOLDS)
    heading = (f"{potential}: lowest frequency beyond acoustic dips next to Gamma, its q-point, and the verdict at "
               f"{thresholds} THz, right or wrong"
               + (f" ({', '.join(left_out)}: left out, the headline not recorded for all)" if left_out else ""))
    return changes_markdown(changes, heading, with_thresholds=True), len(changes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path, help="a TOML file of [[row]]s, as docs/validation/table.toml")
    parser.add_argument("--markdown", type=Path, help="write the tables here (else print them)")
    args = parser.parse_args(argv)
    measured = [(recipe, measure(recipe)) for recipe in read_recipe(args.recipe)]
    parts = ["## Summary\n\nEach cell: accuracy (95% Wilson interval), DFT-stable materials called unstable (of 60). "
             "Wall seconds per structure (relaxation and phonons) were measured with other jobs beside; refits of "
             "cached forces have none.\n", summary(measured),
             "Where each row comes from (docs/VALIDATION.md's sections of those sessions):\n",
             "\n".join(f"- {r['potential']}, {label(r)}: {r.get('measured', '?')}" for r, _ in measured) + "\n",
             "## Every metric\n", every_metric(measured), "## Verdicts that change with the supercell\n"]
    changing = {}
    for potential in dict.fromkeys(recipe["potential"] for recipe, _ in measured):
        rows = [(recipe, result[0]) for recipe, result in measured if recipe["potential"] == potential and result]
        if len(rows) > 1:
            text, changing[potential] = changing_with_supercell(potential, rows)
            parts.append(text)
    markdown = "\n".join(parts)
    if args.markdown:
        args.markdown.write_text(markdown)
    else:
        print(markdown)
    print(json.dumps({"rows": [{"potential": r["potential"], "supercell": r["supercell"],
                                "scores": None if m is None else m[1]} for r, m in measured],
                      "changing_with_supercell": changing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
