"""The training and scoring processes a server starts live no longer than the server.

MONAI Label 0.8.5 runs each training and scoring task as a plain child process and
never stops it when the server stops: a training kept running (and publishing models)
after its server was gone, unseen by the next server, which would then start a
second one on the same model files. Here:

- the server, once in server mode, tells its children its pid (an environment
  variable they inherit) and, at interpreter exit (Ctrl+C), before Python waits for
  the threads that wait for those children, stops the ones still running;
- a process started with that variable (the app is built again in it) exits as soon
  as that server is gone, however the server ended: uvicorn ends a server on SIGTERM
  by the signal's default action (no exit hook runs), and SIGKILL neither.
"""

import atexit
import logging
import os
import threading
import time

import psutil

logger = logging.getLogger(__name__)

SERVER_PID_ENV = "LIVER_CASCADE_SERVER_PID"
POLL_S = 1.0


def bind_children_to_server() -> None:
    """In the server process: its children learn its pid, and are stopped when it exits."""
    os.environ[SERVER_PID_ENV] = str(os.getpid())
    # threading's exit hooks run before non-daemon threads are joined (MONAI Label's task threads wait
    # for their process: with atexit the server would wait for a training to finish before exiting)
    register = getattr(threading, "_register_atexit", None) or atexit.register
    register(stop_background_processes)


def stop_background_processes() -> int:
    """Stop the server's task processes still running, as ``DELETE /train/`` does (MONAI Label's
    ``stop_background_task``: the process and its children killed, the task marked STOPPED); returns how many."""
    from monailabel.utils.async_tasks.utils import background_processes, stop_background_task

    stopped = 0
    for method, processes in list(background_processes.items()):
        while processes:  # stop_background_task stops the first one and drops it from ``processes``
            task_id, proc = next(iter(processes.items()))
            if proc.poll() is not None:  # ended: its thread drops it
                processes.pop(task_id, None)
                continue
            logger.warning(f"server stopping: stopping its {method} process {proc.pid}")
            try:
                stop_background_task(method)
            except (psutil.Error, IndexError):  # it ended meanwhile
                pass
            processes.pop(task_id, None)  # done by stop_background_task, unless it returned early
            stopped += 1
    return stopped


def follow_server() -> None:
    """In a process a server started: exit once that server is gone (checked every ``POLL_S``)."""
    pid = os.environ.get(SERVER_PID_ENV)
    if not pid or pid == str(os.getpid()):
        return
    try:
        server = psutil.Process(int(pid))
    except (ValueError, psutil.Error):
        server = None

    def gone() -> bool:
        try:
            return server is None or not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def watch():
        while not gone():
            time.sleep(POLL_S)
        logger.error(f"the server (pid {pid}) that started this process is gone: stopping")
        logging.shutdown()
        os._exit(3)

    if gone():
        watch()
    threading.Thread(target=watch, name="follow-server", daemon=True).start()
