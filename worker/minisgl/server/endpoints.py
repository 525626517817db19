"""Where each process listens: ipc:// sockets in a per-server temporary directory; across
nodes (--nnodes > 1), torch.distributed meets at node 0's --dist-init-addr port + 1."""

from __future__ import annotations

from dataclasses import dataclass

from minisgl.utils.zmq import ipc_endpoint


@dataclass(frozen=True)
class Endpoints:
    """Every receiver binds its own endpoint; senders connect to it."""

    directory: str
    num_tokenizer: int = 0
    tp_size: int = 1
    dist_addr: tuple[str, int] | None = None  # node 0's (host, control port) when multi-node

    @property
    def frontend(self) -> str:
        return ipc_endpoint(self.directory, "frontend")

    @property
    def detokenizer(self) -> str:
        return ipc_endpoint(self.directory, "detokenizer")

    def tokenizer(self, i: int) -> str:
        return ipc_endpoint(self.directory, f"tokenizer{i}")

    def tokenizer_for(self, uid: int) -> str:
        """Where the API process sends a request (and later its abort, so the two stay ordered)."""
        if self.num_tokenizer == 0:
            return self.detokenizer  # the detokenizer tokenizes too
        return self.tokenizer(uid % self.num_tokenizer)

    @property
    def scheduler(self) -> str:
        return ipc_endpoint(self.directory, "scheduler0")

    def scheduler_rank(self, rank: int) -> str:
        """Rank 0 broadcasts each iteration's messages to rank r > 0 here."""
        return ipc_endpoint(self.directory, f"scheduler{rank}")

    @property
    def dist_init_method(self) -> str:
        if self.dist_addr is None:
            return f"file://{self.directory}/dist"
        host, port = self.dist_addr
        host = f"[{host}]" if ":" in host else host
        return f"tcp://{host}:{port + 1}"  # the control channel has `port` itself
