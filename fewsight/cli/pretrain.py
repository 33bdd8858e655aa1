"""fewsight pretrain: supervised pre-training of a backbone (fewsight.training.pretrain)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fewsight.cli.common import (
    AUGMENT_HELP,
    HELP,
    config_flags,
    data_flags,
    out_of_memory,
    pick_device,
    run_options,
    settings,
)

PRETRAIN_HELP = {
    "dataset": HELP["dataset"],
    "protocol": HELP["protocol"],
    "image_size": HELP["image_size"],
    "backbone": HELP["backbone"],
    "width": HELP["width"],
    "input_norm": HELP["input_norm"],
    "drop_rate": HELP["drop_rate"] + ", ramped up from 0 over the first half (default: 0.1 for resnet12)",
    "epochs": "passes over the training images (with --resume: raise it to train longer)",
    "batch_size": "images per SGD step",
    "lr": "initial learning rate of SGD (momentum 0.9), decayed to 0 along a cosine (or see --lr-drop-epoch)",
    "lr_drop_epoch": "instead of the cosine, keep --lr for this many epochs, then a tenth of it "
    "(Meta-Baseline's classifier: 90 of 100 epochs; 0: the cosine)",
    "weight_decay": "SGD's weight decay",
    "bn_batch": "images per batch-norm batch at training: the batch is normalised in groups of this "
    "many (Meta-Baseline's classifier trains on 4 GPUs, each normalising 32 of its 128; 0: the whole batch)",
    "crop_from": "with --augment: decode the training images at this many pixels and crop --image-size from "
    "them, as torchvision's RandomResizedCrop (Meta-Baseline's code crops 80 from 84; 0: from --image-size)",
    "seed": "seed of the initialisation, the order of the images and the augmentation",
    "val_episodes": "5-way 1-shot validation episodes (nearest centroid) after every epoch",
    "log_every": "write a metrics line every this many steps (and after every epoch)",
    "checkpoint_every": "save a checkpoint every this many steps",
    "metric": "how validation and fewsight eval RUN score the backbone: nearest centroid by euclidean "
    "distance, or by cosine similarity (Meta-Baseline's Classifier-Baseline)",
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    from fewsight.training.pretrain import PretrainConfig

    parser = commands.add_parser(
        "pretrain",
        help="pre-train a backbone on all training classes (then fewsight train --init RUN)",
        description="Supervised training of a backbone and a linear head over all training classes; "
        "writes config.json, metrics.jsonl and checkpoint.pt into --out. fewsight eval RUN scores the "
        "backbone as a nearest-centroid classifier; fewsight train --init RUN starts from it.",
    )
    config_flags(parser, PretrainConfig(), PRETRAIN_HELP, unset=("image_size", "drop_rate"))
    parser.add_argument("--trainval", action="store_true", help="train on train+val classes; no validation")
    parser.add_argument("--augment", action="store_true", help=AUGMENT_HELP)
    parser.add_argument(
        "--no-jitter",
        dest="jitter",
        action="store_false",
        help="--augment without the colour jitter: crop and flip only (Meta-Baseline's classifier)",
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast (GPUs that support it; default: off, and --no-bf16 undoes an earlier --bf16)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the training step once as a CUDA graph and replay it; applies on a GPU without "
        "DropBlock (--drop-rate 0) (default: on; --no-cuda-graphs runs the step eagerly)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to create (or continue)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    data_flags(parser)


def run(args: argparse.Namespace) -> None:
    import torch

    from fewsight.training.pretrain import PretrainConfig, pretrain

    values = settings(args, PretrainConfig)
    if values["drop_rate"] is None:
        values["drop_rate"] = 0.1 if args.backbone == "resnet12" else 0.0
    config = PretrainConfig(**values)
    config.validate()
    device = pick_device(args.device)
    try:
        out = pretrain(config, args.out, device=device, **run_options(args))
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(device, "lower --batch-size") from error
    print(f"pre-trained: {out} (fewsight eval {out}; fewsight train --init {out} ...)")
