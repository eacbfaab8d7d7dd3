"""An entry point that reported a UserError ends, even when something it started would keep the
interpreter's teardown waiting (CI once saw calc_metrics print its error line for a damaged shard
and then hang until the 600 s timeout, in tf.data's thread teardown)."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROG = textwrap.dedent("""
    import threading
    from absl import app
    from histaug_tf.common import UserError, run_main

    def main(argv):
        # a non-daemon thread that never ends: a normal interpreter exit waits for it forever
        threading.Thread(target=threading.Event().wait).start()
        raise UserError("some/file.tfrecord: damaged shard")

    app.run(run_main(main))
""")


def test_user_error_exits_despite_a_thread_that_blocks_teardown(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, HISTAUG_XLA_CACHE="off")
    p = subprocess.run([sys.executable, "-c", PROG], capture_output=True, text=True, env=env,
                       timeout=60, cwd=str(tmp_path))
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == "error: some/file.tfrecord: damaged shard"
