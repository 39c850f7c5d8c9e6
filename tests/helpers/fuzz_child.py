"""Run one of jaxcam's readers over every file in a folder, in this process, under a memory cap and a time limit per
file; print one JSON line per file (flushed, so a parent that has to kill this process knows which file it was on).

    python -m tests.helpers.fuzz_child FOLDER [--memory-mib 2048] [--seconds 10]

Each subfolder of FOLDER is named after the reader its files are read with (one of `READERS`). Each line is
``{"reader", "file", "outcome", "detail", "seconds"}`` with outcome

- ``result``: the reader returned, and what it returned is valid (`VALID`);
- ``error``: it raised one of its documented errors (`DOCUMENTED`) whose message names the file;
- ``invalid``: it returned something that is not a valid result;
- ``foreign``: any other exception (a bare ``struct.error``, ``KeyError``, ``zlib.error``, a documented type whose
  message does not name the file, ...);
- ``memory``: ``MemoryError`` under the cap (the reader did not bound what it allocates);
- ``hang``: past the time limit.

The cap is ``RLIMIT_AS`` (address space), set before jaxcam is imported; the limit is ``SIGALRM`` raising a
BaseException, so a reader's ``except Exception`` (or ``except OSError``: TimeoutError is one) cannot swallow it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
import warnings


class Hang(BaseException):
  """The alarm fired."""


def _valid_arrays(result, path: str) -> str | None:
  import numpy as np

  from jaxcam import io

  if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
    return f"not a dict of names: {type(result).__name__}"
  bad = [k for k, v in result.items() if not isinstance(v, np.ndarray)]
  if bad:
    return f"{bad[0]!r} is a {type(result[bad[0]]).__name__}"
  total = sum(v.nbytes for v in result.values())
  if total > io.default_max_bytes(os.path.getsize(path)):
    return f"{total} bytes of arrays, past the default budget"
  return None


def _valid_object(result, path: str) -> str | None:
  """load_torch: any plain object; its arrays within the default budget."""
  import numpy as np

  from jaxcam import io

  total, stack, seen = 0, [result], set()
  while stack:
    obj = stack.pop()
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
      total += obj.nbytes
    elif isinstance(obj, dict):
      stack += list(obj.values())
    elif isinstance(obj, (list, tuple)):
      stack += list(obj)
  if total > io.default_max_bytes(os.path.getsize(path)):
    return f"{total} bytes of arrays, past the default budget"
  return None


def _valid_image(result, path: str) -> str | None:
  import numpy as np

  from jaxcam import io

  if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.ndim != 3 or result.shape[-1] != 3:
    return f"not uint8 (h, w, 3): {getattr(result, 'dtype', type(result).__name__)} {getattr(result, 'shape', '')}"
  if not 0 < result.shape[0] * result.shape[1] <= io.MAX_IMAGE_PIXELS:
    return f"{result.shape[0]} x {result.shape[1]} pixels"
  return None


def _readers():
  from jaxcam import io, stream

  return {
    "load_state_dict": (io.load_state_dict, _valid_arrays, (io.CheckpointError, io.UnsafeCheckpointError)),
    "load_torch": (io.load_torch, _valid_object, (io.CheckpointError, io.UnsafeCheckpointError)),
    "load_safetensors": (io.load_safetensors, _valid_arrays, (io.CheckpointError,)),
    "decode_image": (stream.decode_image, _valid_image, (ValueError, OSError)),
  }


def _selftest(path: str):
  """The harness's own check (tests/test_fuzz.py): the file's bytes say what to do."""
  what = open(path, "rb").read()
  if what == b"hang":
    while True:
      pass
  if what == b"memory":
    return bytearray(8 * 2**30)
  if what == b"foreign":
    return {}["no such key"]
  return {"w": "any result"}


READERS = ("load_state_dict", "load_torch", "load_safetensors", "decode_image", "selftest")


def _alarm(*_):
  raise Hang


def read_one(path: str, reader, valid, documented, seconds: float) -> tuple[str, str]:
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # a warning is a documented outcome (16-bit values, say), not a failure
      result = reader(path)
  except Hang:
    return "hang", f"past {seconds} s"
  except MemoryError as e:
    return "memory", f"MemoryError: {str(e)[:200]}"
  except documented as e:
    text = f"{type(e).__name__}: {e}"
    return ("error" if os.path.basename(path) in str(e) else "foreign"), text[:300]
  except Exception as e:
    return "foreign", f"{type(e).__module__}.{type(e).__name__}: {str(e)[:300]}"
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
  problem = valid(result, path)
  return ("invalid", problem) if problem else ("result", type(result).__name__)


def main(argv=None) -> None:
  p = argparse.ArgumentParser()
  p.add_argument("folder")
  p.add_argument("--memory-mib", type=int, default=2048)
  p.add_argument("--seconds", type=float, default=10.0)
  args = p.parse_args(argv)
  cap = args.memory_mib * 2**20
  resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
  signal.signal(signal.SIGALRM, _alarm)
  subs = sorted(os.listdir(args.folder))
  readers = {"selftest": (_selftest, lambda *_: None, (ValueError,))} if subs == ["selftest"] else _readers()
  for sub in subs:
    reader, valid, documented = readers[sub]
    for name in sorted(os.listdir(os.path.join(args.folder, sub))):
      t0 = time.perf_counter()
      outcome, detail = read_one(os.path.join(args.folder, sub, name), reader, valid, documented, args.seconds)
      seconds = round(time.perf_counter() - t0, 3)
      line = {"reader": sub, "file": name, "outcome": outcome, "detail": detail, "seconds": seconds}
      print(json.dumps(line), flush=True)


if __name__ == "__main__":
  sys.exit(main())
