"""Torch modes that log what they see, for tests of how the analysis treats a user's modes:
``FunctionLog`` (a TorchFunctionMode) and ``DispatchLog`` (a TorchDispatchMode) append each
call to the list they are given; ``mode_stacks`` names the modes active now."""
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack


class FunctionLog(TorchFunctionMode):
    def __init__(self, log: list | None = None) -> None:
        super().__init__()
        self.log = [] if log is None else log

    @property
    def names(self) -> list[str]:
        return [getattr(func, "__name__", "?") for func in self.log]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.log.append(func)
        return func(*args, **(kwargs or {}))


class DispatchLog(TorchDispatchMode):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.log.append(func)
        return func(*args, **(kwargs or {}))


def mode_stacks() -> tuple[list[str], list[str]]:
    """The class names of the active (function modes, dispatch modes), innermost last."""
    return ([type(m).__name__ for m in _get_current_function_mode_stack()],
            [type(m).__name__ for m in _get_current_dispatch_mode_stack()])
