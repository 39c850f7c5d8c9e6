"""A FIFO (named pipe) that cannot hang a test: a reader blocked on it is released after a few seconds.

Opening a FIFO for reading blocks until a writer comes; jaxcam must refuse one before opening it. A regression
would block forever, so `fifo` starts a thread that, after `release_after` seconds, opens the write end (only
possible while a reader waits) and closes it: the reader then sees an empty file and fails. ``state["released"]``
says whether that was needed (it must stay False).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time


@contextlib.contextmanager
def fifo(path, release_after: float = 3.0):
  os.mkfifo(path)
  state = {"released": False}
  stop = threading.Event()
  start = time.monotonic()

  def release():
    while not stop.wait(0.05):
      if time.monotonic() - start < release_after:
        continue
      try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO unless a reader has it open
      except OSError:
        continue
      state["released"] = True
      os.close(fd)

  thread = threading.Thread(target=release, daemon=True)
  thread.start()
  try:
    yield state
  finally:
    stop.set()
    thread.join()
