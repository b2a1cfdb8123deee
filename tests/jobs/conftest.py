"""The job tests run the pipeline's kinds (`generate`) in their own worker pools, as `flenwheel serve` does."""

from __future__ import annotations

import pytest

from flenwheel.pipeline.kinds import register_pipeline_kinds


@pytest.fixture(autouse=True, scope="session")
def _pipeline_kinds() -> None:
    register_pipeline_kinds()
