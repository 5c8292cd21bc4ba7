"""Training stage: one block of one strategy. AdamW, cosine schedule with warmup, cross-entropy on the target
tokens at temperature 0.8, the best epoch by validation loss restored at the end. Targets come packed
(`peso.pack`): many per forward pass, each seeing exactly its own window."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

from peso import dist
from peso.pack import IGNORE, Packed, Step, forward_targets
from peso.progress import bar as progress_bar
from peso.progress import check_finite, note
from peso.settings import TrainConfig


def packed_loss(
    model: torch.nn.Module,
    packed: Packed,
    rows: np.ndarray,
    temperature: float,
    autocast: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of the target tokens of segments `rows` (logits / temperature); prompts carry no loss."""
    step = forward_targets(model, packed, rows, autocast)
    return F.cross_entropy(step.logits.float() / temperature, step.labels, reduction=reduction)


def plan_batches(
    targets: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of segment batches holding about `batch_size` targets each: random order, sorted by length
    within pools of 50 batches (little padding, as group_by_length does), batches in random order."""
    order = rng.permutation(len(targets))
    before = np.cumsum(targets[order]) - targets[order]  # targets ahead of each segment
    pool = before // (50 * batch_size)
    order = order[np.lexsort((lengths[order], pool))]
    before = np.cumsum(targets[order]) - targets[order]
    cuts = np.flatnonzero(np.diff(before // batch_size)) + 1
    batches = np.split(order, cuts)
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, packed: Packed, temperature: float, batch_size: int, autocast: bool = False
) -> float:
    """Mean cross-entropy per target token (each process takes a shard of the segments; the sum is global)."""
    model.eval()
    order = np.argsort(packed.lengths, kind="stable")[dist.rank() :: dist.world()]
    total = 0.0
    for start in range(0, len(order), batch_size):
        total += packed_loss(
            model, packed, order[start : start + batch_size], temperature, autocast, "sum"
        ).item()
    (total,) = dist.all_sum(total)
    return total / max(int(label_counts(packed).sum()), 1)


def label_counts(packed: Packed) -> np.ndarray:
    """Target tokens carrying a loss, per segment."""
    return np.array([int((s.labels != IGNORE).sum()) for s in packed.segments], dtype=np.int64)


@dataclass
class BlockReport:
    epochs: int
    best_epoch: int
    valid_losses: list[float] = field(default_factory=list)
    train_ce: list[float] = field(default_factory=list)
    train_penalty: list[float] = field(default_factory=list)  # mean extra term per epoch (0 if none)
    targets: int = 0  # training targets seen (all epochs)
    seconds: float = 0.0
    deployed_valid_loss: float | None = None  # set by a method that changes the model after training (LSAT)

    @property
    def valid_loss(self) -> float | None:
        """The validation loss of the model the method is evaluated as: the restored epoch's, unless the
        method measured its final model again."""
        if self.deployed_valid_loss is not None:
            return self.deployed_valid_loss
        if not self.valid_losses:
            return None
        return self.valid_losses[(self.best_epoch or len(self.valid_losses)) - 1]

    @property
    def targets_per_second(self) -> float:
        return self.targets / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Schedule:
    """How one block trains: AdamW, its cosine schedule with warmup, the loss temperature, clipping."""

    lr: float
    epochs: int
    batch_size: int
    warmup_steps: int | None = None
    warmup_ratio: float = 0.01
    weight_decay: float = 0.01
    temperature: float = 0.8
    grad_clip: float | None = 1.0
    autocast: bool = False
    patience: int | None = None  # early stopping on validation loss; None: every epoch

    @classmethod
    def of(cls, tc: TrainConfig, continual: bool) -> Schedule:
        """Block 0's schedule, or a continual block's (`continual_lr_scale`, `continual_epochs`,
        `continual_patience`)."""
        return cls(
            lr=tc.lr * (tc.continual_lr_scale if continual else 1.0),
            epochs=(tc.continual_epochs or tc.epochs) if continual else tc.epochs,
            batch_size=tc.batch_size,
            warmup_steps=tc.warmup_steps,
            warmup_ratio=tc.warmup_ratio,
            weight_decay=tc.weight_decay,
            temperature=tc.temperature,
            grad_clip=tc.grad_clip,
            autocast=tc.autocast == "bf16",
            patience=(tc.continual_patience or tc.patience) if continual else tc.patience,
        )


def train_block(
    model: torch.nn.Module,
    train: Packed,
    valid: Packed,
    schedule: Schedule,
    *,
    seed: int,
    extra_loss: Callable[[torch.nn.Module, Step], torch.Tensor | None] | None = None,
    desc: str = "train",
) -> BlockReport:
    """Train the parameters that require grad; restore the epoch with the lowest validation loss.

    Across several processes (`peso.dist`) every process plans the same global batches and takes its share
    of each; the loss is the process's sum over its target tokens x world / the batch's tokens, so that DDP's
    gradient average is the mean over the global batch: the same steps as one process, up to float order."""
    lr, epochs, batch_size, temperature = (
        schedule.lr,
        schedule.epochs,
        schedule.batch_size,
        schedule.temperature,
    )
    grad_clip, autocast, weight_decay = schedule.grad_clip, schedule.autocast, schedule.weight_decay
    warmup_steps, warmup_ratio = schedule.warmup_steps, schedule.warmup_ratio
    extra_loss = extra_loss or (lambda m, s: None)
    params = [p for p in model.parameters() if p.requires_grad]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2]
    no_decay = [p for n, p in named if p.ndim < 2]  # norms and biases, as Hugging Face's Trainer does
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    rng = np.random.default_rng(seed)
    counts, lengths = train.targets, train.lengths
    plan = [
        plan_batches(counts, lengths, batch_size, rng) for _ in range(epochs)
    ]  # the schedule needs its length
    total = sum(len(p) for p in plan)
    warm = warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * total)
    sched = get_cosine_schedule_with_warmup(opt, min(warm, total), total)
    report = BlockReport(epochs=epochs, best_epoch=0)
    best_loss, best_state = math.inf, None
    tokens, world = label_counts(train), dist.world()
    wrapped = dist.wrap(model)
    fix = f"lower train.lr (this block trains at {lr:g})"
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        ce_sum = pen_sum = 0.0
        batches = plan[epoch - 1]
        bar = progress_bar(batches, f"{desc} epoch {epoch}/{epochs}")
        for step, rows in enumerate(bar):
            mine, weight = (rows, True) if world == 1 else dist.shard_rows(rows)
            step_out = forward_targets(wrapped, train, mine, autocast)
            logits = step_out.logits.float() / temperature
            if world == 1:
                ce = F.cross_entropy(logits, step_out.labels)
            else:  # this process's part of the global batch's mean
                ce = F.cross_entropy(logits, step_out.labels, reduction="sum") * (
                    weight / int(tokens[rows].sum())
                )
            extra = extra_loss(model, step_out)
            loss = ce * world if extra is None else ce * world + extra
            if world == 1:  # several processes: the gradient norm below, the same in all, says it
                check_finite(loss.item(), "the loss", desc, epoch, step + 1, fix)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            check_finite(float(norm), "the gradient norm", desc, epoch, step + 1, fix)
            opt.step()
            sched.step()
            ce_sum += ce.item()
            pen_sum += 0.0 if extra is None else extra.item()
            if step % 20 == 0 and hasattr(bar, "set_postfix"):  # this process's share x world: the batch mean
                bar.set_postfix(
                    ce=f"{ce.item() * world:.3f}", prox=f"{0.0 if extra is None else extra.item():.2e}"
                )
        ce_sum, pen_sum = dist.all_sum(ce_sum, pen_sum / world)  # per-process parts of each batch's mean
        report.train_ce.append(ce_sum / len(batches))
        report.train_penalty.append(pen_sum / len(batches))
        report.targets += int(counts.sum())
        vloss = evaluate_loss(model, valid, temperature, batch_size * 2, autocast)
        report.valid_losses.append(vloss)
        check_finite(vloss, "the validation loss", desc, epoch, len(batches), fix)
        note(
            f"{desc} epoch {epoch}/{epochs}: train ce {report.train_ce[-1]:.4f}"
            + (f", extra term {report.train_penalty[-1]:.3e}" if report.train_penalty[-1] else "")
            + f", valid loss {vloss:.4f} ({time.perf_counter() - start:.0f} s)"
        )
        if vloss < best_loss:
            best_loss, report.best_epoch = vloss, epoch
            best_state = [p.detach().clone() for p in params]
        elif schedule.patience is not None and epoch - report.best_epoch >= schedule.patience:
            note(f"{desc}: stopped after epoch {epoch}, {schedule.patience} without a lower validation loss")
            break
    report.epochs = len(report.valid_losses)
    if best_state is not None and report.best_epoch != report.epochs:
        with torch.no_grad():
            for p, s in zip(params, best_state, strict=True):
                p.copy_(s)
    dist.unwrap(wrapped)
    report.seconds = time.perf_counter() - start
    model.eval()
    return report


def validation_loss(tc: TrainConfig, valid: Packed) -> Callable[[torch.nn.Module], float]:
    """The model's loss on `valid` as it stands, measured as training measures each epoch."""
    return lambda model: evaluate_loss(model, valid, tc.temperature, tc.batch_size * 2, tc.autocast == "bf16")


def block_trainer(
    tc: TrainConfig, seed: int, t: int, label: str, on_report: Callable[[BlockReport], None] | None = None
) -> Callable[..., BlockReport]:
    """The training loop of block position t, as a strategy's `Block.train`: seeded by (seed, t), block 0's
    schedule or a continual block's, `on_report` told what it measured."""

    def train(model, data: Packed, valid: Packed, extra_loss=None, continual: bool = True) -> BlockReport:
        torch.manual_seed(seed * 1000 + t)
        report = train_block(
            model,
            data,
            valid,
            Schedule.of(tc, continual),
            seed=seed * 1000 + t,
            extra_loss=extra_loss,
            desc=f"seed {seed} method {label} block {t}",
        )
        if on_report is not None:
            on_report(report)
        return report

    return train
