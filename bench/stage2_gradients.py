"""What stage 2's two terms ask of each part of the network, from a stage-1 checkpoint.

    python bench/stage2_gradients.py --checkpoint runs/cc/stage1.pt --shards out --batches 4 [--eps 1]

On a few training batches of standard images (SHARDS/train, the run's own crop and scale),
in train mode as stage 2 runs, it backpropagates CE(S_t, G) and ℓ_PPA = log(ε + Σ ReLU(S_p))
(IJCV Eq. 5) separately and prints, for the encoder f_enc, F_t and F_p:

- the gradient norm of each term;
- the cosine between the two gradients (negative: lowering ℓ_PPA raises CE);
- the share of parameters whose ℓ_PPA gradient is larger in magnitude than their CE gradient:
  where it is, an optimizer that scales each parameter's step by its own gradient size (Adam)
  moves that parameter mostly to silence F_p, whatever the two norms' ratio, while SGD moves it
  by the raw sum, where the larger norm decides.

docs/experiments.md §6 has what it printed for the CamVid stage-1 weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from blendgen.shards.directory import ShardDir
from trainer import checkpoint as ckpt_io
from trainer.config import TrainConfig
from trainer.data import ShardStream
from trainer.evaluate import model_from_checkpoint
from trainer.losses import per_image_ce, phantom_activation
from trainer.transforms import normalize, train_transform

PARTS = {"f_enc": "backbone.", "F_t": "classifier.", "F_p": "phantom_classifier."}


def gradients(model, loss) -> dict[str, torch.Tensor]:
    """{part: flat gradient of ``loss``} over the trainable parameters of each part."""
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    grads = {}
    for part, prefix in PARTS.items():
        flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                for name, p in model.named_parameters() if name.startswith(prefix)]
        grads[part] = torch.cat(flat)
    return grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--eps", type=float, default=None, help="ε of ℓ_PPA; default: the run's own")
    args = ap.parse_args()
    torch.manual_seed(0)
    ckpt = ckpt_io.load(args.checkpoint)
    config = TrainConfig.from_dict({**ckpt["config"], "shards": args.shards})
    eps = config.ppa_eps if args.eps is None else args.eps
    model = model_from_checkpoint(ckpt, torch.device("cpu")).train()
    stream = ShardStream(ShardDir.open(Path(args.shards) / "train"), train_transform(config.crop, config.scale),
                         config.batch_size, shuffle=True, drop_last=True, seed=0)
    sums = {part: {"ce": [], "ppa": [], "cos": [], "ppa_wins": []} for part in PARTS}
    for b, batch in enumerate(stream):
        if b == args.batches:
            break
        out = model(normalize(batch["image"]))
        ce = per_image_ce(out["t"], batch["label"]).mean()
        ppa = phantom_activation(out["p"], eps).mean()
        g_ce, g_ppa = gradients(model, ce), gradients(model, ppa)
        print(f"batch {b}: CE {ce.item():.3f}  ℓ_PPA {ppa.item():.2f}")
        for part in PARTS:
            a, p = g_ce[part], g_ppa[part]
            sums[part]["ce"].append(a.norm().item())
            sums[part]["ppa"].append(p.norm().item())
            cos = torch.dot(a, p) / (a.norm() * p.norm()).clamp(min=1e-30)
            sums[part]["cos"].append(cos.item())
            sums[part]["ppa_wins"].append((p.abs() > a.abs()).float().mean().item())
    print(f"\nmean over {args.batches} batches of {config.batch_size} (ε = {eps:g}):")
    print(f"{'part':<6} {'|∇CE|':>9} {'|∇ℓ_PPA|':>9} {'cosine':>8} {'|∇ℓ_PPA_i| > |∇CE_i|':>22}")
    for part, s in sums.items():
        m = {k: float(np.mean(v)) for k, v in s.items()}
        print(f"{part:<6} {m['ce']:9.4f} {m['ppa']:9.4f} {m['cos']:8.3f} {100 * m['ppa_wins']:21.1f}%")


if __name__ == "__main__":
    main()
