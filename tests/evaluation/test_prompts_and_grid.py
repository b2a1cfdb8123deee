"""The model-card prompt set (seed 001: 5 angles × 4 expressions + 3 body poses) and the default grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from flenwheel.errors import InvalidInput
from flenwheel.evaluation.grid import (
    DEFAULT_STRENGTHS,
    CheckpointRef,
    GridSettings,
    cell_request,
    parse_strengths,
    plan_grid,
)
from flenwheel.evaluation.prompts import ANGLES, EXPRESSIONS, model_card_prompts, select_prompts

TRIGGER = "ohwx_char person"


def test_the_model_card_has_23_prompts_every_angle_with_every_expression_and_three_poses() -> None:
    prompts = model_card_prompts(TRIGGER)
    assert len(prompts) == 23 and len({p.key for p in prompts}) == 23
    portraits = [p for p in prompts if p.pose == "portrait"]
    assert {(p.angle, p.expression) for p in portraits} == {(a, e) for a in ANGLES for e in EXPRESSIONS}
    assert len(ANGLES) == 5 and len(EXPRESSIONS) == 4
    assert [p.key for p in prompts if p.pose != "portrait"] == [
        "full_body-t_pose",
        "full_body-standing",
        "full_body-sitting",
    ]
    assert all(TRIGGER in p.text for p in prompts)
    by_key = {p.key: p for p in prompts}
    # Seed 001's own template, word for word, with the trigger put in.
    assert by_key["profile_left-smiling"].text == (
        "portrait of ohwx_char person, smiling, profile-left view, clean background, studio lighting"
    )
    assert by_key["full_body-t_pose"].text == (
        "full body photo of ohwx_char person in T-pose, front view, white background"
    )
    # Fixed seeds: the same on every run and machine, so checkpoints are compared on the same noise.
    assert by_key["front-neutral"].seed == 937420574 and by_key["full_body-sitting"].seed == 1784426835
    assert len({p.seed for p in prompts}) == 23


def test_quick_set_and_named_keys() -> None:
    quick = select_prompts(TRIGGER, "quick")
    assert len(quick) == 6
    assert {p.angle for p in quick if p.angle} == set(ANGLES)
    assert {p.expression for p in quick if p.expression} == set(EXPRESSIONS)
    assert [p.key for p in select_prompts(TRIGGER, ["full_body-sitting", "front-sad"])] == [
        "front-sad",
        "full_body-sitting",
    ]
    with pytest.raises(InvalidInput, match="unknown prompt key"):
        select_prompts(TRIGGER, ["front-grumpy"])


def test_the_default_plan_is_checkpoints_times_three_strengths_times_23_prompts(tmp_path: Path) -> None:
    checkpoints = [
        CheckpointRef(id=7, step=200, epoch=2, path=tmp_path / "e2.safetensors"),
        CheckpointRef(id=3, step=100, epoch=1, path=tmp_path / "e1.safetensors"),
    ]
    grid = plan_grid(checkpoints, DEFAULT_STRENGTHS, model_card_prompts(TRIGGER))
    assert DEFAULT_STRENGTHS == (0.6, 0.8, 1.0)
    assert len(grid) == 2 * 3 * 23 and len({cell.key for cell in grid}) == len(grid)
    assert grid[0].checkpoint.step == 100  # training order, whatever order the rows came in
    requests = [cell_request(cell, GridSettings(size=64, steps=2, model="tiny")) for cell in grid]
    assert {(r.loras[0].path, r.loras[0].strength) for r in requests} == {
        (str(tmp_path / name), strength)
        for name in ("e1.safetensors", "e2.safetensors")
        for strength in (0.6, 0.8, 1.0)
    }
    seeds_per_prompt = {}
    for cell, request in zip(grid, requests, strict=True):
        seeds_per_prompt.setdefault(cell.prompt.key, set()).add(request.seed)
        assert (request.width, request.steps, request.model) == (64, 2, "tiny")
    assert all(len(seeds) == 1 for seeds in seeds_per_prompt.values())  # one seed per prompt across the grid


def test_strengths_are_parsed_with_clear_errors() -> None:
    assert parse_strengths("1.0, 0.6,0.8,0.6") == (0.6, 0.8, 1.0)
    with pytest.raises(InvalidInput, match="numbers separated by commas"):
        parse_strengths("0.6;0.8")
    with pytest.raises(InvalidInput, match="out of range"):
        parse_strengths("0,1")
    with pytest.raises(InvalidInput, match="no checkpoints yet"):
        plan_grid([], DEFAULT_STRENGTHS, model_card_prompts(TRIGGER))
