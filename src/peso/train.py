"""Training stage: one block of one strategy. AdamW, cosine schedule with warmup, cross-entropy on the target
tokens at temperature 0.8, the best epoch by validation loss restored at the end."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from peso.data.samples import BlockSamples
from peso.model import TokenSpace


@dataclass
class Encoded:
    """Token ids of a split's examples: prompt (history) and target tokens, one row per target."""

    prompts: list[list[int]]
    targets: np.ndarray  # (n, target_len)
    items: np.ndarray  # (n,) target item index
    users: np.ndarray  # (n,) user index in the block

    def __len__(self) -> int:
        return len(self.prompts)


def encode(samples: BlockSamples, space: TokenSpace, split: str) -> Encoded:
    ex = samples.examples(split)
    prompts = [space.prompt(samples.window(u, p)) for u, p in ex]
    items = np.array([samples.target(u, p) for u, p in ex], dtype=np.int64)
    targets = np.array([space.target(int(i)) for i in items], dtype=np.int64).reshape(len(ex), -1)
    return Encoded(prompts, targets, items, np.array([u for u, _ in ex], dtype=np.int64))


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: the last positions line up, so targets sit at fixed offsets."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = p
        mask[r, width - len(p) :] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def target_loss(
    model: torch.nn.Module, enc: Encoded, rows: np.ndarray, pad_id: int, temperature: float
) -> torch.Tensor:
    """Mean cross-entropy of the target tokens of `rows` (logits / temperature); prompts carry no loss."""
    tgt = torch.from_numpy(enc.targets[rows])
    ids, mask = left_pad([enc.prompts[r] + enc.targets[r].tolist() for r in rows], pad_id)
    n = tgt.shape[1]
    # only the positions that predict target tokens need logits: the last n + 1, minus the very last
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=n + 1)
    logits = out.logits[:, :n].float() / temperature
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, enc: Encoded, pad_id: int, temperature: float, batch_size: int
) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(enc), batch_size):
        rows = np.arange(start, min(start + batch_size, len(enc)))
        total += target_loss(model, enc, rows, pad_id, temperature).item() * len(rows)
        count += len(rows)
    return total / max(count, 1)


@dataclass
class BlockReport:
    epochs: int
    best_epoch: int
    valid_losses: list[float] = field(default_factory=list)
    train_ce: list[float] = field(default_factory=list)
    train_penalty: list[float] = field(default_factory=list)  # mean extra term per epoch (0 if none)
    targets: int = 0  # training targets seen (all epochs)
    seconds: float = 0.0

    @property
    def targets_per_second(self) -> float:
        return self.targets / self.seconds if self.seconds else 0.0


def train_block(
    model: torch.nn.Module,
    train: Encoded,
    valid: Encoded,
    *,
    pad_id: int,
    lr: float,
    epochs: int,
    batch_size: int,
    warmup_steps: int | None,
    warmup_ratio: float,
    weight_decay: float,
    temperature: float,
    grad_clip: float | None,
    seed: int,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] = lambda m: None,
    desc: str = "train",
) -> BlockReport:
    """Train the parameters that require grad; restore the epoch with the lowest validation loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2]
    no_decay = [p for n, p in named if p.ndim < 2]  # norms and biases, as Hugging Face's Trainer does
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = steps_per_epoch * epochs
    warm = warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * total)
    sched = get_cosine_schedule_with_warmup(opt, min(warm, total), total)
    rng = np.random.default_rng(seed)
    report = BlockReport(epochs=epochs, best_epoch=0)
    best_loss, best_state = math.inf, None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        ce_sum = pen_sum = 0.0
        bar = tqdm(
            range(steps_per_epoch), desc=f"{desc} epoch {epoch}/{epochs}", leave=False, mininterval=1.0
        )
        for step in bar:
            rows = order[step * batch_size : (step + 1) * batch_size]
            ce = target_loss(model, train, rows, pad_id, temperature)
            extra = extra_loss(model)
            loss = ce if extra is None else ce + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            ce_sum += ce.item()
            pen_sum += 0.0 if extra is None else extra.item()
            if step % 20 == 0:
                bar.set_postfix(ce=f"{ce.item():.3f}", prox=f"{0.0 if extra is None else extra.item():.2e}")
        report.train_ce.append(ce_sum / steps_per_epoch)
        report.train_penalty.append(pen_sum / steps_per_epoch)
        report.targets += len(train)
        vloss = evaluate_loss(model, valid, pad_id, temperature, batch_size * 2)
        report.valid_losses.append(vloss)
        if vloss < best_loss:
            best_loss, report.best_epoch = vloss, epoch
            best_state = [p.detach().clone() for p in params]
    if best_state is not None and report.best_epoch != epochs:
        with torch.no_grad():
            for p, s in zip(params, best_state, strict=True):
                p.copy_(s)
    report.seconds = time.perf_counter() - start
    model.eval()
    return report
