"""``python -m histaug_tf.train_gan`` with a step log, for tests/test_resume_real_stack.py.

Runs train_gan's entry point unchanged (flags, input pipeline, checkpointing, exit status). The
only addition: before and after every ``Trainer.train_step`` one line is appended (and flushed)
to ``$HISTAUG_PROGRESS_LOG.<worker index>``: ``start <step>`` / ``done <step>``, where <step> is
the trainer's step counter. The test watches this file to SIGKILL a run while a chosen step is
running, i.e. inside a tick, with steps done since the last checkpoint that a resume must redo.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from histaug_tf.gan import trainer as _trainer  # noqa: E402

_orig_step = _trainer.Trainer.train_step


def _logged_train_step(self):
    path = f"{os.environ['HISTAUG_PROGRESS_LOG']}.{self.worker_index}"
    step = int(self.step_var.numpy())
    with open(path, "a") as f:
        f.write(f"start {step}\n")
    _orig_step(self)
    with open(path, "a") as f:
        f.write(f"done {step}\n")


_trainer.Trainer.train_step = _logged_train_step

if __name__ == "__main__":
    from histaug_tf import train_gan
    train_gan.run()
