"""Test-wide set-up: quiet TensorFlow, and the repository root on sys.path."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# gcsfs probes every bucket's type over gRPC/TLS unless told not to, stalling 60 s a call
# against the local emulator; it reads this when imported, so set it before any test does.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
