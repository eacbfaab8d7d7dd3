"""Where a profiled run's time went, per XLA instruction: summarise a TensorFlow profile.

    python benchmarks/bench_train.py --presets=demo --batch=32 --jit=on --threads=2 --steps=4 \\
        --profile_dir=/tmp/prof
    python benchmarks/xla_op_times.py /tmp/prof/demo_jiton [--top=30]

Reads the newest ``*.xplane.pb`` under the directory and prints one JSON object: the milliseconds
spent in each executed XLA thunk (compiled instruction: a fusion, a convolution, a dot, a copy),
summed over the profiled run and over the worker threads that ran it, grouped by kind (the name
without its number: ``transpose_copy_fusion``, ``convolution``, ...) and the ``--top`` single
instructions, and apart from them the wall time of the program frames (``program_frames_ms``: a
whole phase, under its traced function's name). Only what the profiler records is counted: on
XLA's CPU runtime most convolutions are not recorded as instructions of their own, so a program's
frame less its recorded instructions is mostly convolution time. Names are those of the optimised HLO (``XLA_FLAGS=--xla_dump_to=DIR
--xla_dump_hlo_as_text`` writes it, to look an instruction up). Thread time, not wall time: two
threads busy for 1 ms count 2 ms.
"""
import argparse
import collections
import glob
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_CALLS = ("__inference", "EagerExecute", "EagerLocalExecute", "EagerKernelExecute", "TFE_",
          "CpuExecutable")


def summarise(logdir, top=30):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not files:
        raise SystemExit(f"{logdir}: no plugins/profile/*/*.xplane.pb (not a profile directory)")
    space = xplane_pb2.XSpace()
    with open(files[-1], "rb") as fh:
        space.ParseFromString(fh.read())
    per_op = collections.Counter()
    frames = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            events = []  # (start, duration, name, is_candidate) of every non-marker event
            for ev in line.events:
                name = names.get(ev.metadata_id, "")
                if ev.duration_ps <= 0 or not name:
                    continue  # zero-length markers
                # the thunks of compiled programs; executor / Python frames are not instructions
                cand = (not ("::" in name or name.startswith(("__inference", "Eager", "TFE_")))
                        and re.match(r"^[a-z][\w\-]*(\.\d+)?$", name) is not None)
                events.append((ev.offset_ps, ev.duration_ps, name, cand))
            events.sort()
            for i, (start, dur, name, cand) in enumerate(events):
                if not cand:
                    continue
                # one that holds a function call or a program launch is a frame, not an
                # instruction: the program (or the function around it), under its name
                j, frame = i + 1, False
                while j < len(events) and events[j][0] < start + dur and not frame:
                    frame = events[j][2].startswith(_CALLS)
                    j += 1
                (frames if frame else per_op)[name] += dur / 1e9
    kinds = collections.Counter()
    for name, ms in per_op.items():
        kinds[re.sub(r"(\.\d+)+$", "", name)] += ms
    total = sum(per_op.values())
    return {"profile": files[-1], "thread_ms_total": round(total, 1),
            "program_frames_ms": {k: round(v, 1) for k, v in frames.most_common()},
            "by_kind_ms": {k: round(v, 1) for k, v in kinds.most_common()},
            "top_ms": {k: round(v, 1) for k, v in per_op.most_common(top)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    print(json.dumps(summarise(args.logdir, args.top), indent=1))


if __name__ == "__main__":
    sys.exit(main())
