"""Run a command as this process's only child; print its peak RSS as the last line of stdout.

    python tests/_rss_run.py KILL_MB cmd arg...

The peak is ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after the child is reaped (so it
covers only that child). As a safety net for a regression on a shared machine, the child is killed
(SIGKILL) as soon as its RSS, polled every 10 ms from /proc, passes KILL_MB. Last line:
``{"rc": ..., "peak_mb": ..., "killed": ...}``.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import time


def _rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main():
    kill_mb = float(sys.argv[1])
    child = subprocess.Popen(sys.argv[2:])
    killed = False
    while child.poll() is None:
        if _rss_mb(child.pid) > kill_mb:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
            child.wait()
            break
        time.sleep(0.01)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    sys.stderr.flush()
    print(json.dumps({"rc": child.returncode, "peak_mb": round(peak_mb, 1), "killed": killed}),
          flush=True)


if __name__ == "__main__":
    main()
