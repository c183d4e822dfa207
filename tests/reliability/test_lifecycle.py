"""lib/lifecycle.py: a process the server started ends when that server is gone, whatever ended it.

(End to end, with a real server and training: tests/reliability/test_load_faults.py. There a training
whose server was killed may also die of writing to the dead server's pipe; here the child writes
nothing, so only the watch can end it.)"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from support import APP

CHILD = f"""
import sys, time
sys.path.insert(0, {str(APP)!r})
from lib import lifecycle
lifecycle.POLL_S = 0.2
lifecycle.follow_server()
time.sleep(120)
"""

SERVER = f"""
import os, subprocess, sys, time
env = dict(os.environ, LIVER_CASCADE_SERVER_PID=str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_child_outlives_nothing_but_its_server():
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(server.stdout.readline()))
        time.sleep(2)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE  # its server is there: it runs
        server.send_signal(signal.SIGKILL)  # no clean-up at all in the server
        server.wait(10)
        child.wait(timeout=10)  # psutil.TimeoutExpired if it outlives its server (exit code: not our child's)
        assert not child.is_running()
    finally:
        server.kill()
        server.wait()


def test_a_process_whose_server_is_already_gone_stops_at_once():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    env = dict(os.environ, LIVER_CASCADE_SERVER_PID=str(dead.pid))
    t0 = time.time()
    assert subprocess.run([sys.executable, "-c", CHILD], env=env, timeout=60).returncode == 3
    assert time.time() - t0 < 30


@pytest.mark.parametrize("value", [None, "own"])
def test_without_a_server_nothing_is_watched(value):
    """A training started from the command line (no variable), or the server itself (its own pid)."""
    code = (f"import os, sys, threading; sys.path.insert(0, {str(APP)!r}); "
            + ("os.environ['LIVER_CASCADE_SERVER_PID'] = str(os.getpid()); " if value else "")
            + "from lib import lifecycle; lifecycle.follow_server(); "
            "assert not [t for t in threading.enumerate() if t.name == 'follow-server']")
    env = {k: v for k, v in os.environ.items() if k != "LIVER_CASCADE_SERVER_PID"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
