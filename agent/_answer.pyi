"""Types of agent._answer (agent/_answer.c): the gate's answer path in C."""

from collections.abc import Iterable

from policies.model import Decision

BUCKETS: int
FLAGS_UNKNOWN: int  # a syscall the C side does not know (counted a write)
FLAGS_EXEC: int
FLAGS_UNREAD: int  # not read in C: Python reads /proc/TID/syscall itself
KIND_TECHNICIAN: int
KIND_ADMIN: int  # an interactive root the agreement does not name
ACCESS_STAT: int  # only a stat of the file can tell (O_CREAT, O_DIRECTORY, unknown flags)
ACCESS_READ: int
ACCESS_WRITE: int
ACCESS_EXEC: int
ACCESS_LIST: int

# mask, event fd, pid (tid), uid, loginuid, the file's path, the open flags (or FLAGS_*),
# the access (ACCESS_*), the kind (KIND_*), and the remembered decision when the C side
# has answered the event already (allowed), else None
_Slow = tuple[int, int, int, int, int | None, str | None, int, int, int, Decision | None]

class Answerer:
    def __init__(self, fd: int, slots: int = 1024) -> None: ...
    def answer(self, timeout_ms: int, /) -> tuple[int, list[_Slow]] | None: ...
    def set_identities(
        self, technician_uids: Iterable[int], principal_uids: Iterable[int], /
    ) -> None: ...
    def set_own(self, ids: Iterable[int], /) -> None: ...
    def syscall_fd(self, tid: int, /) -> int: ...
    def remember(
        self,
        uid: int,
        loginuid: int,
        access: int,
        path: str,
        generation: int,
        from_ns: int,
        until_ns: int,
        decision: Decision,
        /,
    ) -> None: ...
    def forget(self, generation: int, /) -> None: ...
    def recalled(self) -> int: ...
    def counters(self) -> tuple[int, int, int, int, int]: ...
    def histogram(self) -> list[int]: ...
    def tasks(self) -> int: ...
    def close(self) -> None: ...
