"""`spatiotemporal prepare synthetic-scannet OUT`: synthetic rooms in ScanNet v2's raw format."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write synthetic ScanNet v2 raw scenes (vh_clean_2.ply, labels.ply, segs/aggregation, splits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder: OUT/sceneXXXX_00/ and OUT/scannetv2_{train,val}.txt")
    parser.add_argument("--scenes", type=int, default=20, help="number of scenes (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument(
        "--spacing",
        "--density",
        dest="spacing",
        type=float,
        default=0.02,
        help="surface sample spacing in metres (0.02 is ScanNet-like; 0.05 makes ~20-50k-point rooms)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of scenes held out as val")
    parser.add_argument("--preview", action="store_true", help="also draw OUT/preview.png (first 3 scenes, top view)")


def run(args: argparse.Namespace) -> int:
    from spatiotemporal.data.synthetic_scannet import SceneSpec, generate_scene, save_preview, scene_name, write_dataset

    if args.scenes < 1:
        raise SystemExit("--scenes must be at least 1")
    if not 0.005 <= args.spacing <= 0.5:
        raise SystemExit("--spacing must be between 0.005 and 0.5 metres")
    splits = write_dataset(
        args.out,
        args.scenes,
        seed=args.seed,
        spec=SceneSpec(spacing=args.spacing),
        val_fraction=args.val_fraction,
        progress=True,
    )
    if args.preview:
        spec = SceneSpec(spacing=args.spacing)
        shown = [(scene_name(i), generate_scene(args.seed, i, spec)) for i in range(min(3, args.scenes))]
        print(f"preview: {save_preview(Path(args.out) / 'preview.png', shown)}")
    print(f"wrote {args.scenes} scenes to {args.out} (train {len(splits['train'])}, val {len(splits['val'])})")
    return 0
