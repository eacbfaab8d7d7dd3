"""Every stage restarts itself under jemalloc when HISTAUG_MALLOC asks for it
(common.preload_allocator): the decision, the environment the restarted process gets, and a real
restart."""
import os
import subprocess
import sys
import textwrap

import pytest

from histaug_tf import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARGV = ["/some/python", "-m", "histaug_tf.train_gan", "--flagfile=x.flags"]


class _Exec:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def __call__(self, path, argv, env):
        self.calls.append((path, argv, env))
        if self.fail:
            raise OSError("exec format error")


def _decide(environ, find=lambda: "/opt/lib/libjemalloc.so.2", fail=False):
    ex = _Exec(fail)
    got = common.preload_allocator(argv=ARGV, environ=environ, execve=ex, find=find)
    return got, ex.calls


def test_jemalloc_restarts_with_the_library_preloaded_and_the_command_line_unchanged():
    env = {"PATH": "/bin", "LD_PRELOAD": "/other/libx.so", common.MALLOC_ENV: "jemalloc"}
    got, calls = _decide(env)
    assert got is None and len(calls) == 1
    path, argv, new_env = calls[0]
    assert path == sys.executable and argv == ARGV
    assert new_env["LD_PRELOAD"] == "/opt/lib/libjemalloc.so.2:/other/libx.so"
    assert new_env[common.MALLOC_ACTIVE_ENV] == "/opt/lib/libjemalloc.so.2"
    assert new_env["PATH"] == "/bin"
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/other/libx.so",
                   common.MALLOC_ENV: "jemalloc"}  # this process's env untouched


@pytest.mark.parametrize("value", [None, "off", "0", "glibc", "none"])
def test_off_by_default_and_when_switched_off(value):
    env = {} if value is None else {common.MALLOC_ENV: value}
    assert _decide(env) == (None, [])


def test_jemalloc_not_found_is_one_warning(capsys):
    assert _decide({common.MALLOC_ENV: "jemalloc"}, find=lambda: None) == (None, [])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"warning: {common.MALLOC_ENV}=jemalloc: no libjemalloc")


def test_a_restarted_process_does_not_restart_again():
    env = {common.MALLOC_ACTIVE_ENV: "/opt/lib/libjemalloc.so.2", common.MALLOC_ENV: "jemalloc"}
    assert _decide(env) == ("/opt/lib/libjemalloc.so.2", [])


def test_already_preloaded_by_the_user_is_kept():
    env = {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", common.MALLOC_ENV: "jemalloc"}
    got, calls = _decide(env, find=lambda: "/usr/lib/libjemalloc.so.2")
    assert got == "/usr/lib/libjemalloc.so.2" and calls == []
    assert env[common.MALLOC_ACTIVE_ENV] == "/usr/lib/libjemalloc.so.2"


def test_a_named_library_that_does_not_exist_is_one_warning(tmp_path, capsys):
    missing = tmp_path / "libnope.so"
    assert _decide({common.MALLOC_ENV: str(missing)}) == (None, [])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {common.MALLOC_ENV}={missing}: no such file; "
                   "running with glibc's allocator"]


def test_a_failed_restart_is_one_warning_and_the_run_goes_on(capsys):
    got, calls = _decide({common.MALLOC_ENV: "jemalloc"}, fail=True)
    assert got is None and len(calls) == 1
    assert "could not restart under /opt/lib/libjemalloc.so.2" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux only")
def test_a_program_read_from_stdin_is_not_restarted(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", common.MALLOC_ACTIVE_ENV)}
    env.update(PYTHONPATH=ROOT, **{common.MALLOC_ENV: _libm_path()})
    prog = "from histaug_tf import common\nprint('ran', common.preload_allocator())\n"
    p = subprocess.run([sys.executable, "-"], input=prog, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["ran", "None"], (p.stdout, p.stderr)
    assert "a program read from stdin is not restarted" in p.stderr


def test_find_looks_in_ld_library_path(tmp_path, monkeypatch):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent{os.pathsep}{tmp_path}")
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    for d in {os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")}:
        if any(os.path.isfile(os.path.join(d, n)) for n in ("libjemalloc.so.2", "libjemalloc.so")):
            pytest.skip(f"a jemalloc next to this Python ({d}) is found before LD_LIBRARY_PATH")
    assert common.find_jemalloc() == str(lib)


APP = textwrap.dedent("""
    import os, sys
    print("start", os.getpid(), flush=True)
    from absl import app
    from histaug_tf import common

    def main(argv):
        maps = open("/proc/self/maps").read()
        print("argv", " ".join(argv[1:]))
        print("preload", os.environ.get("LD_PRELOAD", ""))
        print("active", os.environ.get(common.MALLOC_ACTIVE_ENV, ""))
        print("jemalloc_mapped", "libjemalloc" in maps)

    app.run(common.run_main(main))
""")


def _run_app(tmp_path, **extra):
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", common.MALLOC_ENV, common.MALLOC_ACTIVE_ENV)}
    env.update(PYTHONPATH=ROOT, HISTAUG_XLA_CACHE="off", **extra)
    p = subprocess.run([sys.executable, str(script), "one", "two"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return dict(line.split(" ", 1) if " " in line else (line, "")
                for line in p.stdout.splitlines() if not line.startswith("start")), \
        [line for line in p.stdout.splitlines() if line.startswith("start")]


def _libm_path():
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if os.path.basename(path).startswith("libm.so"):
            return path
    pytest.skip("no libm.so mapped in this process (not glibc Linux)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux only")
def test_a_stage_restarts_itself_in_the_same_process_with_its_arguments(tmp_path):
    # a library every glibc process maps anyway stands in for the allocator
    lib = _libm_path()
    out, starts = _run_app(tmp_path, **{common.MALLOC_ENV: lib})
    assert len(starts) == 2 and starts[0] == starts[1], starts  # started twice, same pid (execve)
    assert out["argv"] == "one two"
    assert out["preload"] == lib and out["active"] == lib


@pytest.mark.skipif(common.find_jemalloc() is None,
                    reason="no libjemalloc on this machine (e.g. apt-get install libjemalloc2)")
def test_with_jemalloc_installed_a_stage_runs_under_it_when_asked(tmp_path):
    out, starts = _run_app(tmp_path, **{common.MALLOC_ENV: "jemalloc"})
    assert len(starts) == 2
    assert out["jemalloc_mapped"] == "True" and out["active"] == common.find_jemalloc()
    out, starts = _run_app(tmp_path)  # the default: glibc's malloc, no restart
    assert len(starts) == 1 and out["jemalloc_mapped"] == "False" and out["active"] == ""
