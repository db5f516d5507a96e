"""How many embedder instances, with how many threads each: measured on tritonserver.

    python -m perf.triton_instances --out perf/results/triton

For each layout (instances x ONNX Runtime threads) a CPU repository is generated with the
embedder's ``instance_group`` and ``threads`` changed, tritonserver started, and N client
threads send 1 or 8 real-sized crops per request for ``--seconds`` each; crops/s is
written to ``OUT/triton_instances.json``. Shares the machine with nothing else it starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from devkit.servers import free_port
from facerec.triton.client import TritonConnection
from facerec.triton.repository import write_repository
from facerec.triton.server import TritonServer
from perf.common import record, write_json

LAYOUTS = {"1 instance x all cores": (1, "0"), "2 instances x 1 thread": (2, "1")}
LOADS = ((1, 1), (4, 1), (1, 8), (4, 8))  # (concurrent clients, crops per request)


def _repository(root: Path, instances: int, threads: str) -> Path:
    repo = root / f"repo-{instances}-{threads}"
    write_repository("cpu", repo)
    config = repo / "embedder" / "config.pbtxt"
    text = config.read_text()
    text = text.replace("{ kind: KIND_CPU count: 1 }", f"{{ kind: KIND_CPU count: {instances} }}")
    text = text.replace(
        'key: "threads" value { string_value: "0" }',
        f'key: "threads" value {{ string_value: "{threads}" }}',
    )
    config.write_text(text)
    return repo


def _load(url: str, clients: int, batch: int, seconds: float) -> float:
    crops = np.random.default_rng(0).integers(0, 256, (batch, 160, 160, 3), dtype=np.uint8)
    TritonConnection(url).infer("embedder", {"CROPS": crops}, ("EMBEDDINGS",))  # warm-up
    done = [0] * clients
    stop = time.monotonic() + seconds

    def work(k: int) -> None:
        connection = TritonConnection(url)
        while time.monotonic() < stop:
            connection.infer("embedder", {"CROPS": crops}, ("EMBEDDINGS",))
            done[k] += batch

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("perf/results/triton"))
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    results = record(loadavg_before=os.getloadavg(), crops_per_second={})
    with tempfile.TemporaryDirectory() as tmp:
        for name, (instances, threads) in LAYOUTS.items():
            repo = _repository(Path(tmp), instances, threads)
            with (
                (Path(tmp) / "triton.log").open("wb") as log,
                TritonServer(repo, free_port(), free_port(), free_port(), log=log) as server,
            ):
                row = {}
                for clients, batch in LOADS:
                    rate = _load(server.grpc_url, clients, batch, args.seconds)
                    row[f"clients_{clients}_batch_{batch}"] = round(rate, 1)
                    print(f"{name}: {clients} clients, {batch} crops/request: {rate:.1f} crops/s")
                results["crops_per_second"][name] = row
            shutil.rmtree(repo)
    results["loadavg_after"] = os.getloadavg()
    write_json(args.out / "triton_instances.json", results)


if __name__ == "__main__":
    main()
