"""Probe a committed LISTA-family checkpoint: continue its training at the last layer for a
few hundred steps and print the validation NMSE (docs/lista_accuracy.md, "LAMP").

    python benchmarks/lista_probe.py LAMP fit --lr 5e-4 --steps 300 --decay-rate 0.3
    python benchmarks/lista_probe.py LAMP fit --lr 5e-4 --steps 300 --new-layer-only
    python benchmarks/lista_probe.py LAMP adam --lr 5e-4 --steps 150 [--vectors-only]
    python benchmarks/lista_probe.py LAMP fit --lr 1e-5 --steps 600 --batch 256 --loss log \
        --depth-weight 0.1

``fit``: ``fit_layerwise(start_layer=16)`` (the best state on validation is kept, so the
result is never worse than the checkpoint); ``adam``: plain Adam on the layer-16 loss, all
layers, the validation curve printed every 25 steps (nothing kept). One thread; noiseless
problem and validation set of ``bench lista --staged`` (1000 vectors, seed 2). Nothing is
written.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from unrollsci._argtypes import float_arg, positive_int_arg
from unrollsci._io import run_command
from unrollsci.bench._lista_setup import _full_config, make_problem, sample
from unrollsci.train import fit_layerwise, layer_nmse_db, load_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="checkpoint name: benchmarks/checkpoints/<model>_snrinf.pt")
    ap.add_argument("mode", choices=["fit", "adam"])
    ap.add_argument("--lr", type=float_arg(positive=True), default=5e-4)
    ap.add_argument("--vector-lr", type=float_arg(positive=True), default=20.0)
    ap.add_argument("--steps", type=positive_int_arg, default=300)
    ap.add_argument("--batch", type=positive_int_arg, default=64)
    ap.add_argument("--decay-rate", type=float_arg(positive=True), default=1.0)
    ap.add_argument("--new-layer-only", action="store_true")
    ap.add_argument("--vectors-only", action="store_true")
    ap.add_argument("--loss", choices=["nmse", "log"], default="nmse", help="fit: the loss")
    ap.add_argument(
        "--depth-weight", type=float_arg(minimum=0), default=0.0, help="fit: fit_layerwise's"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = _full_config()
    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    val = sample(a, 1000, cfg["p"], math.inf, torch.Generator().manual_seed(cfg["seed"] + 2))
    model = load_checkpoint(f"benchmarks/checkpoints/{args.model}_snrinf.pt")
    k = model.num_layers

    def draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample(a, args.batch, cfg["p"], math.inf, g)

    def show(tag: object) -> None:
        c = layer_nmse_db(model, *val)
        worst = max(c[j] - c[j - 1] for j in range(1, k))
        print(f"{tag}: layer {k} {c[-1]:.3f} dB, largest step {worst:+.3f} dB", flush=True)

    show("checkpoint")
    t0 = time.process_time()
    if args.mode == "fit":
        fit_layerwise(
            model,
            draw,
            val,
            lr=args.lr,
            vector_lr=args.vector_lr,
            new_layer_stage=args.new_layer_only,
            lr_decays=() if args.new_layer_only else (1.0,),
            decay_rate=args.decay_rate,
            loss=args.loss,
            depth_weight=args.depth_weight,
            start_layer=k,
            val_every=25,
            patience=10**6,
            max_steps=args.steps,
            seed=5,
            log=print,
        )
        show("kept")
    else:
        vecs = [p for p in model.parameters() if p.dim() == 1]
        mats = [p for p in model.parameters() if p.dim() != 1]
        groups = [{"params": vecs, "lr": args.lr * args.vector_lr}]
        if not args.vectors_only:
            groups.append({"params": mats, "lr": args.lr})
        opt = torch.optim.Adam(groups)
        g = torch.Generator().manual_seed(5)
        for i in range(1, args.steps + 1):
            y, x = draw(g)
            _, xs = model(y, return_all=True)
            loss = (xs[-1] - x).pow(2).sum() / x.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i % 25 == 0:
                show(f"step {i}")
    print(f"cpu {time.process_time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
