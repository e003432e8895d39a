"""report.md and metrics.csv (and retrieval.csv) of an evaluation run, each written atomically."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write

# column -> (markdown header, format); lower is better for the ones marked ↓
_FORMATS: dict[str, tuple[str, str]] = {
    "FID": ("FID ↓", "{:.2f}"), "KID": ("KID ↓", "{:.5f}"), "CLIP-T": ("CLIP-T ↑", "{:.2f}"),
    "CLIP-I": ("CLIP-I ↑", "{:.2f}"), "LPIPS": ("LPIPS ↓", "{:.4f}"), "SSIM": ("SSIM ↑", "{:.4f}"),
}

DEFINITIONS = """\
- **FID** (Fréchet Inception distance) and **KID** (kernel Inception distance, unscaled): the
  generated images of a row against the test images of the same categories, as clean-fid's
  "clean" mode computes them (PIL bicubic resize to 299x299 without rounding, the TensorFlow
  FID Inception-v3's 2048 pool features; KID: unbiased MMD² with the kernel (x·y/2048 + 1)³,
  averaged over 100 random subsets of up to 1,000 images per side, seed 0). Lower is better.
- **CLIP-T**: 100 × cosine between the caption and the repainted region (the mask's bounding
  box, white outside the mask, fitted into a white 224x224 square), clipped at 0, with OpenCLIP
  ViT-H-14 (laion2b_s32b_b79k); the mean over the images. Higher is better.
- **CLIP-I**: 100 × the mean cosine between a 64x64 texture patch of that region (its centre;
  15 px below its top for lower-body garments) and each retrieved garment the image was made
  from; the mean over the images. Higher is better.
- **LPIPS** (AlexNet, v0.1) and **SSIM** (11x11 Gaussian window, σ 1.5, data range 1): the
  generated image against its ground-truth photo resized to it (bicubic), paired runs only;
  the mean over the images. LPIPS lower, SSIM higher is better.
- **R@k**: the share of the queries with at least one relevant garment among the first k
  retrieved; **P@k**: the mean share of a query's relevant garments found among the first k
  (what the reference's retrieval files call precision). In %.
- "all" pools every image (or query) of the run; "–" marks a value that cannot be computed
  (FID/KID need two images or more, CLIP-I the retrieved garments)."""


def _columns(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = _columns(rows)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float) else row[c]
                         for c in columns])
    return buffer.getvalue()


def _cell(column: str, value: object, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if percent:
            return f"{100 * value:.1f}"
        return _FORMATS.get(column, ("", "{:.4g}"))[1].format(value)
    return str(value).replace("|", "\\|")


def _table(rows: Sequence[dict], percent: Sequence[str] = ()) -> list[str]:
    columns = _columns(rows)
    header = [_FORMATS.get(c, (c, ""))[0] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(c, row.get(c), c.split("@")[0] in percent) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def render_report(rows: Sequence[dict], retrieval_rows: Sequence[dict] | None,
                  settings: dict[str, str], docs: Path | None = None) -> str:
    """`docs`: the pack's docs/metrics.md when it is on this machine (a library install has none:
    the report then cites it by name only, never a link to a missing file)."""
    lines = ["# Fashion-RAG evaluation", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {_cell('', k, False)} | {_cell('', v, False)} |" for k, v in settings.items()]
    lines += ["", "## Image metrics", ""] + _table(rows)
    if retrieval_rows:
        lines += ["", "## Retrieval (%)", ""] + _table(retrieval_rows, percent=("R", "P"))
    where = f" ({docs.resolve().as_uri()})" if docs is not None and docs.is_file() else ""
    lines += ["", "## Definitions", "", DEFINITIONS, "",
              f"The reference's exact recipe for each metric, and where this pack differs from it: "
              f"docs/metrics.md of the Fashion-RAG node pack{where}.", ""]
    return "\n".join(lines)


def write_report(out: Path, rows: list[dict], retrieval_rows: list[dict] | None,
                 settings: dict[str, str], docs: Path | None = None) -> None:
    """out/metrics.csv (rows), out/retrieval.csv (when given) and out/report.md (settings, both
    tables, the definitions), each replaced atomically: a failure leaves the previous file."""
    if not rows:
        raise ValueError("no metric rows to report")
    out = Path(out)
    _write_text(out / "metrics.csv", _csv(rows))
    if retrieval_rows:
        _write_text(out / "retrieval.csv", _csv(retrieval_rows))
    _write_text(out / "report.md", render_report(rows, retrieval_rows, settings, docs))
