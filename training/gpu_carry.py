"""Build the two folders the GPU run carries (run here, where the weights and crops are).

- ``OUT/weights/facenet128.half.pt``: the published weights in float16 (large tensors;
  batch-norm statistics and small tensors float32), about 46 MB: float32 (91 MB) is over
  the 64 MiB a call may carry. The run casts them back to float32; the starting model's
  own scores in the run are those of these weights, so the comparison stays fair.
- ``OUT/crops/``: every aligned crop in one JPEG file at ``--quality`` (index.json,
  crops.bin) and ``pairs.txt``, about 47 MB at quality 90 for LFW's 7,701 crops.

Usage::

    python -m training.gpu_carry --crops CROPS --pairs ../shared/datasets/lfw/pairs.txt \
        --out .gpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from training.checkpoint import save_half_weights
from training.data import load_crops, scan_crops, write_pack
from training.inception_resnet_v1 import InceptionResnetV1

LIMIT = 60 * 2**20  # leave room under the 64 MiB a call carries, with the working tree


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops", type=Path, required=True, help="facerec prepare-dataset output")
    p.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--init", default="facenet128", help="starting weights (facenet128)")
    args = p.parse_args(argv)
    from training.run import base_weights

    state, base = base_weights(args.init)
    model = InceptionResnetV1()
    model.load_state_dict(state)
    weights = args.out / "weights"
    crops = args.out / "crops"
    for d in (weights, crops):
        if d.exists():
            shutil.rmtree(d)
    weights.mkdir(parents=True)
    save_half_weights(model, weights / "facenet128.half.pt")
    cs = load_crops(scan_crops(args.crops))
    write_pack(cs, crops, args.quality)
    shutil.copyfile(args.pairs, crops / "pairs.txt")
    sizes = {"weights": folder_size(weights), "crops": folder_size(crops)}
    report = {
        "weights": str(weights),
        "crops": str(crops),
        "bytes": sizes,
        "crop_count": len(cs),
        "base": base,
    }
    print(json.dumps(report, indent=2))
    too_big = [k for k, v in sizes.items() if v > LIMIT]
    if too_big:
        print(f"too large to carry (> {LIMIT} bytes): {too_big}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
