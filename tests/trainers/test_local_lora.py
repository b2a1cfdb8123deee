"""The local diffusers + PEFT trainer on the tiny model over real photos: checkpoints, loss, seeds, resume, cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from flenwheel.trainers.base import (
    LocalTrainingContext,
    TrainerError,
    TrainingCancelled,
    TrainingInput,
    TrainingSpec,
)
from flenwheel.trainers.latent_cache import Bucket, TrainingCache, bucket_sizes, prepare_items
from flenwheel.trainers.local_lora import LocalLoraTrainer
from flenwheel.trainers.sd_models import model_fingerprint

from photos import LISA

TrainingInputFactory = Callable[..., TrainingInput]

SPEC = TrainingSpec(
    trigger="ohwx woman", rank=4, resolution=64, epochs=2, repeats=2, seed=7, learning_rate=1e-2
)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    first, second = tensors(a), tensors(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_two_epochs_write_a_checkpoint_each_and_the_loss_falls(
    lisa_input: TrainingInputFactory, model_cache: Path
) -> None:
    data = lisa_input()
    ctx = LocalTrainingContext()
    trainer = LocalLoraTrainer(cache_root=model_cache)

    result = trainer.run(SPEC, data, ctx)
    # The same noise and timesteps at every step (same seed), but a learning rate too small to learn anything:
    # what the loss would have been had the LoRA not learned.
    still = trainer.run(
        SPEC.model_copy(update={"learning_rate": 1e-9}), lisa_input(work="still"), LocalTrainingContext()
    )

    assert [(c.step, c.epoch) for c in result.checkpoints] == [(8, 1), (16, 2)]  # 4 photos x 2 repeats
    assert all(
        c.path.is_file() and c.path.parent == data.work_dir / "checkpoints" for c in result.checkpoints
    )
    assert ctx.checkpoints == list(result.checkpoints)  # reported as each one landed
    assert [step for step, _ in ctx.losses] == list(range(1, 17)) and result.total_steps == 16
    assert ctx.losses == list(result.losses)
    learned, baseline = [loss for _, loss in result.losses], [loss for _, loss in still.losses]
    assert learned[0] == baseline[0]  # the same start…
    assert sum(learned[8:]) < sum(baseline[8:]) * 0.99  # …and by the second epoch the loss is lower
    assert (data.work_dir / "state" / "state.pt").is_file()


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(
    lisa_input: TrainingInputFactory, model_cache: Path
) -> None:
    spec = SPEC.model_copy(update={"epochs": 1})
    trainer = LocalLoraTrainer(cache_root=model_cache)
    one = trainer.run(spec, lisa_input(work="one"), LocalTrainingContext())
    two = trainer.run(spec, lisa_input(work="two"), LocalTrainingContext())
    other = trainer.run(spec.model_copy(update={"seed": 8}), lisa_input(work="other"), LocalTrainingContext())

    assert_same_tensors(one.checkpoints[-1].path, two.checkpoints[-1].path)
    assert one.losses == two.losses
    a, b = tensors(one.checkpoints[-1].path), tensors(other.checkpoints[-1].path)
    assert any(not torch.equal(a[key], b[key]) for key in a if key.endswith("lora_down.weight"))


def test_stopped_twice_and_resumed_twice_ends_exactly_like_an_uninterrupted_run(
    lisa_input: TrainingInputFactory, model_cache: Path
) -> None:
    spec = SPEC.model_copy(update={"ema": True, "save_every_epochs": None, "save_every_steps": 5})
    trainer = LocalLoraTrainer(cache_root=model_cache)
    straight = trainer.run(spec, lisa_input(work="straight"), LocalTrainingContext())

    stopped = lisa_input(work="stopped")
    with pytest.raises(TrainingCancelled, match="resume"):
        trainer.run(spec, stopped, LocalTrainingContext(cancel_after_step=3))
    with pytest.raises(TrainingCancelled):
        trainer.run(spec, stopped, LocalTrainingContext(cancel_after_step=7))
    ctx = LocalTrainingContext()
    resumed = trainer.run(spec, stopped, ctx)

    assert resumed.total_steps == straight.total_steps == 16
    assert [c.step for c in resumed.checkpoints] == [c.step for c in straight.checkpoints] == [5, 10, 15, 16]
    assert ctx.losses[0][0] == 8  # the last run took only the steps the stopped ones had not
    assert resumed.losses == straight.losses
    for done, again in zip(straight.checkpoints, resumed.checkpoints, strict=True):
        assert_same_tensors(done.path, again.path)  # EMA weights included, bit for bit


def test_a_second_run_on_the_same_photos_reads_latents_from_the_cache(
    lisa_input: TrainingInputFactory, tmp_path: Path
) -> None:
    spec = SPEC.model_copy(update={"epochs": 1, "repeats": 1})
    trainer = LocalLoraTrainer(cache_root=tmp_path / "cache")

    trainer.run(spec, lisa_input(work="first"), LocalTrainingContext())
    first = trainer.last_cache_stats
    trainer.run(spec, lisa_input(work="second"), LocalTrainingContext())
    second = trainer.last_cache_stats

    assert (first.latents_encoded, first.texts_encoded) == (4, 4)
    assert (second.latents_encoded, second.texts_encoded) == (0, 0)  # neither VAE nor text encoder ran
    assert (second.latents_cached, second.texts_cached) == (4, 4)
    assert "latents_encoded=0" in (tmp_path / "second" / "logs" / "local.log").read_text()


def test_portrait_and_landscape_photos_train_in_their_own_buckets(
    lisa_input: TrainingInputFactory, tmp_path: Path, model_cache: Path
) -> None:
    landscape = tmp_path / "landscape.jpg"
    with Image.open(LISA[0]) as photo:
        photo.crop((0, 100, 600, 460)).save(landscape)  # 600x360: the face, wide
    data = lisa_input(photos=[LISA[0], landscape])
    spec = TrainingSpec(trigger="ohwx woman", rank=4, resolution=256, epochs=1, seed=1)

    portrait_item, landscape_item = prepare_items([(p.path, p.caption) for p in data.items], 256, True)
    result = LocalLoraTrainer(cache_root=model_cache).run(spec, data, LocalTrainingContext())

    assert portrait_item.bucket == Bucket(width=192, height=320)
    assert landscape_item.bucket == Bucket(width=320, height=192)
    cache = TrainingCache(model_cache / "training-cache", model_fingerprint("tiny", Path()))
    shapes = [
        tuple(load_file(str(cache.latent_path(i)))["parameters"].shape)
        for i in (portrait_item, landscape_item)
    ]
    assert shapes == [(8, 40, 24), (8, 24, 40)]  # VAE mean + log-variance at 1/8 of each bucket
    assert result.total_steps == 2
    squares = prepare_items([(p.path, p.caption) for p in data.items], 256, False)
    assert {item.bucket for item in squares} == {Bucket(width=256, height=256)}  # buckets off: centre crops


def test_buckets_hold_about_the_requested_pixels_in_multiples_of_64() -> None:
    for resolution in (256, 512, 1024):
        for bucket in bucket_sizes(resolution):
            assert bucket.width % 64 == 0 and bucket.height % 64 == 0
            assert 0.7 * resolution**2 <= bucket.width * bucket.height <= resolution**2
            assert max(bucket.width / bucket.height, bucket.height / bucket.width) <= 2


def test_validate_names_each_problem_and_run_refuses(
    lisa_input: TrainingInputFactory, tmp_path: Path
) -> None:
    trainer = LocalLoraTrainer(cache_root=tmp_path)
    missing = TrainingSpec(trigger="ohwx woman", base_model=str(tmp_path / "nope.safetensors"))
    flux = TrainingSpec(trigger="ohwx woman", family="flux")
    big = TrainingSpec(trigger="ohwx woman", resolution=512)
    eight_bit = TrainingSpec(trigger="ohwx woman", resolution=64, optimizer="adamw8bit")

    assert trainer.validate(TrainingSpec(trigger="ohwx woman", resolution=64)) == []
    assert "not found" in " ".join(trainer.validate(missing))
    assert any("Flux" in p for p in trainer.validate(flux))
    assert any("too high for the tiny" in p for p in trainer.validate(big))
    assert any("bitsandbytes" in p for p in trainer.validate(eight_bit))
    with pytest.raises(TrainerError, match="bitsandbytes"):
        trainer.run(eight_bit, lisa_input(), LocalTrainingContext())


def test_a_work_folder_of_another_run_is_refused_not_mixed(
    lisa_input: TrainingInputFactory, model_cache: Path
) -> None:
    data = lisa_input(count=2)
    spec = SPEC.model_copy(update={"epochs": 1, "repeats": 1})
    trainer = LocalLoraTrainer(cache_root=model_cache)
    trainer.run(spec, data, LocalTrainingContext())

    with pytest.raises(TrainerError, match="other settings"):
        trainer.run(spec.model_copy(update={"rank": 8}), data, LocalTrainingContext())
    longer = trainer.run(spec.model_copy(update={"epochs": 2}), data, LocalTrainingContext())
    assert [c.epoch for c in longer.checkpoints] == [1, 2]  # more epochs continue the same run
