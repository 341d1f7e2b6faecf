"""AugMix (Hendrycks et al. 2020, "AugMix: A Simple Data Processing Method to Improve Robustness
and Uncertainty", ICLR), with its Jensen-Shannon consistency loss.

Each training image x becomes m0 * x + m1 * sum_i w_i * chain_i(x), with (m0, m1) ~ Dirichlet(alpha,
alpha) (m1 ~ Beta(alpha, alpha)), (w_1..w_width) ~ Dirichlet(alpha, ..., alpha), and chain_i a
chain of ``depth`` operations (-1: 1, 2 or 3, uniformly, per chain) drawn uniformly from the
AugMix operations, each at a magnitude bin uniform over the first ``severity`` of 10 (torchvision's
v2.AugMix; bilinear interpolation as there and in the paper's code). Every image draws its own
chains and weights (policy_ops.py says how and why); the result is a float image in [0, 1], as
the paper's code mixes floats (torchvision casts back to uint8).

The operations (``all_ops``): off by default, as the paper's code (cifar.py, ``--all-ops`` off;
augmentations.py: AutoContrast, Equalize, Posterize, Rotate, Solarize, ShearX/Y, TranslateX/Y),
because Brightness, Color, Contrast and Sharpness overlap the corruptions of CIFAR-10-C and
ImageNet-C the method is tested on; regbench measures exactly those corruptions
(evaluation.shift), so they stay out unless asked for. torchvision's v2.AugMix defaults to all 13.
Magnitudes: torchvision's bins; the paper's code draws levels uniform on [0.1, severity] of 10 and
so reaches 0.3 of each range at severity 3 where the bins reach 2/9.

The consistency loss (``jsd``, the paper's Jensen-Shannon consistency loss as its cifar.py
computes it): the batch becomes (clean, aug1, aug2), 3B images with 3B labels, passed through the
model together (BatchNorm sees all three, as in the paper's code); the loss is the cross-entropy
of the clean third plus ``jsd_weight`` (12) times JS(p_clean, p_aug1, p_aug2) = mean_i KL(p_i ||
M), M the mean of the three (clamped to [1e-7, 1] as there), logged as train/loss_augmix and
train/loss_augmix_jsd. So with ``jsd`` AugMix owns the base loss: focal_loss and logit_norm cannot
be combined with it (build_regularizers refuses two owners; it asks the class, so today it also
refuses them with ``jsd=false``). train/acc is measured over all 3B images the optimizer saw. With
``jsd=false`` each image is replaced by its one AugMix image and the loss is the engine's plain
cross-entropy (train/loss_ce).

Order with the other regularizers: after ``augmentation`` (crop/flip), so the three views share the
crop, as in the paper's code; CutMix before it is fine (its soft targets are repeated for the
three views). mixup makes float images, which AugMix refuses; a mixup or CutMix after it would mix
the clean and augmented views of different images, so that is refused at the first step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from regbench.config import ConfigError, check
from regbench.regularizers.base import StepOutput, register_regularizer
from regbench.regularizers.mixup import to_float_images
from regbench.regularizers.policy_ops import (
    Draws,
    OperationTable,
    PolicyRegularizer,
    augmix_operations,
    random_signs,
)

log = logging.getLogger(__name__)

MAX_CHAIN_DEPTH = 3  # depth -1: 1, 2 or 3 operations per chain (the paper's code, torchvision)


@dataclass
class AugMixConfig:
    # severity 3, width 3, depth -1 (1-3), alpha 1: the paper's CIFAR settings (Hendrycks et al.
    # 2020; its cifar.py's defaults), also torchvision's v2.AugMix defaults.
    severity: int = 3
    width: int = 3
    depth: int = -1
    alpha: float = 1.0
    # The 4 operations that overlap the test corruptions stay out, as in the paper's code (above).
    all_ops: bool = False
    # The Jensen-Shannon consistency loss over (clean, aug1, aug2), weight 12 (cifar.py).
    jsd: bool = True
    jsd_weight: float = 12.0

    def __post_init__(self) -> None:
        key = "regularizer.augmix"
        check(1 <= self.severity <= 10, f"{key}.severity", self.severity,
              "an integer from 1 to 10 (magnitude bins used, of 10)")
        check(self.width >= 1, f"{key}.width", self.width, "an integer >= 1 (chains mixed)")
        check(self.depth == -1 or self.depth >= 1, f"{key}.depth", self.depth,
              "-1 (1 to 3 operations per chain, drawn) or an integer >= 1")
        check(self.alpha > 0, f"{key}.alpha", self.alpha, "a number > 0")
        check(self.jsd_weight > 0, f"{key}.jsd_weight", self.jsd_weight,
              "a number > 0 (jsd=false turns the consistency loss off)")


def augmix_draws(chains: int, depth: int, severity: int, num_choices: int) -> list[Draws]:
    """The steps of ``chains`` operation chains: each chain's depth (``depth``, or uniform on
    1..3 when -1), then per step and chain an operation uniform over ``num_choices`` (-1 once the
    chain has ended), a magnitude bin uniform over the first ``severity``, random signs."""
    if depth > 0:
        depths = torch.full((chains,), depth)
    else:
        depths = torch.randint(1, MAX_CHAIN_DEPTH + 1, (chains,))
    return [Draws(torch.where(step < depths, torch.randint(num_choices, (chains,)), -1),
                  torch.randint(severity, (chains,)), random_signs((chains,)))
            for step in range(int(depths.max()))]


def augmix_weights(batch: int, width: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (m0, m1) ~ Dirichlet(alpha, alpha) [batch, 2], the weights of the image and of
    its mixed chains, and w ~ Dirichlet(alpha * ones(width)) [batch, width] over the chains."""
    from torch.distributions import Dirichlet

    original_vs_chains = Dirichlet(torch.full((batch, 2), float(alpha))).sample()
    chains = Dirichlet(torch.full((batch, width), float(alpha))).sample()
    return original_vs_chains, chains


def mix(images: torch.Tensor, chains: torch.Tensor, original_vs_chains: torch.Tensor,
        chain_weights: torch.Tensor) -> torch.Tensor:
    """m0 * x + m1 * sum_i w_i * chain_i for float images [B, C, H, W] and their chains
    [width, B, C, H, W]; weights [B, 2] and [B, width]."""
    m = original_vs_chains.to(images.device).view(-1, 2, 1, 1, 1)
    w = chain_weights.to(images.device).t().reshape(*chains.shape[:2], 1, 1, 1)
    return m[:, 0] * images + m[:, 1] * (w * chains).sum(dim=0)


def jensen_shannon(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """JS(p_1, ..., p_k) = mean_i KL(p_i || M), M = mean_i p_i clamped to [1e-7, 1] (the paper's
    cifar.py), each KL summed over classes and averaged over the batch ([N, K] each)."""
    log_mixture = torch.stack(list(probabilities)).mean(dim=0).clamp(1e-7, 1).log()
    divergences = [F.kl_div(log_mixture, p, reduction="batchmean") for p in probabilities]
    return torch.stack(divergences).mean()


@register_regularizer("augmix", AugMixConfig)
class AugMix(PolicyRegularizer):
    owns_base_loss = True  # with jsd (the default): the clean third's cross-entropy, see above
    interpolation = "bilinear"
    # Magnitudes on 10 bins of which the first ``severity`` are used (torchvision: _PARAMETER_MAX).
    num_bins = 10

    def __init__(self, cfg: AugMixConfig) -> None:
        super().__init__(cfg)
        self.ops = augmix_operations(cfg.all_ops)
        self.owns_base_loss = cfg.jsd  # without jsd the engine's cross-entropy is the loss
        self.views = 2 if cfg.jsd else 1  # augmented views per image
        # Whether the targets that came in were soft (CutMix before AugMix): then soft targets at
        # the loss are CutMix's, else a mixing transform after AugMix made them (refused).
        self.soft_input = False

    def augmented_views(self, images: torch.Tensor, table: OperationTable) -> torch.Tensor:
        """``views`` AugMix images of each image, [views * B, C, H, W] float, view-major."""
        batch, width = len(images), self.cfg.width
        # Every chain of every view of every image is one row: row (view, chain, image).
        chains = images.repeat(self.views * width, 1, 1, 1)
        for draws in augmix_draws(len(chains), self.cfg.depth, self.cfg.severity, len(table.ops)):
            chains = table.apply(chains, draws)
        chains = to_float_images(chains).view(self.views, width, *images.shape)
        clean = to_float_images(images)
        return torch.cat([mix(clean, chains[view], *augmix_weights(batch, width, self.cfg.alpha))
                          for view in range(self.views)])

    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        self.soft_input = labels.ndim == 2
        augmented = self.augmented_views(images, self.table(images))
        if not self.cfg.jsd:
            return augmented, labels
        repeats = (3,) + (1,) * (labels.ndim - 1)
        return torch.cat([to_float_images(images), augmented]), labels.repeat(*repeats)

    def thirds(self, step: StepOutput) -> tuple[torch.Tensor, ...]:
        if step.soft_targets is not None and not self.soft_input:
            raise ConfigError("regularizer.augmix with jsd=true cannot be followed by mixup or "
                              "cutmix: they would mix the clean and augmented views of different "
                              "images; list cutmix before augmix, or set "
                              "regularizer.augmix.jsd=false")
        if len(step.logits) % 3:
            raise ConfigError(f"regularizer.augmix with jsd=true needs its (clean, aug1, aug2) "
                              f"batch at the loss, got {len(step.logits)} logits: a regularizer "
                              f"after it changed the batch; list augmix last")
        return step.logits.chunk(3)

    def base_loss(self, step: StepOutput) -> torch.Tensor:
        clean_logits = self.thirds(step)[0]
        return F.cross_entropy(clean_logits, step.targets[:len(clean_logits)])

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        if not self.cfg.jsd:
            return {}
        probabilities = [logits.softmax(dim=1) for logits in self.thirds(step)]
        return {"augmix_jsd": self.cfg.jsd_weight * jensen_shannon(probabilities)}
