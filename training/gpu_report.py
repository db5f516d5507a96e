"""Turn what the GPU run returned into the table of docs/training.md, keep its results in the
repository, and rebuild the returned fold's checkpoint for the serving-path check.

Usage (``DIR``: the run's returned files)::

    python -m training.gpu_report --returned DIR --pack .gpu/crops \
        --results perf/results/training/gpu --checkpoint runs/gpu-fold0/best.pt

then ``facerec models --from-checkpoint runs/gpu-fold0/best.pt --name ft-gpu-fold0 --lfw
../shared/datasets/lfw`` and ``facerec bench lfw --model ft-gpu-fold0 --precision fp32 ...``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from facerec.evaluation.pairs import read_pairs
from training.checkpoint import load_weights, save_checkpoint
from training.data import read_pack
from training.inception_resnet_v1 import InceptionResnetV1
from training.protocol import markdown_table
from training.splits import lfw_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--returned", type=Path, required=True, help="the GPU run's $OUT files")
    p.add_argument("--pack", type=Path, default=Path(".gpu/crops"), help="the carried crops")
    p.add_argument("--results", type=Path, default=None, help="copy metrics and plots here")
    p.add_argument("--checkpoint", type=Path, default=None, help="rebuild the fold's weights")
    args = p.parse_args(argv)
    doc = json.loads((args.returned / "metrics.json").read_text())
    print(markdown_table(doc, "fine-tuned on the GPU"))
    m = doc.get("measured", {})
    print(
        f"\n{doc.get('gpu')}: {m.get('images_per_second', 0):.0f} training images/s "
        f"(batch {doc['config']['p']} x {doc['config']['k']}), {m.get('epochs_per_fold')} epochs "
        f"per fold, {doc.get('elapsed_seconds', doc.get('seconds'))} s in all; {doc.get('path')}"
    )
    if args.results is not None:
        args.results.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "folds.png", "curves.png", "log.txt"):
            if (args.returned / name).is_file():
                shutil.copyfile(args.returned / name, args.results / name)
    parts = sorted(args.returned.glob("fold*.part0.pt"))
    if args.checkpoint is not None and parts:
        k = int(parts[0].name[len("fold") :].split(".")[0])
        fold = next(f for f in doc["folds"] if f["split"]["test_fold"] == k)
        cs = read_pack(args.pack, decode=False)
        split = lfw_split(cs, read_pairs(args.pack / "pairs.txt"), k)
        model = InceptionResnetV1()
        model.load_state_dict(load_weights(parts[0]))
        meta = {
            "base": {"model": "facenet128", "note": "float16 copy of the published weights"},
            "identities": sorted(split.train),
            "lfw": {"test_fold": k, "validation_fold": split.info["validation_fold"]},
            "config": fold["config"],
            "epoch": fold["best_epoch"],
            "split": split.info,
            "source": f"GPU run, weights returned in float16 ({parts[0].parent})",
            "gpu_metrics": {"test": {k2: v for k2, v in fold["test"].items() if k2 != "scores"}},
        }
        sha = save_checkpoint(args.checkpoint, model.eval(), meta)
        print(f"\nfold {k}'s checkpoint: {args.checkpoint} (weights {sha[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
