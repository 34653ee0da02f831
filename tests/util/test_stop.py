"""util/stop.py: SIGINT / SIGTERM become exceptions, and one swallowed on the way is raised again at commit."""

import os
import signal

import pytest

from ddit_export.util import stop


@pytest.fixture
def handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop.install()
    yield
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])
    stop._received.clear()


@pytest.mark.parametrize("signum, kind", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, stop.Terminated)])
def test_a_signal_raises_and_is_remembered(handlers, signum, kind):
    stop.raise_if_stopped()  # nothing received yet
    with pytest.raises(kind) as caught:
        os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 0)  # a bytecode boundary for the handler to run at
    assert type(caught.value) is kind
    with pytest.raises(kind) as again:  # swallowed or not, the commit point raises it again
        stop.raise_if_stopped()
    assert type(again.value) is kind


def test_install_forgets_earlier_signals(handlers):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0)
    stop.install()
    stop.raise_if_stopped()
