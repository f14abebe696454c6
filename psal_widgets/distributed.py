"""Running ``psal stats`` and ``psal index`` on several processes with ``torchrun``.

``torchrun --nproc_per_node=N [--nnodes ...] -m psal_widgets.cli stats|index ...`` starts N
copies of the command per node and tells each its place through environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads them, joins the process group (NCCL when the ranks compute on
CUDA devices, gloo otherwise) and gives a :class:`DistContext`; without them (a plain run), or
with a world of one, it gives :data:`SINGLE` and nothing is initialised, so a plain run behaves
exactly as before.

Each rank takes a contiguous block of the dataset (:meth:`DistContext.shard`): concatenating the
ranks' results in rank order gives the dataset order. Rank 0 alone takes the output's lock and
writes what is shared; the others wait for it. An error on one rank is shared with all
(:meth:`DistContext.agree`) so that no rank waits forever for one that gave up.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

__all__ = [
    "SINGLE",
    "DistContext",
    "DistributedError",
    "init_distributed",
    "shard_range",
    "torchrun_env",
]

T = TypeVar("T")

#: How long a rank waits at a collective. Long on purpose: a rank that resumes from its
#: checkpoint may finish hours before the others and then waits for them at the merge. A rank
#: that dies does not leave the others waiting this long: torchrun stops them all.
#: ``PSAL_DIST_TIMEOUT`` (seconds) overrides it.
DEFAULT_TIMEOUT = _dt.timedelta(hours=12)


class DistributedError(ValueError):
    """Another rank of the run failed; the message names it and says why."""


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the variables torchrun sets, or None in a plain run.

    Raises
    ------
    ValueError
        The variables are set but are not integers in range.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): {err}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a process group")
    return rank, world, local


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rows ``[n·rank/W, n·(rank+1)/W)`` of ``n``: contiguous, in rank order, sizes within one.

    Parameters
    ----------
    n : int
        Rows to split.
    rank, world_size : int

    Returns
    -------
    range
        Empty when ``n < world_size`` leaves this rank nothing.
    """
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"cannot split {n} rows for rank {rank} of {world_size}")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a run: its rank, the world size, and the collectives.

    A world of one (:data:`SINGLE`) makes every collective a no-op returning this rank's own
    value, so that callers need no special case for a plain run.

    Attributes
    ----------
    rank, world_size, local_rank : int
    backend : str or None
        ``"nccl"`` or ``"gloo"``; None when no process group exists.
    device : torch.device or None
        The device this rank computes on (``cuda:LOCAL_RANK`` on a GPU node), None in a plain run
        (the command's own ``--device`` choice applies).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None
    #: A gloo group for pickled Python objects, which stay on the CPU even when the main
    #: group is NCCL (no GPU memory for per-sample tables or profiles).
    cpu_group: Any = field(default=None, repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes shared output and prints."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous block of ``n`` rows (:func:`shard_range`)."""
        return shard_range(n, self.rank, self.world_size)

    def device_for(self, requested: str | None) -> str | torch.device | None:
        """The device to load the model on: this rank's when distributed, else ``requested``."""
        return requested if self.device is None else self.device

    # -- collectives ------------------------------------------------------------------------
    def all_gather_objects(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def gather_objects(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere): for large payloads
        (per-sample profiles) that only the writer needs."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.cpu_group)
        return out

    def broadcast_object(self, obj: T | None) -> T:
        """Rank 0's ``obj`` on every rank (the others pass anything)."""
        if not self.enabled:
            return obj  # type: ignore[return-value]
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]  # type: ignore[return-value]

    def all_gather_tensor(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype on all ranks), in rank order, on the CPU.

        Goes through the main group (NCCL on GPUs), on this rank's device.
        """
        if not self.enabled:
            return [tensor.detach().cpu()]
        import torch.distributed as dist

        where = self.device if self.backend == "nccl" and self.device is not None else torch.device("cpu")
        mine = tensor.detach().to(where).contiguous()
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        return [t.cpu() for t in out]

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self.cpu_group)

    def agree(self, error: BaseException | None) -> None:
        """Share whether each rank succeeded; raise on every rank if any failed.

        Call it at the same point on every rank with the exception this rank caught (or None).

        Raises
        ------
        BaseException
            This rank's own ``error``, as it was.
        DistributedError
            Another rank failed: the message is its first line, prefixed with its rank.
        """
        if not self.enabled:
            if error is not None:
                raise error
            return
        mine = None if error is None else (str(error).strip().splitlines() or [type(error).__name__])[0]
        reports = self.all_gather_objects(mine)
        if error is not None:
            raise error
        for rank, message in enumerate(reports):
            if message is not None:
                raise DistributedError(f"rank {rank} of {self.world_size} failed: {message}")

    def run_everywhere(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank, then :meth:`agree` on how it went; returns this rank's value."""
        error: BaseException | None = None
        value: Any = None
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = err
        self.agree(error)
        return value

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; its value (picklable) reaches every rank, and its failure
        is raised on every rank (the others as :class:`DistributedError`)."""
        if not self.enabled:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = err
                outcome = ("error", (str(err).strip().splitlines() or [type(err).__name__])[0])
        status, payload = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if status == "error":
            raise DistributedError(f"rank 0 of {self.world_size} failed: {payload}")
        return payload

    @contextlib.contextmanager
    def main_holds(self, cm_factory: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
        """Rank 0 enters the context manager ``cm_factory()`` (a lock) for the block; the other
        ranks only wait until it has (and fail with it if it cannot)."""
        if not self.enabled:
            with cm_factory():
                yield
            return
        with contextlib.ExitStack() as stack:

            def enter() -> None:
                stack.enter_context(cm_factory())  # left by the ExitStack when the block ends

            self.run_on_main(enter)
            yield


#: A plain, single-process run.
SINGLE = DistContext()


def _timeout() -> _dt.timedelta:
    text = os.environ.get("PSAL_DIST_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"PSAL_DIST_TIMEOUT must be a number of seconds; got {text!r}") from None
    if not seconds > 0:
        raise ValueError(f"PSAL_DIST_TIMEOUT must be positive; got {text!r}")
    return _dt.timedelta(seconds=seconds)


def _rank_device(requested: str | None, local_rank: int) -> torch.device:
    """The device of one rank: ``--device`` as given, except that an unnumbered CUDA device
    (``cuda``, or the default on a GPU node) becomes this rank's own, ``cuda:LOCAL_RANK``."""
    from .kernels.device import pick_device

    dev = pick_device(requested)
    if dev.type == "cuda" and dev.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"local rank {local_rank} has no CUDA device of its own (this node has {count}): "
                             f"start at most {count} processes per node (--nproc_per_node), or pass --device cpu")
        dev = torch.device(dev.type, local_rank)
    return dev


@contextlib.contextmanager
def init_distributed(*, device: str | None = None) -> Iterator[DistContext]:
    """The process group of a ``torchrun`` run for the duration of the block.

    Parameters
    ----------
    device : str, optional
        The command's ``--device``; None picks CUDA, MPS or CPU as a plain run does. Ranks on
        CUDA use the NCCL backend (and the device ``cuda:LOCAL_RANK`` unless one is named);
        ranks anywhere else use gloo.

    Yields
    ------
    DistContext
        :data:`SINGLE` outside torchrun or with ``WORLD_SIZE=1`` (nothing is initialised).

    Raises
    ------
    ValueError
        torch.distributed is unavailable in this build of torch, or the variables are wrong.
    """
    env = torchrun_env()
    if env is None or env[1] == 1:
        yield SINGLE
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("this build of torch has no torch.distributed: run without torchrun")
    rank, world, local = env
    dev = _rank_device(device, local)
    nccl = dev.type == "cuda" and dist.is_nccl_available()
    backend = "nccl" if nccl else "gloo"
    timeout = _timeout()
    if nccl:
        torch.cuda.set_device(dev)  # object collectives and NCCL pick "the current device"
    already = dist.is_initialized()
    if not already:
        dist.init_process_group(backend=backend, timeout=timeout, **({"device_id": dev} if nccl else {}))
    try:
        cpu_group = dist.new_group(backend="gloo", timeout=timeout) if nccl else None
        yield DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, device=dev,
                          cpu_group=cpu_group)
    finally:
        if not already:
            dist.destroy_process_group()
