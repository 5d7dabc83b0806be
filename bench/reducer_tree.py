"""Benchmark: the reducer as a tree of Batch tasks against one flat reducer task, through the
fake Batch service (container tasks in its sandbox) and Azurite, with the real script.

    python -m bench.reducer_tree [--runs 64] [--fan-in 8] [--nodes 4] [--shape 20,20,10]
                                 [--fan-ins 4,8,16,32]

The same runs (TOPAS dose CSVs with every statistic, runs of unequal size) are uploaded to
two containers; `batch_data_reducer.py --no-input` reduces one with REDUCER_FAN_IN above the
run count (one task) and the other as a tree, alternately, each timed from start to exit.
From the fake's task records: each task's duration, the tree's critical path and the
node-seconds. In this process: one flat merge of the same runs (the merge's own cost per
run, t), so that a task's fixed cost (start, package check, imports, output upload: o) is
its duration minus its inputs x t. The fake's "nodes" share this machine's CPUs: the tree's
parallelism is real only up to them. --fan-ins also runs the tree at other fan-ins.
Read the ratios and t and o, not the seconds.

    python -m bench.reducer_tree --project

prints the README's projection for 67 M voxels x 1,000 runs on Azure: wall time, node-hours
and the disk one node needs, by fan-in and node count, from per-run costs (the merge's, as
measured by bench/topas_merge.py) and Microsoft's documented node and storage-account
limits; every assumption is a field of Node or Runs below.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from azure.storage.blob import BlobServiceClient

from common.topas.merge import merge_runs
from tests.fake_batch import FakeBatch
from tests.support.azurite import ACCOUNT, KEY, start_azurite
from tests.support.images import build_images, remove
from tests.support.topas_runs import write_runs

BATCH_KEY = "YmVuY2htYXJrLWtleS1mb3ItdGhlLWZha2UtYmF0Y2gtc2VydmljZQ=="


def upload(service: BlobServiceClient, container: str, folders: list[Path]) -> None:
    client = service.create_container(container)
    for folder in folders:
        for path in folder.iterdir():
            client.upload_blob(f"nodes_output/{folder.name}/{path.name}", path.read_bytes())


def campaign(root: Path, sim_id: str, runs: int, fan_in: int, nodes: int, azurite_url: str,
             fake: FakeBatch) -> Path:
    (root / "sim").mkdir(parents=True)
    (root / "sim" / "run.sh").write_text("#!/bin/sh\n")
    (root / "appconfig.json").write_text(json.dumps({
        "BACKEND": "azure", "STORAGE_ACCOUNT_NAME": ACCOUNT, "STORAGE_ACCOUNT_KEY": KEY,
        "STORAGE_ACCOUNT_URL": azurite_url, "BATCH_ACCOUNT_NAME": fake.account_name,
        "BATCH_ACCOUNT_KEY": fake.account_key, "BATCH_ACCOUNT_URL": fake.url,
        "WORKER_DOCKER_IMAGE": "myregistry.azurecr.io/sim:1.0",
        "REDUCER_DOCKER_IMAGE": "python:3.12-slim"}))
    simconfig = root / "simconfig.json"
    simconfig.write_text(json.dumps({
        "SIM_ID": sim_id, "POOL_NODE_COUNT": 1, "TASK_COUNT": runs, "POOL_VM_SIZE": "STANDARD_D2S_V3",
        "LOCAL_SIM_PATH": "sim", "RUN_SCRIPT": "run.sh", "REDUCER_SCRIPT": "builtin:topas",
        "OUTPUT_FILE_PATTERNS": ["*.csv"], "TIMEOUT_MINUTES": 60, "REDUCER_FAN_IN": fan_in,
        "REDUCER_NODE_COUNT": nodes}))
    return simconfig


def reduce(simconfig: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BATCH_TOOL_POLL_SECONDS": "0.2",
           "BATCH_TOOL_HEALTH_SECONDS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "batch_data_reducer.py"), str(simconfig),
                           "--no-input"], cwd=simconfig.parent, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the reducer failed:\n{done.stderr[-3000:]}")
    return seconds


def task_times(fake: FakeBatch, job_prefix: str) -> dict[str, tuple[float, float]]:
    """(start, end) in seconds of each task of the job whose id starts with the prefix."""
    return {t.id: (t.start_time.timestamp(), t.end_time.timestamp())
            for t in fake.tasks if t.job_id.startswith(job_prefix) and t.end_time}


def describe(times: dict[str, tuple[float, float]], flat_merge_per_run: float,
             inputs: dict[str, int]) -> tuple[float, float, float]:
    """Node-seconds, the span from the first start to the last end, and the mean fixed cost
    of a task (its duration minus its inputs x the merge's cost per run)."""
    busy = sum(end - start for start, end in times.values())
    span = max(e for _, e in times.values()) - min(s for s, _ in times.values())
    fixed = sum((end - start) - inputs[i] * flat_merge_per_run for i, (start, end) in times.items())
    return busy, span, fixed / len(times)


def tree_inputs(runs: int, fan_in: int) -> dict[str, int]:
    from common.merge_tree import plan_tree
    plan = plan_tree(tuple(range(runs)), fan_in)
    if plan is None:
        return {"reducer": runs}
    return {t.task_id: len(t.runs) if t.level == 1 else len(t.children) for t in plan.tasks}


# ---------------------------------------------------------------------------- on paper


@dataclass(frozen=True)
class Node:
    """What one node and the storage account give (Microsoft's documented limits)."""

    network: float = 12.5e9 / 8  # Standard_D16s_v5: 12,500 Mb/s
    disk: float = 600e6  # its uncached premium SSD throughput, where downloads land
    egress: float = 200e9 / 8  # a GPv2 account's default egress in the listed regions
    ingress: float = 60e9 / 8  # and ingress
    start: float = 300.0  # pool allocation and node start (assumed), billed on every node


@dataclass(frozen=True)
class Runs:
    """One campaign's runs and what merging one costs."""

    name: str
    count: int
    size: float  # bytes of one run's outputs (a partial merge is as big)
    merge: float  # seconds to fold one run in, once it is on the node's disk
    fixed: float = 30.0  # seconds a task costs whatever its inputs (assumed)


def level_seconds(runs: Runs, node: Node, tasks: int, inputs: int, nodes: int) -> float:
    """One level: its tasks in waves over the nodes, each downloading its inputs, folding
    them in and uploading its output, all nodes sharing the account's limits."""
    at_once = min(nodes, tasks)
    down = min(node.network, node.disk, node.egress / at_once)
    up = min(node.network, node.ingress / at_once)
    task = runs.fixed + inputs * (runs.size / down + runs.merge) + runs.size / up
    return math.ceil(tasks / nodes) * task


def project(runs: Runs, node: Node, fan_in: int | None, nodes: int) -> tuple[float, float, float]:
    """(wall seconds, node-hours, bytes on one node's disk) of the reduction; fan_in None: one
    task merging every run."""
    from common.merge_tree import plan_tree
    plan = plan_tree(tuple(range(runs.count)), fan_in) if fan_in else None
    if plan is None:
        wall = node.start + level_seconds(runs, node, 1, runs.count, 1)
        return wall, wall / 3600, runs.count * runs.size
    used = min(nodes, plan.widest)
    wall = node.start
    widest = 0
    for level in range(1, plan.levels + 1):
        tasks = [t for t in plan.tasks if t.level == level]
        inputs = max(len(t.runs) if level == 1 else len(t.children) for t in tasks)
        widest = max(widest, inputs)
        wall += level_seconds(runs, node, len(tasks), inputs, used)
    return wall, used * wall / 3600, (widest + 1) * runs.size


def print_projection() -> None:
    voxels = 512 * 512 * 256
    node = Node()
    cases = (Runs("CSV", 1000, 6.0e9, 0.6e-6 * voxels),
             Runs("binary", 1000, 3 * 8 * voxels, 3 * 8 * voxels / node.disk + 1.0))
    for runs in cases:
        print(f"{runs.count} runs of {voxels / 1e6:.0f} M voxels, {runs.name}: "
              f"{runs.size / 1e9:.1f} GB a run, {runs.merge:.0f} s to fold one in, "
              f"{runs.fixed:.0f} s fixed per task")
        wall, hours, disk = project(runs, node, None, 1)
        print(f"  one task          : {wall / 3600:6.2f} h, {hours:6.1f} node-h, "
              f"{disk / 1e9:7.0f} GB on its disk")
        for fan_in in (8, 16, 32):
            for nodes in (1, 4, 16, 64):
                wall, hours, disk = project(runs, node, fan_in, nodes)
                print(f"  fan-in {fan_in:2d}, {nodes:2d} nodes: {wall / 3600:6.2f} h, "
                      f"{hours:6.1f} node-h, {disk / 1e9:7.0f} GB on a node's disk")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--fan-in", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--shape", default="20,20,10")
    parser.add_argument("--fan-ins", default="", help="also time the tree at these fan-ins")
    parser.add_argument("--project", action="store_true",
                        help="only print the projection for 67 M voxels x 1,000 runs on Azure")
    args = parser.parse_args(argv)
    if args.project:
        print_projection()
        return 0
    shape = tuple(int(n) for n in args.shape.split(","))
    assert len(shape) == 3

    images = build_images()
    azurite = start_azurite()
    fake = FakeBatch("benchtree", BATCH_KEY)
    fake.knobs.images = dict(images)
    fake.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
            root = Path(tmp)
            folders = write_runs(root / "runs", range(1, args.runs + 1), shape=shape)
            size = sum(p.stat().st_size for f in folders for p in f.iterdir())
            started = time.perf_counter()
            merge_runs(folders, root / "flat-here", plots=False)
            per_run = (time.perf_counter() - started) / args.runs
            print(f"{args.runs} runs of {shape[0]}x{shape[1]}x{shape[2]} voxels, "
                  f"{size / args.runs / 1e6:.2f} MB of CSV each; one merge in this process: "
                  f"{per_run * 1000:.1f} ms per run (t)")
            service = BlobServiceClient(azurite.url, credential={"account_name": ACCOUNT,
                                                                 "account_key": KEY})
            fan_ins = [args.runs] + [args.fan_in] + [int(f) for f in args.fan_ins.split(",") if f]
            results = {}
            for fan_in in fan_ins:
                sim_id = f"bench-{uuid.uuid4().hex[:8]}"
                upload(service, sim_id, folders)
                simconfig = campaign(root / sim_id, sim_id, args.runs, fan_in, args.nodes,
                                     azurite.url, fake)
                wall = reduce(simconfig)
                times = task_times(fake, sim_id)
                busy, span, fixed = describe(times, per_run, tree_inputs(args.runs, fan_in))
                results[fan_in] = (wall, busy, span)
                kind = "flat (one task)" if fan_in >= args.runs else f"tree, fan-in {fan_in}"
                print(f"{kind:>22}: {len(times)} task(s), script {wall:6.1f} s, tasks' span "
                      f"{span:6.1f} s, node-seconds {busy:6.1f}, fixed cost per task o = "
                      f"{fixed:4.1f} s")
            flat = results[args.runs]
            for fan_in in fan_ins[1:]:
                wall, busy, span = results[fan_in]
                print(f"tree at fan-in {fan_in} against flat: script {wall / flat[0]:.2f}x, "
                      f"tasks' span {span / flat[2]:.2f}x, node-seconds {busy / flat[1]:.2f}x "
                      f"({args.nodes} fake nodes on {os.cpu_count()} CPUs)")
    finally:
        fake.stop()
        azurite.stop()
        remove(images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
