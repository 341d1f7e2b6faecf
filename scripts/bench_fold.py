"""Inference with BatchNorm folded into the preceding layers vs the same model unfolded.

For each case (model, input size, batch) it builds the model as regbench does (random weights,
BN running statistics set to random values so the fold is not trivial), folds a copy with
regbench.fold.fold_batchnorm, checks the logits agree, then times one forward pass of each
(no_grad, eval mode), alternating unfolded / folded for --repeats rounds after one warm-up each,
and reports medians, their ratio, and the speedup: the median over rounds of unfolded / folded
time (each round's passes ran back to back, so the paired ratio cancels the load of a shared
machine better than the ratio of medians).

    python scripts/bench_fold.py [--repeats 15] [--threads 1] [--device cpu] [--out bench_fold.json]

Default cases: ResNet-20 on 32x32 CIFAR images (model=resnet) and torchvision's ResNet-18 on
224x224 ImageNet-size images and on 32x32 images (model=resnet18).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from bench import cpu_model  # scripts/bench.py: the machine's CPU name
from torch import nn

from regbench.cli.compose import compose_settings
from regbench.fold import fold_batchnorm, interleaved_seconds, no_grad, paired_speedup
from regbench.models import ModelOptions, build_model

# (label, model option, image side, batch size)
CASES = [("ResNet-20", "resnet", 32, 128), ("ResNet-18", "resnet18", 224, 16),
         ("ResNet-18", "resnet18", 32, 128)]
NUM_CLASSES = 10


def machine(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def random_statistics(model: nn.Module, generator: torch.Generator) -> None:
    """BN running statistics away from (0, 1), as after training."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def bench_case(option: str, side: int, batch: int, repeats: int, device: torch.device) -> dict:
    settings = compose_settings([f"model={option}"])
    model = build_model(settings.model, (3, side, side), NUM_CLASSES, ModelOptions())
    generator = torch.Generator().manual_seed(0)
    random_statistics(model, generator)
    model = model.to(device).eval()
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm(folded)
    inputs = torch.randn(batch, 3, side, side, generator=generator).to(device)
    with torch.no_grad():
        difference = (model(inputs) - folded(inputs)).abs().max().item()
    times = interleaved_seconds({"unfolded": no_grad(model, inputs),
                                 "folded": no_grad(folded, inputs)}, repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"model": option, "input": [3, side, side], "batch_size": batch, "folded_pairs": len(pairs),
            "max_logit_difference": difference, "seconds": times, "median_seconds": medians,
            "ratio_of_medians": medians["unfolded"] / medians["folded"],
            "speedup": paired_speedup(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, nargs="*", help="indices into the default cases")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # True fp32 on GPUs (TF32 would change the comparison, not the fold).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    chosen = [CASES[i] for i in args.cases] if args.cases else CASES
    rows = []
    print(f"{'model':<10} {'input':>9} {'batch':>5} {'pairs':>5} {'unfolded ms':>12} "
          f"{'folded ms':>10} {'ratio':>6} {'speedup':>8} {'max |diff|':>10}")
    for label, option, side, batch in chosen:
        row = {"label": label, **bench_case(option, side, batch, args.repeats, device)}
        rows.append(row)
        medians = row["median_seconds"]
        print(f"{label:<10} {f'{side}x{side}':>9} {batch:>5} {row['folded_pairs']:>5} "
              f"{medians['unfolded'] * 1e3:>12.2f} {medians['folded'] * 1e3:>10.2f} "
              f"{row['ratio_of_medians']:>6.3f} "
              f"{row['speedup']:>7.3f}x {row['max_logit_difference']:>10.2g}", flush=True)
    result = {"machine": machine(device), "repeats": args.repeats, "cases": rows}
    print(json.dumps(result["machine"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
