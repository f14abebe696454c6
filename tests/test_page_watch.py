"""A front end's first messages to the kernel are noticed, and still answered unchanged."""
from __future__ import annotations

import asyncio

from psal_widgets.widgets.page_watch import CONTACT_MESSAGES, on_page_contact


class FakeKernel:
    """ipykernel's dispatch in small: ``shell_handlers[msg_type](stream, idents, msg)``."""

    def __init__(self) -> None:
        self.answered: list[str] = []
        self.shell_handlers = {
            "kernel_info_request": self.kernel_info_request,
            "comm_info_request": self.comm_info_request,
            "execute_request": self.execute_request,
        }

    async def kernel_info_request(self, stream, idents, msg):  # async, as in ipykernel 7
        self.answered.append(msg)

    def comm_info_request(self, stream, idents, msg):  # a plain function works as well
        self.answered.append(msg)

    def execute_request(self, stream, idents, msg):
        self.answered.append(msg)

    def dispatch(self, msg_type: str) -> None:
        result = self.shell_handlers[msg_type](None, [], msg_type)
        if asyncio.iscoroutine(result):
            asyncio.run(result)


def test_contact_messages_call_back_and_are_still_answered() -> None:
    kernel = FakeKernel()
    seen: list[int] = []
    remove_a = on_page_contact(lambda: seen.append(1), kernel=kernel)
    remove_b = on_page_contact(lambda: seen.append(2), kernel=kernel)  # wrapped once, not twice
    for name in (*CONTACT_MESSAGES, "execute_request"):
        kernel.dispatch(name)
    assert kernel.answered == [*CONTACT_MESSAGES, "execute_request"]
    assert seen == [1, 2, 1, 2]  # the two contact messages, each seen by both; execute_request by none
    remove_a()
    kernel.dispatch("comm_info_request")
    assert seen == [1, 2, 1, 2, 2]
    remove_b()


def test_a_failing_callback_never_costs_the_reply() -> None:
    kernel = FakeKernel()

    def boom() -> None:
        raise RuntimeError("listener bug")

    remove = on_page_contact(boom, kernel=kernel)
    kernel.dispatch("kernel_info_request")
    assert kernel.answered == ["kernel_info_request"]
    remove()


def test_outside_a_kernel_nothing_happens() -> None:
    remove = on_page_contact(lambda: None)  # pytest runs no kernel
    remove()
