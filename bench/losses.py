"""The losses time-to-quality is measured on (issue 27): what a user's run looks like, not what is cheapest.

- ``ranvgg``: ``nst-export --weights ranvgg --seed 0`` with the model's default alpha, beta, gamma. Its activations
  have a trained network's scale (README, Models), so the Gram terms dominate as they do with ImageNet weights.
- ``balanced``: ``nst-export --weights random --seed 0``, TV off, content weight 1 and the style weight chosen by
  ``balanced_style_weight``: at the photo plus a little noise, the style term's gradient is STYLE_TO_CONTENT times
  the content term's. A style-dominated loss in which the photo still counts, whatever the weights' scale.
- ``random``: ``nst-export --weights random --seed 0`` with the default alpha, beta, gamma. With He-initialised
  weights the content and style terms are tiny next to the total variation term, so this loss is TV-dominated:
  kept as a row for continuity with the earlier figures, never to judge speed or quality by.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

LOSSES = ("ranvgg", "balanced", "random")
LABELS = {"ranvgg": "ranvgg", "balanced": "balanced", "random": "random (TV-dominated)"}
EXPORTS = {"ranvgg": "ranvgg", "balanced": "random", "random": "random"}  # --weights of each loss's model
WEIGHTS_SEED = 0
STYLE_TO_CONTENT = 10.0  # the style gradient's norm over the content gradient's, at the photo plus noise
NOISE_STD = 0.02  # of the noise added to the photo: at the photo itself the content term's gradient is 0
NOISE_SEED = 0


def balanced_style_weight(
    content_grad_norm: float, unit_style_grad_norm: float, ratio: float = STYLE_TO_CONTENT
) -> float:
    """beta such that ||beta grad L_s|| = ratio ||alpha grad L_c|| with alpha = 1, given ||grad L_c|| and the
    style gradient's norm at beta = 1 (both at the same image)."""
    if content_grad_norm <= 0.0 or unit_style_grad_norm <= 0.0:
        raise ValueError("both gradients must be non-zero: measure them at the photo plus noise, not at the photo")
    return ratio * content_grad_norm / unit_style_grad_norm


def noisy(content: npt.NDArray[np.float32], std: float = NOISE_STD, seed: int = NOISE_SEED) -> npt.NDArray[np.float32]:
    """The photo plus seeded Gaussian noise, clipped to [0, 1]."""
    noise = np.random.default_rng(seed).normal(0.0, std, content.shape).astype(np.float32)
    return np.clip(content + noise, 0.0, 1.0)


def export(loss: str, directory: Path) -> Path:
    """The loss's model directory under ``directory`` (exported once, kept if there)."""
    out = directory / f"{EXPORTS[loss]}-{WEIGHTS_SEED}"
    if not (out / "loss_and_grad.onnx").exists():
        subprocess.run(
            ["nst-export", "--weights", EXPORTS[loss], "--seed", str(WEIGHTS_SEED), "--out", str(out), "--force"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
    return out


def loss_weights(loss: str, graphs: Any, content: npt.NDArray[np.float32], style: npt.NDArray[np.float32]) -> Any:
    """alpha, beta, gamma (nst.manifest.LossWeights) of ``loss`` for this photo and painting at this size."""
    from nst.manifest import LossWeights
    from nst_server.domain.targets import job_targets

    if loss != "balanced":
        return graphs.manifest.default_loss_weights
    targets = job_targets(graphs, content, [style], None)
    image = noisy(content)
    norms = []
    for weights in (LossWeights(1.0, 0.0, 0.0), LossWeights(0.0, 1.0, 0.0)):
        grad = graphs.evaluator(content.shape[2:], targets, weights)(image).grad
        norms.append(float(np.linalg.norm(grad.astype(np.float64))))
    return LossWeights(1.0, balanced_style_weight(*norms), 0.0)
