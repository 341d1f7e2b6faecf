"""Deep Image Prior (Ulyanov, Vedaldi & Lempitsky 2018): a network's structure as the regularizer.

``python -m regbench.dip`` fits a randomly initialized convolutional encoder-decoder, from one fixed
noise input, to a noisy image, and measures against the clean image at every step: the network
reproduces the image's structure before it reproduces the noise, so the PSNR rises above the noisy
input's, peaks, then falls as the network fits the noise too. That curve is early stopping's case
in one picture (the peak is found here with the clean image, an oracle a real denoiser lacks).

Defaults follow the paper's denoising setup (§4, "Denoising and generic reconstruction" and its
supplementary material) where they can on a CPU budget: input depth 32 filled with U(0, 1/10)
noise, a perturbation of that input at every step, Adam, MSE loss, LeakyReLU and BatchNorm,
bilinear upsampling, 4-channel skip connections. The network is the paper's "skip" hourglass
shrunk (3 scales of 32 channels instead of 5 of 128) and the image is 64x64, so the default runs
in under a minute on 2 CPU cores and still shows the peak.

Outputs (Hydra's run folder, outputs/dip/<date>/<time> by default; ``hydra.run.dir=...``): the
PSNR per step and image snapshots in TensorBoard, clean/noisy/best/final PNGs, psnr.png, and
metrics.json with psnr/noisy, psnr/best, psnr/best_step and psnr/final.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchvision.transforms.v2 import functional as TF

from regbench.cli.compose import dip_config_dir
from regbench.config import ConfigError, check, one_line

log = logging.getLogger("regbench.dip")


@dataclass
class DipConfig:
    # An image file to denoise (any format Pillow reads); null: scikit-learn's sample image below.
    image: Optional[str] = None
    # One of sklearn.datasets.load_sample_image's files (china.jpg, flower.jpg), used when image
    # is null: a photograph that ships with scikit-learn, so the default needs no download.
    sample_image: str = "china.jpg"
    # The image is centre-cropped to a square and resized to size x size pixels (a CPU budget:
    # the paper works at full resolution).
    size: int = 64
    # Noise standard deviation on [0, 1] pixels: the paper's sigma = 25 on a 0-255 scale.
    sigma: float = 25 / 255
    # Optimization steps: long enough on the default image to pass the PSNR peak (near step 400)
    # and show the fall as the noise is fitted (about 2 dB below the peak by step 1200).
    steps: int = 1200
    # Adam's learning rate (the paper's supplementary material: 0.01 for denoising).
    lr: float = 0.01
    # Channels of every scale (the paper: 128) and number of scales (the paper: 5).
    channels: int = 32
    scales: int = 3
    # Channels of the fixed input noise z ~ U(0, 1/10) (the paper: 32).
    input_depth: int = 32
    # z is perturbed by N(0, input_noise_std^2) at every step (the paper's code: 1/30 for denoising).
    input_noise_std: float = 1 / 30
    # Image snapshots to TensorBoard every this many steps.
    snapshot_every: int = 100
    seed: int = 0
    # CPU threads; 0 = every core. One by default: at 64x64 with 32 channels a step is too small to
    # split, and on a busy machine more threads spin-wait far longer than they compute.
    num_threads: int = 1

    def __post_init__(self) -> None:
        check(self.size >= 2 ** self.scales, "size", self.size,
              f"an integer >= 2**scales = {2 ** self.scales} (every scale halves the image)")
        check(self.scales >= 1, "scales", self.scales, "an integer >= 1")
        check(self.channels >= 1 and self.input_depth >= 1, "channels", self.channels,
              "an integer >= 1 (and input_depth too)")
        check(0 <= self.sigma <= 1, "sigma", self.sigma, "a noise std in [0, 1] (pixels are in [0, 1])")
        check(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        check(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a positive number")
        check(self.input_noise_std >= 0, "input_noise_std", self.input_noise_std, "a number >= 0")
        check(self.snapshot_every >= 1, "snapshot_every", self.snapshot_every, "an integer >= 1")
        cores = os.cpu_count() or 1
        check(0 <= self.num_threads <= cores, "num_threads", self.num_threads,
              f"an integer in [0, {cores}] (0: every core)")


ConfigStore.instance().store(name="dip_schema", node=DipConfig)


# --- the image -----------------------------------------------------------------------------------
def read_image(cfg: DipConfig) -> np.ndarray:
    """H x W x 3 uint8: the given file, or scikit-learn's sample image."""
    if cfg.image is None:
        from sklearn.datasets import load_sample_image

        try:
            return load_sample_image(cfg.sample_image)
        except AttributeError:  # scikit-learn's message for an unknown name
            raise ConfigError(f"sample_image={cfg.sample_image!r} is not allowed: choose china.jpg "
                              f"or flower.jpg (scikit-learn's sample images)") from None
    # The image folders' reader: every mode to 8-bit RGB, 16-bit grayscale scaled, not clipped.
    from regbench.datasets.imagefolder import DECODE_ERRORS, load_rgb

    path = Path(cfg.image)
    if not path.is_file():
        raise ConfigError(f"image={cfg.image!r} is not allowed: no such file")
    try:
        return np.asarray(load_rgb(str(path)))
    except DECODE_ERRORS as error:
        raise ConfigError(f"image={cfg.image!r} is not allowed: not a readable image "
                          f"({one_line(error)})") from None


def clean_image(pixels: np.ndarray, size: int) -> torch.Tensor:
    """[1, 3, size, size] in [0, 1]: the largest centred square, resized (antialiased)."""
    image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)
    side = min(image.shape[1:])
    image = TF.center_crop(image, [side, side])
    image = TF.resize(image, [size, size], antialias=True)
    return (image.float() / 255).unsqueeze(0)


def add_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise, clipped to the valid range as in the paper's code."""
    return (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(0, 1)


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / MSE) (torchmetrics)."""
    return peak_signal_noise_ratio(estimate.clamp(0, 1), reference, data_range=1.0).item()


# --- the network: the paper's "skip" hourglass, shrunk -------------------------------------------
def conv_block(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    # Reflection padding as in the paper's code: no dark border for the network to learn.
    return nn.Sequential(nn.ReflectionPad2d(kernel // 2),
                         nn.Conv2d(in_channels, out_channels, kernel, stride),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True))


class Scale(nn.Module):
    """One scale: down (stride-2 conv, conv), the coarser scales, up (bilinear x2), joined with a
    4-channel skip of this scale's input, then two convs."""

    SKIP_CHANNELS = 4  # the paper's n_s = 4

    def __init__(self, in_channels: int, channels: int, inner: Optional[nn.Module]) -> None:
        super().__init__()
        self.skip = conv_block(in_channels, self.SKIP_CHANNELS, 1)
        self.down = nn.Sequential(conv_block(in_channels, channels, 3, stride=2),
                                  conv_block(channels, channels, 3))
        self.inner = inner if inner is not None else nn.Identity()
        self.up = nn.Sequential(nn.BatchNorm2d(channels + self.SKIP_CHANNELS),
                                conv_block(channels + self.SKIP_CHANNELS, channels, 3),
                                conv_block(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(self.inner(self.down(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.up(torch.cat([self.skip(x), deep], dim=1))


def hourglass(input_depth: int, channels: int, scales: int) -> nn.Module:
    inner: Optional[nn.Module] = None
    for index in reversed(range(scales)):
        inner = Scale(input_depth if index == 0 else channels, channels, inner)
    return nn.Sequential(inner, nn.Conv2d(channels, 3, 1), nn.Sigmoid())


# --- the fit ---------------------------------------------------------------------------------------
def fit(cfg: DipConfig, clean: torch.Tensor, noisy: torch.Tensor, writer: Any) -> dict[str, Any]:
    """Fit the network to ``noisy``; PSNR against ``clean`` at every step. Returns the metrics and
    the best and final outputs."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = hourglass(cfg.input_depth, cfg.channels, cfg.scales)
    z = torch.rand((1, cfg.input_depth, *clean.shape[-2:]), generator=generator) / 10
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history: list[float] = []
    best = (-math.inf, 0, clean)
    output = noisy
    for step in range(1, cfg.steps + 1):
        perturbed = z + cfg.input_noise_std * torch.randn(z.shape, generator=generator)
        output = net(perturbed)
        loss = F.mse_loss(output, noisy)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        output = output.detach()
        value = psnr(output, clean)
        history.append(value)
        writer.add_scalar("psnr/output", value, step)
        writer.add_scalar("loss/mse", loss.item(), step)
        if value > best[0]:
            best = (value, step, output)
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            writer.add_image("dip/output", output[0].clamp(0, 1), step)
    return {"history": history, "best": best, "final": output}


def psnr_figure(history: list[float], noisy_psnr: float, best_step: int):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.6), dpi=100)
    axes = figure.subplots()
    axes.plot(range(1, len(history) + 1), history, label="network output vs clean")
    axes.axhline(noisy_psnr, color="gray", linestyle="--", label="noisy input vs clean")
    axes.axvline(best_step, color="tab:red", linestyle=":", label=f"peak (step {best_step})")
    axes.set(xlabel="step", ylabel="PSNR (dB)", title="Deep Image Prior: fitting a noisy image")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    pixels = (image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path)


def denoise(cfg: DipConfig, run_dir: Path) -> dict[str, Any]:
    """The whole run: image, noise, fit, then metrics.json and the figures in ``run_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    from regbench.files import atomic_write_json
    from regbench.run.spec import METRICS_FILE

    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    started = time.perf_counter()
    clean = clean_image(read_image(cfg), cfg.size)
    noisy = add_noise(clean, cfg.sigma, torch.Generator().manual_seed(cfg.seed + 1))
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(run_dir))
    writer.add_image("dip/clean", clean[0], 0)
    writer.add_image("dip/noisy", noisy[0], 0)
    result = fit(cfg, clean, noisy, writer)
    best_psnr, best_step, best_output = result["best"]
    metrics = {
        "psnr/noisy": psnr(noisy, clean), "psnr/best": best_psnr, "psnr/best_step": best_step,
        "psnr/final": result["history"][-1], "steps": cfg.steps,
        "seconds": time.perf_counter() - started,
        "image": cfg.image or f"sklearn:{cfg.sample_image}", "size": cfg.size, "sigma": cfg.sigma,
    }
    writer.add_image("dip/best", best_output[0].clamp(0, 1), best_step)
    figure = psnr_figure(result["history"], metrics["psnr/noisy"], best_step)
    figure.savefig(run_dir / "psnr.png")
    writer.add_figure("dip/psnr", figure, cfg.steps)
    writer.close()
    for name, image in (("clean", clean), ("noisy", noisy), ("best", best_output),
                        ("final", result["final"])):
        save_png(run_dir / f"{name}.png", image)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=str(dip_config_dir()), config_name="dip")
def hydra_main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings: DipConfig = OmegaConf.to_object(cfg)
        metrics = denoise(settings, run_dir)
    except ConfigError as error:
        print(f"regbench.dip: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    print(f"PSNR: noisy {metrics['psnr/noisy']:.2f} dB, best {metrics['psnr/best']:.2f} dB at "
          f"step {metrics['psnr/best_step']}, final {metrics['psnr/final']:.2f} dB after "
          f"{metrics['steps']} steps in {metrics['seconds']:.1f} s\n"
          f"run folder:   {run_dir}\n"
          f"see curves:   tensorboard --logdir {run_dir}")
    return metrics["psnr/best"]


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
