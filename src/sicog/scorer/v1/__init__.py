"""Generated from proto/sicog/scorer/v1/scorer.proto; do not edit. After changing the proto, run
from the repository root:

    python -m grpc_tools.protoc -I proto --python_out=src --grpc_python_out=src --pyi_out=src proto/sicog/scorer/v1/scorer.proto

(tests/test_scorer.py fails while the committed modules differ from what this produces). The
modules carry the descriptor, so the .proto file is not needed at run time.
"""
