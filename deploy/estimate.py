"""Worker-hours and cost of an actprep job on Dataflow, from benchmark figures.

    python deploy/estimate.py --videos 10000 --seconds 10 --fps 30 \\
        --flow-pairs-per-s 500 --gpu-price 0.56

A video costs CPU time (decode, resize, JPEG, MFCC, tar) per frame and, with flow, GPU
time per frame pair (or, without a GPU, CPU time: the compiled torch TV-L1); a worker VM is
limited by whichever of its CPUs or its GPU runs out first. The defaults are the figures in
docs/BENCHMARKS.md (2-core VM, 640x360 sources) and a GPU flow rate that is a projection
(the roofline of benchmarks/flow_roofline.py for an L4-class GPU), not a measurement: measure
yours with benchmarks/gpu_check.sh on the worker's GPU and pass it; the output says which.
Prices are inputs too (the defaults are Dataflow batch list prices in us-central1 as we read
them; check yours).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    videos: int
    seconds: float
    fps: float
    flow: bool
    vggish: bool

    @property
    def frames(self) -> float:
        return self.seconds * self.fps


@dataclass(frozen=True)
class Rates:
    """Throughput per unit of hardware, from the benchmarks."""

    cpu_frames_per_core_s: float = 318.0  # rgb+mfcc job, 637 frames/s on 2 cores
    cpu_ms_per_flow_pair: float = 1.5     # two gray JPEGs and the tar members of a pair
    vggish_examples_per_core_s: float = 45.0  # torch CPU, 90/s on 2 cores
    gpu_flow_pairs_per_s: float = 84.0   # projected (L4, opencv preset); 0 = flow on the CPU
    cpu_flow_pairs_per_core_s: float = 2.24  # compiled torch TV-L1 in a flow-only run


@dataclass(frozen=True)
class Machine:
    vcpus: int = 8
    memory_gb: float = 32.0
    disk_gb: float = 100.0
    gpus: int = 1
    vcpu_price: float = 0.056      # $ per vCPU hour
    memory_price: float = 0.003557  # $ per GB hour
    disk_price: float = 0.000054   # $ per GB hour (standard persistent disk)
    gpu_price: float = 0.56        # $ per GPU hour

    def hourly(self) -> float:
        return (self.vcpus * self.vcpu_price + self.memory_gb * self.memory_price
                + self.disk_gb * self.disk_price + self.gpus * self.gpu_price)


def seconds_per_video(work: Workload, rates: Rates, machine: Machine) -> dict[str, float]:
    """Wall seconds one worker VM spends per video, by resource; the largest is the limit."""
    pairs = max(work.frames - 1, 0) if work.flow else 0
    cpu = work.frames / rates.cpu_frames_per_core_s + pairs * rates.cpu_ms_per_flow_pair / 1e3
    if work.vggish:
        cpu += work.seconds / 0.96 / rates.vggish_examples_per_core_s
    gpu = 0.0
    if pairs and machine.gpus and rates.gpu_flow_pairs_per_s:
        gpu = pairs / (rates.gpu_flow_pairs_per_s * machine.gpus)
    elif pairs:
        cpu += pairs / rates.cpu_flow_pairs_per_core_s
    return {"cpu": cpu / machine.vcpus, "gpu": gpu}


def estimate(work: Workload, rates: Rates, machine: Machine, workers: int) -> dict[str, float]:
    per_video = seconds_per_video(work, rates, machine)
    limit = max(per_video.values())
    vm_hours = work.videos * limit / 3600
    return {"bound_by": max(per_video, key=per_video.get), "vm_seconds_per_video": limit,
            "vm_hours": vm_hours, "cost": vm_hours * machine.hourly(),
            "hourly": machine.hourly(), "wall_hours": vm_hours / workers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="mean clip length")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second extracted")
    parser.add_argument("--no-flow", dest="flow", action="store_false")
    parser.add_argument("--no-vggish", dest="vggish", action="store_false")
    parser.add_argument("--flow-pairs-per-s", type=float, default=None,
                        help="measured TV-L1 pairs/s of one worker GPU (0: flow on the CPU; "
                        f"default {Rates.gpu_flow_pairs_per_s:g}, a projection)")
    parser.add_argument("--cpu-flow-pairs-per-core-s", type=float,
                        default=Rates.cpu_flow_pairs_per_core_s,
                        help="TV-L1 pairs/s per vCPU where flow runs on the CPU (default: "
                        "the compiled torch backend's, measured)")
    parser.add_argument("--cpu-frames-per-core-s", type=float,
                        default=Rates.cpu_frames_per_core_s)
    parser.add_argument("--vcpus", type=int, default=Machine.vcpus)
    parser.add_argument("--memory-gb", type=float, default=Machine.memory_gb)
    parser.add_argument("--disk-gb", type=float, default=Machine.disk_gb)
    parser.add_argument("--gpus", type=int, default=Machine.gpus)
    parser.add_argument("--gpu-price", type=float, default=Machine.gpu_price)
    parser.add_argument("--vcpu-price", type=float, default=Machine.vcpu_price)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args(argv)
    work = Workload(args.videos, args.seconds, args.fps, args.flow, args.vggish)
    projected = args.flow_pairs_per_s is None
    gpu_rate = Rates.gpu_flow_pairs_per_s if projected else args.flow_pairs_per_s
    rates = Rates(cpu_frames_per_core_s=args.cpu_frames_per_core_s,
                  gpu_flow_pairs_per_s=gpu_rate,
                  cpu_flow_pairs_per_core_s=args.cpu_flow_pairs_per_core_s)
    machine = Machine(vcpus=args.vcpus, memory_gb=args.memory_gb, disk_gb=args.disk_gb,
                      gpus=args.gpus, gpu_price=args.gpu_price, vcpu_price=args.vcpu_price)
    out = estimate(work, rates, machine, args.workers)
    print(f"{work.videos} videos of {work.seconds:g} s at {work.fps:g} fps "
          f"(flow {'on' if work.flow else 'off'}, vggish {'on' if work.vggish else 'off'}); "
          f"worker: {machine.vcpus} vCPUs, {machine.gpus} GPU(s), ${out['hourly']:.2f}/h")
    if work.flow and machine.gpus and gpu_rate:
        source = ("PROJECTED (roofline, docs/BENCHMARKS.md), not measured: pass "
                  "--flow-pairs-per-s from benchmarks/gpu_check.sh" if projected else "given")
        print(f"  GPU flow: {gpu_rate:g} pairs/s per GPU, {source}")
    elif work.flow:
        print(f"  CPU flow: {rates.cpu_flow_pairs_per_core_s:g} pairs/s per vCPU (compiled "
              f"torch TV-L1, measured on 2 cores)")
    print(f"  bound by {out['bound_by']}: {out['vm_seconds_per_video']:.2f} VM-s per video")
    print(f"  {out['vm_hours']:.1f} worker-hours, ${out['cost']:.2f}; "
          f"{out['wall_hours']:.2f} h on {args.workers} workers")


if __name__ == "__main__":
    main()
