"""One local LoRA training session (the torch side of local_lora.py): cache, adapters, steps, saves, resume."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flenwheel.trainers.base import (
    CheckpointFile,
    TrainingCancelled,
    TrainingContext,
    TrainingInput,
    TrainingResult,
    TrainingSpec,
)
from flenwheel.trainers.latent_cache import CacheStats, PreparedItem, TrainingCache
from flenwheel.trainers.lora_plan import (
    STATE_FILE,
    TEXT_TARGETS,
    UNET_TARGETS,
    SavedState,
    cancelled_message,
    epoch_batches,
    load_state,
    make_plan,
    prepared_items,
    run_fingerprint,
    save_state,
    step_seed,
    write_checkpoint,
)
from flenwheel.trainers.sd_models import load_sd_model

log = logging.getLogger(__name__)


class LoraSession:
    """Loads the model, fills the cache, then trains from step 0 or from the saved state."""

    def __init__(
        self,
        spec: TrainingSpec,
        data: TrainingInput,
        ctx: TrainingContext,
        cache_root: Path,
        device: str | None,
    ) -> None:
        import torch

        self.torch = torch
        self.spec = spec
        self.data = data
        self.ctx = ctx
        self.cache_root = cache_root
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cache_stats = CacheStats()
        self.state_path = data.work_dir / "state" / STATE_FILE
        self._batches: dict[int, list[list[int]]] = {}

    # -- setup ---------------------------------------------------------------------------------------------
    def train(self) -> TrainingResult:
        spec, torch = self.spec, self.torch
        _quiet()
        self.items = prepared_items(spec, self.data)
        self.plan = make_plan(spec, self.items)
        self.fingerprint = run_fingerprint(spec, self.items)
        saved = load_state(self.state_path, self.fingerprint)
        if self.ctx.cancelled():
            raise TrainingCancelled("local: cancelled before it started")
        self.model = load_sd_model(spec.base_model, spec.family, self.cache_root)
        cache = TrainingCache(self.cache_root / "training-cache", self.model.fingerprint)
        self.cache_stats = cache.stats
        self._fill_cache(cache)
        _log_line(self.data, f"cache: {cache.stats}")

        torch.manual_seed(spec.seed)  # PEFT draws lora_A from the global generator
        self.params = self._add_adapters()
        self.optimizer = self._optimizer(list(self.params.values()))
        self.ema = {n: p.detach().clone() for n, p in self.params.items()} if spec.ema else None
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        self.checkpoints: list[CheckpointFile] = []
        self.started_at = datetime.now(UTC)
        if saved is not None:
            self._restore(saved)
        return self._loop()

    def _fill_cache(self, cache: TrainingCache) -> None:
        """Latents for every item, and text embeddings unless the text encoder trains (then they change)."""
        torch, model = self.torch, self.model
        model.vae.to(self.device)
        self.latents: list[Any] = []
        with torch.no_grad():
            for item in self.items:
                if self.ctx.cancelled():
                    raise TrainingCancelled("local: cancelled while caching latents; what was cached is kept")
                self.latents.append(
                    cache.latents(
                        item,
                        lambda pixels: model.vae.encode(pixels[None].to(self.device)).latent_dist.parameters[
                            0
                        ],
                    )
                )
            model.vae.to("cpu")
            self.texts: list[dict[str, Any]] | None = None
            if not self.spec.train_text_encoder:
                for encoder in model.text_encoders:
                    encoder.to(self.device)
                self.texts = [cache.text(item.caption, self._encode_caption) for item in self.items]

    def _encode_caption(self, caption: str) -> dict[str, Any]:
        hidden, pooled = self._encode_text([caption])
        out = {"hidden": hidden[0]}
        if pooled is not None:
            out["pooled"] = pooled[0]
        return out

    def _encode_text(self, captions: list[str]) -> tuple[Any, Any]:
        """SD: the last hidden state. SDXL: both encoders' penultimate states side by side, plus the pooled one."""
        torch, model = self.torch, self.model
        states, pooled = [], None
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
            ids = tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            if model.family == "sdxl":
                output = encoder(ids, output_hidden_states=True)
                states.append(output.hidden_states[-2])
                pooled = output[0]
            else:
                states.append(encoder(ids)[0])
        return torch.cat(states, dim=-1), pooled

    def _add_adapters(self) -> dict[str, Any]:
        """LoRA on the UNet's attention projections (and the text encoders' when asked); the trainable params."""
        from peft import LoraConfig

        spec, model = self.spec, self.model
        alpha: Any = spec.network_alpha  # PEFT types it int; a float alpha (kohya allows one) works the same
        model.unet.to(self.device)
        model.unet.add_adapter(LoraConfig(r=spec.rank, lora_alpha=alpha, target_modules=UNET_TARGETS))
        parts = {"unet": model.unet}
        if spec.train_text_encoder:
            for index, encoder in enumerate(model.text_encoders):
                encoder.to(self.device)
                encoder.add_adapter(LoraConfig(r=spec.rank, lora_alpha=alpha, target_modules=TEXT_TARGETS))
                encoder.train()
                parts[f"te{index}"] = encoder
        model.unet.train()
        params: dict[str, Any] = {}
        for part, module in parts.items():
            for name, param in module.named_parameters():
                if param.requires_grad:  # only the LoRA matrices: add_adapter freezes the rest
                    params[f"{part}.{name.replace('.default', '').removesuffix('.weight')}"] = param
        return params

    def _optimizer(self, params: list[Any]) -> Any:
        torch, spec = self.torch, self.spec
        if spec.optimizer == "sgd":
            return torch.optim.SGD(params, lr=spec.learning_rate, momentum=0.9)
        if spec.optimizer == "adamw8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(params, lr=spec.learning_rate, weight_decay=1e-2)
        if spec.optimizer == "prodigy":
            import prodigyopt

            return prodigyopt.Prodigy(params, lr=1.0, weight_decay=1e-2)
        return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=1e-2)

    def _restore(self, saved: SavedState) -> None:
        torch = self.torch
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(saved.lora[name].to(param.device))
        self.optimizer.load_state_dict(saved.optimizer)
        if self.ema is not None and saved.ema is not None:
            self.ema = {n: t.to(self.device) for n, t in saved.ema.items()}
        self.step = saved.global_step
        self.losses = list(saved.losses)
        self.checkpoints = [c for c in saved.checkpoints if c.step <= saved.global_step]
        self.started_at = saved.started_at
        _log_line(self.data, f"resumed at step {self.step}/{self.plan.total_steps}")

    # -- training ------------------------------------------------------------------------------------------
    def _loop(self) -> TrainingResult:
        plan = self.plan
        while self.step < plan.total_steps:
            if self.ctx.cancelled():
                self._save_state()
                raise TrainingCancelled(
                    cancelled_message(self.step, plan.total_steps, self.state_path.parent)
                )
            epoch, index = divmod(self.step, plan.steps_per_epoch)
            if epoch not in self._batches:
                self._batches = {
                    epoch: epoch_batches(
                        self.items, self.spec.repeats, self.spec.batch_size, self.spec.seed, epoch
                    )
                }
            loss = self._train_step(self._batches[epoch][index])
            self.step += 1
            self.losses.append((self.step, loss))
            self.ctx.progress(self.step, plan.total_steps, loss)
            if plan.due(self.step):
                self._save_checkpoint()
                self._save_state()
        if not any(c.step == self.step for c in self.checkpoints):  # a resume of a finished run, or max_steps
            self._save_checkpoint()
            self._save_state()
        return TrainingResult(
            checkpoints=tuple(sorted(self.checkpoints, key=lambda c: c.step)),
            losses=tuple(self.losses),
            total_steps=self.step,
        )

    def _train_step(self, batch: list[int]) -> float:
        torch, model, device = self.torch, self.model, self.device
        generator = torch.Generator("cpu").manual_seed(step_seed(self.spec.seed, self.step))
        parameters = torch.stack([self.latents[i] for i in batch]).float()
        mean, logvar = parameters.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        latents = mean + std * torch.randn(mean.shape, generator=generator)
        config = model.vae.config
        latents = (latents - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        steps = model.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(batch),), generator=generator)
        noisy = model.scheduler.add_noise(latents, noise, timesteps)
        if model.scheduler.config.prediction_type == "v_prediction":
            target = model.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        hidden, pooled = self._conditioning(batch)
        extra: dict[str, Any] = {}
        if model.family == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self._time_ids(batch).to(device)}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
        with autocast:
            prediction = model.unet(noisy.to(device), timesteps.to(device), hidden, **extra).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), target.to(device).float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            decay = min(
                self.spec.ema_decay, (1 + self.step) / (10 + self.step)
            )  # warm-up, as diffusers' EMAModel
            with torch.no_grad():
                for name, param in self.params.items():
                    self.ema[name].mul_(decay).add_(param.detach(), alpha=1 - decay)
        return float(loss.detach().cpu())

    def _conditioning(self, batch: list[int]) -> tuple[Any, Any]:
        torch = self.torch
        if self.texts is None:  # the text encoder trains: encode now, with gradients
            return self._encode_text([self.items[i].caption for i in batch])
        hidden = torch.stack([self.texts[i]["hidden"] for i in batch]).to(self.device)
        pooled = None
        if "pooled" in self.texts[batch[0]]:
            pooled = torch.stack([self.texts[i]["pooled"] for i in batch]).to(self.device)
        return hidden, pooled

    def _time_ids(self, batch: list[int]) -> Any:
        """SDXL's size conditioning: original size, crop offset, target size."""
        rows = []
        for index in batch:
            item: PreparedItem = self.items[index]
            bucket = item.bucket
            rows.append([item.height, item.width, item.crop_top, item.crop_left, bucket.height, bucket.width])
        return self.torch.tensor(rows, dtype=self.torch.float32)

    # -- saving --------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        plan = self.plan
        at_epoch_end = self.step % plan.steps_per_epoch == 0
        epoch = self.step // plan.steps_per_epoch if at_epoch_end else None
        weights = self.ema if self.ema is not None else {n: p.detach() for n, p in self.params.items()}
        checkpoint = write_checkpoint(
            self.spec,
            self.data,
            self.model.family,
            self.model.name,
            weights,
            self.step,
            epoch,
            self.started_at,
            self.step // plan.steps_per_epoch,
        )
        self.checkpoints = [c for c in self.checkpoints if c.step != self.step] + [checkpoint]
        self.ctx.checkpoint_saved(checkpoint)
        _log_line(self.data, f"checkpoint at step {self.step}: {checkpoint.path.name}")

    def _save_state(self) -> None:
        cpu = {n: p.detach().to("cpu").clone() for n, p in self.params.items()}
        ema = {n: t.to("cpu").clone() for n, t in self.ema.items()} if self.ema is not None else None
        state = SavedState(
            global_step=self.step,
            epoch=self.step // self.plan.steps_per_epoch,
            batch_index=self.step % self.plan.steps_per_epoch,
            lora=cpu,
            optimizer=self.optimizer.state_dict(),
            ema=ema,
            losses=self.losses,
            checkpoints=self.checkpoints,
            started_at=self.started_at,
        )
        save_state(self.state_path, self.fingerprint, state)


def _log_line(data: TrainingInput, line: str) -> None:
    log.info(line)
    path = data.work_dir / "logs" / "local.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")


def _quiet() -> None:
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
