"""The exit codes of every ``novaquota`` command (contract section 7), in one table.

====  =====================  ===========================================================
code  name                   meaning
====  =====================  ===========================================================
0     OK                     done
1     REJECTED               ran, but some input was rejected or the outcome is a failure
                             (a bad line in ``publish``, a token that exists, a worker
                             that is not ready, a benchmark section that failed)
2     USAGE                  bad command line: argparse errors, bad option values, a file
                             named on the command line that cannot be read or written, or
                             settings that contradict what exists (topics with another
                             partition count, a topic prefix with no topics); an ``--out``
                             file that cannot be written
3     KAFKA_UNREACHABLE      the broker at ``KAFKA_BOOTSTRAP_SERVERS`` does not answer
4     TIMEOUT                something did not happen in time: a broker that did not come
                             up in ``kafka start``, created topics that were not listed,
                             a log read that stopped delivering, a worker that did not
                             answer ``projections status``
====  =====================  ===========================================================

``code_for`` maps the exceptions that reach the command line to this table; anything it does
not know is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum

__all__ = ["ExitCode", "code_for"]


class ExitCode(enum.IntEnum):
    OK = 0
    REJECTED = 1
    USAGE = 2
    KAFKA_UNREACHABLE = 3
    TIMEOUT = 4


def code_for(exc: BaseException) -> ExitCode | None:
    """The exit code of an exception that ends a command, or None for an unexpected one.

    The modules are imported here, lazily, so that this table costs nothing to import."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
    from pydantic import ValidationError

    from novaquota.ops.kafka_local import KafkaLocalError, KafkaStartTimeout
    from novaquota.ops.topics import TopicMismatchError, TopicsNotListedError
    from novaquota.projections.log import LogReadError, LogReadTimeout

    if isinstance(exc, KafkaConnectionError):
        return ExitCode.KAFKA_UNREACHABLE
    timeouts = (KafkaTimeoutError, KafkaStartTimeout, TopicsNotListedError, LogReadTimeout)
    if isinstance(exc, (*timeouts, TimeoutError)):
        return ExitCode.TIMEOUT
    if isinstance(exc, TopicMismatchError | LogReadError | ValidationError):
        return ExitCode.USAGE
    if isinstance(exc, KafkaLocalError):  # no Java, no Maven, a port in use, a broker that died
        return ExitCode.REJECTED
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return ExitCode.USAGE  # a file or directory of the command line: --out, --plot, ...
    return None
