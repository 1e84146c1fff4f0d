"""The checked-in gRPC code in dbmazz/api/_proto matches proto/ (else: run `make proto`)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from dbmazz.api import protogen
from dbmazz.api._proto import dbmazz_pb2

# Lines naming the generator's version: they differ between grpcio-tools releases without
# the code meaning anything else.
_VERSION_LINES = re.compile(
    r"^.*(Protobuf Python Version|GRPC_GENERATED_VERSION = |_runtime_version\.Domain|"
    r"^\s+\d+,$).*$", re.MULTILINE)


def _normalized(path: Path) -> str:
    return _VERSION_LINES.sub("", path.read_text())


def test_checked_in_code_is_regenerated_identically(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    assert {p.name for p in written} == {*protogen.GENERATED, "__init__.py"}
    stale = [name for name in (*protogen.GENERATED, "__init__.py")
             if _normalized(tmp_path / name) != _normalized(protogen.OUT_DIR / name)]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit the result"


def test_descriptor_matches_the_proto_file(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    text = (tmp_path / "dbmazz_pb2.py").read_text()
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", text, re.DOTALL)
    assert match is not None
    fresh = ast.literal_eval(match.group(1))  # a bytes literal written by protoc
    assert fresh == dbmazz_pb2.DESCRIPTOR.serialized_pb, "run `make proto`"


def test_generated_grpc_module_imports_package_relative() -> None:
    text = (protogen.OUT_DIR / "dbmazz_pb2_grpc.py").read_text()
    assert "from . import dbmazz_pb2" in text
    assert "from dbmazz.v1" not in text
    spec = importlib.util.find_spec("dbmazz.api._proto.dbmazz_pb2_grpc")
    assert spec is not None
    assert dbmazz_pb2.DESCRIPTOR.name == "dbmazz/v1/dbmazz.proto"
    assert dbmazz_pb2.DESCRIPTOR.package == "dbmazz.v1"
