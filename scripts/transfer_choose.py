"""Print the ``--set`` options of the stain recipe to build the reference with, chosen from the ablation cards.

    python scripts/transfer_choose.py [docs/results/transfer/ablation]

The choice reads the PBC validation split and zheng-dev only (never a test split): among the variants whose
validation accuracy is at most 0.3 points below the variant without stain augmentation ("none"), the one with the
best mean accuracy over the zheng-dev sources (means over a variant's seeds: cards NAME, NAME-s1, ...), as the
product serves a reference by default: adapted to the lab's cells without labels (``adapted_im``: BatchNorm
statistics, then its scales and shifts; ``reference_adapt_im``) where the card has that figure (cards built since
2026-12-07), else with the BatchNorm statistics adapted (``adapted_batchnorm``), else the model alone. Without a
"none" card every variant is eligible. A variant run for fewer seeds than the most-run one is left out: it was
dropped after losing on its first seeds, and its mean is not comparable with means over more seeds (zheng-dev moved
by up to 12 points with the seed alone).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = tuple(
    (k, 0.0)
    for k in (
        "stain_hed_alpha",
        "stain_hed_beta",
        "stain_colour",
        "stain_grey_p",
        "stain_blur_p",
        "stain_zoom",
        "stain_mix",
        "style_noise",
    )
)
KEYS += (("stain_blur_sigma", 1.0),)


def _variant(name: str) -> str:
    """A card's variant: its name without a seed suffix ("zoom-s1" is seed 1 of "zoom")."""
    return re.sub(r"-s\d+$", "", name)


def served(source: dict) -> dict:
    """A card's figures on one source as the product serves the reference there (module docstring)."""
    return source.get("adapted_im") or source.get("adapted_batchnorm") or source["reference"]


def choose(folder: Path) -> tuple[str, dict]:
    cards = {p.name.removesuffix(".card.json"): json.loads(p.read_text()) for p in sorted(folder.glob("*.card.json"))}
    if not cards:
        raise SystemExit(f"no ablation cards in {folder}")

    def transfer(card: dict) -> float:
        figures = [served(v)["accuracy"] for v in card["transfer"].values()]
        return sum(figures) / len(figures) if figures else 0.0

    seeds: dict[str, list[dict]] = {}
    for name, card in cards.items():
        seeds.setdefault(_variant(name), []).append(card)
    # each variant's means over its seeds: PBC validation, then zheng-dev
    means = {
        v: (sum(c["metrics"]["validation"]["accuracy"] for c in cs) / len(cs), sum(map(transfer, cs)) / len(cs))
        for v, cs in seeds.items()
    }
    floor = means["none"][0] - 0.003 if "none" in means else 0.0
    most = max(map(len, seeds.values()))
    eligible = [v for v, (val, _) in means.items() if val >= floor and len(seeds[v]) == most] or list(means)
    name = max(eligible, key=lambda v: (means[v][1], means[v][0]))
    return name, min(seeds[name], key=lambda c: c["config"].get("seed", 0))["config"]  # seed 0's config


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "docs" / "results" / "transfer" / "ablation"
    name, config = choose(folder)
    print(f"chosen: {name}", file=sys.stderr)
    keys = (*KEYS, ("input_norm", "dataset"), ("epochs", config.get("epochs")))
    print(" ".join(f"--set {k}={config.get(k, default)}" for k, default in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
