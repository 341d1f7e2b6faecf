"""Deep Image Prior: PSNR against a hand calculation, the image handling, and the command end to
end from a temporary working directory (metrics.json, TensorBoard, Hydra's outputs/ convention)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli
from regbench.config import ConfigError
from regbench.dip import DipConfig, add_noise, clean_image, hourglass, psnr, read_image


def test_psnr_is_ten_log10_of_one_over_the_mse():
    reference = torch.zeros(1, 3, 2, 2)
    estimate = reference.clone()
    estimate[0, 0, 0, 0] = 0.5  # one of 12 pixels off by 0.5: MSE = 0.25 / 12
    assert psnr(estimate, reference) == pytest.approx(10 * math.log10(12 / 0.25), rel=1e-6)
    # Values outside [0, 1] are clipped first (a network output may overshoot).
    assert psnr(reference - 1, reference) == pytest.approx(psnr(reference, reference + 0))


def test_noise_has_the_set_sigma_and_the_image_is_a_centred_square():
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, 10:50] = 255  # the centred 40x40 square is white, the side bands black
    clean = clean_image(pixels, 20)
    assert clean.shape == (1, 3, 20, 20) and clean.min() == 1.0
    grey = torch.full((1, 3, 200, 200), 0.5)
    noisy = add_noise(grey, 0.1, torch.Generator().manual_seed(0))
    assert (noisy - grey).std().item() == pytest.approx(0.1, rel=0.02)
    # PSNR of Gaussian noise is 10 log10(1 / sigma^2) = 20 dB here (no clipping at 0.5 +- 5 sigma).
    assert psnr(noisy, grey) == pytest.approx(20.0, abs=0.1)


def test_default_image_ships_with_scikit_learn_and_a_bad_file_is_one_line(tmp_path):
    assert read_image(DipConfig()).shape[2] == 3
    with pytest.raises(ConfigError, match=r"image='.*' is not allowed: no such file"):
        read_image(DipConfig(image=str(tmp_path / "missing.png")))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ConfigError, match="not a readable image"):
        read_image(DipConfig(image=str(tmp_path / "text.png")))


def test_a_16_bit_png_is_scaled_like_the_image_folders_not_clipped_to_white(tmp_path):
    # A ramp over the whole 16-bit range: PIL's own RGB conversion makes 99.6 % of it 255.
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode == "I;16"
    pixels = read_image(DipConfig(image=str(tmp_path / "ramp.png")))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(pixels[:, :, channel], (ramp >> 8).astype(np.uint8))


def test_the_network_maps_the_noise_input_to_an_image_of_the_same_size():
    net = hourglass(input_depth=8, channels=4, scales=3)
    output = net(torch.rand(1, 8, 24, 24))
    assert output.shape == (1, 3, 24, 24) and 0 <= output.min() and output.max() <= 1


@pytest.mark.slow
def test_dip_cli_writes_metrics_tensorboard_and_pngs_from_any_image(tmp_path):
    image = tmp_path / "photo.png"
    gradient = np.linspace(0, 255, 32 * 48, dtype=np.uint8).reshape(32, 48)
    Image.fromarray(np.stack([gradient, gradient[::-1], gradient], axis=2)).save(image)
    result = run_cli([f"image={image}", "size=16", "channels=4", "steps=30", "snapshot_every=10",
                      "num_threads=1"], cwd=tmp_path, module="regbench.dip")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "dip").glob("*/*")  # Hydra's outputs/dip/<date>/<time>
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"psnr/noisy", "psnr/best", "psnr/best_step", "psnr/final"}
    assert 1 <= metrics["psnr/best_step"] <= 30
    assert metrics["psnr/best"] >= metrics["psnr/final"]
    assert f"best {metrics['psnr/best']:.2f} dB at step {metrics['psnr/best_step']}" in result.stdout
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()
    psnr_steps = [event.step for event in events.Scalars("psnr/output")]
    assert psnr_steps == list(range(1, 31))
    assert max(e.value for e in events.Scalars("psnr/output")) == pytest.approx(metrics["psnr/best"])
    assert [e.step for e in events.Images("dip/output")] == [10, 20, 30]
    assert {"dip/clean", "dip/noisy", "dip/best"} <= set(events.Tags()["images"])
    for name in ("clean", "noisy", "best", "final", "psnr"):
        assert (run_dir / f"{name}.png").is_file()
    # hydra.run.dir is honoured, and a bad value is refused in one line.
    result = run_cli(["sigma=2", "hydra.run.dir=elsewhere"], cwd=tmp_path, module="regbench.dip")
    assert result.returncode == 2
    assert result.stderr.strip() == ("regbench.dip: error: sigma=2.0 is not allowed: a noise std "
                                     "in [0, 1] (pixels are in [0, 1])")


@pytest.mark.slow
def test_dip_cli_denoises_a_16_bit_png_at_its_grey_levels(tmp_path):
    # A 16-bit ramp written by PIL: the run's clean.png must be the ramp, not a white square.
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    result = run_cli(["image=ramp16.png", "size=16", "channels=4", "steps=2", "snapshot_every=1",
                      "num_threads=1", "hydra.run.dir=run"], cwd=tmp_path, module="regbench.dip")
    assert result.returncode == 0, result.stderr
    clean = np.asarray(Image.open(tmp_path / "run" / "clean.png"))
    # 32x32 resized to 16x16 (antialiased, a filter a little wider than 2x2): about the means
    # of 2x2 blocks of ramp >> 8.
    expected = (ramp >> 8).reshape(16, 2, 16, 2).mean(axis=(1, 3))
    assert np.abs(clean[:, :, 0].astype(float) - expected).max() <= 3
    assert (clean == 255).mean() < 0.05
