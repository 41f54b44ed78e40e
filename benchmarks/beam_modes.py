"""Does this Beam's DirectRunner lose elements in its multi-worker modes? actprep refuses
them (``job.direct_mode_problem``) because Beam 2.77's gRPC data channel flushes its
buffers from a timer thread while elements are written into them. This runs a small
pipeline with no actprep code (records -> Reshuffle -> a ParDo -> GroupByKey -> counts)
several times per mode, each in its own process, and counts the runs that came out right.
Run it after upgrading Beam: if every mode is right every time, the refusal can go.

    python benchmarks/beam_modes.py                  # 10 runs per mode, 30k records (~5 min)
    python benchmarks/beam_modes.py --runs 10 --modes multi_threading
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

PIPELINE = r'''
import json, sys, types, apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
n, mode, workers = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.setswitchinterval(float(sys.argv[4]))  # frequent thread switches: a rare race made common

class Tag(beam.DoFn):  # about what actprep's old processing step did per element
    def __init__(self):
        self.seen = beam.metrics.Metrics.counter("beam_modes", "records")

    def process(self, record):
        entry = types.SimpleNamespace(**record)
        self.seen.inc()
        yield entry.group, {"key": entry.key, "line": entry.line, "status": "failed",
                            "reason": entry.error}


def check(counts):
    counts = dict(counts)
    print(json.dumps({"records": sum(counts.values()), "groups": len(counts)}), flush=True)

opts = PipelineOptions([f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"])
lines = [json.dumps({"key": f"k{i:08d}", "line": i, "group": i // 100, "dataset": "kinetics",
                     "path": "/x/" + "y" * 60, "label": "abc", "label_index": 3,
                     "split": "train", "error": "video not found: no such file here at all"})
         for i in range(n)]
with beam.Pipeline(options=opts) as p:
    (p | beam.Create(lines) | beam.Map(json.loads) | beam.Reshuffle() | beam.ParDo(Tag())
       | beam.GroupByKey() | beam.MapTuple(lambda group, rows: (group, len(list(rows))))
       | beam.combiners.ToList() | beam.Map(check))
'''


def run_once(records: int, mode: str, workers: int, switch: float, timeout: float) -> str:
    """"right", "lost N", "crashed" or "timed out" for one run in a fresh process."""
    try:
        done = subprocess.run([sys.executable, "-c", PIPELINE, str(records), mode, str(workers),
                               str(switch)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timed out"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return "crashed"
    got = json.loads(lines[-1])["records"]
    return "right" if got == records else f"lost {records - got}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--modes", default="in_memory,multi_threading,multi_processing")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--switch", type=float, default=1e-5,
                        help="the pipeline's thread switch interval in seconds (Python's "
                        "default is 0.005; the default 1e-5 makes the race frequent)")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes kept "
                        "running meanwhile (default 0): the race needs the threads to be "
                        "preempted, which a loaded machine does more often")
    args = parser.parse_args()
    import apache_beam
    print(f"apache-beam {apache_beam.__version__}, {args.records} records, 2 workers, "
          f"thread switch interval {args.switch:g} s, {args.busy} busy processes")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        for mode in args.modes.split(","):
            workers = 1 if mode == "in_memory" else 2
            outcomes = [run_once(args.records, mode, workers, args.switch, args.timeout)
                        for _ in range(args.runs)]
            right = outcomes.count("right")
            print(f"{mode:<17} {right} of {args.runs} right: {', '.join(outcomes)}", flush=True)
    finally:
        for proc in busy:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
