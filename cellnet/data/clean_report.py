"""What `clean` found: counts per reason and class, a row per flagged image, a PNG of examples."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellnet.data.dataset import CellData
from cellnet.files import atomic_path

REASONS: tuple[str, ...] = ("exact_duplicate", "near_duplicate", "label_conflict", "outlier")
EXAMPLES_PER_REASON = 6
COLUMNS = ["index", "id", "label", "class", "reason", "cluster", "dropped", "partner_id", "outlier_score"]


@dataclass
class CleanReport:
    """Every flagged image (`rows`; `dropped` is the subset removed) plus totals and the settings used."""

    classes: tuple[str, ...]
    n_in: int
    n_kept: int
    rows: pd.DataFrame
    per_class_in: np.ndarray
    seconds: float
    settings: dict[str, Any]
    source: str | None = None
    examples: dict[str, list[tuple[np.ndarray, np.ndarray | None, str]]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        data: CellData,
        *,
        flagged: np.ndarray,
        reasons: np.ndarray,
        clusters: np.ndarray,
        partners: np.ndarray,
        dropped: np.ndarray,
        scores: np.ndarray,
        n_kept: int,
        seconds: float,
        settings: dict[str, Any],
    ) -> CleanReport:
        labels = data.labels[flagged]
        rows = pd.DataFrame(
            {
                "index": flagged.astype(np.int64),
                "id": data.ids[flagged].astype(str),
                "label": labels.astype(np.int64),
                "class": [data.classes[k] for k in labels],
                "reason": reasons,
                "cluster": clusters.astype(np.int64),
                "dropped": dropped.astype(bool),
                "partner_id": [str(data.ids[p]) if p >= 0 else "" for p in partners],
                "outlier_score": np.round(scores, 2),
            },
            columns=COLUMNS,
        )
        examples: dict[str, list[tuple[np.ndarray, np.ndarray | None, str]]] = {}
        for reason in REASONS:
            picked = np.flatnonzero(reasons == reason)[:EXAMPLES_PER_REASON]
            examples[reason] = [
                (
                    data.images[flagged[k]],
                    data.images[partners[k]] if partners[k] >= 0 else None,
                    f"{data.classes[labels[k]]}"
                    + (f" vs {data.classes[data.labels[partners[k]]]}" if reason == "label_conflict" else ""),
                )
                for k in picked
            ]
        return cls(
            classes=data.classes,
            n_in=len(data),
            n_kept=n_kept,
            rows=rows,
            per_class_in=data.class_counts(),
            seconds=seconds,
            settings=settings,
            examples=examples,
        )

    @property
    def dropped(self) -> pd.DataFrame:
        """Rows of the images removed from the dataset."""
        return self.rows[self.rows["dropped"]].reset_index(drop=True)

    def counts(self, dropped_only: bool = True) -> dict[str, int]:
        """Images per reason (dropped ones by default; dropped_only=False counts flagged-but-kept too)."""
        rows = self.dropped if dropped_only else self.rows
        return {reason: int((rows["reason"] == reason).sum()) for reason in REASONS}

    def per_class(self) -> pd.DataFrame:
        """One row per class: images in, dropped per reason, kept."""
        table = pd.DataFrame(0, index=list(self.classes), columns=["in", *REASONS, "kept"], dtype=np.int64)
        table["in"] = self.per_class_in
        dropped = self.dropped
        for reason in REASONS:
            hits = dropped[dropped["reason"] == reason]["class"].value_counts()
            table.loc[hits.index, reason] = hits.to_numpy()
        table["kept"] = table["in"] - table[list(REASONS)].sum(axis=1)
        return table

    def summary(self) -> str:
        """A few lines for the terminal."""
        counts = self.counts()
        flagged_kept = len(self.rows) - len(self.dropped)
        lines = [
            f"cleaned {self.source or 'data'}: {self.n_in} images -> {self.n_kept} kept, "
            f"{self.n_in - self.n_kept} dropped ({self.seconds:.1f} s)",
            "  " + ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in counts.items()),
        ]
        if flagged_kept:
            lines.append(f"  flagged but kept (drop_* off): {flagged_kept}")
        per_class = self.per_class()
        changed = per_class[per_class["in"] != per_class["kept"]]
        if len(changed):
            lines.append(
                "  per class (in -> kept): " + ", ".join(f"{c} {r['in']}->{r['kept']}" for c, r in changed.iterrows())
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        per_class = self.per_class()
        return {
            "source": self.source,
            "images_in": self.n_in,
            "images_kept": self.n_kept,
            "dropped": self.counts(),
            "flagged": self.counts(dropped_only=False),
            "per_class": {c: {k: int(v) for k, v in row.items()} for c, row in per_class.iterrows()},
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
        }

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """report.csv (a row per flagged image), report.json (counts, settings), examples.png; each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "report.csv", "json": out / "report.json", "png": out / "examples.png"}
        _atomic(paths["csv"], lambda p: self.rows.to_csv(p, index=False))
        _atomic(paths["json"], lambda p: p.write_text(json.dumps(self.to_json(), indent=2) + "\n"))
        _atomic(paths["png"], self._plot)
        return paths

    def _plot(self, path: Path) -> None:
        """A row per reason: each dropped example next to the image it duplicates / conflicts with."""
        import matplotlib  # ~2 s, only when the report's figure is drawn

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

        columns = 2 * EXAMPLES_PER_REASON
        fig, axes = plt.subplots(len(REASONS), columns, figsize=(columns * 1.2, len(REASONS) * 1.5), squeeze=False)
        for r, reason in enumerate(REASONS):
            examples = self.examples.get(reason, [])
            cells: list[tuple[np.ndarray, str]] = []
            for image, partner, caption in examples:
                cells.append((image, caption))
                if partner is not None:
                    cells.append((partner, "kept" if reason != "label_conflict" else "other"))
            for c in range(columns):
                ax = axes[r, c]
                ax.axis("off")
                if c < len(cells):
                    ax.imshow(cells[c][0])
                    ax.set_title(cells[c][1], fontsize=6)
            axes[r, 0].text(
                -0.1,
                0.5,
                f"{reason}\n({len(self.rows[self.rows['reason'] == reason])})",
                transform=axes[r, 0].transAxes,
                ha="right",
                va="center",
                fontsize=7,
            )
        fig.suptitle(f"cellnet clean: {self.source or ''}  {self.n_in} -> {self.n_kept} images", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)


def _atomic(path: Path, write: Any) -> None:
    """write(tmp) next to path, then rename over it: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        write(tmp)
