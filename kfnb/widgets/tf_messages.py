"""TensorFlow's own log lines, told apart from what the user's code prints.

TensorFlow's C++ runtime logs through absl/glog to stderr, which a replica's log file
shares with the cell's output: ``I0000 00:00:1796302801.968727    4909
coordination_service.cc:221] Initializing CoordinationService``, the CPU-feature
banner, a ``W0000`` per epoch from tf.data. Views show them dimmed, or hide them
(`JobView`'s "TensorFlow messages" box, the terminal's text progress); the log files
keep every line, and ``job.logs()`` returns them all.
"""

from __future__ import annotations

import re

# A letter (Info, Warning, Error, Fatal), MMDD, the time (absl writes 00:00:<epoch
# seconds> before its clock is set up), the thread id, file:line].
_GLOG = r"[IWEF]\d{4} \d\d:\d\d:\d+(?:\.\d+)?\s+\d+\s+[^\s\]]+:\d+\]"
# TensorFlow before 2.16: "2024-01-31 12:00:00.123456: I tensorflow/core/...cc:113] ".
_DATED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?: [IWEF] [^\s\]]+:\d+\]"
# The lines of TensorFlow's messages that carry no prefix of their own.
_UNPREFIXED = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate "
    r"compiler flags\.",  # the CPU-feature banner's second line
    r"/job:[\w-]+/replica:\d+/task:\d+",  # tasks listed under "Example stragglers:"
    # The gRPC details under an E0000 of a collective op or the coordination service.
    r"Additional GRPC error information from remote target \S+ while calling \S+",
    r":[A-Z_]+:Error received from peer .*",
)
TENSORFLOW_MESSAGE = re.compile(rf"(?:{_GLOG}|{_DATED})|(?:{'|'.join(_UNPREFIXED)})\s*$")


def is_tensorflow_message(line: str) -> bool:
    """True for a line TensorFlow's runtime logged, not one the user's code printed."""
    return TENSORFLOW_MESSAGE.match(line) is not None
