# The C half of the signal module: the same functions and constants, without
# the enum wrappers whose import costs milliseconds.  Typed as signal's.
from signal import *  # noqa: F403
from signal import default_int_handler as default_int_handler
from signal import pidfd_send_signal as pidfd_send_signal
from signal import set_wakeup_fd as set_wakeup_fd
from signal import valid_signals as valid_signals
