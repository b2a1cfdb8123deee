"""The curation report: every image as a thumbnail with its label, reason and measured facts."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flenwheel.datasets.curate import CurateReport
from flenwheel.images import open_stored
from flenwheel.report.render import render
from flenwheel.store.models import DatasetVersion
from flenwheel.store.project import Project

if TYPE_CHECKING:
    from markupsafe import Markup


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
    sections: Sequence[tuple[str, Markup]] = (),
) -> Path:
    """The page of a curation; `sections` are (title, markup) blocks appended by the caller (a plain string
    there is escaped, not trusted)."""
    document = render(
        "curation.html",
        report=report,
        version=version,
        exports=exports,
        generated=[(title, outcome, output) for title, outcome in generated for output in outcome.outputs],
        sections=sections,
        good=sum(1 for d in report.decisions if d.label.value == "good"),
        thumbnail=lambda sha256: _thumbnail(project, sha256),
    )
    target.write_text(document, encoding="utf-8")
    return target
