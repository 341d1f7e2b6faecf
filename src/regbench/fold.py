"""Fold every BatchNorm layer into the conv/linear layer before it, for inference.

``python -m regbench.fold <run folder>`` loads the run's ``last.pt``, folds each conv/linear -> BN
pair, checks on the run's test split that the folded model gives the same logits, saves the folded
weights as ``folded.pt`` next to the checkpoint and prints the inference speedup it measured.

In eval mode a BatchNorm layer is an affine map per channel, y = gamma (x - mu) / sqrt(var + eps)
+ beta, so it can be absorbed into the preceding layer's weight and bias (Ioffe & Szegedy 2015,
and every inference engine since). The math is PyTorch's own: ``fuse_conv_bn_eval`` and
``fuse_linear_bn_eval`` from torch.nn.utils.fusion. The pairs are found as torch.fx's
``fuse`` (torch.fx.experimental.optimization) finds them: a BN node whose input is a conv/linear
node used by nothing else. Unlike ``fuse``, which returns a flat GraphModule, the folded layers
are put back into the model's own module tree and each BN becomes an ``nn.Identity``: the folded
model keeps its class (``forward_features``/``forward_head``) and its state-dict keys, so
``folded.pt`` is a plain state dict that loads with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from regbench.config import ConfigError, one_line
from regbench.run.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from regbench.run.folder import RunFolder
from regbench.run.spec import (
    CHECKPOINT_FILE,
    FOLDED_FILE,
    HYDRA_HYDRA_FILE,
    HYDRA_OVERRIDES_FILE,
    HYDRA_SUBDIR,
    RunSpec,
)

# fp32 folding reorders a handful of multiply-adds; the logits must agree to this.
TOLERANCE = 1e-4
# torch.fx.experimental.optimization.fuse's patterns: which layer a BN of each kind can fold into.
FOLDABLE = {nn.BatchNorm1d: (nn.Linear, nn.Conv1d), nn.BatchNorm2d: (nn.Conv2d,),
            nn.BatchNorm3d: (nn.Conv3d,)}
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = tuple(FOLDABLE)


class PairTracer(fx.Tracer):
    """Traces into a module only where a foldable pair may hide: a module with no conv, linear or
    BN layer inside (a dropout variant, a shortcut) is one opaque call, so its Python (random
    masks, branches on self.training) never has to be traceable."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, LAYERS + NORMS):
            return True
        return not any(isinstance(inner, LAYERS + NORMS) for inner in module.modules())


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BN name) for every BN that directly follows a conv/linear layer whose output
    nothing else reads, and that normalizes with running statistics in eval mode."""
    graph = PairTracer().trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], NORMS):
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) > 1:
            continue
        norm, layer = modules[node.target], modules[source.target]
        if isinstance(layer, FOLDABLE[type(norm)]) and norm.track_running_stats:
            pairs.append((source.target, node.target))
    return pairs


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold in place (the model must be in eval mode); returns the pairs that were folded."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (model.eval())")
    pairs = foldable_pairs(model)
    for layer_name, norm_name in pairs:
        layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        replace_module(model, layer_name, fuse(layer, norm))
        replace_module(model, norm_name, nn.Identity())
    return pairs


def folded_structure(model: nn.Module, pairs: Iterable[Sequence[str]]) -> None:
    """Give a freshly built model the folded layout (each layer with a bias, each folded BN an
    Identity) so that a folded state dict loads into it with strict key matching."""
    for layer_name, norm_name in pairs:
        layer = model.get_submodule(layer_name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device))
        replace_module(model, norm_name, nn.Identity())


# --- the run folder ----------------------------------------------------------------------------
def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was started with (what regbench saved in .hydra/)."""
    path = run_dir / HYDRA_SUBDIR / HYDRA_OVERRIDES_FILE
    try:
        overrides = RunFolder(run_dir).overrides()
    except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"{path} cannot be read ({one_line(error)}): fold needs the run's own "
                          f".hydra/ files as python -m regbench wrote them") from None
    if overrides is None:
        raise ConfigError(f"{run_dir} has no {HYDRA_SUBDIR}/{HYDRA_OVERRIDES_FILE}: not a run folder "
                          f"written by python -m regbench")
    return overrides


def run_config(run_dir: Path) -> DictConfig:
    """The run's configuration, composed from its overrides; a relative ``dataset.root`` (the
    default ``data``, or as given) is taken from the folder the run was started in (Hydra's
    hydra.runtime.cwd), so that fold finds the data from any working directory."""
    from regbench.cli.compose import compose_config

    try:
        cfg = compose_config(run_overrides(run_dir))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise ConfigError(f"{run_dir / HYDRA_SUBDIR / HYDRA_OVERRIDES_FILE} holds overrides this "
                          f"regbench cannot compose ({one_line(error)})") from None
    started_in = training_working_directory(run_dir)
    if started_in is not None and not Path(str(cfg.dataset.root)).is_absolute():
        cfg.dataset.root = str(started_in / str(cfg.dataset.root))
    return cfg


def training_working_directory(run_dir: Path) -> Path | None:
    """The working directory of the training command (hydra.runtime.cwd), when it was saved."""
    path = run_dir / HYDRA_SUBDIR / HYDRA_HYDRA_FILE
    try:
        cwd = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.cwd") if path.is_file() else None
    except (OSError, OmegaConfBaseException, yaml.YAMLError):
        return None  # then dataset.root stays as the run gave it
    return Path(str(cwd)) if cwd else None


def build_trained_run(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The run rebuilt from its own overrides, with the weights of its last checkpoint (refused
    when the checkpoint belongs to another configuration). Returns (engine.Run, checkpoint)."""
    # Imported here: building a run imports every model and dataset, which `--help` does not need.
    from regbench.run.engine import Run

    checkpoint_path = run_dir / CHECKPOINT_FILE
    if not checkpoint_path.is_file():
        raise ConfigError(f"{checkpoint_path} does not exist: fold needs a run trained with "
                          f"trainer.checkpoint=true")
    cfg = run_config(run_dir)
    spec = RunSpec.from_config(cfg)
    state = load_checkpoint(checkpoint_path, spec.identity, cfg.trainer.epochs)
    run = Run.build(OmegaConf.to_object(cfg))
    run.model.load_state_dict(state["model"])
    run.model.eval()
    return run, state


@torch.no_grad()
def split_logits(model: nn.Module, batches: Iterable, prepare: Callable) -> torch.Tensor:
    """fp32 logits of a whole split (no autocast: the comparison is about the fold alone)."""
    return torch.cat([model(prepare(images.to(next(model.parameters()).device)))
                      for images, _ in batches])


def interleaved_seconds(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, alternating between them so that both see the same
    machine load (other processes, frequency scaling); one untimed warm-up call each first."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return times


def paired_speedup(times: dict[str, list[float]]) -> float:
    """Median over rounds of unfolded / folded time. Each round's two passes ran back to back, so
    the ratio cancels load that changes between rounds (a shared machine), which the ratio of the
    two medians does not."""
    return statistics.median(a / b for a, b in zip(times["unfolded"], times["folded"]))


def save_folded(path: Path, model: nn.Module, pairs: list[tuple[str, str]], identity: dict,
                difference: float) -> None:
    save_checkpoint(path, {"model": model.state_dict(), "folded_pairs": [list(pair) for pair in pairs],
                           "max_logit_difference": difference}, identity)


def load_folded(run_dir: Path) -> nn.Module:
    """The folded model of a run folder, from its folded.pt (in eval mode)."""
    run, state = build_trained_run(run_dir)
    folded = read_checkpoint(run_dir / FOLDED_FILE, state["identity"],
                             remedy="run python -m regbench.fold again to write it anew")
    folded_structure(run.model, folded["folded_pairs"])
    run.model.load_state_dict(folded["model"])
    return run.model.eval()


def fold_run(run_dir: Path, repeats: int) -> dict[str, Any]:
    """Fold, check, save and time one run; returns what it printed as numbers."""
    run, state = build_trained_run(run_dir)
    # TF32 convolutions on recent GPUs differ from fp32 by ~1e-3: compare in true fp32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = run.model
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm(folded)
    if not pairs:
        raise ConfigError(f"{run_dir}: the model has no BatchNorm layer right after a conv/linear "
                          f"layer, so there is nothing to fold (train with regularizer=batchnorm "
                          f"or a ResNet)")
    reference = split_logits(model, run.data.test, run.prepare)
    logits = split_logits(folded, run.data.test, run.prepare)
    difference = (logits - reference).abs().max().item()
    agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    if difference >= TOLERANCE:
        raise RuntimeError(f"folded logits differ by {difference:.3g} >= {TOLERANCE:g}; not saved")
    save_folded(run_dir / FOLDED_FILE, folded, pairs, state["identity"], difference)
    # One batch of the test split, as a deployed model sees it.
    images = run.prepare(next(iter(run.data.test))[0].to(run.device))
    times = interleaved_seconds({"unfolded": no_grad(model, images),
                                 "folded": no_grad(folded, images)}, repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"pairs": pairs, "max_logit_difference": difference, "same_prediction": agree,
            "test_examples": len(reference), "batch_size": len(images), "repeats": repeats,
            "seconds": medians, "speedup": paired_speedup(times)}


def no_grad(model: nn.Module, inputs: torch.Tensor) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with torch.no_grad():
            output = model(inputs)
        if output.device.type == "cuda":
            torch.cuda.synchronize()
        return output
    return forward


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m regbench.fold", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder holding last.pt")
    parser.add_argument("--repeats", type=int, default=21,
                        help="timed forward passes of each model, interleaved (default 21)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = fold_run(args.run_dir, args.repeats)
    except ConfigError as error:
        print(f"regbench.fold: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    unfolded, folded = (result["seconds"][name] * 1e3 for name in ("unfolded", "folded"))
    print(f"folded {len(result['pairs'])} conv/linear -> BatchNorm pair(s)")
    print(f"test split ({result['test_examples']} images): max |logit difference| "
          f"{result['max_logit_difference']:.3g} (fp32; below {TOLERANCE:g}), same prediction for "
          f"{result['same_prediction']:.2%}")
    print(f"inference, one batch of {result['batch_size']} (median of {result['repeats']} "
          f"interleaved): unfolded {unfolded:.3f} ms, folded {folded:.3f} ms; speedup "
          f"{result['speedup']:.2f}x (median of the paired ratios)")
    print(f"saved {args.run_dir / FOLDED_FILE}")


if __name__ == "__main__":
    main()
