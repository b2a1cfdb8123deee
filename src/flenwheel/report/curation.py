"""The curation report: every image as a thumbnail with its label, reason and measured facts."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flenwheel.datasets.curate import CurateReport
from flenwheel.images import open_stored
from flenwheel.store.models import DatasetVersion
from flenwheel.store.project import Project

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
.good{color:#176f2c;font-weight:bold}.reject{color:#b00020;font-weight:bold}.needs_correction{color:#a66b00}
img{max-width:128px;max-height:128px}.met{color:#176f2c}.unmet{color:#b00020}
.note{background:#f4f4f4;padding:.5em 1em;border-left:4px solid #888}
"""


def _thumbnail(project: Project, sha256: str) -> str:
    image = open_stored(project.blobs.get(sha256))
    image.thumbnail((128, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_curation_report(
    project: Project,
    report: CurateReport,
    version: DatasetVersion,
    exports: list[Any],
    target: Path,
    generated: Sequence[tuple[str, Any]] = (),
    sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """The page of a curation; `sections` are (title, trusted HTML) blocks appended by the caller."""
    e = html.escape
    rows = []
    for d in report.decisions:
        distance = "" if d.identity_distance is None else f"{d.identity_distance:.2f}"
        rows.append(
            f"<tr><td><img src='{_thumbnail(project, d.sha256)}' alt='{e(d.file)}'></td><td>{d.asset_id}<br>{e(d.file)}"
            f"</td><td class='{e(d.label.value)}'>{e(d.label.value)}<br><small>by {e(d.decided_by.value)}</small></td>"
            f"<td>{e(d.reason)}</td><td>{distance}</td><td>{e(d.angle or '')}</td><td>{e(d.shot or '')}</td>"
            f"<td>{e(d.expression or '')}</td><td>{e(d.quality)}</td><td>{e(d.caption or '')}</td></tr>"
        )
    rejected = "".join(
        f"<tr><td>{e(path)}</td><td>{e(detail)}</td></tr>" for path, _code, detail in report.ingest_rejections
    )
    targets = "".join(
        f"<tr><td>{e(t['target'])}</td><td>{e(t['actual'])}</td>"
        f"<td class='{'met' if t['met'] else 'unmet'}'>{'met' if t['met'] else 'not met'}</td></tr>"
        for t in version.composition["targets"]
    )
    export_rows = "".join(
        f"<tr><td>{e(x.format.value)}</td><td>{''.join(f'{e(str(f))}<br>' for f in x.files)}</td></tr>"
        for x in exports
    )
    generated_rows = "".join(
        f"<tr><td><img src='{_thumbnail(project, o.sha256)}' alt='{e(title)}'></td><td>{e(title)}</td>"
        f"<td>asset {o.asset_id}, {o.width}x{o.height}, seed {o.seed}</td><td>{e(outcome.provider)} / "
        f"{e(outcome.model)}, ${outcome.cost_usd:.4f}</td><td>{e(outcome.note or '')}</td></tr>"
        for title, outcome in generated
        for o in outcome.outputs
    )
    good = sum(1 for d in report.decisions if d.label.value == "good")
    document = f"""<!doctype html><html><head><meta charset="utf-8"><title>flenwheel — {e(report.character)}</title>
<style>{_STYLE}</style></head><body>
<h1>Curation of {e(report.character)}</h1>
<p class="note">Identity defined by the {e(report.identity_source)}; an image is the character when the median
dlib embedding distance to those faces is at most {report.threshold:.2f}. {good} of {len(report.decisions)} images
kept; {len(report.ingest_rejections)} file(s) could not be read as images.</p>
<table><tr><th>image</th><th>asset</th><th>label</th><th>reason</th><th>identity distance</th><th>angle</th>
<th>shot</th><th>expression</th><th>quality</th><th>caption</th></tr>{"".join(rows)}</table>
<h2>Files rejected at ingest</h2><table><tr><th>file</th><th>reason</th></tr>{rejected or "<tr><td colspan=2>none</td></tr>"}</table>
<h2>Dataset {e(version.label)} composition</h2><table><tr><th>target</th><th>actual</th><th></th></tr>{targets}</table>
<h2>Exports</h2><table><tr><th>format</th><th>files</th></tr>{export_rows}</table>
<h2>Generation</h2><table><tr><th>image</th><th>step</th><th>asset</th><th>engine</th><th>note</th></tr>
{generated_rows or "<tr><td colspan=5>none</td></tr>"}</table>
{"".join(f"<h2>{e(title)}</h2>{body}" for title, body in sections)}
</body></html>
"""
    target.write_text(document, encoding="utf-8")
    return target
