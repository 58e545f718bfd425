"""
``torch.compile`` where the machine can compile. On a CPU, TorchInductor writes C++ and needs a C++ compiler; where
none is found, the function runs eagerly instead, with a warning that says why, so that an option asking for speed
never stops training.
"""

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch as th

Function = TypeVar("Function", bound=Callable)


def cpu_compiler_problem() -> str | None:
    """:return: Why TorchInductor cannot compile for the CPU on this machine, or None when it can"""
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as error:  # torch raises InvalidCxxCompiler, or an import or platform error
        return f"{type(error).__name__}: {error}".rstrip(": ")
    return None


def compile_if_possible(function: Function, device: th.device, option: str) -> Function:
    """
    :param function: The function to compile
    :param device: Where its tensors live
    :param option: The user's option that asked for compilation, named in the warning
    :return: ``torch.compile(function)``, or ``function`` itself (with a warning) on a CPU without a C++ compiler
    """
    if device.type == "cpu":
        problem = cpu_compiler_problem()
        if problem is not None:
            warnings.warn(
                f"{option}: torch.compile needs a C++ compiler on a CPU and found none ({problem}); the update runs "
                "eagerly (install g++ or clang, or set torch._inductor.config.cpp.cxx, to compile it)",
                stacklevel=3,
            )
            return function
    return th.compile(function)  # type: ignore[return-value]
