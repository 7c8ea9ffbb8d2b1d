"""Python stubs for proto/retina/v1/retina.proto, generated at run time with grpcio-tools.

Nothing generated is committed: the stubs are made on first use into a cache directory named
after the sha256 of the proto files, so an edited proto gets fresh stubs and an unchanged one
costs nothing. Usage:

    pb, pb_grpc = retina_proto.load()
    stub = pb_grpc.RetinaStub(channel)
"""

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
PROTO_FILES = [PROTO_ROOT / "retina" / "v1" / "retina.proto"]
CACHE = REPO / ".deps" / "python" / "gen"


def _digest() -> str:
    h = hashlib.sha256()
    for path in PROTO_FILES:
        h.update(path.relative_to(PROTO_ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _generate(out: Path) -> None:
    from grpc_tools import protoc  # only needed when the cache is cold

    # grpc_tools ships google/protobuf/*.proto (timestamp.proto is imported by ours).
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *[str(p) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(map(str, PROTO_FILES))}")


def load():
    """Returns the modules (retina_pb2, retina_pb2_grpc), generating them if needed."""
    target = CACHE / _digest()
    if not target.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        # Generate beside the target and rename: concurrent runs (tests) never see half a tree.
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=CACHE))
        try:
            _generate(tmp)
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not just another run having won the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # The generated code imports itself as `retina.v1.retina_pb2`.
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    pb = importlib.import_module("retina.v1.retina_pb2")
    pb_grpc = importlib.import_module("retina.v1.retina_pb2_grpc")
    return pb, pb_grpc
