"""`flenwheel providers --matrix`: seed 003's price matrix and creation plan, from the engines' own estimates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flenwheel.pipeline.price_matrix import (
    FEATURES,
    PLAN_TRAINING,
    PLAN_TRAINING_IMAGES,
    creation_plans,
    feature_request,
    price_matrix,
)
from flenwheel.providers.fal import FalProvider
from flenwheel.providers.pricing import BUILT_IN
from flenwheel.providers.replicate import ReplicateProvider
from flenwheel.trainers.fal import FalTrainer

from patience import HANG_S

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLENWHEEL_", "FAL_", "REPLICATE_"))
    }
    environment.update(env or {})
    return subprocess.run(
        [str(FLENWHEEL), *map(str, args)], capture_output=True, text=True, env=environment, timeout=HANG_S
    )


def test_the_matrix_is_the_budgets_own_estimates() -> None:
    rows = price_matrix()
    assert {row.feature for row in rows} == {feature.id for feature in FEATURES}
    by_key = {(row.feature, row.engine, row.model): row for row in rows}
    base = next(feature for feature in FEATURES if feature.id == "base_images")
    # What the budget reserves before the call (router → engine.estimate_cost) is what the matrix shows.
    request = feature_request(base, "fal-ai/flux/dev")
    assert by_key["base_images", "fal", "fal-ai/flux/dev"].estimated_usd == FalProvider("k").estimate_cost(
        request
    )
    # 3 images of 1024² = 1.05 MP each, billed as 2 whole megapixels each (pricing.py)
    assert by_key["base_images", "fal", "fal-ai/flux/dev"].estimated_usd == pytest.approx(3 * 2 * 0.025)
    ultra = feature_request(base, "black-forest-labs/flux-1.1-pro-ultra")
    assert by_key["base_images", "replicate", "black-forest-labs/flux-1.1-pro-ultra"].estimated_usd == (
        ReplicateProvider("t").estimate_cost(ultra)
    )
    assert by_key["lora_training", "fal", "fal-ai/flux-lora-fast-training"].estimated_usd == (
        FalTrainer("k").estimate_cost(PLAN_TRAINING, PLAN_TRAINING_IMAGES)
    )
    assert all(not row.nsfw_allowed for row in rows if row.engine in ("fal", "replicate"))
    assert all(row.nsfw_allowed for row in rows if row.engine in ("comfyui", "ai-toolkit"))
    assert by_key["studio_hq", "comfyui", "z-image-turbo"].estimated_usd == 0.0

    external, pod = creation_plans(rows)
    assert [line.feature for line in external.lines] == ["base_images", "profile_set", "lora_training"]
    assert external.wizard_usd == pytest.approx(sum(line.estimated_usd for line in external.lines[:2]))
    assert {line.engine for line in pod.lines} == {"comfyui", "ai-toolkit"}
    assert pod.lines[0].model == "z-image-turbo" and pod.lines[1].model == "qwen-image-edit-2509"


def test_the_cli_prints_the_matrix_and_says_when_a_cap_breaks(tmp_path: Path) -> None:
    listed = cli("providers", "--matrix", "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    external = document["plans"][0]
    assert external["wizard_within_cap"] and external["creation_within_cap"]
    assert len(document["matrix"]) > 50

    prices = tmp_path / "prices.yaml"  # a user's own prices: every fal/Replicate image at $0.30
    prices.write_text(
        yaml.safe_dump(
            {
                service: {model: {"per_image": 0.3} for model in BUILT_IN[service]}
                for service in ("fal", "replicate")
            }
        )
    )
    table = cli("providers", "--matrix", env={"FLENWHEEL_PRICES": str(prices)})
    assert table.returncode == 0, table.stderr
    assert "Price matrix" in table.stdout and "Creation plan: external providers" in table.stdout
    assert "wizard $3.30 of $2.00: OVER the cap" in table.stdout  # 3 + 8 images at $0.30
