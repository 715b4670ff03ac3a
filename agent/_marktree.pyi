"""Types of agent._marktree (agent/_marktree.c): marking a directory tree for the gate."""

def mark_tree(
    perm_fd: int,
    notif_fd: int,
    root: str,
    perm_mask: int,
    notif_mask: int,
    skip_root: bool = False,
    max_dirs: int = 5_000_000,
) -> tuple[int, int, int, int]: ...
def walk(root: str, max_dirs: int = 5_000_000, /) -> list[str]: ...
