"""Two interchangeable engines behind one small interface: DeepSpeed (ZeRO-1/2/3) and torch
(DDP across Ray Train workers, or a single process).

    engine.micro_step(batch, lr) -> loss      forward + backward (+ optimizer step at the
                                               accumulation boundary, with clipping)
    engine.step_stats() -> dict               after a boundary: grad_norm (pre-clip), loss_scale (fp16)
    engine.evaluate(batch) -> (loss_sum, n)   no-grad forward, eval mode; summed token loss
    engine.save(dir, tag, client_state)       every rank; files for one training checkpoint
    engine.load(dir, tag)                     every rank
    engine.full_state_dict()                  every rank; the whole model on rank 0, else None
    engine.gathered(params)                   context in which ZeRO-3 params are whole everywhere
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable params; no weight decay on vectors (norms, biases) as in HF Trainer.

    Under ZeRO-3 a partitioned param is a 1-D shard, so its real rank comes from ``ds_shape``.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        (decay if ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    # torch AdamW on CPU on purpose: DeepSpeed's own optimizers JIT-compile for ~40 s on first use.
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=getattr(cfg, "eps", 1e-8)
    )


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def model_inputs(batch: dict[str, torch.Tensor], device) -> dict[str, Any]:
    """What the model's forward gets. Packed rows carry ``position_ids`` restarting per document
    and no ``attention_mask``: transformers then builds a block-diagonal causal mask from the
    position resets (padding is on the right, so causal attention never reaches it). No KV cache
    in training (it would also switch that packed-sequence detection off)."""
    keys = ("input_ids", "labels", "position_ids", "attention_mask")  # block-packed batches have no mask
    out: dict[str, Any] = {k: batch[k].to(device) for k in keys if k in batch}
    out["use_cache"] = False
    return out


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss (HF shifts labels by one)."""
    return int((batch["labels"][:, 1:] != -100).sum())


class DeepSpeedEngine:
    def __init__(self, model: torch.nn.Module, cfg, ds_config: dict[str, Any]):
        import deepspeed

        self.module = model
        if isinstance(ds_config.get("optimizer"), dict):
            # GPU: DeepSpeed builds its AdamW (FusedAdam / DeepSpeedCPUAdam) over our param groups.
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, model_parameters=param_groups(model, cfg.weight_decay), config=ds_config
            )
        else:
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=make_optimizer(model, cfg), config=ds_config
            )
        self.device = self.engine.device
        self.stage = self.engine.zero_optimization_stage()

    def micro_step(self, batch: dict[str, torch.Tensor], lr: float) -> torch.Tensor:
        _set_lr(self.optimizer, lr)
        out = self.engine(**model_inputs(batch, self.device))
        self.engine.backward(out.loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        self.engine.step()  # steps (and clips) only at the accumulation boundary
        return out.loss.detach().float().cpu()

    def step_stats(self) -> dict[str, float]:
        stats = {}
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            stats["grad_norm"] = float(norm)
        if self.engine.fp16_enabled():
            scale = getattr(self.optimizer, "cur_scale", None) or getattr(self.optimizer, "loss_scale", None)
            if scale is not None:
                stats["loss_scale"] = float(scale)
        return stats

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        self.engine.eval()
        try:
            out = self.engine(**model_inputs(batch, self.device))
        finally:
            self.engine.train()
        n = label_tokens(batch)
        return float(out.loss.float()) * n, n

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        Path(directory, tag).mkdir(parents=True, exist_ok=True)  # each rank may have its own tmpdir
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state)

    def load(self, directory: str, tag: str) -> dict:
        """A checkpoint of this world size, or (``checkpoint.load_universal`` set in the DeepSpeed
        config) a universal one of any world size."""
        universal = self.engine.load_universal_checkpoint()
        # DeepSpeed 0.19's universal ZeRO-3 load copies the *first* param group's hyperparameters
        # onto every group (weight_decay 0.1 on norms too); ours come from the config: keep them.
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        path, client = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {directory}/{tag}")
        if universal:
            for group, saved in zip(self.optimizer.param_groups, groups):
                group.update(saved)
        return client or {}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Whole shape of every trainable parameter (ZeRO-3 keeps it in ``ds_shape``)."""
        return {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in self.module.named_parameters() if p.requires_grad}

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()  # collective: all ranks
        return self.module.state_dict() if self.engine.global_rank == 0 else None

    def gathered(self, params: Iterable[torch.nn.Parameter]):
        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


class TorchEngine:
    """Plain torch: DDP over the Ray Train process group, or one process (local mode)."""

    def __init__(self, model: torch.nn.Module, cfg, distributed: bool):
        self.module = model
        self.distributed = distributed
        if distributed:
            import ray.train.torch

            # An 8-bit (bitsandbytes) base was placed on its GPU by from_pretrained and cannot move.
            quantized = bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_quantized", False))
            self.model = ray.train.torch.prepare_model(
                model, move_to_device=not quantized, parallel_strategy_kwargs={"find_unused_parameters": False}
            )
            self.device = ray.train.torch.get_device()
        else:
            self.device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
            self.model = model.to(self.device)
        self.optimizer = make_optimizer(model, cfg)
        self.accum = cfg.grad_accum
        self.max_grad_norm = cfg.max_grad_norm
        self.rank = torch.distributed.get_rank() if distributed else 0
        self._micro = 0
        self._stats: dict[str, float] = {}
        precision = getattr(cfg, "precision", "fp32")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a GPU (use_gpu: true); use fp32 or bf16 on CPU")
        # fp16 autocast needs loss scaling; HF Trainer's default dynamic scaler.
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def micro_step(self, batch: dict[str, torch.Tensor], lr: float) -> torch.Tensor:
        self._micro += 1
        boundary = self._micro % self.accum == 0
        sync = contextlib.nullcontext() if boundary or not self.distributed else self.model.no_sync()
        with sync:  # all-reduce gradients only once per optimizer step
            with self._autocast():
                out = self.model(**model_inputs(batch, self.device))
            loss = out.loss / self.accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        if boundary:
            _set_lr(self.optimizer, lr)
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            trainable = [p for p in self.module.parameters() if p.requires_grad]
            # max_norm inf: the norm without clipping
            norm = torch.nn.utils.clip_grad_norm_(
                trainable, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
            )
            self._stats = {"grad_norm": float(norm)}
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self._stats["loss_scale"] = float(self.scaler.get_scale())
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return out.loss.detach().float().cpu()

    def step_stats(self) -> dict[str, float]:
        return dict(self._stats)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        self.module.eval()
        try:
            with self._autocast():
                out = self.module(**model_inputs(batch, self.device))  # not the DDP wrapper: no sync
        finally:
            self.module.train()
        n = label_tokens(batch)
        return float(out.loss.float()) * n, n

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        # Replicas are identical: rank 0 writes. Only trainable params (a LoRA checkpoint is the adapter).
        if self.rank != 0:
            return
        from safetensors.torch import save_file

        d = Path(directory, tag)
        d.mkdir(parents=True, exist_ok=True)
        save_file(self._trainable(), str(d / "trainable.safetensors"), metadata={"format": "pt"})
        torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
        if self.scaler is not None:
            torch.save(self.scaler.state_dict(), d / "scaler.pt")

    def load(self, directory: str, tag: str) -> dict:
        from safetensors.torch import load_file

        d = Path(directory, tag)
        weights = load_file(str(d / "trainable.safetensors"))
        expected = set(self._trainable())
        if set(weights) != expected:
            missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise RuntimeError(
                f"checkpoint {d} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device))
        # weights_only: plain tensors and numbers, never arbitrary pickled objects
        self.optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True))
        if self.scaler is not None and (d / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(d / "scaler.pt", map_location="cpu", weights_only=True))
        return {}

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()} if self.rank == 0 else None

    def gathered(self, params: Iterable[torch.nn.Parameter]):
        return contextlib.nullcontext()


def use_deepspeed(ds_config: dict | None, distributed: bool) -> bool:
    """DeepSpeed needs a process group; local mode (no workers) falls back to plain torch."""
    return ds_config is not None and distributed
